package conformance

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

const mib = 1 << 20

// memWatch samples a process's RSS every 25 ms and keeps the maxima of
// VmRSS and RssAnon.
type memWatch struct {
	max, anon atomic.Int64
	stop      chan struct{}
	done      chan struct{}
}

func watchMem(pid int) *memWatch {
	m := &memWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(25 * time.Millisecond)
		defer t.Stop()
		for {
			if mem, err := robust.ReadMem(pid); err == nil {
				if mem.RSS > m.max.Load() {
					m.max.Store(mem.RSS)
				}
				if mem.Anon > m.anon.Load() {
					m.anon.Store(mem.Anon)
				}
			}
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memWatch) Stop() int64 {
	close(m.stop)
	<-m.done
	return m.max.Load()
}

func readMem(t *testing.T, p *robust.Proc) robust.Mem {
	t.Helper()
	m, err := robust.ReadMem(p.Pid())
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", p.Pid(), err)
	}
	return m
}

// TestRobustLargeRequest: requests of 100 MB (a put, a txn) are refused by
// gRPC with ResourceExhausted, since they exceed --max-request-bytes +
// 512 KiB, without shimd reading them into memory: its RSS peak (VmHWM)
// stays far below 100 MB above where it was. A request just under the gRPC
// limit but over --max-request-bytes gets etcd's "request is too large".
// shimd keeps serving throughout.
func TestRobustLargeRequest(t *testing.T) {
	requireRobust(t)
	b := harness.Backends()[0]
	const maxReq = 1 * mib
	p := robustProc(t, newStore(t, b), "shimd", "--max-request-bytes", fmt.Sprint(maxReq))
	conn := robustDial(t, p)
	kv := pb.NewKVClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("warm"), Value: make([]byte, 512<<10)}); err != nil {
		t.Fatal(err)
	}
	before := readMem(t, p)
	huge := make([]byte, 100*mib)
	_, _ = rand.Read(huge[:4096])
	for i, req := range []func() error{
		func() error { _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("huge"), Value: huge}); return err },
		func() error {
			_, err := kv.Txn(ctx, &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("huge"), Value: huge}}}}})
			return err
		},
		func() error { _, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("huge"), Value: huge}); return err },
	} {
		start := time.Now()
		err := req()
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("100 MB request #%d: got %v, want ResourceExhausted", i, err)
		}
		t.Logf("100 MB request #%d refused in %v: %v", i, time.Since(start).Round(time.Millisecond), err)
	}
	after := readMem(t, p)
	t.Logf("shimd memory: RSS %d MB -> %d MB, peak (VmHWM) %d MB -> %d MB", before.RSS/mib, after.RSS/mib, before.HWM/mib, after.HWM/mib)
	if grow := after.HWM - before.RSS; grow > 40*mib {
		t.Errorf("shimd's RSS peaked %d MB above its level before the 100 MB requests: it read them into memory", grow/mib)
	}
	// Between the two limits: etcd's own error.
	_, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("big"), Value: make([]byte, maxReq+100<<10)})
	if !errorIs(err, rpctypes.ErrGRPCRequestTooLarge) {
		t.Errorf("a put between --max-request-bytes and the gRPC limit: got %v, want %v", err, rpctypes.ErrGRPCRequestTooLarge)
	}
	if r, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("after"), Value: []byte("ok")}); err != nil {
		t.Errorf("shimd does not serve after the large requests: %v", err)
	} else if g, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("huge")}); err != nil || g.Count != 0 {
		t.Errorf("a refused request left a key behind: %v %v (revision %d)", g, err, r.Header.Revision)
	}
}

func errorIs(err, want error) bool {
	return err != nil && status.Code(err) == status.Code(want) && status.Convert(err).Message() == status.Convert(want).Message()
}

// stalledCatchUp, plus twice the time the writes took, bounds the stalled
// watcher's catch-up in TestRobustStalledWatch.
const stalledCatchUp = time.Minute

// TestRobustStalledWatch: a watch client stops reading while 500 MB of
// events (1 MB values; SHIMD_ROBUST_WATCH_MB) are written. shimd's memory
// must stay bounded (RSS < 200 MB over its level before), writes must not
// stall, a second watcher that reads must get everything, and when the
// stalled client reads again it must, as on etcd, catch up with every
// event, in order, or be cancelled by a compaction of its next revision
// (etcd's only reason to cancel a watch it accepted) — never a gap, an
// ended stream or another cancel — within stalledCatchUp plus twice the
// writes' time.
func TestRobustStalledWatch(t *testing.T) {
	requireRobust(t)
	b := harness.Backends()[0]
	totalMB := robustEnvInt("SHIMD_ROBUST_WATCH_MB", 500)
	p := robustProc(t, newStore(t, b), "shimd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kv := pb.NewKVClient(robustDial(t, p))
	r0, err := kv.Put(ctx, &pb.PutRequest{Key: []byte("warm"), Value: make([]byte, 1024)})
	if err != nil {
		t.Fatal(err)
	}
	first := r0.Header.Revision + 1

	// The stalled stream: created, then never read until the writes end.
	// Its context is its own, so that only the catch-up's deadline ends it.
	stalledConn := robustDial(t, p)
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	stalled, err := pb.NewWatchClient(stalledConn).Watch(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stalled.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key: []byte("big/"), RangeEnd: []byte("big0"), StartRevision: first}}}); err != nil {
		t.Fatal(err)
	}
	if cr, err := stalled.Recv(); err != nil || !cr.Created {
		t.Fatalf("stalled watch: created response %v, %v", cr, err)
	}
	// A watcher that keeps reading.
	reader := robust.StartWatcher(ctx, "reader", robustDial(t, p), robust.WatchSpec{Key: "big/", End: "big0", Start: first})

	time.Sleep(300 * time.Millisecond)
	before := readMem(t, p)
	mw := watchMem(p.Pid())
	value := make([]byte, mib)
	_, _ = rand.Read(value)
	var final int64
	var slowest time.Duration
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	writeErr := make(chan error, 2)
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < totalMB; i += 2 {
				t0 := time.Now()
				r, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(fmt.Sprintf("big/%04d", i)), Value: value})
				if err != nil {
					writeErr <- err
					return
				}
				mu.Lock()
				final = max(final, r.Header.Revision)
				slowest = max(slowest, time.Since(t0))
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(writeErr)
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	writeTime := time.Since(start)
	if err := reader.WaitRev(final, 2*time.Minute); err != nil {
		t.Errorf("the reading watcher: %v", err)
	}
	peak := mw.Stop()
	peakAnon := mw.anon.Load()
	after := readMem(t, p)
	t.Logf("%d MB written in %v (slowest put %v); shimd VmRSS %d MB before, peak %d MB while writing, %d MB after (VmHWM %d MB); anonymous (RssAnon) %d MB before, peak %d MB",
		totalMB, writeTime.Round(time.Millisecond), slowest.Round(time.Millisecond), before.RSS/mib, peak/mib, after.RSS/mib, after.HWM/mib, before.Anon/mib, peakAnon/mib)
	// The bound applies to anonymous memory: file pages of a mapped
	// database (etcd's bbolt, in the self-test) are the kernel's cache.
	grow, what := peakAnon-before.Anon, "anonymous memory (RssAnon)"
	if before.Anon == 0 {
		grow, what = peak-before.RSS, "RSS"
	}
	switch {
	case grow <= 200*mib:
	case harness.EnvBool(envSelfTest):
		// etcd keeps its recent raft entries in memory: no bound to hold it to.
		t.Logf("self-test: etcd's %s grew %d MB (not checked)", what, grow/mib)
	default:
		t.Errorf("the server's %s grew %d MB while %d MB of events were written past a stalled watcher (bound: 200 MB)", what, grow/mib, totalMB)
	}
	if slowest > 10*time.Second {
		t.Errorf("a put took %v: the stalled watcher holds up writes", slowest)
	}
	rresps := reader.Stop()
	if ev, _, _ := robust.Count(rresps); ev != totalMB {
		t.Errorf("the reading watcher got %d events, want %d", ev, totalMB)
	}
	for _, s := range robust.CheckWatch(rresps, nil, first, final).List() {
		t.Errorf("reading watcher: %s", s)
	}

	// The stalled client reads again: all events in order, or a cancel by
	// a compaction. Catching up reads the events back once, which costs
	// about what writing them did: the deadline follows the machine's speed.
	limit := stalledCatchUp + 2*writeTime
	mw = watchMem(p.Pid())
	next := first
	events := 0
	deadline := time.AfterFunc(limit, scancel)
	defer deadline.Stop()
	resumed := time.Now()
	outcome, ok := "", false
	for next <= final {
		resp, err := stalled.Recv()
		if err != nil {
			outcome = fmt.Sprintf("stream ended after %d of %d events in %v: %v", events, totalMB, time.Since(resumed).Round(time.Millisecond), err)
			if sctx.Err() != nil {
				outcome = fmt.Sprintf("neither caught up nor cancelled within %v: %s", limit.Round(time.Second), outcome)
			}
			break
		}
		if resp.Canceled {
			outcome = fmt.Sprintf("watch canceled after %d of %d events: %q (compact revision %d)", events, totalMB, resp.CancelReason, resp.CompactRevision)
			// etcd cancels a watch it accepted only when its next revision
			// is compacted, saying so with the compact revision.
			ok = resp.CompactRevision > next
			break
		}
		for _, e := range resp.Events {
			if e.Kv.ModRevision != next {
				t.Fatalf("stalled watcher resumed with a gap: event at revision %d, expected %d", e.Kv.ModRevision, next)
			}
			if len(e.Kv.Value) != mib {
				t.Fatalf("stalled watcher: event at revision %d has a %d-byte value", e.Kv.ModRevision, len(e.Kv.Value))
			}
			next++
			events++
		}
	}
	mw.Stop()
	t.Logf("catch-up: shimd's anonymous memory (RssAnon) peaked %d MB (%d MB before the writes)", mw.anon.Load()/mib, before.Anon/mib)
	if outcome == "" {
		outcome, ok = fmt.Sprintf("caught up with all %d events in %v", events, time.Since(resumed).Round(time.Millisecond)), true
	}
	if !ok {
		t.Errorf("the stalled watcher, once reading again: %s", outcome)
	} else {
		t.Logf("stalled watcher, once reading again: %s", outcome)
	}
	if !p.Running() {
		t.Fatalf("shimd exited: %v\n%s", p.ExitErr(), p.Output())
	}
}
