package conformance

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// TestRobustSharedChaos: several shimd processes on one PostgreSQL or MySQL
// store must behave as one etcd while everything goes wrong at once.
// Clients (gets, ranges, puts, CAS txns, deletes, lease grants, and reads
// at past revisions) and watchers are spread over the processes; during
// each round physical compactions near the head run every 100-300 ms
// through random processes, and, in random order, one process is frozen
// (SIGSTOP) for 1-2 s (longer than the gap between compactions, so that it
// wakes up behind them), one is killed -9 and restarted, and every
// database connection of the store is killed. Process 0 is never frozen or
// killed: a watcher from revision 1 on it records the log (compactions are
// kept at or below what it has received, so it can always resume).
//
// Checked:
//   - each round's history, compactions included, with porcupine against
//     etcd's KV model with compaction (a read below the compact revision
//     answers compacted, one above the head future, others the keys then);
//   - at each round's end, every process's keys against the log replayed;
//   - the log: gapless, consistent (versions, create revisions, prev_kv);
//     every acknowledged write in it at its revision;
//   - every watcher against etcd's guarantees (ordered, unique, atomic,
//     reliable, resumable, bookmarkable, no event before its start): one
//     per process staying there, one per process hopping to the next
//     process every second (resuming after its last revision: a past one,
//     on another process), and watches opened during the load at random
//     past revisions on random processes. A watch may be canceled as
//     compacted only if it still needed a revision below a compaction that
//     was requested; it then resumes from the compact revision;
//   - at the end, on every process: the compact revision is the same,
//     watches from it and above deliver the log, and one from below it is
//     canceled with it.
//
// Knobs: SHIMD_ROBUST_CHAOS_ROUNDS (8), SHIMD_ROBUST_CHAOS_ROUND_SECONDS
// (6), SHIMD_ROBUST_CHAOS_PROCS (3), SHIMD_ROBUST_CLIENTS (8),
// SHIMD_ROBUST_SEED (random) for the choices of faults and operations.
func TestRobustSharedChaos(t *testing.T) {
	requireRobust(t)
	for _, b := range harness.Backends() {
		if !b.IsShared() {
			continue
		}
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			requireRealSUT(t)
			sharedChaosRun(t, b)
		})
	}
}

// chaos is the state of one run that the fault goroutines share.
type chaos struct {
	procs []*robust.Proc
	conns []*grpc.ClientConn // control: one per process
	logW  *robust.Watcher

	mu        sync.Mutex
	down      []bool // frozen or restarting: no compactions or new watches through it
	frozen    int    // processes frozen now
	comps     []robust.Compaction
	compactOK int64 // highest compaction acknowledged
	faults    map[string]int
	reopened  []reopenedWatch
	notes     []string // this round's major faults
}

type reopenedWatch struct {
	proc         int
	from, target int64
	resps        []robust.WatchResp
	err          error
}

func (c *chaos) count(kind string, n int) {
	c.mu.Lock()
	c.faults[kind] += n
	c.mu.Unlock()
}

func (c *chaos) note(s string) {
	c.mu.Lock()
	c.notes = append(c.notes, s)
	c.mu.Unlock()
}

func (c *chaos) setDown(i int, down bool) {
	c.mu.Lock()
	c.down[i] = down
	c.mu.Unlock()
}

// pickUp is a random process that is neither frozen nor restarting (-1 if
// none is).
func (c *chaos) pickUp(rnd *rand.Rand) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var up []int
	for i, d := range c.down {
		if !d {
			up = append(up, i)
		}
	}
	if len(up) == 0 {
		return -1
	}
	return up[rnd.IntN(len(up))]
}

func (c *chaos) head(ctx context.Context, i int) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := pb.NewKVClient(c.conns[i]).Range(ctx, &pb.RangeRequest{Key: []byte("robust/head")}, grpc.WaitForReady(true))
	if err != nil {
		return 0, err
	}
	return r.Header.Revision, nil
}

// compact compacts at rev through process i, recording the request (for
// the watch checks) and, when h is set, the operation (for porcupine).
func (c *chaos) compact(ctx context.Context, i int, h *robust.History, client int, rev int64) robust.Response {
	c.mu.Lock()
	c.comps = append(c.comps, robust.Compaction{Rev: rev, Call: time.Now()})
	c.mu.Unlock()
	if h == nil {
		h = robust.NewHistory()
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp := robust.Compact(cctx, c.conns[i], h, client, rev)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case resp.Unknown:
		c.faults["compactions of unknown outcome"]++
	case resp.Compacted:
		c.faults["compactions refused as compacted"]++
	case resp.FutureRev:
		c.faults["compactions refused as future"]++
	default:
		c.faults["compactions"]++
		c.compactOK = max(c.compactOK, rev)
		if c.frozen > 0 {
			c.faults["compactions while a process was frozen"]++
		}
	}
	return resp
}

// compactLoop compacts near the head every 100-300 ms until ctx ends, never
// above the log watcher's last event (so that it can always resume, and
// with prev_kv).
func (c *chaos) compactLoop(ctx context.Context, rnd *rand.Rand, h *robust.History, client int) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(100+rnd.IntN(200)) * time.Millisecond):
		}
		i := c.pickUp(rnd)
		if i < 0 {
			continue
		}
		head, err := c.head(ctx, i)
		if err != nil {
			continue
		}
		rev := min(head-rnd.Int64N(9), c.logW.Last())
		if rev < 1 {
			continue
		}
		c.compact(ctx, i, h, client, rev)
	}
}

// reopenLoop opens, every 300-600 ms until ctx ends, a watch at a random
// past revision (from the last acknowledged compaction to the head, or
// just below the compaction) on a random process, and follows it to the
// head of when it was opened.
func (c *chaos) reopenLoop(ctx context.Context, rnd *rand.Rand) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(300+rnd.IntN(300)) * time.Millisecond):
		}
		i := c.pickUp(rnd)
		if i < 0 {
			continue
		}
		head, err := c.head(ctx, i)
		if err != nil {
			continue
		}
		c.mu.Lock()
		lo := max(c.compactOK, 1)
		c.mu.Unlock()
		from := lo + rnd.Int64N(max(head-lo, 0)+1)
		if lo > 1 && rnd.IntN(4) == 0 {
			from = lo - 1 - rnd.Int64N(min(lo-1, 20)) // compacted
		}
		w := robust.StartWatcher(ctx, fmt.Sprintf("reopened on process %d from %d", i, from), c.conns[i],
			robust.WatchSpec{Key: "\x00", End: "\x00", Start: from, PrevKV: true, ProgressEvery: 100 * time.Millisecond})
		err = w.WaitRev(head, 5*time.Second)
		resps := w.Stop()
		if ctx.Err() != nil && err != nil {
			err = fmt.Errorf("round ended: %w", err)
		}
		c.mu.Lock()
		c.reopened = append(c.reopened, reopenedWatch{proc: i, from: from, target: head, resps: resps, err: err})
		c.faults["watches reopened at past revisions"]++
		if w.Compacted() > 0 {
			c.faults["reopened watches canceled as compacted"]++
		}
		c.mu.Unlock()
	}
}

// freeze stops process p (SIGSTOP) for d. A process frozen inside a write
// transaction holds its database locks, and every other process waits
// (MariaDB especially); then, after 400 ms without a compaction, its
// database connections are killed, as a database server would end a dead
// client's, so that the others compact past it while it is frozen.
func (c *chaos) freeze(ctx context.Context, st *harness.Store, p int, d time.Duration) error {
	c.mu.Lock()
	c.down[p] = true
	c.frozen++
	before := c.faults["compactions"]
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.down[p] = false
		c.frozen--
		c.mu.Unlock()
	}()
	if err := c.procs[p].Freeze(); err != nil {
		return fmt.Errorf("freeze process %d: %w", p, err)
	}
	start := time.Now()
	killed := ""
	select {
	case <-time.After(400 * time.Millisecond):
	case <-ctx.Done():
	}
	c.mu.Lock()
	stuck := c.faults["compactions"] == before
	c.mu.Unlock()
	if stuck && ctx.Err() == nil {
		kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := killProcDBConns(kctx, st, c.procs[p].Pid())
		cancel()
		if err != nil && ctx.Err() == nil {
			_ = c.procs[p].Thaw()
			return fmt.Errorf("kill the database connections of frozen process %d: %w", p, err)
		}
		c.count("frozen processes' database connections killed", n)
		killed = fmt.Sprintf(", its %d database connections killed", n)
	}
	select {
	case <-time.After(time.Until(start.Add(d))):
	case <-ctx.Done():
	}
	if err := c.procs[p].Thaw(); err != nil {
		return fmt.Errorf("thaw process %d: %w", p, err)
	}
	c.mu.Lock()
	during := c.faults["compactions"] - before
	c.mu.Unlock()
	c.count("freezes (SIGSTOP)", 1)
	c.note(fmt.Sprintf("process %d frozen %v%s (%d compactions meanwhile)", p, d.Round(time.Millisecond), killed, during))
	return nil
}

// killProcDBConns ends the database connections of the shimd process pid
// only: the sessions of the store whose client port is one of pid's TCP
// sockets (from /proc).
func killProcDBConns(ctx context.Context, st *harness.Store, pid int) (int, error) {
	ports, err := procTCPPorts(pid)
	if err != nil {
		return 0, err
	}
	db := st.Admin()
	switch st.Backend.Kind {
	case harness.KindPostgres:
		rows, err := db.QueryContext(ctx, `SELECT pid, client_port FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()`, st.Name)
		if err != nil {
			return 0, err
		}
		var victims []int64
		for rows.Next() {
			var bpid int64
			var port sql.NullInt64
			if err := rows.Scan(&bpid, &port); err != nil {
				rows.Close()
				return 0, err
			}
			if port.Valid && ports[int(port.Int64)] {
				victims = append(victims, bpid)
			}
		}
		rows.Close()
		n := 0
		for _, v := range victims {
			var ok bool
			if err := db.QueryRowContext(ctx, `SELECT pg_terminate_backend($1)`, v).Scan(&ok); err != nil {
				return n, err
			}
			if ok {
				n++
			}
		}
		return n, nil
	case harness.KindMySQL:
		rows, err := db.QueryContext(ctx, `SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()`, st.Name)
		if err != nil {
			return 0, err
		}
		var victims []int64
		for rows.Next() {
			var id int64
			var host string
			if err := rows.Scan(&id, &host); err != nil {
				rows.Close()
				return 0, err
			}
			if i := strings.LastIndexByte(host, ':'); i >= 0 {
				if port, err := strconv.Atoi(host[i+1:]); err == nil && ports[port] {
					victims = append(victims, id)
				}
			}
		}
		rows.Close()
		n := 0
		for _, id := range victims {
			// An error is a connection gone meanwhile.
			if _, err := db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10)); err == nil {
				n++
			}
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s: no database connections", st.Backend.Name)
}

// procTCPPorts is the set of local ports of pid's TCP sockets.
func procTCPPorts(pid int) (map[int]bool, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	ports := map[int]bool{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			local := fields[1]
			if port, err := strconv.ParseInt(local[strings.LastIndexByte(local, ':')+1:], 16, 32); err == nil {
				ports[int(port)] = true
			}
		}
	}
	return ports, nil
}

// majorFaults freezes a process, kills one -9 and kills the store's
// database connections, in random order, spread over the round.
func (c *chaos) majorFaults(ctx context.Context, st *harness.Store, rnd *rand.Rand, roundDur time.Duration) error {
	kinds := []string{"freeze", "kill9", "db-conns"}
	rnd.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	start := time.Now()
	for k, kind := range kinds {
		at := time.Duration(float64(roundDur) * (0.1 + 0.3*float64(k) + 0.1*rnd.Float64()))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(start.Add(at))):
		}
		// Process 0 keeps the log watcher: never frozen or killed.
		p := 1 + rnd.IntN(len(c.procs)-1)
		switch kind {
		case "freeze":
			d := time.Second + time.Duration(rnd.Int64N(int64(time.Second)))
			if err := c.freeze(ctx, st, p, d); err != nil {
				return err
			}
		case "kill9":
			c.setDown(p, true)
			t0 := time.Now()
			c.procs[p].Kill()
			err := c.procs[p].Start()
			c.setDown(p, false)
			if err != nil {
				return fmt.Errorf("restart process %d after kill -9: %w", p, err)
			}
			c.count("kill -9 and restart", 1)
			c.note(fmt.Sprintf("process %d killed -9, back in %v", p, time.Since(t0).Round(time.Millisecond)))
		case "db-conns":
			kctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			n, err := st.KillConnections(kctx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("kill database connections: %w", err)
			}
			c.count("database connection kills", 1)
			c.count("database connections killed", n)
			c.note(fmt.Sprintf("%d database connections killed", n))
		}
	}
	return nil
}

func sharedChaosRun(t *testing.T, b harness.Backend) {
	rounds := robustEnvInt("SHIMD_ROBUST_CHAOS_ROUNDS", 8)
	roundDur := time.Duration(robustEnvFloat("SHIMD_ROBUST_CHAOS_ROUND_SECONDS", 6) * float64(time.Second))
	nprocs := max(2, robustEnvInt("SHIMD_ROBUST_CHAOS_PROCS", 3))
	clients := robustEnvInt("SHIMD_ROBUST_CLIENTS", 8)
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("SHIMD_ROBUST_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (SHIMD_ROBUST_SEED), %d rounds of %v, %d processes, %d clients", seed, rounds, roundDur, nprocs, clients)
	started := time.Now()

	st := newStore(t, b)
	c := &chaos{faults: map[string]int{}, down: make([]bool, nprocs)}
	for i := 0; i < nprocs; i++ {
		c.procs = append(c.procs, robustProc(t, st, fmt.Sprintf("shimd%d", i)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, p := range c.procs {
		c.conns = append(c.conns, robustDial(t, p))
	}
	var clientConns []*grpc.ClientConn
	for i := 0; i < clients; i++ {
		clientConns = append(clientConns, robustDial(t, c.procs[i%nprocs]))
	}
	all := robust.WatchSpec{Key: "\x00", End: "\x00", Start: 1, PrevKV: true, ProgressEvery: 250 * time.Millisecond}
	c.logW = robust.StartWatcher(ctx, "log (process 0)", robustDial(t, c.procs[0]), all)
	// Watchers under test: one staying on each process, one hopping from
	// process to process every second.
	var watchers []*robust.Watcher
	for i, p := range c.procs {
		watchers = append(watchers, robust.StartWatcher(ctx, fmt.Sprintf("staying on process %d", i), robustDial(t, p), all))
		var hops []*grpc.ClientConn
		for j := range c.procs {
			hops = append(hops, robustDial(t, c.procs[(i+j)%nprocs]))
		}
		hop := all
		hop.HopEvery = time.Second
		watchers = append(watchers, robust.StartWatcherOn(ctx, fmt.Sprintf("hopping from process %d", i), hops, hop))
	}

	var (
		totalOps, totalChecked, violations, unknownChecks, stateViolations int
		past, pastCompacted                                                int
		acked                                                              []robust.Op
	)
	for round := 0; round < rounds; round++ {
		keys := make([]string, 5)
		for i := range keys {
			keys[i] = fmt.Sprintf("lin/r%02d/k%d", round, i)
		}
		r0 := robustBarrier(t, c.conns)
		if err := c.logW.WaitRev(r0, 30*time.Second); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// Compact at the round's first revision: the model starts with the
		// compact revision known, and nothing before the round readable.
		// (Retried while its outcome is unknown: a database connection
		// killed in the last round may fail the first try.)
		for try := 0; ; try++ {
			r := c.compact(ctx, 0, nil, 0, r0)
			if !r.Unknown && !r.FutureRev {
				break
			}
			if try == 2 {
				t.Fatalf("round %d: compact at the barrier revision %d: %s", round, r0, robust.DescribeOp(robust.Request{Kind: robust.OpCompact, Rev: r0}, r))
			}
		}
		h := robust.NewHistory()
		w := robust.Workload{
			Keys: keys, Clients: clients, Duration: roundDur, MaxOps: 2000,
			OpTimeout: 3 * time.Second, Think: 12 * time.Millisecond, ErrorPause: 100 * time.Millisecond,
			Seed: seed + uint64(round), PastReads: 40, PastWindow: 40,
		}
		firstClient := round * (clients + 1)
		c.mu.Lock()
		c.notes = nil
		c.mu.Unlock()
		rctx, rcancel := context.WithCancel(ctx)
		var fwg sync.WaitGroup
		var faultErr error
		fwg.Add(3)
		go func() {
			defer fwg.Done()
			c.compactLoop(rctx, rand.New(rand.NewPCG(seed, uint64(round)*4+1)), h, firstClient+clients)
		}()
		go func() {
			defer fwg.Done()
			c.reopenLoop(rctx, rand.New(rand.NewPCG(seed, uint64(round)*4+2)))
		}()
		go func() {
			defer fwg.Done()
			faultErr = c.majorFaults(rctx, st, rand.New(rand.NewPCG(seed, uint64(round)*4+3)), roundDur)
		}()
		stats := w.Run(ctx, clientConns, h, firstClient)
		rcancel()
		fwg.Wait()
		if faultErr != nil {
			t.Fatalf("round %d: fault: %v", round, faultErr)
		}
		for i, p := range c.procs {
			if !p.Running() {
				t.Fatalf("round %d: process %d exited: %v\n%s", round, i, p.ExitErr(), p.Output())
			}
		}
		final := robustBarrier(t, c.conns)
		if err := c.logW.WaitRev(final, 30*time.Second); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		log := robust.Events(c.logW.Responses())
		prefix := fmt.Sprintf("lin/r%02d/", round)
		var roundLog []robust.Event
		for _, e := range log {
			if e.Mod > r0 && e.Mod <= final && strings.HasPrefix(e.Key, prefix) {
				roundLog = append(roundLog, e)
			}
		}
		ops := h.Ops()
		patched, pst := robust.Patch(ops, roundLog)
		t0 := time.Now()
		res := robust.Check(robust.State{Rev: r0, Compact: r0}, patched, 60*time.Second, t.Name())
		totalOps += len(ops)
		if res.Result != porcupine.Unknown {
			totalChecked += len(patched)
		}
		for _, op := range ops {
			if !op.Resp.Unknown && op.Req.Kind != robust.OpCompact {
				acked = append(acked, op)
			}
		}
		past += stats.Past
		pastCompacted += stats.PastCompacted
		c.mu.Lock()
		notes := strings.Join(c.notes, "; ")
		c.mu.Unlock()
		t.Logf("round %d: revisions %d..%d, %d ops %v, %d at past revisions (%d compacted); %s; %s; porcupine: %s on %d ops in %v",
			round, r0, final, len(ops), kindCounts(stats), stats.Past, stats.PastCompacted, pst, notes, res.Result, len(patched), time.Since(t0).Round(time.Millisecond))
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
		// Every process's keys at the barrier are the log's.
		want := robust.Replay(log, final)
		for i, conn := range c.conns {
			if msg := chaosStateDiff(ctx, conn, want, final); msg != "" {
				stateViolations++
				t.Errorf("round %d: process %d at the barrier revision %d: %s", round, i, final, msg)
			}
		}
	}

	// The log and the watch guarantees over the whole run.
	final := robustBarrier(t, c.conns)
	if err := c.logW.WaitRev(final, 30*time.Second); err != nil {
		t.Fatalf("%v", err)
	}
	logResps := c.logW.Stop()
	full := robust.Events(logResps)
	wv := 0
	report := func(what string, v *robust.Violations) {
		for _, s := range v.List() {
			wv++
			t.Errorf("%s: %s", what, s)
		}
	}
	// The log watcher is never compacted (compactions stay at or below its
	// last event), so any cancel of it counts.
	report("log watcher", robust.CheckWatch(logResps, nil, 1, final))
	report("the log", robust.CheckLog(full, 2, final, true))
	missingLines, missing := robust.AckedMissing(acked, full)
	for _, s := range missingLines {
		t.Errorf("%s", s)
	}
	wv += missing
	c.mu.Lock()
	comps := append([]robust.Compaction(nil), c.comps...)
	reopened := c.reopened
	c.mu.Unlock()
	check := func(what string, resps []robust.WatchResp, from, upTo int64) {
		var log []robust.Event
		for _, e := range full {
			if e.Mod <= upTo {
				log = append(log, e)
			}
		}
		v := robust.CheckWatchWith(resps, robust.WatchCheck{Log: log, Start: from, Final: upTo, Compactions: comps})
		if !v.Empty() {
			what += " (responses: " + chaosSave(t, what, robust.DumpWatch(resps)) + ")"
		}
		report(what, v)
	}
	for _, w := range watchers {
		if err := w.WaitRev(final, 30*time.Second); err != nil {
			t.Errorf("%v", err)
		}
		resps := w.Stop()
		n, why := w.Reconnects()
		ev, prog, streams := robust.Count(resps)
		t.Logf("watcher %s: %d events, %d progress notifications, %d streams (%d resumes, %d after a compaction: %s)",
			w.Name, ev, prog, streams, n, w.Compacted(), shortReasons(why))
		if prog == 0 {
			t.Errorf("watcher %s: no progress notification answered in the whole run", w.Name)
		}
		check("watcher "+w.Name, resps, 1, final)
	}
	incomplete := 0
	for _, r := range reopened {
		// Checked up to what it got to: a watch that did not reach its
		// target (its process frozen or killed, the round over) must still
		// be right as far as it went.
		// (A watch that reached it went at least that far.)
		if r.err != nil {
			incomplete++
		}
		var upTo int64
		for _, x := range r.resps {
			if x.Progress {
				upTo = max(upTo, x.Rev)
			}
			for _, e := range x.Events {
				upTo = max(upTo, e.Mod)
			}
		}
		check(fmt.Sprintf("watch reopened on process %d from %d (to %d)", r.proc, r.from, r.target), r.resps, r.from, upTo)
	}
	t.Logf("%d watches reopened at past revisions, %d did not reach their target revision in time (checked as far as they went)", len(reopened), incomplete)

	// After the load: every process agrees on the compact revision, watches
	// from it and above deliver the log, one from below is canceled with it.
	compactRev, err := chaosCompactRev(ctx, c.conns[0], final)
	if err != nil {
		t.Fatalf("find the compact revision: %v", err)
	}
	rnd := rand.New(rand.NewPCG(seed, 1<<40))
	for i, conn := range c.conns {
		for _, rev := range []int64{compactRev - 1, compactRev} {
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := pb.NewKVClient(conn).Range(rctx, &pb.RangeRequest{Key: []byte("lin/"), RangeEnd: []byte("lin0"), Revision: rev}, grpc.WaitForReady(true))
			rcancel()
			compacted := rpctypes.Error(err) == rpctypes.ErrCompacted
			if err != nil && !compacted || compacted != (rev < compactRev) {
				wv++
				t.Errorf("process %d: read at revision %d with the store compacted at %d: %v", i, rev, compactRev, err)
			}
		}
		from := []int64{compactRev, compactRev + 1 + rnd.Int64N(max(final-compactRev, 1)), final + 1}
		for _, f := range from {
			if f > final+1 {
				continue
			}
			withPrev := f > compactRev
			rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
			resps, err := robust.Collect(rctx, conn, robust.WatchSpec{Key: "\x00", End: "\x00", Start: f, PrevKV: withPrev}, final, 30*time.Second)
			rcancel()
			if err != nil {
				wv++
				t.Errorf("process %d: watch from %d (compacted at %d): %v", i, f, compactRev, err)
				continue
			}
			want := full
			if !withPrev {
				want = robust.WithoutPrev(full)
			}
			report(fmt.Sprintf("process %d: watch from %d (compacted at %d)", i, f, compactRev), robust.CheckWatch(resps, want, f, final))
		}
		if compactRev > 1 {
			if err := robustWatchCompacted(ctx, conn, compactRev-1-rnd.Int64N(min(compactRev-1, 50)), compactRev); err != nil {
				wv++
				t.Errorf("process %d: %v", i, err)
			}
		}
	}

	if wv+violations+stateViolations > 0 {
		t.Logf("for a look by hand: the log watcher's responses %s; the compactions requested %s",
			chaosSave(t, "log", robust.DumpWatch(logResps)), chaosSave(t, "compactions", fmt.Sprint(comps)))
		for i, p := range c.procs {
			t.Logf("process %d's output (since its last start): %s", i, chaosSave(t, fmt.Sprintf("process%d", i), p.Output()))
		}
	}
	c.mu.Lock()
	var fs []string
	for k, n := range c.faults {
		fs = append(fs, fmt.Sprintf("%s %d", k, n))
	}
	c.mu.Unlock()
	sort.Strings(fs)
	t.Logf("SUMMARY %s: %d rounds in %v, %d processes; %d operations (%d checked by porcupine, %d at past revisions of which %d compacted, %d rounds not checked in time); faults: %s; %d linearizability violations, %d process-state violations, %d watch-guarantee violations; final revision %d, compacted at %d, %d events",
		t.Name(), rounds, time.Since(started).Round(time.Second), nprocs, totalOps, totalChecked, past, pastCompacted, unknownChecks,
		strings.Join(fs, ", "), violations, stateViolations, wv, final, compactRev, len(full))
}

// chaosSave writes a record of the run next to porcupine's reports and
// returns its path.
func chaosSave(t *testing.T, what, text string) string {
	dir := filepath.Join(os.TempDir(), "shimd-robust")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err.Error()
	}
	safe := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name() + "-" + what)
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.txt", safe, time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return err.Error()
	}
	return path
}

// chaosStateDiff compares the "lin/" keys a process answers with want
// (the log replayed up to rev, which must be the header revision).
func chaosStateDiff(ctx context.Context, conn *grpc.ClientConn, want []robust.KV, rev int64) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("lin/"), RangeEnd: []byte("lin0")}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Sprintf("range: %v", err)
	}
	var w []robust.KV
	for _, kv := range want {
		if strings.HasPrefix(kv.Key, "lin/") {
			w = append(w, kv)
		}
	}
	got := robust.FromPB(r.Kvs)
	var diffs []string
	if r.Header.Revision != rev {
		diffs = append(diffs, fmt.Sprintf("header revision %d", r.Header.Revision))
	}
	gm, wm := map[string]robust.KV{}, map[string]robust.KV{}
	for _, kv := range got {
		gm[kv.Key] = kv
	}
	for _, kv := range w {
		wm[kv.Key] = kv
		if g, ok := gm[kv.Key]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing (log: %v)", kv.Key, kv))
		} else if g != kv {
			diffs = append(diffs, fmt.Sprintf("%s is %v (log: %v)", kv.Key, g, kv))
		}
	}
	for _, kv := range got {
		if _, ok := wm[kv.Key]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s=%s c%d m%d v%d is live, the log has it deleted", kv.Key, kv.Value, kv.Create, kv.Mod, kv.Ver))
		}
	}
	return strings.Join(diffs, "; ")
}

// chaosCompactRev finds the compact revision (the oldest readable one, at
// most final) by bisection with reads at past revisions.
func chaosCompactRev(ctx context.Context, conn *grpc.ClientConn, final int64) (int64, error) {
	readable := func(rev int64) (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := pb.NewKVClient(conn).Range(rctx, &pb.RangeRequest{Key: []byte("robust/head"), Revision: rev}, grpc.WaitForReady(true))
		if rpctypes.Error(err) == rpctypes.ErrCompacted {
			return false, nil
		}
		return err == nil, err
	}
	lo, hi := int64(1), final // the answer is in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo)/2
		ok, err := readable(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}
