package conformance

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestDurabilityKill9 checks that every acknowledged put survives a kill -9:
// 4 writers put distinct keys for ~2s, the server is killed mid-flight and
// restarted on the same data dir, and each acknowledged key must be readable
// with its value and with mod_revision equal to the acknowledged revision.
// Three kill cycles, then one graceful SIGTERM restart.
func TestDurabilityKill9(t *testing.T) {
	requireSUT(t)
	const (
		cycles      = 3
		writers     = 4
		writePeriod = 2 * time.Second
	)
	for _, bk := range harness.Backends() {
		t.Run(bk.Name, func(t *testing.T) {
			p, err := harness.StartProcess(sutBin, tempDir(t, "data"), newStore(t, bk).Backend, harness.Options{})
			if err != nil {
				t.Fatalf("start %s: %v", sutName, err)
			}
			defer p.Kill()

			var acked []ack
			for cycle := 1; cycle <= cycles; cycle++ {
				got := writeAndKill(t, p, cycle, writers, writePeriod)
				t.Logf("cycle %d: %d puts acknowledged before kill -9", cycle, len(got))
				acked = append(acked, got...)
				if err := p.Start(); err != nil {
					t.Fatalf("cycle %d: restart after kill -9: %v", cycle, err)
				}
				verifyAcked(t, p, fmt.Sprintf("after kill -9 #%d", cycle), acked, writers*cycle)
			}
			if err := p.Stop(); err != nil {
				t.Errorf("graceful stop: %v\n%s", err, p.Output())
			}
			if err := p.Start(); err != nil {
				t.Fatalf("restart after SIGTERM: %v", err)
			}
			verifyAcked(t, p, "after SIGTERM restart", acked, writers*cycles)
			if err := p.Stop(); err != nil {
				t.Errorf("graceful stop: %v\n%s", err, p.Output())
			}
		})
	}
}

type ack struct {
	key, val string
	rev      int64
}

func durKey(cycle, w, n int) string { return fmt.Sprintf("dur/c%d/w%d/%07d", cycle, w, n) }

// durVal is derived from the key so stray (unacknowledged but applied)
// writes can still be validated.
func durVal(key string) string { return "value-of-" + key + strings.Repeat("x", 64) }

// writeAndKill runs the writers for period, kills the server while they are
// still writing and returns the acknowledged puts.
func writeAndKill(t *testing.T, p *harness.Process, cycle, writers int, period time.Duration) []ack {
	t.Helper()
	cli, err := dial(p.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	var (
		mu    sync.Mutex
		acked []ack
		wg    sync.WaitGroup
	)
	firstAck := make(chan struct{}, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for n := 0; ; n++ {
				k := durKey(cycle, w, n)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := cli.Put(ctx, k, durVal(k))
				cancel()
				if err != nil {
					return // the server is gone (or broken): stop writing
				}
				mu.Lock()
				acked = append(acked, ack{k, durVal(k), resp.Header.Revision})
				mu.Unlock()
				if n == 0 {
					firstAck <- struct{}{}
				}
			}
		}(w)
	}
	// Every writer must be going before the clock starts.
	for i := 0; i < writers; i++ {
		select {
		case <-firstAck:
		case <-p.Exited():
			t.Fatalf("cycle %d: server exited: %v\n%s", cycle, p.ExitErr(), p.Output())
		case <-time.After(30 * time.Second):
			t.Fatalf("cycle %d: writers got no acknowledgement within 30s", cycle)
		}
	}
	select {
	case <-time.After(period):
	case <-p.Exited():
		t.Fatalf("cycle %d: server exited during writes: %v\n%s", cycle, p.ExitErr(), p.Output())
	}
	p.Kill() // SIGKILL with writes in flight
	wg.Wait()
	return acked
}

// verifyAcked reads all dur/ keys and checks every acknowledged put.
// maxExtra bounds the unacknowledged keys: one in-flight put per writer per
// kill.
func verifyAcked(t *testing.T, p *harness.Process, when string, acked []ack, maxExtra int) {
	t.Helper()
	cli, err := dial(p.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "dur/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("%s: range dur/: %v", when, err)
	}
	got := make(map[string]int, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		got[string(kv.Key)] = i
		// Writes that were in flight at the kill may or may not be there,
		// but if they are they must be intact.
		if string(kv.Value) != durVal(string(kv.Key)) || kv.Version != 1 || kv.CreateRevision != kv.ModRevision {
			t.Errorf("%s: corrupt key %q: value %q version %d create %d mod %d", when, kv.Key, kv.Value, kv.Version, kv.CreateRevision, kv.ModRevision)
		}
	}
	var maxRev int64
	lost := 0
	for _, a := range acked {
		maxRev = max(maxRev, a.rev)
		i, ok := got[a.key]
		if !ok {
			if lost++; lost <= 10 {
				t.Errorf("%s: acknowledged put %q (revision %d) was lost", when, a.key, a.rev)
			}
			continue
		}
		if kv := resp.Kvs[i]; kv.ModRevision != a.rev {
			t.Errorf("%s: key %q: mod_revision %d, acknowledged revision %d", when, a.key, kv.ModRevision, a.rev)
		}
	}
	if lost > 0 {
		t.Errorf("%s: %d of %d acknowledged puts lost", when, lost, len(acked))
	}
	if extra := len(resp.Kvs) - (len(acked) - lost); extra > maxExtra {
		t.Errorf("%s: %d unacknowledged keys present; at most %d puts were in flight at kills", when, extra, maxExtra)
	}
	if resp.Header.Revision < maxRev {
		t.Errorf("%s: revision %d is below the highest acknowledged revision %d", when, resp.Header.Revision, maxRev)
	}
}
