package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestPGFailover: two shimd processes on a PostgreSQL primary and its
// standby (pgha_test.go), given the multi-host DSN with
// target_session_attrs=read-write and default settings otherwise, while
// clients put through both and watch on both. The primary fails, and after
// failoverOutage the standby is promoted. Subtests:
//
//	primary-killed   kill -9 of the postmaster (its backends notice and exit)
//	primary-frozen   SIGSTOP of the postmaster and every backend: connections hang
//	node-killed      kill -9 of the postmaster and every backend at once
//	async-lost       an asynchronous standby, stopped so that the last commits
//	                 never reach it; then the primary's node is killed
//
// With a synchronous standby: no acknowledged write is lost, revisions are
// dense, every watcher sees every revision in order, both processes (the
// same ones, never restarted) acknowledge writes within failoverWritesBack of
// the promotion, and /readyz is false while no write can be done and true
// after. With the asynchronous one the database lost commits shimd
// acknowledged and applied: each process must resynchronise (resync.go) and
// end up serving exactly what the promoted database holds, never a lost key,
// with its watchers cancelled as compacted and no lost revision handed out
// again.
func TestPGFailover(t *testing.T) {
	bin := requireFailover(t)
	for _, fc := range []struct {
		name  string
		fault func(c *pgHA)
	}{
		{"primary-killed", func(c *pgHA) { c.signal([]int{c.postmaster(c.primary)}, syscall.SIGKILL) }},
		{"primary-frozen", func(c *pgHA) { c.freeze(c.primary) }},
		{"node-killed", func(c *pgHA) { c.signal(c.processes(c.primary), syscall.SIGKILL) }},
	} {
		t.Run(fc.name, func(t *testing.T) { failoverSync(t, bin, fc.fault) })
	}
	t.Run("async-lost", func(t *testing.T) { failoverAsync(t, bin) })
}

const (
	// failoverOutage is how long the cluster has no primary.
	failoverOutage = 4 * time.Second
	// failoverWritesBack bounds the time from the promotion to a write
	// acknowledged by each process.
	failoverWritesBack = 15 * time.Second
)

// failoverFlags are the settings docs/operations.md recommends with a
// standby: a hung primary is given up after 5 s, and each new connection
// waits at most 1 s for a host before trying the next.
// SHIMD_TEST_FAILOVER_FLAGS replaces them ("-" for none: the defaults).
func failoverFlags() []string {
	switch v := os.Getenv("SHIMD_TEST_FAILOVER_FLAGS"); v {
	case "":
		return []string{"--db-timeout", "5s", "--db-connect-timeout", "1s"}
	case "-":
		return nil
	default:
		return strings.Fields(v)
	}
}

func failoverSync(t *testing.T, bin string, fault func(*pgHA)) {
	c := newPGHA(t, bin, true)
	fo := startFailover(t, c)
	fo.waitAcks(t, 100)

	faultAt := time.Now()
	fault(c)
	time.Sleep(failoverOutage) // the outage itself: nothing to wait for
	// Times count from the start of the promotion: the standby may take
	// writes before pg_ctl has seen it done.
	promotedAt := time.Now()
	c.promote()
	back := fo.waitWritesBack(t, promotedAt)
	fo.waitAcksAfter(t, promotedAt, 200)
	fo.stopLoad()

	acked := fo.ackList()
	final := fo.checkAcked(t, acked)
	fo.checkWatchers(t, final, acked)
	fo.checkReady(t, faultAt, promotedAt, back)
	fo.checkSameProcesses(t)
	t.Logf("writes back after the promotion: %v; %d puts acknowledged, 0 lost; final revision %d; %d puts failed: %v",
		back, len(acked), final, fo.failed, fo.errSummary())
}

func failoverAsync(t *testing.T, bin string) {
	c := newPGHA(t, bin, false)
	fo := startFailover(t, c)
	fo.waitAcks(t, 100)

	// The standby stops receiving: what is acknowledged from now on exists
	// on the primary alone.
	c.stop(c.standby)
	stoppedAt := time.Now()
	fo.waitAcksAfter(t, stoppedAt, 150)
	faultAt := time.Now()
	var maxBefore int64
	for _, a := range fo.ackList() {
		maxBefore = max(maxBefore, a.rev)
	}
	c.signal(c.processes(c.primary), syscall.SIGKILL)
	// The promoted standby first keeps shimd out, and the test holds the
	// meta row's lock before letting it in: the resync, which needs that
	// lock, waits, and /readyz must say so meanwhile.
	c.shutOut(c.standby, true)
	c.start(c.standby)
	promotedAt := time.Now()
	c.promote()
	lock := c.nodeDB(c.standby, pgTestRole)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tx, err := lock.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "SELECT 1 FROM public.shimd_meta WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatalf("lock the meta row: %v", err)
	}
	c.shutOut(c.standby, false)
	var lostKey string
	for _, a := range fo.ackList() {
		if a.at.After(stoppedAt) && a.at.Before(faultAt) {
			lostKey = a.key
		}
	}
	for i, p := range fo.procs {
		waitFor(t, 30*time.Second, fmt.Sprintf("process %d's /readyz to report the resync", i), func() (bool, string) {
			a := httpGet(p.Endpoint + "/readyz?verbose")
			return a.code == http.StatusServiceUnavailable && strings.Contains(a.body, "resynchronising"), a.String()
		})
		// Not even a serializable read serves what the database lost.
		if lostKey == "" {
			t.Fatal("no put was acknowledged while the standby was stopped")
		}
		gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
		g, err := dialT(t, p.Endpoint).Get(gctx, lostKey, clientv3.WithSerializable())
		gcancel()
		if err == nil && len(g.Kvs) > 0 {
			t.Errorf("process %d served the lost key %s during the resync", i, lostKey)
		}
	}
	tx.Rollback()
	releasedAt := time.Now()
	back := fo.waitWritesBack(t, releasedAt)
	fo.waitAcksAfter(t, promotedAt, 100)
	fo.stopLoad()
	fo.checkSameProcesses(t)

	acked := fo.ackList()
	var lostAcks []failoverAck
	for _, a := range acked {
		if a.at.After(stoppedAt) && a.at.Before(faultAt) {
			lostAcks = append(lostAcks, a)
		}
		// A revision acknowledged after the promotion was never handed out
		// before it: the resync moved the log past every one of them.
		if a.at.After(promotedAt) && a.rev <= maxBefore {
			t.Errorf("put %s acknowledged after the promotion at revision %d, which was already handed out (highest before the fault %d)", a.key, a.rev, maxBefore)
		}
	}

	// Every process serves exactly what the promoted database holds: what
	// a fresh shimd on it reads.
	fresh := &harness.Process{Bin: sutBin, DataDir: tempDir(t, "fresh"), Backend: fo.backend}
	if err := fresh.Start(); err != nil {
		t.Fatalf("start a fresh shimd on the promoted database: %v", err)
	}
	defer fresh.Stop()
	want := fullRange(t, dialT(t, fresh.Endpoint))
	for i, p := range fo.procs {
		cli := dialT(t, p.Endpoint)
		var got *clientv3.GetResponse
		waitFor(t, 15*time.Second, fmt.Sprintf("process %d to serve the database's revision %d", i, want.Header.Revision), func() (bool, string) {
			got = fullRange(t, cli)
			return got.Header.Revision == want.Header.Revision, fmt.Sprintf("at revision %d", got.Header.Revision)
		})
		if d := diffKVs(got.Kvs, want.Kvs); d != "" {
			t.Errorf("process %d does not serve what the promoted database holds: %s", i, d)
		}
		// A lost revision reads as compacted, never as other content.
		for _, a := range lostAcks[:min(len(lostAcks), 5)] {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cli.Get(ctx, a.key, clientv3.WithRev(a.rev))
			cancel()
			if !errors.Is(err, rpctypes.ErrCompacted) {
				t.Errorf("process %d: get %s at its lost revision %d: %v, want %v", i, a.key, a.rev, err, rpctypes.ErrCompacted)
			}
		}
	}
	have := map[string]bool{}
	for _, kv := range want.Kvs {
		have[string(kv.Key)] = true
	}
	lost := 0
	for _, a := range lostAcks {
		if !have[a.key] {
			lost++
		}
	}

	// Said loudly: log, metric; watchers cancelled as compacted.
	resyncs := 0.0
	for _, p := range fo.procs {
		m, err := scrape(p.Endpoint + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resyncs += m.sum("shimd_db_resync_total")
	}
	if resyncs < 1 {
		t.Errorf("shimd_db_resync_total is %v over both processes, want at least 1", resyncs)
	}
	logged := false
	for _, p := range fo.procs {
		logged = logged || strings.Contains(p.Output(), "the database is behind this process's memory")
	}
	if !logged {
		t.Errorf("no process logged that the database is behind its memory")
	}
	for i, w := range fo.watchers {
		_, _ = w.stop()
		compacted := false
		for _, r := range w.reasons {
			compacted = compacted || strings.Contains(r, "compacted")
		}
		if !compacted {
			t.Errorf("process %d's watcher was not cancelled as compacted (resumes: %q)", i, w.reasons)
		}
	}
	fo.checkReadyAfter(t, releasedAt, "the lock was released")
	t.Logf("/readyz reported the resync on both processes; writes back %v after the meta row's lock was released (resync included); %d of %d puts acknowledged while the standby was stopped are lost with the primary (the database's asynchronous setting); shimd_db_resync_total %v; %d keys at revision %d",
		back, lost, len(lostAcks), resyncs, len(want.Kvs), want.Header.Revision)
}

// failover is the load, the watchers and the /readyz probes on two shimd
// processes of a failover test.
type failover struct {
	backend  harness.Backend
	procs    []*harness.Process
	pids     []int
	watchers []*resumingWatcher
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	mu     sync.Mutex
	acks   []failoverAck
	failed int
	errs   map[string]int
	ready  [][]readySample
}

type failoverAck struct {
	proc     int
	key, val string
	rev      int64
	at       time.Time
}

type readySample struct {
	start, end time.Time
	ok         bool
	body       string
}

// startFailover starts two shimd processes on c, two writers and a
// resuming watcher on each, and a /readyz probe of each every 100 ms.
func startFailover(t *testing.T, c *pgHA) *failover {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fo := &failover{backend: harness.Backend{Name: "postgres-failover", Kind: harness.KindPostgres, Endpoint: c.dsn()}, cancel: cancel, errs: map[string]int{}}
	t.Cleanup(fo.stopLoad)
	// The watchers outlive the load: they are checked after it stops.
	wctx, wcancel := context.WithCancel(context.Background())
	t.Cleanup(wcancel)
	for i := range 2 {
		p := &harness.Process{Bin: sutBin, DataDir: tempDir(t, fmt.Sprint("shimd", i)), Backend: fo.backend, ExtraArgs: failoverFlags()}
		if err := p.Start(); err != nil {
			t.Fatalf("start shimd %d on %s: %v\n%s", i, c.dsn(), err, c.logs())
		}
		t.Cleanup(func() {
			if err := p.Stop(); err != nil {
				t.Logf("shimd %d: stop: %v", i, err)
			}
			if t.Failed() {
				t.Logf("shimd %d output:\n%s", i, p.Output())
			}
		})
		fo.procs = append(fo.procs, p)
		fo.pids = append(fo.pids, p.Pid())
		fo.watchers = append(fo.watchers, newResumingWatcher(wctx, dialT(t, p.Endpoint), "fo/"))
	}
	fo.ready = make([][]readySample, len(fo.procs))
	for i, p := range fo.procs {
		for w := range 2 {
			cli := dialT(t, p.Endpoint)
			fo.wg.Add(1)
			go fo.writer(ctx, cli, i, w)
		}
		fo.wg.Add(1)
		go fo.probe(ctx, i, p.Endpoint+"/readyz?verbose")
	}
	return fo
}

func (fo *failover) writer(ctx context.Context, cli *clientv3.Client, proc, w int) {
	defer fo.wg.Done()
	for n := 0; ctx.Err() == nil; n++ {
		k := fmt.Sprintf("fo/p%dw%d/%07d", proc, w, n)
		v := "v-" + k
		octx, cancel := context.WithTimeout(ctx, 3*time.Second)
		r, err := cli.Put(octx, k, v)
		cancel()
		fo.mu.Lock()
		if err == nil {
			fo.acks = append(fo.acks, failoverAck{proc, k, v, r.Header.Revision, time.Now()})
		} else if ctx.Err() == nil {
			fo.failed++
			fo.errs[errDesc(err)]++
		}
		fo.mu.Unlock()
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

func (fo *failover) probe(ctx context.Context, i int, url string) {
	defer fo.wg.Done()
	hc := &http.Client{Timeout: 5 * time.Second}
	for ctx.Err() == nil {
		s := readySample{start: time.Now()}
		if resp, err := hc.Get(url); err == nil {
			var b strings.Builder
			buf := make([]byte, 4096)
			n, _ := resp.Body.Read(buf)
			b.Write(buf[:n])
			resp.Body.Close()
			s.ok, s.body = resp.StatusCode == http.StatusOK, b.String()
		}
		s.end = time.Now()
		fo.mu.Lock()
		fo.ready[i] = append(fo.ready[i], s)
		fo.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (fo *failover) stopLoad() {
	fo.cancel()
	fo.wg.Wait()
}

func (fo *failover) ackList() []failoverAck {
	fo.mu.Lock()
	defer fo.mu.Unlock()
	return append([]failoverAck(nil), fo.acks...)
}

func (fo *failover) errSummary() map[string]int {
	fo.mu.Lock()
	defer fo.mu.Unlock()
	out := map[string]int{}
	for k, v := range fo.errs {
		out[k] = v
	}
	return out
}

// waitAcks waits until n puts were acknowledged in all.
func (fo *failover) waitAcks(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d acknowledged puts", n), func() (bool, string) {
		k := len(fo.ackList())
		return k >= n, fmt.Sprintf("%d acknowledged, errors %v", k, fo.errSummary())
	})
}

// waitAcksAfter waits until n puts were acknowledged after since.
func (fo *failover) waitAcksAfter(t *testing.T, since time.Time, n int) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%d puts acknowledged after %v", n, since.Format("15:04:05.000")), func() (bool, string) {
		k := 0
		for _, a := range fo.ackList() {
			if a.at.After(since) {
				k++
			}
		}
		return k >= n, fmt.Sprintf("%d, errors %v", k, fo.errSummary())
	})
}

// waitWritesBack waits until each process acknowledged a put after the
// promotion, and returns how long that took for each.
func (fo *failover) waitWritesBack(t *testing.T, promotedAt time.Time) []time.Duration {
	t.Helper()
	back := make([]time.Duration, len(fo.procs))
	deadline := promotedAt.Add(failoverWritesBack)
	for {
		done := true
		for i := range back {
			if back[i] != 0 {
				continue
			}
			for _, a := range fo.ackList() {
				if a.proc == i && a.at.After(promotedAt) {
					back[i] = a.at.Sub(promotedAt).Round(time.Millisecond)
					break
				}
			}
			done = done && back[i] != 0
		}
		if done {
			return back
		}
		if time.Now().After(deadline) {
			var out strings.Builder
			for i, p := range fo.procs {
				fmt.Fprintf(&out, "--- shimd %d ---\n%s\n", i, p.Output())
			}
			t.Fatalf("writes not acknowledged by every process within %v of the promotion (%v); errors: %v\n%s", failoverWritesBack, back, fo.errSummary(), out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkAcked reads everything through each process: every acknowledged put
// is there at its revision. It returns the final revision.
func (fo *failover) checkAcked(t *testing.T, acked []failoverAck) int64 {
	t.Helper()
	var final int64
	for i, p := range fo.procs {
		g := fullRange(t, dialT(t, p.Endpoint))
		have := map[string]*mvccpb.KeyValue{}
		for _, kv := range g.Kvs {
			have[string(kv.Key)] = kv
		}
		lost := 0
		for _, a := range acked {
			kv := have[a.key]
			switch {
			case kv == nil:
				if lost++; lost <= 10 {
					t.Errorf("process %d: acknowledged put %s (revision %d) is lost", i, a.key, a.rev)
				}
			case kv.ModRevision != a.rev || string(kv.Value) != a.val:
				t.Errorf("process %d: acknowledged put %s at revision %d reads as %s", i, a.key, a.rev, kvString(kv))
			}
		}
		if lost > 0 {
			t.Errorf("process %d: %d of %d acknowledged puts lost", i, lost, len(acked))
		}
		final = max(final, g.Header.Revision)
	}
	return final
}

// checkWatchers: the watchers that ran through the failover, and a watch
// from revision 1 after it, deliver the same gapless history, holding every
// acknowledged put.
//
// Unless a process resynchronised: even with a synchronous standby,
// PostgreSQL makes a commit visible on the primary before the standby
// confirms it, and a primary killed in between leaves a commit that shimd
// may have read (never acknowledged: its writer got no answer) and that the
// promoted standby lacks. Then the log is compacted past it (resync.go),
// and the checks become: each watcher that ran through got a gapless
// history up to where it was cancelled as compacted, never beyond the
// compact revision, and a watch from just after it delivers the rest.
func (fo *failover) checkWatchers(t *testing.T, final int64, acked []failoverAck) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	compactRev := int64(0)
	for _, p := range fo.procs {
		m := mustScrape(t, p.Endpoint+"/metrics")
		compactRev = max(compactRev, int64(m.sum("etcd_debugging_mvcc_compact_revision")))
		if n := m.sum("shimd_db_resync_total"); n > 0 {
			t.Logf("a process resynchronised (%v times): the database lacked a commit it had seen; log compacted at %d", n, compactRev)
		}
	}
	from := compactRev + 1
	all := append([]*resumingWatcher{newResumingWatcherAt(ctx, dialT(t, fo.procs[0].Endpoint), "fo/", from)}, fo.watchers...)
	var first []*mvccpb.Event
	for i, w := range all {
		if i == 0 || compactRev == 0 {
			if err := w.waitRev(final, 30*time.Second); err != nil {
				t.Errorf("watcher %d: %v", i, err)
			}
		}
		evs, resumes := w.stop()
		if resumes > 0 {
			t.Logf("watcher %d was resumed %d times: %q", i, resumes, w.reasons[:min(len(w.reasons), 3)])
		}
		compacted := false
		for _, r := range w.reasons {
			compacted = compacted || strings.Contains(r, "compacted")
		}
		switch {
		case i == 0 || compactRev == 0:
			if compacted {
				t.Errorf("watcher %d was cancelled as compacted: %q", i, w.reasons[:min(len(w.reasons), 3)])
			}
			if err := checkRevisions(evs, max(2, from), final); err != nil {
				t.Errorf("watcher %d: %v", i, err)
			}
			if i == 0 {
				first = evs
			} else if d := diffStreams(first, evs); d != "" {
				t.Errorf("watcher %d saw another history than a watch from revision 1: %s", i, d)
			}
		default:
			// Cancelled as compacted, after a gapless history.
			if !compacted {
				t.Errorf("watcher %d was not cancelled as compacted after the resync: %q", i, w.reasons)
			}
			if last := lastRev(evs); last > compactRev {
				t.Errorf("watcher %d got revision %d, past the compaction at %d", i, last, compactRev)
			} else if err := checkRevisions(evs, 2, last); err != nil {
				t.Errorf("watcher %d: %v", i, err)
			}
		}
	}
	at := map[int64]*mvccpb.Event{}
	for _, e := range first {
		at[e.Kv.ModRevision] = e
	}
	for _, a := range acked {
		if e := at[a.rev]; a.rev >= from && (e == nil || string(e.Kv.Key) != a.key || string(e.Kv.Value) != a.val) {
			t.Errorf("acknowledged put %s at revision %d: the history has %v there", a.key, a.rev, e)
		}
	}
}

// checkReady: /readyz was false whenever asked from failoverOutage/2 after
// the fault until the promotion (no write could be done), was not true long
// before writes were back (back: per process, from the promotion), and was
// true after.
func (fo *failover) checkReady(t *testing.T, faultAt, promotedAt time.Time, back []time.Duration) {
	t.Helper()
	for i := range fo.procs {
		fo.mu.Lock()
		samples := append([]readySample(nil), fo.ready[i]...)
		fo.mu.Unlock()
		down := 0
		for _, s := range samples {
			if s.start.After(faultAt.Add(failoverOutage/2)) && s.end.Before(promotedAt) {
				down++
				if s.ok {
					t.Errorf("process %d: /readyz said ready at %v, %v after the fault and before the promotion", i, s.end.Format("15:04:05.000"), s.end.Sub(faultAt).Round(time.Millisecond))
				}
			}
		}
		if down == 0 {
			t.Errorf("process %d: /readyz was never asked during the outage", i)
		}
		// A probe races the writer: a second of slack.
		for _, s := range samples {
			if s.ok && s.start.After(promotedAt) && s.end.Before(promotedAt.Add(back[i]-time.Second)) {
				t.Errorf("process %d: /readyz said ready %v after the promotion, writes were back only after %v", i, s.end.Sub(promotedAt).Round(time.Millisecond), back[i])
				break
			}
		}
	}
	fo.checkReadyAfter(t, promotedAt, "the promotion")
}

// checkReadyAfter: /readyz turned true after promotedAt (what: the event
// then), within the writes-back bound, and was true at the end.
func (fo *failover) checkReadyAfter(t *testing.T, promotedAt time.Time, what string) {
	t.Helper()
	for i := range fo.procs {
		fo.mu.Lock()
		samples := append([]readySample(nil), fo.ready[i]...)
		fo.mu.Unlock()
		var readyAt time.Time
		for _, s := range samples {
			if s.start.After(promotedAt) && s.ok && readyAt.IsZero() {
				readyAt = s.end
			}
		}
		if readyAt.IsZero() || readyAt.Sub(promotedAt) > failoverWritesBack {
			t.Errorf("process %d: /readyz not true within %v after %s", i, failoverWritesBack, what)
			continue
		}
		if last := samples[len(samples)-1]; !last.ok {
			t.Errorf("process %d: /readyz false at the end: %s", i, last.body)
		}
		t.Logf("process %d: /readyz true %v after %s", i, readyAt.Sub(promotedAt).Round(time.Millisecond), what)
	}
}

// checkSameProcesses: both shimd processes ran throughout.
func (fo *failover) checkSameProcesses(t *testing.T) {
	t.Helper()
	for i, p := range fo.procs {
		select {
		case <-p.Exited():
			t.Fatalf("shimd %d exited: %v\n%s", i, p.ExitErr(), p.Output())
		default:
		}
		if p.Pid() != fo.pids[i] {
			t.Fatalf("shimd %d was restarted (pid %d, was %d)", i, p.Pid(), fo.pids[i])
		}
	}
}

// fullRange reads every key, linearizably.
func fullRange(t *testing.T, cli *clientv3.Client) *clientv3.GetResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	g, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("full range: %v", err)
	}
	return g
}

// diffKVs returns "" when a and b hold the same keys, values and revisions.
func diffKVs(a, b []*mvccpb.KeyValue) string {
	for i := 0; i < min(len(a), len(b)); i++ {
		if !kvEqual(a[i], b[i]) {
			return fmt.Sprintf("key #%d: %s vs %s", i, kvString(a[i]), kvString(b[i]))
		}
	}
	if len(a) != len(b) {
		return fmt.Sprintf("%d keys vs %d", len(a), len(b))
	}
	return ""
}
