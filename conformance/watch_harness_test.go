package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Watch streams are compared differently from unary calls: responses arrive
// on their own schedule, and some of etcd's own choices are timing-dependent
// (how a history replay is cut into responses, the order of responses of
// different watchers on one stream). So each side's responses are recorded
// as they arrive, a scenario waits for a condition on both sides (never for
// a fixed time), and the recorded segments are then compared in a view that
// keeps exactly what etcd guarantees:
//
//   - viewExact: per watch id, every response in full (header revision,
//     grouping of events into responses, fragment flags);
//   - viewFlat: per watch id, control responses in full (created, canceled,
//     cancel_reason, compact_revision, progress) and the events of
//     consecutive event responses flattened into one sequence, so that replay
//     boundaries and their header revisions do not matter.
//
// Responses of different watch ids are never ordered against each other,
// except by explicit checks (a progress response comes after all events up
// to its revision).

// watchWait bounds every wait for a condition. Conditions are met within
// milliseconds when both servers behave; the bound only turns a missing
// response into a failure.
const watchWait = 15 * time.Second

// wlog is what one side received on one watch stream (raw gRPC or clientv3).
type wlog struct {
	mu     sync.Mutex
	got    []*pb.WatchResponse
	end    error         // set once the stream ended
	change chan struct{} // closed and replaced on every change
}

func newWlog() *wlog { return &wlog{change: make(chan struct{})} }

func (l *wlog) add(r *pb.WatchResponse) {
	l.mu.Lock()
	l.got = append(l.got, r)
	close(l.change)
	l.change = make(chan struct{})
	l.mu.Unlock()
}

func (l *wlog) finish(err error) {
	l.mu.Lock()
	if l.end == nil {
		l.end = err
		close(l.change)
		l.change = make(chan struct{})
	}
	l.mu.Unlock()
}

func (l *wlog) snapshot() ([]*pb.WatchResponse, error, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.got[:len(l.got):len(l.got)], l.end, l.change
}

// cond inspects a segment of received responses and returns the length of
// the shortest prefix that satisfies it, or -1. closed says the stream has
// ended after seg; a condition on the end itself returns len(seg)+1.
type cond func(seg []*pb.WatchResponse, closed bool) int

// waitFor waits until cond holds on the responses after from, the stream
// ends, or timeout passes. It returns the prefix length (-1 if not met).
func (l *wlog) waitFor(from int, c cond, timeout time.Duration) (int, []*pb.WatchResponse, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		got, end, ch := l.snapshot()
		seg := got[min(from, len(got)):]
		if k := c(seg, end != nil); k >= 0 {
			return k, seg, end
		}
		if end != nil {
			return -1, seg, end
		}
		select {
		case <-ch:
		case <-deadline.C:
			return -1, seg, nil
		}
	}
}

// maxRecv lifts gRPC's default 4 MiB receive limit on raw streams, as
// clientv3 does for its own calls (a catching-up watcher can get one
// response of up to 1,000 revisions).
var maxRecv = grpc.MaxCallRecvMsgSize(math.MaxInt32)

// wstream is one side's watch stream.
type wstream struct {
	srv       *server
	log       *wlog
	send      func(*pb.WatchRequest) error // nil for clientv3 watches
	closeSend func() error                 // nil for clientv3 watches
	cancel    context.CancelFunc
}

// openRawWatch opens a raw Watch stream on s and records what it receives.
// If gate is non-nil, the receiver stops calling Recv while gate() blocks
// (used by the slow-consumer test).
func openRawWatch(ctx context.Context, conn pb.WatchClient, name string) (*wstream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := conn.Watch(ctx, maxRecv)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: open Watch stream: %w", name, err)
	}
	ws := &wstream{log: newWlog(), send: st.Send, closeSend: st.CloseSend, cancel: cancel}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				ws.log.finish(err)
				return
			}
			ws.log.add(r)
		}
	}()
	return ws, nil
}

// openClientWatch starts a clientv3 Watch and records what its channel
// delivers, converted to wire responses (watch_id is not visible through
// clientv3 and stays 0; Err() goes to cancel_reason as "Err(): ...").
func openClientWatch(ctx context.Context, cli *clientv3.Client, key string, opts ...clientv3.OpOption) *wstream {
	ctx, cancel := context.WithCancel(ctx)
	ch := cli.Watch(ctx, key, opts...)
	ws := &wstream{log: newWlog(), cancel: cancel}
	go func() {
		for wr := range ch {
			ws.log.add(fromClientResp(wr))
		}
		ws.log.finish(errClientChanClosed)
	}()
	return ws
}

var errClientChanClosed = errors.New("clientv3 watch channel closed")

func fromClientResp(wr clientv3.WatchResponse) *pb.WatchResponse {
	r := &pb.WatchResponse{Header: wr.Header, CompactRevision: wr.CompactRevision, Canceled: wr.Canceled, Created: wr.Created}
	for _, e := range wr.Events {
		r.Events = append(r.Events, (*mvccpb.Event)(e))
	}
	if err := wr.Err(); err != nil {
		r.CancelReason = "Err(): " + err.Error()
	}
	return r
}

// wpair is the same watch stream opened on both servers.
type wpair struct {
	c      *sc
	name   string
	raw    bool
	ref    *wstream
	sut    *wstream
	sent   []string // requests sent, for reports
	mark   [2]int   // compared prefix of ref, sut
	ignore func(*pb.WatchResponse) bool
}

func (w *wpair) side(i int) *wstream {
	if i == 0 {
		return w.ref
	}
	return w.sut
}

// openWatch opens a raw gRPC Watch stream on both servers. It is closed
// when the scenario ends.
func (c *sc) openWatch(name string) *wpair {
	c.t.Helper()
	w := &wpair{c: c, name: name, raw: true}
	for i, s := range []*server{c.p.ref, c.p.sut} {
		ws, err := openRawWatch(context.Background(), pb.NewWatchClient(s.cli.ActiveConnection()), s.name)
		if err != nil {
			c.t.Fatalf("%v%s", err, s.crashInfo())
		}
		ws.srv = s
		c.t.Cleanup(ws.cancel)
		if i == 0 {
			w.ref = ws
		} else {
			w.sut = ws
		}
	}
	return w
}

// clientWatch starts the same clientv3 Watch on both servers.
func (c *sc) clientWatch(key string, opts ...opt) *wpair {
	c.t.Helper()
	w := &wpair{c: c, name: fmt.Sprintf("clientv3.Watch(%s%s)", quoteTrunc([]byte(key)), optString(opts))}
	w.sent = append(w.sent, w.name)
	w.ref = openClientWatch(context.Background(), c.p.ref.cli, key, clientOpts(opts)...)
	w.ref.srv = c.p.ref
	w.sut = openClientWatch(context.Background(), c.p.sut.cli, key, clientOpts(opts)...)
	w.sut.srv = c.p.sut
	c.t.Cleanup(w.ref.cancel)
	c.t.Cleanup(w.sut.cancel)
	return w
}

// send sends one request on both streams.
func (w *wpair) send(desc string, r *pb.WatchRequest) {
	w.c.t.Helper()
	w.sent = append(w.sent, desc)
	for _, s := range []*wstream{w.ref, w.sut} {
		if err := s.send(r); err != nil && !errors.Is(err, io.EOF) {
			w.c.t.Fatalf("%s: send %s: %v%s", s.srv.name, desc, err, s.srv.crashInfo())
		}
		// io.EOF: the server ended the stream; Recv reports why.
	}
}

func (w *wpair) create(r *pb.WatchCreateRequest) {
	w.c.t.Helper()
	w.send("create "+oneLine(r), &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: r}})
}

func (w *wpair) cancelWatch(id int64) {
	w.c.t.Helper()
	w.send(fmt.Sprintf("cancel {watch_id:%d}", id), &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
}

func (w *wpair) requestProgress() {
	w.c.t.Helper()
	w.send("progress {}", progressReq())
}

func progressReq() *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}
}

// expect waits until c holds on both sides' new responses, then compares
// the two segments (up to where c first held) in view. It returns etcd's
// segment.
func (w *wpair) expect(what string, c cond, view viewFunc) []*pb.WatchResponse {
	w.c.t.Helper()
	var segs [2][]*pb.WatchResponse
	var ends [2]error
	for i := 0; i < 2; i++ {
		k, seg, end := w.side(i).log.waitFor(w.mark[i], w.filtered(c), watchWait)
		if k < 0 {
			if i == 0 {
				w.c.t.Fatalf("scenario bug: etcd did not deliver %q on %s within %v; it sent:\n%s", what, w.name, watchWait, strings.Join(w.render(view, seg, end), "\n"))
			}
			why := fmt.Sprintf("timed out after %v", watchWait)
			if end != nil {
				why = "stream ended"
			}
			w.fail(what, why, w.render(view, segs[0], ends[0]), w.render(view, seg, end))
		}
		if k > len(seg) { // the condition was the end of the stream
			segs[i], ends[i] = seg, end
		} else {
			segs[i] = seg[:k]
		}
	}
	a, b := w.render(view, segs[0], ends[0]), w.render(view, segs[1], ends[1])
	if !equalLines(a, b) {
		w.fail(what, "responses differ", a, b)
	}
	w.mark[0] += len(segs[0])
	w.mark[1] += len(segs[1])
	return segs[0]
}

// settle requests progress and expects, in viewExact, everything up to and
// including the progress response (watch_id -1, header = current revision).
// It shows that nothing else was pending, and only works when every watcher
// of the stream is synced and started at or before the current revision.
func (w *wpair) settle() {
	w.c.t.Helper()
	w.requestProgress()
	w.expect("progress response after RequestProgress", isProgress(-1).n(1), viewExact)
}

// leftover compares what arrived beyond the compared prefixes, without
// waiting (a cheap check for extra responses at the end of a scenario).
func (w *wpair) leftover() {
	w.c.t.Helper()
	var lines [2][]string
	for i := 0; i < 2; i++ {
		got, end, _ := w.side(i).log.snapshot()
		lines[i] = w.render(viewExact, got[w.mark[i]:], end)
	}
	if !equalLines(lines[0], lines[1]) {
		w.fail("no further responses", "responses differ", lines[0], lines[1])
	}
}

// filtered applies w.ignore before a condition.
func (w *wpair) filtered(c cond) cond {
	if w.ignore == nil {
		return c
	}
	return func(seg []*pb.WatchResponse, closed bool) int {
		var kept []*pb.WatchResponse
		idx := []int{}
		for i, r := range seg {
			if !w.ignore(r) {
				kept = append(kept, r)
				idx = append(idx, i)
			}
		}
		k := c(kept, closed)
		switch {
		case k < 0:
			return -1
		case k == 0:
			return 0
		case k > len(kept):
			return len(seg) + 1
		}
		return idx[k-1] + 1
	}
}

func (w *wpair) render(view viewFunc, seg []*pb.WatchResponse, end error) []string {
	if w.ignore != nil {
		var kept []*pb.WatchResponse
		for _, r := range seg {
			if !w.ignore(r) {
				kept = append(kept, r)
			}
		}
		seg = kept
	}
	lines := view(seg)
	if end != nil {
		lines = append(lines, endLine(end))
	}
	return lines
}

func endLine(err error) string {
	if errors.Is(err, errClientChanClosed) {
		return "<channel closed>"
	}
	return "<stream ended: " + errString(err) + ">"
}

func (w *wpair) fail(what, why string, ref, sut []string) {
	w.c.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "\nWATCH MISMATCH in %s, stream %s, waiting for: %s (%s)\n", w.c.name, w.name, what, why)
	fmt.Fprintf(&b, "  requests on this stream:\n")
	for _, s := range w.sent {
		fmt.Fprintf(&b, "    %s\n", truncate(s, 300))
	}
	b.WriteString("\n")
	b.WriteString(sideBySide("etcd", ref, w.sut.srv.name, sut))
	w.c.t.Fatalf("%s%s", b.String(), w.sut.srv.crashInfo())
}

func equalLines(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Conditions.

// matcher selects responses; n(k) is the condition "k of them arrived".
type matcher func(r *pb.WatchResponse) bool

func (m matcher) n(k int) cond {
	return func(seg []*pb.WatchResponse, _ bool) int {
		if k == 0 {
			return 0
		}
		c := 0
		for i, r := range seg {
			if m(r) {
				if c++; c == k {
					return i + 1
				}
			}
		}
		return -1
	}
}

func isCreated(id int64) matcher {
	return func(r *pb.WatchResponse) bool { return r.Created && r.WatchId == id }
}

func isCanceled(id int64) matcher {
	return func(r *pb.WatchResponse) bool { return r.Canceled && !r.Created && r.WatchId == id }
}

// isProgress matches an empty response that is neither created nor
// canceled (a progress notification), for watch id (-1 for RequestProgress).
func isProgress(id int64) matcher {
	return func(r *pb.WatchResponse) bool {
		return r.WatchId == id && isProgressResp(r)
	}
}

func isProgressResp(r *pb.WatchResponse) bool {
	return len(r.Events) == 0 && !r.Created && !r.Canceled && r.CompactRevision == 0
}

// events is "watch id received n events in total" (and the rest of a
// fragmented response they are part of).
func events(id int64, n int) cond {
	return func(seg []*pb.WatchResponse, _ bool) int {
		if n == 0 {
			return 0
		}
		c := 0
		for i, r := range seg {
			if r.WatchId == id {
				if c += len(r.Events); c >= n {
					return endOfFragments(seg, i)
				}
			}
		}
		return -1
	}
}

// eventAt is "watch id received an event with mod_revision rev" (and the
// rest of a fragmented response it is part of).
func eventAt(id, rev int64) cond {
	return func(seg []*pb.WatchResponse, _ bool) int {
		for i, r := range seg {
			if r.WatchId != id {
				continue
			}
			for _, e := range r.Events {
				if e.Kv != nil && e.Kv.ModRevision == rev {
					return endOfFragments(seg, i)
				}
			}
		}
		return -1
	}
}

// endOfFragments returns the prefix length that ends with the last
// fragment of the response at i (-1 if that has not arrived yet).
func endOfFragments(seg []*pb.WatchResponse, i int) int {
	id := seg[i].WatchId
	for j := i; j < len(seg); j++ {
		if seg[j].WatchId == id && !seg[j].Fragment {
			return j + 1
		}
	}
	return -1
}

// ended is "the stream ended" (a clientv3 channel was closed); the end is
// then part of the compared segment.
func ended() cond {
	return func(seg []*pb.WatchResponse, closed bool) int {
		if closed {
			return len(seg) + 1
		}
		return -1
	}
}

// all holds once every condition holds.
func all(cs ...cond) cond {
	return func(seg []*pb.WatchResponse, closed bool) int {
		k := 0
		for _, c := range cs {
			x := c(seg, closed)
			if x < 0 {
				return -1
			}
			k = max(k, x)
		}
		return k
	}
}

// Views.

type viewFunc func(seg []*pb.WatchResponse) []string

// viewExact renders every response in full, grouped by watch id.
func viewExact(seg []*pb.WatchResponse) []string {
	return groupedView(seg, false)
}

// viewFlat merges consecutive event responses of a watch id into one
// flattened event list (header and fragment flags dropped).
func viewFlat(seg []*pb.WatchResponse) []string {
	return groupedView(seg, true)
}

// viewCollapsed is viewExact with runs of identical progress notifications
// of a watch collapsed into one (their number depends on timing).
func viewCollapsed(seg []*pb.WatchResponse) []string {
	var out []string
	for _, l := range groupedView(seg, false) {
		if len(out) > 0 && out[len(out)-1] == l && strings.Contains(l, "(progress)") {
			continue
		}
		out = append(out, l)
	}
	return out
}

func groupedView(seg []*pb.WatchResponse, flat bool) []string {
	groups := map[int64][]*pb.WatchResponse{}
	var ids []int64
	for _, r := range seg {
		if _, ok := groups[r.WatchId]; !ok {
			ids = append(ids, r.WatchId)
		}
		groups[r.WatchId] = append(groups[r.WatchId], r)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var out []string
	for _, id := range ids {
		out = append(out, fmt.Sprintf("watch_id %d:", id))
		inEvents := false
		for _, r := range groups[id] {
			n := normalize(r).(*pb.WatchResponse)
			isEv := len(n.Events) > 0 && !n.Created && !n.Canceled && n.CompactRevision == 0
			if flat && isEv {
				if !inEvents {
					out = append(out, "  events:")
				}
				inEvents = true
				for _, e := range n.Events {
					out = append(out, "    "+eventLine(e))
				}
				continue
			}
			inEvents = false
			out = append(out, "  "+respLine(n))
			for _, e := range n.Events {
				out = append(out, "    "+eventLine(e))
			}
		}
	}
	return out
}

// respLine renders a response without its events.
func respLine(r *pb.WatchResponse) string {
	cp := proto.Clone(r).(*pb.WatchResponse)
	cp.Events = nil
	s := oneLine(cp)
	switch {
	case len(r.Events) > 0:
		s += fmt.Sprintf(" (%d events)", len(r.Events))
	case isProgressResp(r):
		s += " (progress)"
	}
	return s
}

func eventLine(e *mvccpb.Event) string {
	s := e.Type.String() + " " + oneLine(e.Kv)
	if e.PrevKv != nil {
		s += " prev_kv:" + oneLine(e.PrevKv)
	}
	return s
}

// Small builders.

func wcreate(key, end string, start int64) *pb.WatchCreateRequest {
	return &pb.WatchCreateRequest{Key: b(key), RangeEnd: b(end), StartRevision: start}
}

// progressAfterEvents checks, on one side's recorded responses, that every
// progress response (watch_id -1) comes after all event responses whose
// events are at or below its header revision.
func progressAfterEvents(seg []*pb.WatchResponse) error {
	for i, r := range seg {
		if r.WatchId != clientv3.InvalidWatchID || !isProgressResp(r) || r.Header == nil {
			continue
		}
		for _, later := range seg[i+1:] {
			for _, e := range later.Events {
				if e.Kv != nil && e.Kv.ModRevision <= r.Header.Revision {
					return fmt.Errorf("progress response at revision %d was delivered before an event at revision %d (watch %d)", r.Header.Revision, e.Kv.ModRevision, later.WatchId)
				}
			}
		}
	}
	return nil
}
