package conformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// TestRobustLinearizability runs concurrent clients (gets, small ranges,
// puts, CAS txns, deletes, lease grants on 5 keys) against shimd while a
// fault is injected, and checks each round's history with porcupine against
// etcd's KV model (revisions included). Operations whose outcome the client
// did not learn stay pending forever (etcd-robustness style); puts and CASes
// among them are resolved through the log (values are unique). A watcher on
// every process runs through the whole test (resuming after its last
// revision when its stream breaks, requesting progress notifications), and
// at the end every watch guarantee is checked against a full watch from
// revision 1, and watches resumed from random revisions; then the store is
// compacted at half its revision and watches resume from revisions at and
// after the compaction, while one from before it must be refused with the
// compact revision.
//
// Subtests: <backend>/<fault>, faults:
//
//	none          no fault (baseline)
//	kill9         kill -9 of shimd and a restart on the same port
//	db-conns      2 shimd processes on one store, all their database connections killed, twice per round
//	multiproc     3 shimd processes on one store, clients spread over them; one killed -9 per round
//	db-restart    the PostgreSQL cluster / MariaDB server restarted (SHIMD_TEST_DB_RESTART=1)
func TestRobustLinearizability(t *testing.T) {
	requireRobust(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			for _, f := range robustFaults {
				if b.IsShared() != f.shared && !f.both {
					continue
				}
				t.Run(f.name, func(t *testing.T) {
					if f.shared || f.procs > 1 {
						requireRealSUT(t)
					}
					if f.optIn != "" && !harness.EnvBool(f.optIn) {
						t.Skipf("disturbs every user of the database server: opt in with %s=1", f.optIn)
					}
					linearizabilityRun(t, b, f)
				})
			}
		})
	}
}

type robustFault struct {
	name   string
	procs  int
	shared bool // server databases only
	both   bool // every backend
	optIn  string
	auth   bool // auth enabled; connections carry root's token
	// inject runs once per round, while the clients run; it returns a
	// description of what it did.
	inject func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error)
}

var robustFaults = []robustFault{
	{name: "none", procs: 1, both: true},
	// auth on: every client, watcher and control connection sends root's
	// simple token, which outlives the kill -9 of its process.
	{name: "auth-kill9", procs: 1, both: true, auth: true, inject: func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error) {
		return env.kill9(0)
	}},
	{name: "auth-multiproc", procs: 2, shared: true, auth: true, inject: func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error) {
		return env.kill9(round % len(env.procs))
	}},
	{name: "kill9", procs: 1, both: true, inject: func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error) {
		return env.kill9(0)
	}},
	{name: "db-conns", procs: 2, shared: true, inject: func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error) {
		var ns []string
		for i := 0; i < 2; i++ {
			n, err := env.store.KillConnections(ctx)
			if err != nil {
				return "", err
			}
			if n == 0 {
				return "", fmt.Errorf("no database connection of shimd's found to kill")
			}
			ns = append(ns, fmt.Sprint(n))
			time.Sleep(400 * time.Millisecond)
		}
		return "killed " + strings.Join(ns, "+") + " database connections", nil
	}},
	{name: "multiproc", procs: 3, shared: true, inject: func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error) {
		return env.kill9(round % len(env.procs))
	}},
	{name: "db-restart", procs: 1, shared: true, optIn: "SHIMD_TEST_DB_RESTART", inject: func(ctx context.Context, t *testing.T, env *linEnv, round int) (string, error) {
		d, err := restartDBServer(ctx, t, env.store)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("database server restarted in %v", d.Round(time.Millisecond)), nil
	}},
}

type linEnv struct {
	store *harness.Store
	procs []*robust.Proc
}

func (e *linEnv) kill9(i int) (string, error) {
	p := e.procs[i]
	start := time.Now()
	p.Kill()
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("restart after kill -9: %w", err)
	}
	return fmt.Sprintf("process %d killed -9 and back in %v", i, time.Since(start).Round(time.Millisecond)), nil
}

func linearizabilityRun(t *testing.T, b harness.Backend, f robustFault) {
	rounds := robustEnvInt("SHIMD_ROBUST_ROUNDS", 3)
	roundDur := time.Duration(robustEnvFloat("SHIMD_ROBUST_ROUND_SECONDS", 2.5) * float64(time.Second))
	clients := robustEnvInt("SHIMD_ROBUST_CLIENTS", 8)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d rounds of %v, %d clients", seed, rounds, roundDur, clients)

	st := newStore(t, b)
	env := &linEnv{store: st}
	for i := 0; i < f.procs; i++ {
		env.procs = append(env.procs, robustProc(t, st, fmt.Sprintf("shimd%d", i)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var dialOpts []grpc.DialOption
	if f.auth {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(robustEnableAuth(t, env.procs[0])))
	}
	robustDial := func(t *testing.T, p *robust.Proc) *grpc.ClientConn {
		t.Helper()
		return robustDialTLS(t, p.Addr(), nil, dialOpts...)
	}

	// Connections: one per client, spread over the processes; one per
	// process for barriers and log reads; one per process's watcher.
	var clientConns []*grpc.ClientConn
	for c := 0; c < clients; c++ {
		clientConns = append(clientConns, robustDial(t, env.procs[c%len(env.procs)]))
	}
	var ctlConns []*grpc.ClientConn
	var watchers []*robust.Watcher
	for i, p := range env.procs {
		ctlConns = append(ctlConns, robustDial(t, p))
		watchers = append(watchers, robust.StartWatcher(ctx, fmt.Sprintf("process %d", i), robustDial(t, p),
			robust.WatchSpec{Key: "\x00", End: "\x00", Start: 1, PrevKV: true, ProgressEvery: 250 * time.Millisecond}))
	}

	var (
		totalOps, totalChecked, faults, violations, unknownChecks int
		acked                                                     []robust.Op
	)
	for round := 0; round < rounds; round++ {
		keys := make([]string, 5)
		for i := range keys {
			keys[i] = fmt.Sprintf("lin/r%02d/k%d", round, i)
		}
		r0 := robustBarrier(t, ctlConns)
		h := robust.NewHistory()
		w := robust.Workload{
			Keys: keys, Clients: clients, Duration: roundDur, MaxOps: 1000,
			OpTimeout: 3 * time.Second, Think: 12 * time.Millisecond, ErrorPause: 100 * time.Millisecond,
			Seed: seed + uint64(round),
		}
		var faultDesc string
		var faultErr error
		var fwg sync.WaitGroup
		if f.inject != nil {
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				select {
				case <-time.After(roundDur / 3):
				case <-ctx.Done():
					return
				}
				fctx, fcancel := context.WithTimeout(ctx, 2*time.Minute)
				defer fcancel()
				faultDesc, faultErr = f.inject(fctx, t, env, round)
			}()
		}
		stats := w.Run(ctx, clientConns, h, round*clients)
		fwg.Wait()
		if faultErr != nil {
			t.Fatalf("round %d: fault: %v", round, faultErr)
		}
		if f.inject != nil {
			faults++
		}
		for i, p := range env.procs {
			if !p.Running() {
				t.Fatalf("round %d: process %d exited: %v\n%s", round, i, p.ExitErr(), p.Output())
			}
		}
		final := robustBarrier(t, ctlConns)
		lctx, lcancel := context.WithTimeout(ctx, 30*time.Second)
		logResps, err := robust.Collect(lctx, ctlConns[0], robust.WatchSpec{Key: "lin/", End: "lin0", Start: r0 + 1}, final, 30*time.Second)
		lcancel()
		if err != nil {
			t.Fatalf("round %d: read the round's log: %v", round, err)
		}
		ops := h.Ops()
		patched, pst := robust.Patch(ops, robust.Events(logResps))
		start := time.Now()
		res := robust.Check(robust.State{Rev: r0}, patched, 60*time.Second, t.Name())
		totalOps += len(ops)
		if res.Result != porcupine.Unknown {
			totalChecked += len(patched)
		}
		for _, op := range ops {
			if !op.Resp.Unknown {
				acked = append(acked, op)
			}
		}
		t.Logf("round %d: revisions %d..%d, %d ops %v, %s; %s; porcupine: %s on %d ops in %v",
			round, r0, final, len(ops), kindCounts(stats), pst, orNone(faultDesc), res.Result, len(patched), time.Since(start).Round(time.Millisecond))
		if len(stats.Errors) > 0 {
			t.Logf("round %d: client errors: %v", round, stats.Errors)
		}
		switch res.Result {
		case porcupine.Illegal:
			violations++
			t.Errorf("round %d: NOT LINEARIZABLE\n%s\nvisualization: %s", round, res.Report, res.Visualization)
		case porcupine.Unknown:
			unknownChecks++
			t.Errorf("round %d: porcupine did not finish within 60 s: the history is not checked", round)
		}
	}

	// Watch guarantees over the whole run.
	final := robustBarrier(t, ctlConns)
	fctx, fcancel := context.WithTimeout(ctx, 60*time.Second)
	fullResps, err := robust.Collect(fctx, ctlConns[0], robust.WatchSpec{Key: "\x00", End: "\x00", Start: 1, PrevKV: true}, final, 60*time.Second)
	fcancel()
	if err != nil {
		t.Fatalf("full watch from revision 1: %v", err)
	}
	full := robust.Events(fullResps)
	wv := 0
	report := func(what string, v *robust.Violations) {
		for _, s := range v.List() {
			wv++
			t.Errorf("%s: %s", what, s)
		}
	}
	report("full watch from revision 1", robust.CheckWatch(fullResps, nil, 1, final))
	report("the log (full watch from revision 1)", robust.CheckLog(full, 2, final, true))
	// Every acknowledged write is in the log at its revision.
	missingLines, missing := robust.AckedMissing(acked, full)
	for _, s := range missingLines {
		t.Errorf("%s", s)
	}
	wv += missing
	for _, w := range watchers {
		if err := w.WaitRev(final, 30*time.Second); err != nil {
			t.Errorf("%v", err)
		}
		resps := w.Stop()
		n, why := w.Reconnects()
		ev, prog, streams := robust.Count(resps)
		t.Logf("watcher on %s: %d events, %d progress notifications, %d streams (%d resumes: %s)", w.Name, ev, prog, streams, n, shortReasons(why))
		if prog == 0 {
			t.Errorf("watcher on %s: no progress notification answered in the whole run", w.Name)
		}
		report("watcher on "+w.Name, robust.CheckWatch(resps, full, 1, final))
	}
	// Resumable from any revision: a few random ones and the edges.
	rnd := rand.New(rand.NewPCG(seed, 7))
	starts := []int64{1, 2, final, final + 1}
	for i := 0; i < 4; i++ {
		starts = append(starts, 1+rnd.Int64N(final))
	}
	for _, from := range starts {
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		conn := ctlConns[rnd.IntN(len(ctlConns))]
		resps, err := robust.Collect(rctx, conn, robust.WatchSpec{Key: "\x00", End: "\x00", Start: from, PrevKV: true}, final, 30*time.Second)
		rcancel()
		if err != nil {
			t.Errorf("watch from revision %d: %v", from, err)
			continue
		}
		report(fmt.Sprintf("watch resumed from revision %d", from), robust.CheckWatch(resps, full, from, final))
	}
	// Compacted: resumable from any revision the compaction left, and a
	// watch from before it is refused with the compact revision.
	compactAt := final/2 + 1
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = pb.NewKVClient(ctlConns[0]).Compact(cctx, &pb.CompactionRequest{Revision: compactAt, Physical: true})
	ccancel()
	if err != nil {
		t.Fatalf("compact at %d: %v", compactAt, err)
	}
	for _, from := range []int64{compactAt, compactAt + 1, compactAt + 1 + rnd.Int64N(final-compactAt), final + 1} {
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		conn := ctlConns[rnd.IntN(len(ctlConns))]
		// prev_kv of an event at the compact revision itself is gone
		// with the compaction (as in etcd), so that watch goes without.
		withPrev := from > compactAt
		resps, err := robust.Collect(rctx, conn, robust.WatchSpec{Key: "\x00", End: "\x00", Start: from, PrevKV: withPrev}, final, 30*time.Second)
		rcancel()
		if err != nil {
			t.Errorf("watch from revision %d after compacting at %d: %v", from, compactAt, err)
			continue
		}
		want := full
		if !withPrev {
			want = robust.WithoutPrev(full)
		}
		report(fmt.Sprintf("watch from revision %d after compacting at %d", from, compactAt), robust.CheckWatch(resps, want, from, final))
	}
	if err := robustWatchCompacted(ctx, ctlConns[0], compactAt-1, compactAt); err != nil {
		wv++
		t.Errorf("%v", err)
	}
	t.Logf("SUMMARY %s: %d rounds, %d operations (%d checked by porcupine, %d rounds not checked in time), %d faults injected, %d linearizability violations; final revision %d, %d events; %d watch-guarantee violations",
		t.Name(), rounds, totalOps, totalChecked, unknownChecks, faults, violations, final, len(full), wv)
}

// robustWatchCompacted checks that a watch from rev (below the compaction at
// compactAt) is answered created, then canceled with compact_revision
// compactAt.
func robustWatchCompacted(ctx context.Context, conn *grpc.ClientConn, rev, compactAt int64) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	stream, err := pb.NewWatchClient(conn).Watch(ctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: rev}}}); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("watch from compacted revision %d: %v before the compaction notice", rev, err)
		}
		if len(resp.Events) > 0 {
			return fmt.Errorf("watch from compacted revision %d: got events (first at %d) instead of a compaction notice", rev, resp.Events[0].Kv.ModRevision)
		}
		if resp.Canceled {
			if resp.CompactRevision != compactAt {
				return fmt.Errorf("watch from compacted revision %d: canceled with compact_revision %d, want %d (%q)", rev, resp.CompactRevision, compactAt, resp.CancelReason)
			}
			return nil
		}
	}
}

func kindCounts(s *robust.Stats) string {
	var parts []string
	for k := robust.OpGet; k <= robust.OpLeaseGrant; k++ {
		if n := s.ByKind[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n))
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func orNone(s string) string {
	if s == "" {
		return "no fault"
	}
	return s
}

func shortReasons(why []string) string {
	count := map[string]int{}
	for _, w := range why {
		if len(w) > 80 {
			w = w[:80] + "…"
		}
		count[w]++
	}
	var out []string
	for w, n := range count {
		out = append(out, fmt.Sprintf("%d× %s", n, w))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}
