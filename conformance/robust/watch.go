package robust

import (
	"context"
	"fmt"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
)

// Event is a watch event.
type Event struct {
	Delete                  bool
	Key, Value              string
	Create, Mod, Ver, Lease int64
	Prev                    *KV
}

func (e Event) String() string {
	t := "PUT"
	if e.Delete {
		t = "DELETE"
	}
	s := fmt.Sprintf("%s %s=%q c%d m%d v%d", t, e.Key, e.Value, e.Create, e.Mod, e.Ver)
	if e.Lease != 0 {
		s += fmt.Sprintf(" lease %x", e.Lease)
	}
	if e.Prev != nil {
		s += fmt.Sprintf(" prev{%q c%d m%d v%d}", e.Prev.Value, e.Prev.Create, e.Prev.Mod, e.Prev.Ver)
	}
	return s
}

func eventEqual(a, b Event) bool {
	if a.Delete != b.Delete || a.Key != b.Key || a.Value != b.Value || a.Create != b.Create ||
		a.Mod != b.Mod || a.Ver != b.Ver || a.Lease != b.Lease || (a.Prev == nil) != (b.Prev == nil) {
		return false
	}
	return a.Prev == nil || *a.Prev == *b.Prev
}

func FromPBEvent(e *mvccpb.Event) Event {
	out := Event{
		Delete: e.Type == mvccpb.DELETE, Key: string(e.Kv.Key), Value: string(e.Kv.Value),
		Create: e.Kv.CreateRevision, Mod: e.Kv.ModRevision, Ver: e.Kv.Version, Lease: e.Kv.Lease,
	}
	if e.PrevKv != nil {
		p := FromPB([]*mvccpb.KeyValue{e.PrevKv})[0]
		out.Prev = &p
	}
	return out
}

// WatchResp is one response a watcher received.
type WatchResp struct {
	Session      int // which stream (a watcher reopens its stream after a fault)
	WatchID      int64
	Rev          int64
	Events       []Event
	Created      bool
	Canceled     bool
	CancelReason string
	CompactRev   int64
	Progress     bool // no events, not created or canceled: a progress notification
	// Start is the start revision the stream's watch was created with (0:
	// not known); At is when the response arrived.
	Start int64
	At    time.Time
	// Conn is the index of the connection the stream was on (see
	// StartWatcherOn).
	Conn int
}

// Watcher is a watch that survives faults: when its stream breaks it opens
// a new one from the revision after the last event it received, as a client
// would; when it is canceled by a compaction, from the compact revision
// (the events in between are gone). It asks for progress notifications
// every ProgressEvery.
type Watcher struct {
	Name string

	mu        sync.Mutex
	resps     []WatchResp
	session   int
	last      int64 // last event revision
	progress  int64 // last progress revision in the current session
	resumeAt  int64 // compact revision of the last compaction cancel
	compacted int   // compaction cancels
	changed   chan struct{}
	reasons   []string
	cancel    context.CancelFunc
	done      chan struct{}
	createdAt []int64 // start revision of each session
}

// WatchSpec says what to watch.
type WatchSpec struct {
	Key, End      string // End "\x00": every key >= Key
	Start         int64
	PrevKV        bool
	ProgressEvery time.Duration // 0: never request progress
	// HopEvery, when set, ends each stream after that long, so that the
	// watch is resumed, from a past revision, on the next connection.
	HopEvery time.Duration
}

// errHop ends a stream after WatchSpec.HopEvery.
var errHop = fmt.Errorf("hop to the next connection")

// StartWatcher opens the watch on conn and keeps it open until Stop.
func StartWatcher(ctx context.Context, name string, conn *grpc.ClientConn, spec WatchSpec) *Watcher {
	return StartWatcherOn(ctx, name, []*grpc.ClientConn{conn}, spec)
}

// StartWatcherOn opens the watch on conns[0] and keeps it open until Stop;
// each time a stream ends, the watch resumes on the next connection (a
// client failing over between the processes of one cluster).
func StartWatcherOn(ctx context.Context, name string, conns []*grpc.ClientConn, spec WatchSpec) *Watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{Name: name, changed: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			w.mu.Lock()
			from := spec.Start
			if w.last > 0 {
				from = w.last + 1
			}
			from = max(from, w.resumeAt)
			ci := w.session % len(conns)
			w.mu.Unlock()
			err := w.session1(ctx, conns[ci], ci, spec, from)
			if ctx.Err() != nil {
				return
			}
			w.mu.Lock()
			w.reasons = append(w.reasons, fmt.Sprint(err))
			w.session++
			w.progress = 0
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *Watcher) session1(ctx context.Context, conn *grpc.ClientConn, ci int, spec WatchSpec, from int64) error {
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	if spec.HopEvery > 0 {
		sctx, scancel = context.WithTimeoutCause(sctx, spec.HopEvery, errHop)
		defer scancel()
	}
	stream, err := pb.NewWatchClient(conn).Watch(sctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	cr := &pb.WatchCreateRequest{Key: []byte(spec.Key), StartRevision: from, PrevKv: spec.PrevKV}
	if spec.End != "" {
		cr.RangeEnd = []byte(spec.End)
	}
	if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: cr}}); err != nil {
		return err
	}
	w.mu.Lock()
	w.createdAt = append(w.createdAt, from)
	session := w.session
	w.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer scancel()
	if spec.ProgressEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(spec.ProgressEvery)
			defer t.Stop()
			for {
				select {
				case <-sctx.Done():
					return
				case <-t.C:
				}
				if stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}) != nil {
					return
				}
			}
		}()
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			if context.Cause(sctx) == errHop && ctx.Err() == nil {
				return errHop
			}
			return err
		}
		wr := ToWatchResp(session, resp)
		wr.Start, wr.At, wr.Conn = from, time.Now(), ci
		w.mu.Lock()
		w.resps = append(w.resps, wr)
		if wr.Canceled && wr.CompactRev > 0 {
			w.compacted++
			w.resumeAt = max(w.resumeAt, wr.CompactRev)
		}
		for _, e := range wr.Events {
			w.last = max(w.last, e.Mod)
		}
		if wr.Progress {
			w.progress = max(w.progress, wr.Rev)
		}
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
		if wr.Canceled {
			return fmt.Errorf("watch canceled: %q (compact revision %d)", wr.CancelReason, wr.CompactRev)
		}
	}
}

// ToWatchResp converts a response received on stream session.
func ToWatchResp(session int, resp *pb.WatchResponse) WatchResp {
	wr := WatchResp{
		Session: session, WatchID: resp.WatchId, Created: resp.Created, Canceled: resp.Canceled,
		CancelReason: resp.CancelReason, CompactRev: resp.CompactRevision,
	}
	if resp.Header != nil {
		wr.Rev = resp.Header.Revision
	}
	for _, e := range resp.Events {
		wr.Events = append(wr.Events, FromPBEvent(e))
	}
	wr.Progress = len(resp.Events) == 0 && !resp.Created && !resp.Canceled && resp.CompactRevision == 0 && !resp.Fragment
	return wr
}

// WaitRev waits until the watcher has received every event up to rev: an
// event at rev or later, or a progress notification at rev or later.
func (w *Watcher) WaitRev(rev int64, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		last, prog, ch := w.last, w.progress, w.changed
		w.mu.Unlock()
		if last >= rev || prog >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("watcher %s: no event or progress at revision %d within %v (last event %d, last progress %d)", w.Name, rev, timeout, last, prog)
		}
	}
}

// Last is the revision of the last event received (0: none yet).
func (w *Watcher) Last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Compacted counts the cancellations by a compaction (each followed by a
// watch from the compact revision).
func (w *Watcher) Compacted() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.compacted
}

// Stop ends the watch and returns everything it received.
func (w *Watcher) Stop() []WatchResp {
	w.cancel()
	<-w.done
	return w.Responses()
}

// Responses is what the watcher has received so far.
func (w *Watcher) Responses() []WatchResp {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]WatchResp(nil), w.resps...)
}

// Reconnects is how many times the stream was reopened, and why.
func (w *Watcher) Reconnects() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.session, append([]string(nil), w.reasons...)
}

// Collect opens one watch from spec.Start and returns its responses once it
// has every event up to rev (asking for progress to learn that when the
// last revision changed nothing in range).
func Collect(ctx context.Context, conn *grpc.ClientConn, spec WatchSpec, rev int64, timeout time.Duration) ([]WatchResp, error) {
	if spec.Start > rev {
		// Nothing to wait for: etcd does not answer progress requests of
		// a stream whose watcher starts in the future.
		return nil, nil
	}
	if spec.ProgressEvery == 0 {
		spec.ProgressEvery = 100 * time.Millisecond
	}
	w := StartWatcher(ctx, "collect", conn, spec)
	err := w.WaitRev(rev, timeout)
	resps := w.Stop()
	if n, why := w.Reconnects(); n > 0 && err == nil {
		err = fmt.Errorf("stream broke %d times: %v", n, why)
	}
	return resps, err
}

// Events flattens the events of responses.
func Events(resps []WatchResp) []Event {
	var out []Event
	for _, r := range resps {
		out = append(out, r.Events...)
	}
	return out
}
