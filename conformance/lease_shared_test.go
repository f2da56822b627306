package conformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestLeaseShared checks, on the server under test only, leases on a store
// shared by two processes: A, and B, which polls the database only hourly so
// that nothing but its own requests tells it of A's grants and renewals
// (PostgreSQL's notifications may still wake it). Leases granted through A
// are kept alive, queried and listed through B:
//
//   - right after the grant: 1,000 leases, each kept alive through B as
//     soon as A acknowledged it; none may be refused, TimeToLive and
//     LeaseLeases on B agree with A, before and after revoking them (half
//     through each process);
//   - after renewals through A only: 10 leases renewed through B just
//     after the expiry B itself last set, then reported, and kept alive by
//     clientv3's KeepAlive through B (a client failing over from A); left
//     alone, each expires once;
//   - racing with expiry: keep-alives through A and B at once, around each
//     lease's expiry. A renewal answered with the TTL keeps the lease at
//     least that long; a refusal comes only once the lease is revoked (as
//     etcd's renew waits for the revocation); each lease is revoked in
//     exactly one revision.
func TestLeaseShared(t *testing.T) {
	requireRealSUT(t)
	for _, bk := range sharedBackends() {
		t.Run(bk.Name, func(t *testing.T) {
			st := newStore(t, bk)
			a := newSharedProc(t, startOn(t, st, "A"), "A")
			b := newSharedProc(t, startOn(t, st, "B", "--db-poll-interval=1h"), "B")
			t.Run("right-after-grant", func(t *testing.T) { leaseSharedGrant(t, a, b) })
			t.Run("after-renewal-elsewhere", func(t *testing.T) { leaseSharedRenewed(t, a, b) })
			t.Run("racing-with-expiry", func(t *testing.T) { leaseSharedRace(t, a, b) })
		})
	}
}

// sharedProc is one process of TestLeaseShared, with clientv3 and raw
// clients on one connection.
type sharedProc struct {
	name  string
	cli   *clientv3.Client
	lease pb.LeaseClient
	kv    pb.KVClient
}

func newSharedProc(t *testing.T, p *harness.Process, name string) *sharedProc {
	t.Helper()
	cli := dialT(t, p.Endpoint)
	conn := cli.ActiveConnection()
	return &sharedProc{name: name, cli: cli, lease: pb.NewLeaseClient(conn), kv: pb.NewKVClient(conn)}
}

// opCtx bounds one request of these tests.
func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 15*time.Second)
}

func (p *sharedProc) ttl(id int64) (*pb.LeaseTimeToLiveResponse, error) {
	ctx, cancel := opCtx()
	defer cancel()
	return p.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id})
}

func (p *sharedProc) leaseIDs() ([]int64, error) {
	ctx, cancel := opCtx()
	defer cancel()
	r, err := p.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil {
		return nil, err
	}
	return leaseIDs(r), nil
}

// keepAliveOnce renews id on a stream of its own and returns the TTL
// answered.
func (p *sharedProc) keepAliveOnce(id int64) (int64, error) {
	ctx, cancel := opCtx()
	defer cancel()
	st, err := p.lease.LeaseKeepAlive(ctx)
	if err != nil {
		return 0, err
	}
	if err := st.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
		return 0, err
	}
	r, err := st.Recv()
	if err != nil {
		return 0, err
	}
	if r.ID != id {
		return 0, fmt.Errorf("keep-alive of %#x answered for %#x", id, r.ID)
	}
	return r.TTL, nil
}

func (p *sharedProc) rev(t *testing.T) int64 {
	t.Helper()
	ctx, cancel := opCtx()
	defer cancel()
	r, err := p.kv.Range(ctx, &pb.RangeRequest{Key: []byte("x"), CountOnly: true})
	if err != nil {
		t.Fatalf("%s: read the revision: %v", p.name, err)
	}
	return r.Header.Revision
}

// keyExists reads key with a linearizable Get.
func (p *sharedProc) keyExists(key string) (bool, error) {
	ctx, cancel := opCtx()
	defer cancel()
	r, err := p.kv.Range(ctx, &pb.RangeRequest{Key: []byte(key), CountOnly: true})
	if err != nil {
		return false, err
	}
	return r.Count == 1, nil
}

// errList collects failures from many goroutines and reports how many, with
// the first few.
type errList struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (e *errList) add(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.first) < 8 {
		e.first = append(e.first, fmt.Sprintf(format, args...))
	}
}

// report fails t if anything was added: n failures (of of, when not 0).
func (e *errList) report(t *testing.T, what string, of int) {
	t.Helper()
	if e.n == 0 {
		return
	}
	count := fmt.Sprint(e.n)
	if of > 0 {
		count += fmt.Sprintf(" of %d", of)
	}
	t.Errorf("%s: %s, e.g.:\n  %s", what, count, strings.Join(e.first, "\n  "))
}

// parallel calls fn for each of ids on workers goroutines.
func parallel(ids []int64, workers int, fn func(w int, id int64)) {
	ch := make(chan int64)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ch {
				fn(w, id)
			}
		}()
	}
	for _, id := range ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
}

// compareTTL checks that B reports lease id as A does: granted with ttl,
// alive, the remaining time within a second of A's.
func compareTTL(a, b *sharedProc, id, ttl int64, errs *errList) {
	ra, err := a.ttl(id)
	if err != nil {
		errs.add("%#x: %s: TimeToLive: %v", id, a.name, err)
		return
	}
	rb, err := b.ttl(id)
	if err != nil {
		errs.add("%#x: %s: TimeToLive: %v", id, b.name, err)
		return
	}
	if ra.TTL <= 0 || rb.TTL <= 0 || ra.GrantedTTL != ttl || rb.GrantedTTL != ttl || absDiff(ra.TTL, rb.TTL) > 1 {
		errs.add("%#x: %s: TTL %d granted %d; %s: TTL %d granted %d (want alive, granted %d, within 1 s)",
			id, a.name, ra.TTL, ra.GrantedTTL, b.name, rb.TTL, rb.GrantedTTL, ttl)
	}
}

// compareLeases checks that A and B list the same leases, and that these
// include all of want and none of absent.
func compareLeases(t *testing.T, a, b *sharedProc, want, absent []int64) {
	t.Helper()
	la, err := a.leaseIDs()
	if err != nil {
		t.Fatalf("%s: LeaseLeases: %v", a.name, err)
	}
	lb, err := b.leaseIDs()
	if err != nil {
		t.Fatalf("%s: LeaseLeases: %v", b.name, err)
	}
	if !slices.Equal(la, lb) {
		t.Errorf("LeaseLeases: %s lists %d leases, %s %d: they differ (%s)", a.name, len(la), b.name, len(lb), setDiff(la, lb))
	}
	for _, l := range []struct {
		p   *sharedProc
		ids []int64
	}{{a, la}, {b, lb}} {
		missing, extra := 0, 0
		for _, id := range want {
			if _, ok := slices.BinarySearch(l.ids, id); !ok {
				missing++
			}
		}
		for _, id := range absent {
			if _, ok := slices.BinarySearch(l.ids, id); ok {
				extra++
			}
		}
		if missing > 0 || extra > 0 {
			t.Errorf("LeaseLeases on %s: %d of %d live leases missing, %d of %d revoked leases listed", l.p.name, missing, len(want), extra, len(absent))
		}
	}
}

// setDiff describes how two sorted id lists differ.
func setDiff(x, y []int64) string {
	var onlyX, onlyY []string
	for _, id := range x {
		if _, ok := slices.BinarySearch(y, id); !ok && len(onlyX) < 5 {
			onlyX = append(onlyX, fmt.Sprintf("%#x", id))
		}
	}
	for _, id := range y {
		if _, ok := slices.BinarySearch(x, id); !ok && len(onlyY) < 5 {
			onlyY = append(onlyY, fmt.Sprintf("%#x", id))
		}
	}
	return fmt.Sprintf("only in the first: %v; only in the second: %v", onlyX, onlyY)
}

// leaseSharedGrant grants 1,000 leases through A, each kept alive through B
// as soon as A acknowledged it: nine in ten on raw keep-alive streams (one
// per worker), one in ten with clientv3's KeepAliveOnce.
func leaseSharedGrant(t *testing.T, a, b *sharedProc) {
	const n, ttl, workers = 1000, 60, 16
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = 0x5a0000 + int64(i)
	}
	streams := make([]pb.Lease_LeaseKeepAliveClient, workers)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for w := range streams {
		st, err := b.lease.LeaseKeepAlive(ctx)
		if err != nil {
			t.Fatalf("%s: LeaseKeepAlive: %v", b.name, err)
		}
		streams[w] = st
	}
	var grantErrs, refused errList
	start := time.Now()
	parallel(ids, workers, func(w int, id int64) {
		gctx, gcancel := opCtx()
		defer gcancel()
		if _, err := a.lease.LeaseGrant(gctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl}); err != nil {
			grantErrs.add("%#x: %v", id, err)
			return
		}
		if id%10 == 0 {
			// clientv3 turns a TTL ≤ 0 answer into ErrLeaseNotFound.
			r, err := b.cli.KeepAliveOnce(gctx, clientv3.LeaseID(id))
			switch {
			case err != nil:
				refused.add("%#x: clientv3 KeepAliveOnce: %v", id, err)
			case r.TTL != ttl:
				refused.add("%#x: clientv3 KeepAliveOnce: TTL %d, want %d", id, r.TTL, ttl)
			}
			return
		}
		st := streams[w]
		if err := st.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
			refused.add("%#x: Send: %v", id, err)
			return
		}
		r, err := st.Recv()
		switch {
		case err != nil:
			refused.add("%#x: Recv: %v", id, err)
		case r.ID != id || r.TTL != ttl:
			refused.add("%#x: answered ID %#x TTL %d, want TTL %d", id, r.ID, r.TTL, ttl)
		}
	})
	t.Logf("%d leases granted through %s and kept alive through %s in %v; %d refused", n, a.name, b.name, time.Since(start).Round(time.Millisecond), refused.n)
	grantErrs.report(t, "grants failed", n)
	refused.report(t, "keep-alives through "+b.name+" right after the grant refused or failed", n)
	if t.Failed() {
		return
	}

	var ttlErrs errList
	parallel(ids, workers, func(_ int, id int64) { compareTTL(a, b, id, ttl, &ttlErrs) })
	ttlErrs.report(t, "TimeToLive disagrees", n)
	compareLeases(t, a, b, ids, nil)

	// Revoke half through each process; B learns of the rest from the
	// database too.
	var revokeErrs errList
	parallel(ids, workers, func(_ int, id int64) {
		p := a
		if id%2 == 1 {
			p = b
		}
		rctx, rcancel := opCtx()
		defer rcancel()
		if _, err := p.lease.LeaseRevoke(rctx, &pb.LeaseRevokeRequest{ID: id}); err != nil {
			revokeErrs.add("%#x: %s: LeaseRevoke: %v", id, p.name, err)
		}
	})
	revokeErrs.report(t, "revocations failed", n)
	var goneErrs errList
	parallel(ids, workers, func(_ int, id int64) {
		for _, p := range []*sharedProc{a, b} {
			r, err := p.ttl(id)
			switch {
			case err != nil:
				goneErrs.add("%#x: %s: TimeToLive: %v", id, p.name, err)
			case r.TTL != -1:
				goneErrs.add("%#x: %s: TimeToLive of a revoked lease: TTL %d", id, p.name, r.TTL)
			}
			if ttl, err := p.keepAliveOnce(id); err != nil || ttl != 0 {
				goneErrs.add("%#x: %s: keep-alive of a revoked lease: TTL %d, err %v", id, p.name, ttl, err)
			}
		}
	})
	goneErrs.report(t, "revoked leases still reported", n)
	compareLeases(t, a, b, nil, ids)
}

// leaseSharedRenewed renews leases through A only, then through B just
// after the expiry B itself last set (before its expiry loop, which looks
// every 500 ms, can have read the row again), then queries them through B
// and fails clientv3's KeepAlive over from A to B.
func leaseSharedRenewed(t *testing.T, a, b *sharedProc) {
	const n, ttl = 10, 3
	leaseTTL := ttl * time.Second
	ids := make([]int64, n)
	keys := make(map[int64]string)
	for i := range ids {
		ids[i] = 0x5b0000 + int64(i)
		keys[ids[i]] = fmt.Sprintf("ls2/%x", ids[i])
	}
	t.Cleanup(func() {
		// Gone if the test got to the end; else their keys' deletions must
		// not land in the next test's revisions.
		for _, id := range ids {
			ctx, cancel := opCtx()
			a.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id})
			cancel()
		}
	})
	for _, id := range ids {
		ctx, cancel := opCtx()
		_, err := a.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl})
		if err == nil {
			_, err = a.kv.Put(ctx, &pb.PutRequest{Key: []byte(keys[id]), Value: []byte("v"), Lease: id})
		}
		cancel()
		if err != nil {
			t.Fatalf("%s: grant %#x and put its key: %v", a.name, id, err)
		}
	}
	// B learns of each lease, and sets its expiry to at most bDone+TTL.
	bDone := make(map[int64]time.Time)
	for _, id := range ids {
		if got, err := b.keepAliveOnce(id); err != nil || got != ttl {
			t.Fatalf("%s: keep-alive of %#x right after the grant: TTL %d, err %v (want %d)", b.name, id, got, err, ttl)
		}
		bDone[id] = time.Now()
	}

	// From now on clientv3 renews them every TTL/3 through A.
	actx, acancel := context.WithCancel(context.Background())
	defer acancel()
	var aDone []<-chan kaResult
	for _, id := range ids {
		ch, err := a.cli.KeepAlive(actx, clientv3.LeaseID(id))
		if err != nil {
			t.Fatalf("%s: KeepAlive: %v", a.name, err)
		}
		aDone = append(aDone, drainKeepAlive(ch, ttl))
	}
	var errs errList
	parallel(ids, n, func(_ int, id int64) {
		time.Sleep(time.Until(bDone[id].Add(leaseTTL + 10*time.Millisecond)))
		if got, err := b.keepAliveOnce(id); err != nil || got != ttl {
			errs.add("%#x: TTL %d, err %v (want %d)", id, got, err, ttl)
		}
	})
	errs.report(t, "keep-alives through "+b.name+" just after the expiry it had set, renewed through "+a.name+" since", n)

	errs = errList{}
	parallel(ids, n, func(_ int, id int64) { compareTTL(a, b, id, ttl, &errs) })
	errs.report(t, "after renewals through "+a.name+", TimeToLive disagrees", n)
	compareLeases(t, a, b, ids, nil)

	// Fail over: clientv3 keeps the leases alive through B, A stops.
	bctx, bcancel := context.WithCancel(context.Background())
	defer bcancel()
	var bKA []<-chan kaResult
	for _, id := range ids {
		ch, err := b.cli.KeepAlive(bctx, clientv3.LeaseID(id))
		if err != nil {
			t.Fatalf("%s: KeepAlive: %v", b.name, err)
		}
		bKA = append(bKA, drainKeepAlive(ch, ttl))
	}
	acancel()
	checkKeepAlives(t, a.name, aDone)
	// Without B's renewals the leases would end within a TTL of A's last
	// one, and be revoked within 500 ms.
	stopped := time.Now()
	time.Sleep(time.Until(stopped.Add(leaseTTL + time.Second)))
	for _, id := range ids {
		for _, p := range []*sharedProc{a, b} {
			if ok, err := p.keyExists(keys[id]); err != nil || !ok {
				t.Fatalf("%s: %s %v after failing the keep-alive over to %s: exists %v, err %v", p.name, keys[id], time.Since(stopped), b.name, ok, err)
			}
		}
	}
	errs = errList{}
	parallel(ids, n, func(_ int, id int64) { compareTTL(a, b, id, ttl, &errs) })
	errs.report(t, "kept alive through "+b.name+" only, TimeToLive disagrees", n)

	// Left alone, each expires once.
	rev0 := a.rev(t)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := a.cli.Watch(wctx, "ls2/", clientv3.WithPrefix(), clientv3.WithRev(rev0+1))
	bcancel()
	checkKeepAlives(t, b.name, bKA)
	run, err := readWatch(wch, n, expiryWait)
	if err != nil {
		t.Fatalf("waiting for the leases to expire: %v", err)
	}
	revs := make(map[int64]bool)
	for _, ev := range run.events() {
		if ev.Type != mvccpb.DELETE || revs[ev.Kv.ModRevision] {
			t.Errorf("expiry: want one DELETE per revision, got %s", oneLine(run))
			break
		}
		revs[ev.Kv.ModRevision] = true
	}
	parallel(ids, n, func(_ int, id int64) {
		for _, p := range []*sharedProc{a, b} {
			if r, err := p.ttl(id); err != nil || r.TTL != -1 {
				t.Errorf("%s: TimeToLive of expired lease %#x: %v, err %v", p.name, id, r, err)
			}
		}
	})
	compareLeases(t, a, b, nil, ids)
	if r := a.rev(t); r != rev0+n {
		t.Errorf("the expiry of %d leases moved the revision from %d to %d", n, rev0, r)
	}
}

// kaResult is what a clientv3 KeepAlive channel delivered until closed.
type kaResult struct {
	n   int    // responses
	bad string // the first response with another TTL than granted
}

// drainKeepAlive reads a clientv3 KeepAlive channel until it is closed and
// then sends what it read.
func drainKeepAlive(ch <-chan *clientv3.LeaseKeepAliveResponse, ttl int64) <-chan kaResult {
	done := make(chan kaResult, 1)
	go func() {
		var res kaResult
		for r := range ch {
			res.n++
			if r.TTL != ttl && res.bad == "" {
				res.bad = fmt.Sprintf("lease %#x: TTL %d, want %d", r.ID, r.TTL, ttl)
			}
		}
		done <- res
	}()
	return done
}

// checkKeepAlives waits for drainKeepAlive's results.
func checkKeepAlives(t *testing.T, name string, dones []<-chan kaResult) {
	t.Helper()
	for _, done := range dones {
		res := <-done
		if res.n == 0 {
			t.Errorf("%s: a clientv3 KeepAlive channel delivered no response", name)
		}
		if res.bad != "" {
			t.Errorf("%s: clientv3 KeepAlive: %s", name, res.bad)
		}
	}
}

// timedEvent is a watch event and when it arrived.
type timedEvent struct {
	ev *mvccpb.Event
	at time.Time
}

// timedWatch reads ch as events arrive until n have, then sends them; it
// sends nil if the watch fails or ends first.
func timedWatch(ch clientv3.WatchChan, n int) <-chan []timedEvent {
	out := make(chan []timedEvent, 1)
	go func() {
		var evs []timedEvent
		for wr := range ch {
			if wr.Err() != nil {
				break
			}
			now := time.Now()
			for _, ev := range wr.Events {
				evs = append(evs, timedEvent{(*mvccpb.Event)(ev), now})
			}
			if len(evs) >= n {
				out <- evs
				return
			}
		}
		out <- nil
	}()
	return out
}

// renewal is one keep-alive request of leaseSharedRace.
type renewal struct {
	p    *sharedProc
	sent time.Time
	ttl  int64
	err  error
}

// leaseSharedRace grants short leases with two keys each through A and,
// for a few rounds, renews each through A and B at the same moment, close
// to its expiry (within 250 ms either side: expired leases are looked for
// every 500 ms, so some renewals meet an expired lease not yet revoked). A
// lease ends when both refuse; after the rounds it is left to expire.
func leaseSharedRace(t *testing.T, a, b *sharedProc) {
	const n, ttl, rounds = 40, 2, 3
	leaseTTL := ttl * time.Second
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = 0x5c0000 + int64(i)
	}
	keyOf := func(id int64, k string) string { return fmt.Sprintf("ls3/%x/%s", id, k) }

	rev0 := a.rev(t)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	// Deletions are what is checked; the puts are skipped.
	wch := a.cli.Watch(wctx, "ls3/", clientv3.WithPrefix(), clientv3.WithRev(rev0+1), clientv3.WithFilterPut())
	deletions := timedWatch(wch, 2*n)

	granted := make(map[int64]time.Time)
	for _, id := range ids {
		ctx, cancel := opCtx()
		granted[id] = time.Now()
		_, err := a.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl})
		for _, k := range []string{"a", "b"} {
			if err == nil {
				_, err = a.kv.Put(ctx, &pb.PutRequest{Key: []byte(keyOf(id, k)), Value: []byte("v"), Lease: id})
			}
		}
		cancel()
		if err != nil {
			t.Fatalf("grant %#x and put its keys: %v", id, err)
		}
	}
	revPuts := rev0 + 2*n

	var mu sync.Mutex
	renewals := make(map[int64][]renewal)
	var errs errList
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func(rng *rand.Rand) {
			defer wg.Done()
			last := granted[id]
			for r := 0; r < rounds; r++ {
				jitter := time.Duration(rng.IntN(500)-250) * time.Millisecond
				time.Sleep(time.Until(last.Add(leaseTTL + jitter)))
				got := make([]renewal, 2)
				var rwg sync.WaitGroup
				for j, p := range []*sharedProc{a, b} {
					rwg.Add(1)
					go func() {
						defer rwg.Done()
						rn := renewal{p: p, sent: time.Now()}
						rn.ttl, rn.err = p.keepAliveOnce(id)
						got[j] = rn
					}()
				}
				rwg.Wait()
				mu.Lock()
				renewals[id] = append(renewals[id], got...)
				mu.Unlock()
				refused, renewed := false, false
				for _, rn := range got {
					switch {
					case rn.err != nil:
						errs.add("%#x: %s: keep-alive: %v", id, rn.p.name, rn.err)
						return
					case rn.ttl == ttl:
						renewed = true
						last = rn.sent
					case rn.ttl == 0:
						refused = true
					default:
						errs.add("%#x: %s: keep-alive answered TTL %d", id, rn.p.name, rn.ttl)
					}
				}
				if refused {
					// etcd refuses an expired lease once it is revoked: its
					// keys are gone and no process reports it any more.
					for _, p := range []*sharedProc{a, b} {
						if tr, err := p.ttl(id); err != nil || tr.TTL != -1 {
							errs.add("%#x: refused by a keep-alive, then %s: TimeToLive %v, err %v", id, p.name, tr, err)
						}
						if ok, err := p.keyExists(keyOf(id, "a")); err != nil || ok {
							errs.add("%#x: refused by a keep-alive, then %s: key exists %v, err %v", id, p.name, ok, err)
						}
					}
					if renewed {
						errs.add("%#x: keep-alives sent at once: one renewed, the other refused", id)
					}
					return
				}
			}
		}(rand.New(rand.NewPCG(seed, uint64(i))))
	}
	wg.Wait()

	// Every lease expires, or was revoked: each revocation deletes both
	// keys in one revision.
	var evs []timedEvent
	select {
	case evs = <-deletions:
		if evs == nil {
			t.Fatal("the watch ended before every lease did")
		}
	case <-time.After(expiryWait + time.Duration(rounds)*leaseTTL):
		t.Fatalf("not every lease ended within %v", expiryWait+time.Duration(rounds)*leaseTTL)
	}
	deleted := make(map[int64][]*mvccpb.Event)
	seen := make(map[int64]time.Time)
	for _, te := range evs {
		ev := te.ev
		var id int64
		if _, err := fmt.Sscanf(string(ev.Kv.Key), "ls3/%x/", &id); err != nil || ev.Type != mvccpb.DELETE {
			t.Errorf("unexpected event %s", oneLine(ev))
			continue
		}
		deleted[id] = append(deleted[id], ev)
		if _, ok := seen[id]; !ok {
			seen[id] = te.at
		}
	}
	var stats struct{ renewed, refused int }
	for _, id := range ids {
		evs := deleted[id]
		if len(evs) != 2 || evs[0].Kv.ModRevision != evs[1].Kv.ModRevision || string(evs[0].Kv.Key) == string(evs[1].Kv.Key) {
			errs.add("%#x: want its two keys deleted in one revision, got %d events: %v", id, len(evs), evs)
			continue
		}
		// A renewal sent at s set the expiry to at least s+TTL (the
		// database keeps milliseconds), so no deletion is seen before.
		for _, rn := range renewals[id] {
			if rn.ttl != ttl {
				stats.refused++
				continue
			}
			stats.renewed++
			if earliest := rn.sent.Add(leaseTTL - time.Millisecond); seen[id].Before(earliest) {
				errs.add("%#x: renewed through %s with TTL %d at %s, deleted %v later", id, rn.p.name, ttl, rn.sent.Format("15:04:05.000"), seen[id].Sub(rn.sent))
			}
		}
	}
	t.Logf("%d leases: %d renewals answered with the TTL, %d refused", n, stats.renewed, stats.refused)
	errs.report(t, "lease races: failed checks", 0)
	// One revision per lease: no lease was revoked twice, nor any other
	// revision made.
	if r := a.rev(t); r != revPuts+n {
		t.Errorf("revision %d after %d leases with keys ended, want %d", r, n, revPuts+n)
	}
	compareLeases(t, a, b, nil, ids)
}
