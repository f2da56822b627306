package sqllog

import (
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

const (
	// maxWatchersPerSync bounds the lagging watchers caught up in one pass.
	maxWatchersPerSync = 512
	// watchBatchMaxRevs bounds the revisions sent to a watcher in one
	// response while it catches up, as etcd does.
	watchBatchMaxRevs = 1000
	// syncRetry is how soon a lagging watcher whose stream was full is retried.
	syncRetry = 10 * time.Millisecond
	// historyRows and historyBytes bound what one catch-up pass reads from
	// the database, so that a lagging watcher over large values costs
	// bounded memory.
	historyRows  = 10000
	historyBytes = 8 << 20
	// catchUpQueue is how many responses a lagging watcher's stream may
	// hold and still be sent more history: each may carry historyBytes, so
	// a stream catching up buffers a few of them, not streamBuffer.
	catchUpQueue = 4
)

// hub is the one log follower of a process: it fans each committed revision
// out to the watchers that are in sync, and catches lagging watchers (new
// ones with a past start revision, or slow ones) up from the log. A slow
// watcher never blocks the writer or other watchers: a send that would block
// just moves it back to the lagging group.
type hub struct {
	s  *state
	st *store
	lg *slog.Logger

	mu sync.Mutex
	// rev is the last revision fanned out to the in-sync watchers.
	rev      int64
	synced   watcherGroup
	unsynced map[*watcher]struct{}
	cache    eventCache
	wake     chan struct{}
	quit     chan struct{}
	done     chan struct{}
}

func (h *hub) start() {
	h.rev = h.s.Rev()
	h.synced = newWatcherGroup()
	h.unsynced = make(map[*watcher]struct{})
	h.wake = make(chan struct{}, 1)
	h.quit = make(chan struct{})
	h.done = make(chan struct{})
	go h.run()
}

func (h *hub) stop() {
	close(h.quit)
	<-h.done
}

func (h *hub) notifiedRev() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

func (h *hub) kick() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// add places a new watcher: in sync when it starts at the next revision or
// later, lagging when it asks for history.
func (h *hub) add(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	watcherGauge.Inc()
	if w.startRev == 0 || w.startRev > h.rev {
		w.minRev = max(h.rev+1, w.startRev)
		h.synced.add(w)
		return
	}
	h.unsynced[w] = struct{}{}
	h.kick()
}

func (h *hub) remove(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	watcherGauge.Dec()
	if !h.synced.delete(w) {
		delete(h.unsynced, w)
	}
	w.ch = nil
}

func (h *hub) progressIfSync(ws []*watcher, id int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range ws {
		if !h.synced.has(w) || h.rev < w.startRev {
			return false
		}
	}
	// The stream's watchers share one channel: one response serves them all.
	for _, w := range ws {
		w.send(WatchResponse{WatchID: id, Revision: h.rev})
		return true
	}
	return true
}

// jump is told that the log was rebuilt at rev from the database: the
// revisions after the last one fanned out never reached the hub, and some
// may have been compacted away. Every watcher goes back to catching up from
// the log, where those whose next revision is compacted are cancelled; the
// cache, which would have a gap, is emptied.
func (h *hub) jump(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced.all(func(w *watcher) {
		// An in-sync watcher has had everything up to h.rev.
		w.minRev = max(w.minRev, h.rev+1)
		h.unsynced[w] = struct{}{}
	})
	h.synced = newWatcherGroup()
	h.cache = eventCache{}
	h.rev = rev
	h.kick()
}

// cancelAll is told that the index was rebuilt at rev from a database that
// lost revisions the watchers may have been sent (see resync.go): every
// watcher is cancelled as compacted, whatever its next revision, so that its
// client lists again instead of going on from a history that is gone.
func (h *hub) cancelAll(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced.all(func(w *watcher) { h.unsynced[w] = struct{}{} })
	for w := range h.unsynced {
		// Below any compact revision: syncWatchers cancels it as compacted.
		w.minRev = 0
		w.retryAt = time.Time{}
	}
	h.synced = newWatcherGroup()
	h.cache = eventCache{}
	h.rev = rev
	h.kick()
}

// notifyChanges hands committed changes, in log order, to the watchers, one
// revision at a time.
func (h *hub) notifyChanges(changes []Change) {
	for i := 0; i < len(changes); {
		rev := changes[i].e.rev
		var evs []*mvccpb.Event
		for ; i < len(changes) && changes[i].e.rev == rev; i++ {
			c := changes[i]
			evs = append(evs, event(&mvccpb.KeyValue{Key: c.Key, Value: c.Value, CreateRevision: c.e.create, ModRevision: c.e.rev, Version: c.e.version, Lease: c.e.lease}, c.e.tombstone()))
		}
		h.notify(rev, evs)
	}
}

// notify fans out the events of revision rev, committed in order.
func (h *hub) notify(rev int64, evs []*mvccpb.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cache.add(rev, evs)
	h.rev = rev
	if h.synced.size == 0 {
		return
	}
	batches := make(map[*watcher][]*mvccpb.Event)
	for _, ev := range evs {
		h.synced.each(ev.Kv.Key, func(w *watcher) {
			if w.minRev <= rev {
				batches[w] = append(batches[w], ev)
			}
		})
	}
	for w, evs := range batches {
		if !w.send(WatchResponse{WatchID: w.id, Events: evs, Revision: rev}) {
			// Its stream is full: it will catch up from the log from here.
			h.synced.delete(w)
			w.minRev = rev
			h.unsynced[w] = struct{}{}
			h.kick()
			continue
		}
		w.minRev = rev + 1
	}
}

func (h *hub) run() {
	defer close(h.done)
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-h.quit:
			return
		case <-h.wake:
		case <-retry.C:
		}
		left := h.syncWatchers()
		slowWatcherGauge.Set(float64(left))
		if left > 0 {
			retry.Reset(syncRetry)
		}
	}
}

// syncWatchers catches lagging watchers up by one batch each and returns how
// many still lag. The history is read without holding the hub's lock, so
// that a slow read never delays the fan-out of new commits.
func (h *hub) syncWatchers() int {
	h.mu.Lock()
	if len(h.unsynced) == 0 {
		h.mu.Unlock()
		return 0
	}
	curRev := h.rev
	compactRev := h.s.CompactRev()
	now := time.Now()
	chosen := make([]*watcher, 0, min(len(h.unsynced), maxWatchersPerSync))
	from := make(map[*watcher]int64)
	minRev := int64(math.MaxInt64)
	for w := range h.unsynced {
		if len(chosen) == maxWatchersPerSync {
			break
		}
		if now.Before(w.retryAt) {
			continue
		}
		if w.minRev < compactRev {
			if w.send(WatchResponse{WatchID: w.id, CompactRevision: compactRev}) {
				w.compacted = true
				delete(h.unsynced, w)
			} else {
				w.backoff(now)
			}
			continue
		}
		if w.minRev > curRev {
			delete(h.unsynced, w)
			h.synced.add(w)
			continue
		}
		// No history is read for a stream that could not take it now; one
		// whose client stopped reading only costs this check until it reads.
		if n := len(w.ch); n >= catchUpQueue {
			if n == cap(w.ch) {
				w.backoff(now)
			}
			continue
		}
		chosen = append(chosen, w)
		from[w] = w.minRev
		minRev = min(minRev, w.minRev)
	}
	h.mu.Unlock()
	if len(chosen) == 0 {
		return h.lagging()
	}

	evs, upTo, err := h.history(minRev, curRev)
	var compacted *compactedError
	if errors.As(err, &compacted) {
		// Compacted in the database before this process heard of it.
		h.cancelCompacted(chosen, from, compacted.rev, now)
		return h.lagging()
	}
	if err != nil {
		h.lg.Warn("watch: reading history failed; will retry", "err", err)
		return h.lagging()
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range chosen {
		// Cancelled, or moved on by someone else, while the lock was free.
		if _, still := h.unsynced[w]; !still || w.minRev != from[w] {
			continue
		}
		batch, revs, next, last := []*mvccpb.Event(nil), 0, int64(0), int64(0)
		for _, ev := range evs {
			r := ev.Kv.ModRevision
			if r < w.minRev || !w.contains(ev.Kv.Key) {
				continue
			}
			if r != last {
				if revs == watchBatchMaxRevs {
					next = r
					break
				}
				revs++
				last = r
			}
			batch = append(batch, ev)
		}
		if next == 0 && upTo < curRev {
			next = upTo + 1
		}
		if len(batch) > 0 && !w.send(WatchResponse{WatchID: w.id, Events: batch, Revision: curRev}) {
			w.backoff(now) // stream full: retry later from the same place
			continue
		}
		w.retry = 0
		if next != 0 {
			w.minRev = next
			continue
		}
		w.minRev = curRev + 1
		if w.minRev <= h.rev {
			continue // commits fanned out meanwhile: another pass picks them up
		}
		delete(h.unsynced, w)
		h.synced.add(w)
	}
	return len(h.unsynced)
}

// cancelCompacted cancels the chosen watchers whose next revision is below
// compactRev, as compacted; the others are caught up on the next pass.
func (h *hub) cancelCompacted(chosen []*watcher, from map[*watcher]int64, compactRev int64, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range chosen {
		if _, still := h.unsynced[w]; !still || w.minRev != from[w] || w.minRev >= compactRev {
			continue
		}
		if w.send(WatchResponse{WatchID: w.id, CompactRevision: compactRev}) {
			w.compacted = true
			delete(h.unsynced, w)
		} else {
			w.backoff(now)
		}
	}
	h.kick()
}

func (h *hub) lagging() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.unsynced)
}
