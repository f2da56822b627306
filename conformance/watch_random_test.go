package conformance

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestWatchRandomized interleaves seeded random writes (puts, deletes, txns
// over a small keyspace with binary keys, as in TestRandomized) with watches
// created at random points (random intervals, start revisions in the past,
// at the current revision, from now, in the future and, after a compaction,
// compacted; random filters, prev_kv, fragment, client-chosen ids) and random
// cancels. Every write is compared like any op; every watch's flattened
// event stream, with its created/canceled/compacted responses, must end up
// identical.
//
// A watch's events are only final once etcd has delivered them, so before a
// cancel, a compaction and at the end the affected streams are brought to a
// barrier: on etcd, RequestProgress until it answers at the current revision
// (it answers only when every watcher of the stream is synced, and after all
// their events); then the server under test must reach the same flattened
// view within watchWait and answer RequestProgress at the current revision
// too. Watches that start in the future hold progress back, so each gets a
// stream of its own.
//
//	CONFORMANCE_SEED=n          replay a run (the seed is always logged)
//	CONFORMANCE_WATCH_WRITES=n  number of random writes (default 600)
//	CONFORMANCE_WATCH_COUNT=n   number of watches created (default 40)
func TestWatchRandomized(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CONFORMANCE_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CONFORMANCE_SEED: %v", err)
		}
	}
	writes, watches := envInt(t, "CONFORMANCE_WATCH_WRITES", 600), envInt(t, "CONFORMANCE_WATCH_COUNT", 40)
	t.Logf("seed %d, %d writes, %d watches (replay with CONFORMANCE_SEED=%d)", seed, writes, watches, seed)
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run(fmt.Sprintf("seed-%d", seed), func(c *sc) {
			r := &wrand{c: c, seed: seed, g: &gen{r: rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))}, stats: map[string]int{}, noCompact: map[int64]bool{}}
			r.run(writes, watches)
		})
	})
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

// wrand is one randomized run.
type wrand struct {
	c       *sc
	seed    uint64
	g       *gen
	streams []*rstream
	watches []*rwatch
	step    string // current step, for messages
	stats   map[string]int
	// revisions written by a txn with a "\x00"-ended delete range: never
	// compacted at (see hasFromKeyDelete)
	noCompact map[int64]bool
	// suts, when set, are several processes of the server under test on one
	// store: each write and each new stream goes to a random one of them.
	suts []*server
}

// pickSUT points the scenario's pair at a random process (see suts).
func (r *wrand) pickSUT() {
	if len(r.suts) > 1 {
		r.c.p.sut = r.suts[r.g.r.IntN(len(r.suts))]
	}
}

type rstream struct {
	n         int
	w         *wpair
	dedicated bool // holds one future watch
	creates   int  // create requests sent
	cancels   [2]int
	watches   []*rwatch
}

type rwatch struct {
	n     int
	st    *rstream
	req   *pb.WatchCreateRequest
	kind  string
	id    int64 // etcd's id; -1 if refused
	start int64 // start revision when positive
	live  bool
	// per side: index of the created response in the stream's log, and
	// whether a cancel was sent after a compacted response
	createdAt     [2]int
	compactCancel [2]bool
	randomCancel  bool
}

func (r *wrand) run(nWrites, nWatches int) {
	c := r.c
	for i := 0; i < 4; i++ {
		r.newStream(false)
	}
	r.g.cur = c.rev()
	createAt := map[int]int{}
	for _, p := range r.g.r.Perm(nWrites)[:min(nWatches, nWrites)] {
		createAt[p]++
	}
	for i := 0; i < nWrites; i++ {
		r.step = fmt.Sprintf("[seed %d, step %d/%d]", r.seed, i, nWrites)
		for k := createAt[i]; k > 0; k-- {
			r.createWatch()
		}
		if r.g.pct(3) {
			r.cancelRandom()
		}
		if (i == nWrites/4 || i == nWrites*2/3 || r.g.r.IntN(1000) < 8) && r.g.cur > r.g.compactRev+3 {
			r.compact()
		}
		r.write()
	}
	// Let every future start be reached, then settle everything.
	r.step = fmt.Sprintf("[seed %d, end]", r.seed)
	for _, w := range r.watches {
		for w.live && w.start > r.g.cur {
			r.write()
		}
	}
	for _, st := range r.streams {
		r.barrier(st)
	}
	evs := 0
	for _, st := range r.streams {
		got, _, _ := st.w.ref.log.snapshot()
		for _, x := range got {
			evs += len(x.Events)
		}
	}
	r.stats[fmt.Sprintf("events delivered by etcd (%d streams)", len(r.streams))] = evs
	keys := make([]string, 0, len(r.stats))
	for k := range r.stats {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		c.t.Logf("%6d  %s", r.stats[k], k)
	}
}

func (r *wrand) newStream(dedicated bool) *rstream {
	st := &rstream{n: len(r.streams), dedicated: dedicated}
	r.pickSUT()
	st.w = r.c.openWatch(fmt.Sprintf("#%d on %s", st.n, r.c.p.sut.name))
	st.w.ignore = func(x *pb.WatchResponse) bool { return x.WatchId == clientv3.InvalidWatchID && isProgressResp(x) }
	r.streams = append(r.streams, st)
	return st
}

// write sends one random write to both servers.
func (r *wrand) write() {
	g := r.g
	var kind, desc string
	var fn opFunc
	switch x := g.r.IntN(100); {
	case x < 40:
		q := g.putReq()
		kind, desc, fn = "put", "Put "+oneLine(q), func(ctx contextT, s *server) (any, error) { return s.kv.Put(ctx, q) }
	case x < 55:
		q := g.deleteReq()
		kind, desc, fn = "delete", "DeleteRange "+oneLine(q), func(ctx contextT, s *server) (any, error) { return s.kv.DeleteRange(ctx, q) }
	default:
		q := g.txnReq(0)
		avoidEtcdTxnPanic(q)
		if hasFromKeyDelete(q) {
			kind = "txn with a from-key delete"
		} else {
			kind = "txn"
		}
		desc, fn = "Txn "+oneLine(q), func(ctx contextT, s *server) (any, error) { return s.kv.Txn(ctx, q) }
	}
	r.pickSUT()
	resp, err := r.c.do(r.step+" "+desc+" (on "+r.c.p.sut.name+")", fn)
	if err != nil {
		r.stats["write "+kind+" error: "+rpctypes.ErrorDesc(err)]++
		return
	}
	r.stats["write "+kind+" ok"]++
	prev := g.cur
	g.cur = headerRev(resp, g.cur)
	if kind == "txn with a from-key delete" && g.cur != prev {
		r.noCompact[g.cur] = true
	}
}

// hasFromKeyDelete reports whether a txn has a delete with range end
// "\x00". etcd 3.6.16 lets such a txn delete a key and put it again (its
// duplicate-key check reads the "\x00" end literally), giving the key a
// tombstone and a new generation at one revision. Compacting at exactly that
// revision then purges the put from the backend while the index keeps it,
// and the next read of the key at a later revision (a Range, or a watch's
// prev_kv lookup) makes etcd exit: "range failed to find revision pair".
func hasFromKeyDelete(t *pb.TxnRequest) bool {
	for _, o := range append(append([]*pb.RequestOp{}, t.Success...), t.Failure...) {
		if d := o.GetRequestDeleteRange(); d != nil && string(d.RangeEnd) == "\x00" {
			return true
		}
		if n := o.GetRequestTxn(); n != nil && hasFromKeyDelete(n) {
			return true
		}
	}
	return false
}

// watchReq draws a create request; future says it needs its own stream.
func (r *wrand) watchReq() (req *pb.WatchCreateRequest, kind string, future bool) {
	g := r.g
	req = &pb.WatchCreateRequest{}
	switch x := g.r.IntN(100); {
	case x < 6:
		req.Key, req.RangeEnd = b("\x00"), b("\x00")
	case x < 9:
		req.Key, req.RangeEnd = nil, b("\x00")
	default:
		k := g.key()
		req.Key, req.RangeEnd = b(k), b(g.end(k))
	}
	switch x := g.r.IntN(100); {
	case x < 25:
		kind = "from now"
	case x < 35:
		kind, req.StartRevision = "current revision", g.cur
	case x < 65:
		kind, req.StartRevision = "past", g.between(max(1, g.compactRev+1), g.cur)
	case x < 70 && g.compactRev > 0:
		kind, req.StartRevision = "at the compaction", g.compactRev
	case x < 80 && g.compactRev > 1:
		kind, req.StartRevision = "compacted", g.between(1, g.compactRev-1)
	case x < 97:
		kind, req.StartRevision, future = "future", g.cur+g.between(1, 4), true
	default:
		kind, req.StartRevision = "negative", -g.between(1, 3)
	}
	switch x := g.r.IntN(100); {
	case x < 15:
		req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}
	case x < 30:
		req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}
	case x < 33:
		req.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE, pb.WatchCreateRequest_NOPUT}
	}
	req.PrevKv = g.pct(40)
	req.Fragment = g.pct(10)
	if g.pct(15) {
		req.WatchId = 100 + g.r.Int64N(4) // may collide: refused
	}
	return req, kind, future
}

func (r *wrand) createWatch() {
	req, kind, future := r.watchReq()
	var st *rstream
	if future {
		st = r.newStream(true)
	} else {
		st = r.streams[r.g.r.IntN(4)]
	}
	w := &rwatch{n: len(r.watches), st: st, req: req, kind: kind, start: req.StartRevision}
	st.creates++
	st.w.send(fmt.Sprintf("%s create #%d (%s) %s", r.step, w.n, kind, oneLine(req)), &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}})
	// The created response (its header revision is the current revision,
	// and a watch from now starts after it): wait for it on both sides.
	var resp [2]*pb.WatchResponse
	isCr := matcher(func(x *pb.WatchResponse) bool { return x.Created })
	for i := 0; i < 2; i++ {
		k, seg, end := st.w.side(i).log.waitFor(0, isCr.n(st.creates), watchWait)
		if k < 0 {
			r.fail(st, fmt.Sprintf("created response #%d (%v)", st.creates, end))
		}
		resp[i] = seg[k-1]
		w.createdAt[i] = k - 1
	}
	a, bb := respLine(normalize(resp[0]).(*pb.WatchResponse)), respLine(normalize(resp[1]).(*pb.WatchResponse))
	if a != bb {
		r.fail(st, fmt.Sprintf("created response of create #%d:\n  etcd:  %s\n  %s: %s", w.n, a, st.w.sut.srv.name, bb))
	}
	w.id = resp[0].WatchId
	w.live = !resp[0].Canceled
	if !w.live {
		kind += ", refused: " + resp[0].CancelReason
	}
	r.stats["watch "+kind]++
	r.watches = append(r.watches, w)
	st.watches = append(st.watches, w)
}

// cancelRandom cancels a random live watch at a barrier.
func (r *wrand) cancelRandom() {
	var live []*rwatch
	for _, w := range r.watches {
		if w.live && !w.compactCancel[0] {
			live = append(live, w)
		}
	}
	if len(live) == 0 {
		return
	}
	w := live[r.g.r.IntN(len(live))]
	r.barrier(w.st)
	if !w.live || w.compactCancel[0] {
		return // compacted meanwhile: the barrier canceled it
	}
	r.stats["cancel"]++
	w.randomCancel = true
	r.cancel(w, -1, "random cancel")
}

// cancel sends a cancel for w on one side (0, 1) or both (-1) and waits for
// the canceled responses.
func (r *wrand) cancel(w *rwatch, side int, why string) {
	st := w.st
	desc := fmt.Sprintf("%s cancel #%d (%s) {watch_id:%d}", r.step, w.n, why, w.id)
	req := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: w.id}}}
	for i := 0; i < 2; i++ {
		if side >= 0 && side != i {
			continue
		}
		if side >= 0 {
			st.w.sent = append(st.w.sent, fmt.Sprintf("%s (%s only)", desc, st.w.side(i).srv.name))
		} else if i == 0 {
			st.w.sent = append(st.w.sent, desc)
		}
		if err := st.w.side(i).send(req); err != nil {
			r.fail(st, fmt.Sprintf("send cancel: %v", err))
		}
		st.cancels[i]++
		isCx := matcher(func(x *pb.WatchResponse) bool { return x.Canceled && !x.Created && x.CompactRevision == 0 })
		if k, _, end := st.w.side(i).log.waitFor(0, isCx.n(st.cancels[i]), watchWait); k < 0 {
			r.fail(st, fmt.Sprintf("canceled response for watch %d on %s (%v)", w.id, st.w.side(i).srv.name, end))
		}
		if i == 0 {
			w.live = false
		}
	}
}

// compact compacts at a random live revision once every stream has settled
// (events delivered before a compaction must not depend on when it ran:
// prev_kv lookups and history replays race with it).
func (r *wrand) compact() {
	for _, st := range r.streams {
		r.barrier(st)
	}
	rev := r.g.between(r.g.compactRev+1, r.g.cur)
	for tries := 0; r.noCompact[rev]; tries++ {
		if tries == 20 {
			return
		}
		rev = r.g.between(r.g.compactRev+1, r.g.cur)
	}
	q := &pb.CompactionRequest{Revision: rev, Physical: true}
	resp, err := r.c.do(r.step+" Compact "+oneLine(q), func(ctx contextT, s *server) (any, error) { return s.kv.Compact(ctx, q) })
	r.c.ok(resp, err)
	r.g.compactRev = rev
	r.stats["compaction"]++
}

// barrier brings a stream to a point where etcd has delivered every event
// up to the current revision, then waits for the server under test to have
// sent the same (flattened, per watch).
func (r *wrand) barrier(st *rstream) {
	for _, w := range st.watches {
		if w.live && w.start > r.g.cur {
			return // nothing can have been delivered, and etcd would not answer
		}
	}
	r.progressBarrier(st, 0)
	r.sutCatchUp(st)
	// Same events is not enough: a watcher still catching up may have had
	// nothing to deliver yet (and a compaction would then cancel it). Its
	// progress answer shows the server under test is synced too.
	r.progressBarrier(st, 1)
	r.sutCatchUp(st)
}

// progressBarrier sends RequestProgress on one side until it is answered
// at the current revision.
func (r *wrand) progressBarrier(st *rstream, side int) {
	l := st.w.side(side).log
	deadline := time.Now().Add(watchWait)
	atCur := matcher(func(x *pb.WatchResponse) bool {
		return x.WatchId == clientv3.InvalidWatchID && isProgressResp(x) && x.Header != nil && x.Header.Revision == r.g.cur
	})
	for time.Now().Before(deadline) {
		r.cancelCompacted(st, side)
		live := false
		for _, w := range st.watches {
			live = live || w.live
		}
		if !live {
			return // etcd does not answer progress on a stream without watchers
		}
		got, _, _ := l.snapshot()
		n := 0
		for _, x := range got {
			if atCur(x) {
				n++
			}
		}
		if err := st.w.side(side).send(progressReq()); err != nil {
			r.fail(st, fmt.Sprintf("%s: send progress request: %v", st.w.side(side).srv.name, err))
		}
		// etcd answers at once or never (a watcher is still catching up):
		// wait a little, then ask again.
		if k, _, _ := l.waitFor(0, atCur.n(n+1), 200*time.Millisecond); k >= 0 {
			return
		}
	}
	if side == 0 {
		r.c.t.Fatalf("scenario bug: %s stream %s: etcd did not report progress at revision %d within %v", r.step, st.w.name, r.g.cur, watchWait)
	}
	r.fail(st, fmt.Sprintf("RequestProgress not answered at revision %d within %v (etcd answers)", r.g.cur, watchWait))
}

// cancelCompacted cancels, on one side, the watches that side reported as
// compacted, as clientv3 does; etcd confirms with a canceled response.
func (r *wrand) cancelCompacted(st *rstream, side int) {
	got, _, _ := st.w.side(side).log.snapshot()
	for _, w := range st.watches {
		// An id can be reused once canceled: look only at the responses
		// after this watch's created response, and not after a random
		// cancel.
		if w.id < 0 || w.compactCancel[side] || w.randomCancel {
			continue
		}
		for _, x := range got[w.createdAt[side]+1:] {
			if x.WatchId == w.id && x.CompactRevision != 0 {
				w.compactCancel[side] = true
				r.stats["cancel after compacted"] += 1 - side
				r.cancel(w, side, "compacted")
				break
			}
		}
	}
}

// sutCatchUp waits until the server under test shows the same flattened
// per-watch view of the stream as etcd.
func (r *wrand) sutCatchUp(st *rstream) {
	ref, _, _ := st.w.ref.log.snapshot()
	want := st.w.render(viewFlat, ref, nil)
	deadline := time.NewTimer(watchWait)
	defer deadline.Stop()
	for {
		r.cancelCompacted(st, 1)
		got, end, ch := st.w.sut.log.snapshot()
		have := st.w.render(viewFlat, got, end)
		if equalLines(want, have) {
			return
		}
		select {
		case <-ch:
			continue
		case <-deadline.C:
		}
		if end == nil {
			end = fmt.Errorf("timed out after %v", watchWait)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "\nWATCH MISMATCH in %s, %s, stream %s: flattened per-watch view after a barrier (%v)\n  requests on this stream:\n", r.c.name, r.step, st.w.name, end)
		for _, s := range st.w.sent {
			fmt.Fprintf(&b, "    %s\n", truncate(s, 400))
		}
		b.WriteString(sideBySide("etcd", want, st.w.sut.srv.name, have))
		r.c.t.Fatalf("%s%s", b.String(), st.w.sut.srv.crashInfo())
	}
}

func (r *wrand) fail(st *rstream, what string) {
	r.c.t.Helper()
	ref, _, _ := st.w.ref.log.snapshot()
	sut, end, _ := st.w.sut.log.snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "\nWATCH MISMATCH in %s, %s, stream %s: %s\n  requests on this stream:\n", r.c.name, r.step, st.w.name, what)
	for _, s := range st.w.sent {
		fmt.Fprintf(&b, "    %s\n", truncate(s, 400))
	}
	b.WriteString(sideBySide("etcd", st.w.render(viewFlat, ref, nil), st.w.sut.srv.name, st.w.render(viewFlat, sut, end)))
	r.c.t.Fatalf("%s%s", b.String(), st.w.sut.srv.crashInfo())
}
