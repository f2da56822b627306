package conformance

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestLaggingProcessCompaction: two processes on one store, where B falls
// behind a physical compaction made through A. B must not bring back what was
// deleted while it was away, must not write rows judged against its stale
// memory, and its watchers must get the delete or a compacted cancel.
//
//	pause   B is stopped (SIGSTOP) while A deletes the key, writes another and
//	        compacts at the head; after SIGCONT, B's linearizable get finds no
//	        key, B's put starts a new generation, B's watcher gets the DELETE
//	        or is cancelled with compact_revision set.
//	rounds  put on A, get on B, delete on A, compact at the head on A, get
//	        on B, SHIMD_LAG_ROUNDS times (1000): B never returns the key.
//	        Every other round A also puts another key before compacting, so
//	        that the compaction removes the delete's tombstone as well.
func TestLaggingProcessCompaction(t *testing.T) {
	requireRealSUT(t)
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			a := startOn(t, st, "shimdA")
			bp := startOn(t, st, "shimdB")
			cliA, cliB := dialT(t, a.Endpoint), dialT(t, bp.Endpoint)
			t.Run("pause", func(t *testing.T) { lagPause(t, bp, cliA, cliB) })
			t.Run("rounds", func(t *testing.T) { lagRounds(t, cliA, cliB, robustEnvInt("SHIMD_LAG_ROUNDS", 1000)) })
		})
	}
}

func lagPause(t *testing.T, bp *harness.Process, cliA, cliB *clientv3.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const key = "lag/pause/k"
	put, err := cliA.Put(ctx, key, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(ctx, t, cliB, key); got == nil || string(got.Value) != "v1" {
		t.Fatalf("B before the pause: %v, want v1", got)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := cliB.Watch(wctx, key, clientv3.WithRev(put.Header.Revision+1))
	// The watch is registered on B before B is paused.
	if _, err := cliB.Get(ctx, key); err != nil {
		t.Fatal(err)
	}

	pid := bp.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	del, err := cliA.Delete(ctx, key)
	if err != nil || del.Deleted != 1 {
		t.Fatalf("delete on A: %v, %v", del, err)
	}
	other, err := cliA.Put(ctx, "lag/pause/other", "x")
	if err != nil {
		t.Fatal(err)
	}
	head := other.Header.Revision
	if _, err := cliA.Compact(ctx, head, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact at %d on A: %v", head, err)
	}
	resume()

	if got := mustGet(ctx, t, cliB, key); got != nil {
		t.Errorf("B after the compaction: %s = %q (create %d, mod %d, version %d); the key was deleted at %d",
			key, got.Value, got.CreateRevision, got.ModRevision, got.Version, del.Header.Revision)
	}
	if got := mustGet(ctx, t, cliA, key); got != nil {
		t.Errorf("A after the compaction: %s = %q", key, got.Value)
	}
	put2, err := cliB.Put(ctx, key, "v2")
	if err != nil {
		t.Fatalf("put on B: %v", err)
	}
	got := mustGet(ctx, t, cliA, key)
	want := put2.Header.Revision
	if got == nil || got.CreateRevision != want || got.ModRevision != want || got.Version != 1 {
		t.Errorf("B's put after the delete: %v, want a new generation (create = mod = %d, version 1)", got, want)
	}

	// B's watcher: the DELETE, or a cancel as compacted.
	select {
	case wr, ok := <-wch:
		switch {
		case !ok:
			t.Errorf("B's watcher closed without the DELETE or a compacted cancel")
		case wr.CompactRevision != 0:
			if wr.CompactRevision != head {
				t.Errorf("B's watcher cancelled with compact_revision %d, want %d", wr.CompactRevision, head)
			}
		case len(wr.Events) == 0 || wr.Events[0].Type != mvccpb.DELETE || wr.Events[0].Kv.ModRevision != del.Header.Revision:
			t.Errorf("B's watcher: %+v, want the DELETE at %d first", wr, del.Header.Revision)
		}
	case <-ctx.Done():
		t.Errorf("B's watcher got neither the DELETE nor a compacted cancel")
	}
}

func lagRounds(t *testing.T, cliA, cliB *clientv3.Client, rounds int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const key = "lag/rounds/k"
	bad := 0
	start := time.Now()
	for i := 0; i < rounds; i++ {
		if _, err := cliA.Put(ctx, key, fmt.Sprint(i)); err != nil {
			t.Fatalf("round %d: put on A: %v", i, err)
		}
		if got := mustGet(ctx, t, cliB, key); got == nil || string(got.Value) != fmt.Sprint(i) {
			t.Fatalf("round %d: B does not see A's put: %v", i, got)
		}
		del, err := cliA.Delete(ctx, key)
		if err != nil {
			t.Fatalf("round %d: delete on A: %v", i, err)
		}
		head := del.Header.Revision
		if i%2 == 1 {
			// The head moves past the delete: the compaction removes the
			// tombstone too, so B can only learn of the delete by
			// noticing that it fell behind the compaction.
			other, err := cliA.Put(ctx, "lag/rounds/other", fmt.Sprint(i))
			if err != nil {
				t.Fatalf("round %d: put on A: %v", i, err)
			}
			head = other.Header.Revision
		}
		if _, err := cliA.Compact(ctx, head, clientv3.WithCompactPhysical()); err != nil {
			t.Fatalf("round %d: compact at %d on A: %v", i, head, err)
		}
		if got := mustGet(ctx, t, cliB, key); got != nil {
			if bad++; bad <= 5 {
				t.Errorf("round %d: B returns %s = %q (mod %d) after its delete at %d and a compaction there", i, key, got.Value, got.ModRevision, del.Header.Revision)
			}
		}
	}
	t.Logf("%d rounds in %v: B returned the deleted key %d times", rounds, time.Since(start).Round(time.Millisecond), bad)
}

// mustGet is a linearizable get of key: its KV, or nil when absent.
func mustGet(ctx context.Context, t *testing.T, cli *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0]
}
