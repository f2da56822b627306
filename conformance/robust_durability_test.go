package conformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// TestRobustDurabilityKill9Cycles kills shimd (SQLite) with kill -9 at a
// random moment under load, SHIMD_ROBUST_CYCLES times (default 50), and
// restarts it on the same port and data dir. Four writers each put new keys,
// overwrite a key of their own and write a pair of keys in one txn. After
// every restart:
//
//   - every acknowledged put of the cycle reads back with its value and at
//     its revision; at most the one put in flight per writer is extra;
//   - each writer's own key holds its last acknowledged value (at that
//     revision) or the value of the put in flight;
//   - each txn pair is intact: both keys with one value and one revision;
//   - the revision is at or above every acknowledged one.
//
// At the end every key of every cycle is checked again, and the log (a watch
// from revision 1) is gapless, replays consistently and holds every
// acknowledged write at its revision.
func TestRobustDurabilityKill9Cycles(t *testing.T) {
	requireRobust(t)
	cycles := robustEnvInt("SHIMD_ROBUST_CYCLES", 50)
	b := harness.Backends()[0]
	if b.Kind != harness.KindSQLite {
		t.Fatalf("first backend is %s, expected sqlite", b.Name)
	}
	p := robustProc(t, newStore(t, b), "shimd")
	const writers = 4
	conns := make([]*grpc.ClientConn, writers)
	for i := range conns {
		conns[i] = robustDial(t, p)
	}
	ctl := robustDial(t, p)
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	start := time.Now()

	var all []durWrite
	var maxAcked int64
	own := make([]durOwn, writers)   // each writer's own key: last acked and in-flight value
	pairs := make([]durOwn, writers) // each writer's txn pair
	totalAcked, totalInFlight := 0, 0
	for cycle := 0; cycle < cycles; cycle++ {
		killAfter := time.Duration(100+rnd.IntN(400)) * time.Millisecond
		res := durCycle(t, p, conns, cycle, killAfter, own, pairs)
		all = append(all, res.acked...)
		for _, w := range res.acked {
			maxAcked = max(maxAcked, w.rev)
		}
		totalAcked += len(res.acked)
		totalInFlight += res.inFlight
		if err := p.Start(); err != nil {
			t.Fatalf("cycle %d: restart after kill -9: %v", cycle, err)
		}
		durVerify(t, ctl, fmt.Sprintf("cycle %d", cycle), fmt.Sprintf("dur9/c%03d/", cycle), res.acked, writers, maxAcked, own, pairs)
		if t.Failed() {
			t.Fatalf("cycle %d: stopping after the first failed cycle (%d acknowledged writes in it, killed after %v)", cycle, len(res.acked), killAfter)
		}
	}
	durVerify(t, ctl, "after all cycles", "dur9/c", all, writers*cycles, maxAcked, own, pairs)

	// The log from revision 1.
	final := robustBarrier(t, []*grpc.ClientConn{ctl})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resps, err := robust.Collect(ctx, ctl, robust.WatchSpec{Key: "\x00", End: "\x00", Start: 1, PrevKV: true}, final, 60*time.Second)
	if err != nil {
		t.Fatalf("watch from revision 1: %v", err)
	}
	log := robust.Events(resps)
	for _, s := range robust.CheckLog(log, 2, final, true).List() {
		t.Errorf("log: %s", s)
	}
	at := map[int64][]robust.Event{}
	for _, e := range log {
		at[e.Mod] = append(at[e.Mod], e)
	}
	missing := 0
	for _, w := range all {
		found := false
		for _, e := range at[w.rev] {
			found = found || !e.Delete && e.Key == w.key && e.Value == w.val
		}
		if !found {
			if missing++; missing <= 5 {
				t.Errorf("acknowledged put %s=%s at revision %d is not in the log (there: %v)", w.key, w.val, w.rev, at[w.rev])
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d acknowledged writes are not in the log", missing)
	}
	t.Logf("SUMMARY %d kill -9 cycles in %v: %d writes acknowledged, %d in flight at the kills, final revision %d, %d events in the log; %d process starts",
		cycles, time.Since(start).Round(time.Millisecond), totalAcked, totalInFlight, final, len(log), p.Starts())
}

type durWrite struct {
	key, val string
	rev      int64
}

// durOwn is a key (or txn pair) a writer overwrites: the last acknowledged
// write and the one in flight when the server died.
type durOwn struct {
	acked    durWrite
	inFlight string
}

type durResult struct {
	acked    []durWrite
	inFlight int
}

func durCycle(t *testing.T, p *robust.Proc, conns []*grpc.ClientConn, cycle int, killAfter time.Duration, own, pairs []durOwn) durResult {
	t.Helper()
	var (
		mu  sync.Mutex
		res durResult
		wg  sync.WaitGroup
	)
	// A writer reports its first write: nil once acknowledged, or its error.
	// The first write waits for the connection to be ready, as the server was
	// just restarted and a connection may still be in its reconnect backoff;
	// later writes fail fast, which is how a writer learns of the kill.
	started := make(chan error, len(conns))
	for w := range conns {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			kv := pb.NewKVClient(conns[w])
			for n := 0; ; n++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				opts := []grpc.CallOption{grpc.WaitForReady(n == 0)}
				var err error
				switch n % 4 {
				case 1: // overwrite the writer's own key
					key, val := fmt.Sprintf("dur9/own/w%d", w), fmt.Sprintf("c%d-n%d", cycle, n)
					mu.Lock()
					own[w].inFlight = val
					mu.Unlock()
					var r *pb.PutResponse
					if r, err = kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte(val)}, opts...); err == nil {
						mu.Lock()
						own[w] = durOwn{acked: durWrite{key, val, r.Header.Revision}}
						res.acked = append(res.acked, durWrite{key, val, r.Header.Revision})
						mu.Unlock()
					}
				case 3: // a pair of keys in one txn
					a, b, val := fmt.Sprintf("dur9/pair/w%d/a", w), fmt.Sprintf("dur9/pair/w%d/b", w), fmt.Sprintf("c%d-n%d", cycle, n)
					mu.Lock()
					pairs[w].inFlight = val
					mu.Unlock()
					var r *pb.TxnResponse
					r, err = kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{
						{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(a), Value: []byte(val)}}},
						{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(b), Value: []byte(val)}}},
					}}, opts...)
					if err == nil {
						mu.Lock()
						pairs[w] = durOwn{acked: durWrite{a, val, r.Header.Revision}}
						res.acked = append(res.acked, durWrite{a, val, r.Header.Revision}, durWrite{b, val, r.Header.Revision})
						mu.Unlock()
					}
				default: // a new key
					key := fmt.Sprintf("dur9/c%03d/w%d/%06d", cycle, w, n)
					var r *pb.PutResponse
					if r, err = kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte(durValue(key))}, opts...); err == nil {
						mu.Lock()
						res.acked = append(res.acked, durWrite{key, durValue(key), r.Header.Revision})
						mu.Unlock()
					}
				}
				cancel()
				if n == 0 {
					started <- err
				}
				if err != nil {
					mu.Lock()
					res.inFlight++
					mu.Unlock()
					return // the server is gone: stop, leaving this write in flight
				}
			}
		}(w)
	}
	for range conns {
		select {
		case err := <-started:
			if err != nil {
				t.Fatalf("cycle %d: a writer's first write failed: %v\n%s", cycle, err, p.Output())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("cycle %d: writers not acknowledged within 30 s\n%s", cycle, p.Output())
		}
	}
	time.Sleep(killAfter)
	if !p.Running() {
		t.Fatalf("cycle %d: shimd exited under load: %v\n%s", cycle, p.ExitErr(), p.Output())
	}
	p.Kill()
	wg.Wait()
	return res
}

func durValue(key string) string { return "value-of-" + key + strings.Repeat("-", 40) }

// durVerify reads prefix and the writers' own keys and pairs, and checks
// them against the acknowledged writes.
func durVerify(t *testing.T, conn *grpc.ClientConn, when, prefix string, acked []durWrite, maxExtra int, maxAcked int64, own, pairs []durOwn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv := pb.NewKVClient(conn)
	r, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte(prefix), RangeEnd: []byte(robustPrefixEnd(prefix))}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("%s: range %s: %v", when, prefix, err)
	}
	if r.Header.Revision < maxAcked {
		t.Errorf("%s: revision %d is below the highest acknowledged revision %d", when, r.Header.Revision, maxAcked)
	}
	have := map[string]robust.KV{}
	for _, kv := range robust.FromPB(r.Kvs) {
		have[kv.Key] = kv
		if kv.Value != durValue(kv.Key) || kv.Ver != 1 || kv.Create != kv.Mod {
			t.Errorf("%s: corrupt key %v", when, kv)
		}
	}
	lost, n := 0, 0
	for _, w := range acked {
		if !strings.HasPrefix(w.key, prefix) {
			continue
		}
		n++
		kv, ok := have[w.key]
		switch {
		case !ok:
			if lost++; lost <= 5 {
				t.Errorf("%s: acknowledged put %s (revision %d) is lost", when, w.key, w.rev)
			}
		case kv.Mod != w.rev:
			t.Errorf("%s: acknowledged put %s at revision %d reads at revision %d", when, w.key, w.rev, kv.Mod)
		}
	}
	if lost > 0 {
		t.Errorf("%s: %d of %d acknowledged puts lost", when, lost, n)
	}
	if extra := len(r.Kvs) - (n - lost); extra > maxExtra {
		t.Errorf("%s: %d keys that were never acknowledged; at most %d puts were in flight", when, extra, maxExtra)
	}
	// Own keys and txn pairs.
	for w := range own {
		get := func(key string) (robust.KV, bool) {
			g, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte(key)})
			if err != nil {
				t.Fatalf("%s: get %s: %v", when, key, err)
			}
			if len(g.Kvs) == 0 {
				return robust.KV{}, false
			}
			return robust.FromPB(g.Kvs)[0], true
		}
		checkOwn := func(what string, o durOwn, kv robust.KV, ok bool) {
			switch {
			case o.acked.key == "" && o.inFlight == "":
			case !ok:
				if o.acked.key != "" {
					t.Errorf("%s: %s: acknowledged %s=%s (revision %d) is lost", when, what, o.acked.key, o.acked.val, o.acked.rev)
				}
			case kv.Value == o.acked.val && o.acked.val != "":
				if kv.Mod != o.acked.rev {
					t.Errorf("%s: %s: %s=%s acknowledged at revision %d reads at %d", when, what, kv.Key, kv.Value, o.acked.rev, kv.Mod)
				}
			case kv.Value == o.inFlight:
				if kv.Mod <= o.acked.rev {
					t.Errorf("%s: %s: the write in flight (%s) reads at revision %d, not after the acknowledged %d", when, what, kv.Value, kv.Mod, o.acked.rev)
				}
			default:
				t.Errorf("%s: %s: %s=%s (revision %d); expected the acknowledged %q (revision %d) or the one in flight %q",
					when, what, kv.Key, kv.Value, kv.Mod, o.acked.val, o.acked.rev, o.inFlight)
			}
		}
		okv, ok := get(fmt.Sprintf("dur9/own/w%d", w))
		checkOwn("own key", own[w], okv, ok)
		a, okA := get(fmt.Sprintf("dur9/pair/w%d/a", w))
		bb, okB := get(fmt.Sprintf("dur9/pair/w%d/b", w))
		if okA != okB || a.Value != bb.Value || a.Mod != bb.Mod {
			t.Errorf("%s: txn pair of writer %d torn: a=%v (present %v), b=%v (present %v)", when, w, a, okA, bb, okB)
		}
		checkOwn("txn pair", pairs[w], a, okA)
		// The in-flight write is settled now: it either landed or not.
		for _, o := range []*durOwn{&own[w], &pairs[w]} {
			cur := a
			if o == &own[w] {
				cur = okv
			}
			if o.inFlight != "" && cur.Value == o.inFlight {
				o.acked = durWrite{cur.Key, cur.Value, cur.Mod}
			}
			o.inFlight = ""
		}
	}
}

func robustPrefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}
