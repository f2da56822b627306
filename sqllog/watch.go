package sqllog

import (
	"bytes"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Watch errors; their texts are etcd's, since clients see them as cancel reasons.
var (
	ErrWatcherNotExist    = errors.New("mvcc: watcher does not exist")
	ErrEmptyWatcherRange  = errors.New("mvcc: watcher range is empty")
	ErrWatcherDuplicateID = errors.New("mvcc: duplicate watch ID provided on the WatchStream")
)

// AutoWatchID asks the stream to choose the watch id.
const AutoWatchID int64 = 0

// InvalidWatchID marks a response that belongs to no single watcher.
const InvalidWatchID int64 = -1

// streamBuffer is how many responses a stream holds for its sender before
// its watchers count as slow and fall back to catching up from the log
// (fewer than etcd's 128: a response may carry megabytes, and a lagging
// watcher costs shimd only a read of the log, not memory).
const streamBuffer = 32

// WatchResponse is what a watcher is sent: the events of one or more whole
// revisions, a progress notification (no events), or the notice that its
// next revision has been compacted.
type WatchResponse struct {
	WatchID int64
	// Seq tells apart the watchers that have had WatchID on one stream: a
	// response of a canceled watcher may still be on its way when a new
	// watcher reuses the id.
	Seq             uint64
	Events          []*mvccpb.Event
	Revision        int64
	CompactRevision int64
}

// FilterFunc reports whether an event is to be left out.
type FilterFunc func(ev *mvccpb.Event) bool

type watcher struct {
	key, end []byte
	startRev int64
	seq      uint64
	// minRev is the next revision the watcher has not been sent.
	minRev    int64
	id        int64
	filters   []FilterFunc
	ch        chan<- WatchResponse
	compacted bool
	// retry and retryAt back off a lagging watcher whose stream is full, so
	// that a client that stopped reading costs little until it reads again.
	retry   time.Duration
	retryAt time.Time
}

const maxRetry = time.Second

func (w *watcher) backoff(now time.Time) {
	w.retry = min(max(2*w.retry, syncRetry), maxRetry)
	w.retryAt = now.Add(w.retry)
}

func (w *watcher) contains(key []byte) bool {
	switch {
	case w.end == nil:
		return bytes.Equal(key, w.key)
	case len(w.end) == 0:
		return bytes.Compare(key, w.key) >= 0
	}
	return bytes.Compare(key, w.key) >= 0 && bytes.Compare(key, w.end) < 0
}

// send offers wr without blocking and reports whether it was taken (or had
// nothing left to say after filtering).
func (w *watcher) send(wr WatchResponse) bool {
	wr.Seq = w.seq
	progress := len(wr.Events) == 0
	if len(w.filters) != 0 {
		kept := make([]*mvccpb.Event, 0, len(wr.Events))
		for _, ev := range wr.Events {
			drop := false
			for _, f := range w.filters {
				if f(ev) {
					drop = true
					break
				}
			}
			if !drop {
				kept = append(kept, ev)
			}
		}
		wr.Events = kept
	}
	if !progress && len(wr.Events) == 0 {
		return true
	}
	select {
	case w.ch <- wr:
		eventsCounter.Add(float64(len(wr.Events)))
		return true
	default:
		return false
	}
}

// watcherGroup finds the watchers of a key quickly: single-key watchers by
// map, range watchers by scan (they are few: one per resource type for a
// kube-apiserver).
type watcherGroup struct {
	keys   map[string]map[*watcher]struct{}
	ranges map[*watcher]struct{}
	size   int
}

func newWatcherGroup() watcherGroup {
	return watcherGroup{keys: make(map[string]map[*watcher]struct{}), ranges: make(map[*watcher]struct{})}
}

func (g *watcherGroup) add(w *watcher) {
	g.size++
	if w.end != nil {
		g.ranges[w] = struct{}{}
		return
	}
	set := g.keys[string(w.key)]
	if set == nil {
		set = make(map[*watcher]struct{})
		g.keys[string(w.key)] = set
	}
	set[w] = struct{}{}
}

func (g *watcherGroup) delete(w *watcher) bool {
	if w.end != nil {
		if _, ok := g.ranges[w]; !ok {
			return false
		}
		delete(g.ranges, w)
		g.size--
		return true
	}
	set := g.keys[string(w.key)]
	if _, ok := set[w]; !ok {
		return false
	}
	delete(set, w)
	if len(set) == 0 {
		delete(g.keys, string(w.key))
	}
	g.size--
	return true
}

func (g *watcherGroup) has(w *watcher) bool {
	if w.end != nil {
		_, ok := g.ranges[w]
		return ok
	}
	_, ok := g.keys[string(w.key)][w]
	return ok
}

// each calls fn for every watcher of key.
func (g *watcherGroup) each(key []byte, fn func(w *watcher)) {
	for w := range g.keys[string(key)] {
		fn(w)
	}
	for w := range g.ranges {
		if w.contains(key) {
			fn(w)
		}
	}
}

func (g *watcherGroup) all(fn func(w *watcher)) {
	for _, set := range g.keys {
		for w := range set {
			fn(w)
		}
	}
	for w := range g.ranges {
		fn(w)
	}
}

// WatchStream is the set of watchers of one client stream. All their
// responses go out, in order, on one channel.
type WatchStream struct {
	h        *hub
	ch       chan WatchResponse
	mu       sync.Mutex
	nextID   int64
	seq      uint64
	closed   bool
	watchers map[int64]*watcher
}

// NewWatchStream opens a stream of watchers on the log.
func (h *hub) NewWatchStream() *WatchStream {
	watchStreamGauge.Inc()
	return &WatchStream{h: h, ch: make(chan WatchResponse, streamBuffer), watchers: make(map[int64]*watcher)}
}

// Chan delivers the stream's responses.
func (ws *WatchStream) Chan() <-chan WatchResponse { return ws.ch }

// Rev is the latest revision delivered to in-sync watchers.
func (ws *WatchStream) Rev() int64 { return ws.h.notifiedRev() }

// Watch adds a watcher of [key, end) (end nil: the key alone; empty: every
// key from key on) from startRev (0: from the next revision). id
// AutoWatchID lets the stream pick one. It returns the id and the seq its
// responses carry.
func (ws *WatchStream) Watch(id int64, key, end []byte, startRev int64, filters ...FilterFunc) (int64, uint64, error) {
	if len(end) != 0 && bytes.Compare(key, end) >= 0 {
		return InvalidWatchID, 0, ErrEmptyWatcherRange
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return InvalidWatchID, 0, ErrEmptyWatcherRange
	}
	if id == AutoWatchID {
		for ws.watchers[ws.nextID] != nil {
			ws.nextID++
		}
		id = ws.nextID
		ws.nextID++
	} else if _, dup := ws.watchers[id]; dup {
		return InvalidWatchID, 0, ErrWatcherDuplicateID
	}
	ws.seq++
	w := &watcher{key: key, end: end, startRev: startRev, minRev: startRev, id: id, seq: ws.seq, filters: filters, ch: ws.ch}
	ws.h.add(w)
	ws.watchers[id] = w
	return id, w.seq, nil
}

// Cancel removes a watcher.
func (ws *WatchStream) Cancel(id int64) error {
	ws.mu.Lock()
	w, ok := ws.watchers[id]
	ok = ok && !ws.closed
	if ok {
		delete(ws.watchers, id)
	}
	ws.mu.Unlock()
	if !ok {
		return ErrWatcherNotExist
	}
	ws.h.remove(w)
	return nil
}

// RequestProgress sends watcher id a progress notification at the current
// revision, if it is in sync and has no events pending.
func (ws *WatchStream) RequestProgress(id int64) {
	ws.mu.Lock()
	w, ok := ws.watchers[id]
	ws.mu.Unlock()
	if ok {
		ws.h.progressIfSync([]*watcher{w}, id)
	}
}

// RequestProgressAll sends one stream-wide progress notification, but only
// when every watcher of the stream is in sync, so that the revision it
// carries is never ahead of an event still to be delivered.
func (ws *WatchStream) RequestProgressAll() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws2 := make([]*watcher, 0, len(ws.watchers))
	for _, w := range ws.watchers {
		ws2 = append(ws2, w)
	}
	return ws.h.progressIfSync(ws2, InvalidWatchID)
}

// Close removes every watcher and closes the channel.
func (ws *WatchStream) Close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return
	}
	for _, w := range ws.watchers {
		ws.h.remove(w)
	}
	ws.closed = true
	close(ws.ch)
	watchStreamGauge.Dec()
}
