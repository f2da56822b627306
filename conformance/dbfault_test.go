package conformance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestDBConnectionsKilled: while 4 clients put distinct keys into one shimd,
// every database connection shimd holds on its store is killed 4 times
// (PostgreSQL: pg_terminate_backend on the connections tagged with the
// store's application_name, LISTEN included; MariaDB: KILL CONNECTION on
// those using the store's database). Clients may see errors meanwhile. The
// same shimd process (no restart) must then accept writes again within
// 30 s, every acknowledged put must be readable with its value at its
// revision, and a watch from revision 1 must deliver the log with gapless,
// unique revisions. A watcher running through the faults must have seen the
// same.
func TestDBConnectionsKilled(t *testing.T) {
	requireRealSUT(t)
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			p := startOn(t, st, "shimd")
			follower := startOn(t, st, "follower")
			dbFault(t, p, follower, 4, 700*time.Millisecond, func(ctx context.Context, round int) error {
				n, err := st.KillConnections(ctx)
				if err != nil {
					return err
				}
				t.Logf("fault %d: killed %d connections", round, n)
				if n == 0 {
					return fmt.Errorf("no connection of shimd's found to kill")
				}
				return nil
			})
		})
	}
}

// TestDBServerRestart is TestDBConnectionsKilled with the PostgreSQL server
// itself restarted twice (pg_ctlcluster ... restart) instead. Opt-in with
// SHIMD_TEST_DB_RESTART=1: it disturbs every other user of that server and
// needs pg_ctlcluster (a local Debian/Ubuntu cluster) and the right to run
// it. The cluster version is the only entry of /etc/postgresql unless
// SHIMD_TEST_PG_CLUSTER="VERSION NAME" says otherwise.
func TestDBServerRestart(t *testing.T) {
	requireRealSUT(t)
	if !harness.EnvBool("SHIMD_TEST_DB_RESTART") {
		t.Skip("restarts the PostgreSQL server: opt in with SHIMD_TEST_DB_RESTART=1")
	}
	for _, b := range sharedBackends() {
		if b.Kind != harness.KindPostgres {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			ver, cluster := pgCluster(t)
			st := newStore(t, b)
			p := startOn(t, st, "shimd")
			follower := startOn(t, st, "follower")
			dbFault(t, p, follower, 2, time.Second, func(ctx context.Context, round int) error {
				start := time.Now()
				cmd := exec.CommandContext(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", ver, cluster, "restart")
				out, err := cmd.CombinedOutput()
				if err != nil {
					// Leave the server running whatever happened.
					_ = exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", ver, cluster, "start").Run()
					return fmt.Errorf("pg_ctlcluster restart: %v\n%s", err, out)
				}
				t.Logf("fault %d: PostgreSQL %s/%s restarted in %v", round, ver, cluster, time.Since(start).Round(time.Millisecond))
				return nil
			})
		})
	}
}

func pgCluster(t *testing.T) (string, string) {
	if v := strings.Fields(os.Getenv("SHIMD_TEST_PG_CLUSTER")); len(v) == 2 {
		return v[0], v[1]
	}
	if _, err := exec.LookPath("pg_ctlcluster"); err != nil {
		t.Skip("pg_ctlcluster not found")
	}
	vers, _ := filepath.Glob("/etc/postgresql/*/main")
	if len(vers) != 1 {
		t.Skipf("cannot tell the PostgreSQL cluster (%v); set SHIMD_TEST_PG_CLUSTER=\"VERSION NAME\"", vers)
	}
	return filepath.Base(filepath.Dir(vers[0])), "main"
}

type faultAck struct {
	key, val string
	rev      int64
}

func faultKey(w, n int) string { return fmt.Sprintf("f/w%d/%07d", w, n) }
func faultVal(key string) string {
	return "v-" + key + strings.Repeat(".", 40)
}

// dbFault runs writers on p, injects rounds faults spaced by gap, and checks
// recovery and the log, on p and on follower, a second shimd on the same
// store that only watches (so it must find p's commits again after the
// faults: LISTEN/NOTIFY or polling).
func dbFault(t *testing.T, p, follower *harness.Process, rounds int, gap time.Duration, fault func(ctx context.Context, round int) error) {
	const writers = 4
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A watcher that lives through the faults; if its stream ends, it is
	// resumed after the last revision it saw, as a client would.
	live := newResumingWatcher(ctx, dialT(t, p.Endpoint), "f/")
	liveF := newResumingWatcher(ctx, dialT(t, follower.Endpoint), "f/")

	var (
		mu     sync.Mutex
		acked  []faultAck
		nerr   int
		errs   = map[string]int{}
		wg     sync.WaitGroup
		stop   = make(chan struct{})
		counts = make([]int, writers)
	)
	started := make(chan struct{}, writers)
	for w := 0; w < writers; w++ {
		cli := dialT(t, p.Endpoint)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k := faultKey(w, n)
				octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := cli.Put(octx, k, faultVal(k))
				ocancel()
				mu.Lock()
				if err != nil {
					nerr++
					errs[errDesc(err)]++
				} else {
					acked = append(acked, faultAck{k, faultVal(k), resp.Header.Revision})
					counts[w]++
				}
				mu.Unlock()
				if n == 0 {
					started <- struct{}{}
				}
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}(w)
	}
	for i := 0; i < writers; i++ {
		<-started
	}
	for round := 1; round <= rounds; round++ {
		time.Sleep(gap)
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Minute)
		err := fault(fctx, round)
		fcancel()
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("fault %d: %v", round, err)
		}
		for _, p := range []*harness.Process{p, follower} {
			select {
			case <-p.Exited():
				close(stop)
				wg.Wait()
				t.Fatalf("shimd exited after fault %d: %v\n%s", round, p.ExitErr(), p.Output())
			default:
			}
		}
	}
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d puts acknowledged (per writer %v); %d failed: %v", len(acked), counts, nerr, errs)

	// The same process must accept writes again.
	cli := dialT(t, p.Endpoint)
	recoverStart := time.Now()
	var lastErr error
	recovered := false
	for time.Since(recoverStart) < 30*time.Second {
		octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
		k := fmt.Sprintf("f/after/%d", time.Now().UnixNano())
		resp, err := cli.Put(octx, k, faultVal(k))
		ocancel()
		if err == nil {
			acked = append(acked, faultAck{k, faultVal(k), resp.Header.Revision})
			recovered = true
			break
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	if !recovered {
		t.Fatalf("shimd does not accept writes 30 s after the last fault: %v\n%s", lastErr, p.Output())
	}
	t.Logf("writes accepted %v after the writers stopped", time.Since(recoverStart).Round(time.Millisecond))
	for i := 0; i < 20; i++ {
		octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
		k := fmt.Sprintf("f/after2/%03d", i)
		resp, err := cli.Put(octx, k, faultVal(k))
		ocancel()
		if err != nil {
			t.Fatalf("put %d after recovery: %v", i, err)
		}
		acked = append(acked, faultAck{k, faultVal(k), resp.Header.Revision})
	}
	select {
	case <-p.Exited():
		t.Fatalf("shimd exited: %v\n%s", p.ExitErr(), p.Output())
	default:
	}

	// Every acknowledged put is readable, at its revision.
	octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
	g, err := cli.Get(octx, "f/", clientv3.WithPrefix())
	ocancel()
	if err != nil {
		t.Fatalf("read f/: %v", err)
	}
	have := map[string]*mvccpb.KeyValue{}
	for _, kv := range g.Kvs {
		have[string(kv.Key)] = kv
		if string(kv.Value) != faultVal(string(kv.Key)) || kv.Version != 1 || kv.CreateRevision != kv.ModRevision {
			t.Errorf("corrupt key: %s", kvString(kv))
		}
	}
	lost := 0
	var maxAck int64
	for _, a := range acked {
		maxAck = max(maxAck, a.rev)
		kv := have[a.key]
		switch {
		case kv == nil:
			if lost++; lost <= 10 {
				t.Errorf("acknowledged put %q (revision %d) is lost", a.key, a.rev)
			}
		case kv.ModRevision != a.rev:
			t.Errorf("acknowledged put %q at revision %d reads as %s", a.key, a.rev, kvString(kv))
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged puts lost", lost, len(acked))
	}
	final := g.Header.Revision
	if final < maxAck {
		t.Errorf("read revision %d is below the highest acknowledged revision %d", final, maxAck)
	}
	t.Logf("%d keys, revision %d; %d writes failed or were unacknowledged", len(g.Kvs), final, int(final-1)-len(acked))

	// A watch from revision 1 delivers the whole log, gapless and unique; so
	// do the watchers that ran through the faults, on p and on the follower.
	wctx, wcancel := context.WithCancel(ctx)
	fresh := newResumingWatcher(wctx, cli, "f/")
	watchers := []struct {
		name string
		w    *resumingWatcher
	}{
		{"watch from revision 1 after the faults", fresh},
		{"watcher running through the faults", live},
		{"follower's watcher running through the faults", liveF},
	}
	for _, w := range watchers {
		if err := w.w.waitRev(final, 30*time.Second); err != nil {
			t.Errorf("%s: %v", w.name, err)
		}
	}
	wcancel()
	var freshEv []*mvccpb.Event
	for i, w := range watchers {
		evs, resumes := w.w.stop()
		if resumes > 0 {
			t.Logf("%s was resumed %d times: %q", w.name, resumes, w.w.reasons)
		}
		if err := checkRevisions(evs, 2, final); err != nil {
			t.Errorf("%s: %v", w.name, err)
		}
		if err := checkReplay(evs); err != nil {
			t.Errorf("%s: %v", w.name, err)
		}
		if i == 0 {
			freshEv = evs
		} else if d := diffStreams(freshEv, evs); d != "" {
			t.Errorf("the %s saw another history than a watch from revision 1: %s", w.name, d)
		}
	}
	at := map[int64]*mvccpb.Event{}
	for _, e := range freshEv {
		at[e.Kv.ModRevision] = e
	}
	for _, a := range acked {
		if e := at[a.rev]; e == nil || e.Type != mvccpb.PUT || string(e.Kv.Key) != a.key || string(e.Kv.Value) != a.val {
			t.Errorf("acknowledged put %q at revision %d: the log has %v there", a.key, a.rev, e)
		}
	}
}

// errDesc shortens an error for counting.
func errDesc(err error) string {
	s := fmt.Sprintf("%v: %s", errCode(err), err)
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// resumingWatcher watches a prefix from revision 1 and, if the stream ends
// with an error, resumes after the last revision received.
type resumingWatcher struct {
	mpWatcher
	resumes int
	reasons []string
}

func newResumingWatcher(ctx context.Context, cli *clientv3.Client, prefix string) *resumingWatcher {
	return newResumingWatcherAt(ctx, cli, prefix, 1)
}

// newResumingWatcherAt is newResumingWatcher starting at revision from.
func newResumingWatcherAt(ctx context.Context, cli *clientv3.Client, prefix string, from int64) *resumingWatcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &resumingWatcher{mpWatcher: mpWatcher{changed: make(chan struct{}), done: make(chan struct{}), cancel: cancel, last: from - 1}}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			w.mu.Lock()
			from := w.last + 1
			w.mu.Unlock()
			ch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(max(from, 1)), clientv3.WithPrevKV())
			var why string
			for resp := range ch {
				w.mu.Lock()
				for _, e := range resp.Events {
					w.events = append(w.events, (*mvccpb.Event)(e))
					w.last = max(w.last, e.Kv.ModRevision)
				}
				close(w.changed)
				w.changed = make(chan struct{})
				w.mu.Unlock()
				if err := resp.Err(); err != nil {
					why = err.Error()
				} else if resp.Canceled {
					why = "canceled"
				}
			}
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			w.resumes++
			if why == "" {
				why = "channel closed"
			}
			w.reasons = append(w.reasons, why)
			w.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return w
}

func (w *resumingWatcher) stop() ([]*mvccpb.Event, int) {
	ev := w.mpWatcher.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	return ev, w.resumes
}
