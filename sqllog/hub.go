package sqllog

import (
	"context"
	"errors"
	"fmt"
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
	// cacheEvents and cacheBytes bound the recent events kept in memory, so
	// that watchers a little behind catch up without reading the database.
	cacheEvents = 2048
	cacheBytes  = 4 << 20
)

// hub is the one log follower of a process: it fans each committed revision
// out to the watchers that are in sync, and catches lagging watchers (new
// ones with a past start revision, or slow ones) up from the log. A slow
// watcher never blocks the writer or other watchers: a send that would block
// just moves it back to the lagging group.
type hub struct {
	l  *Log
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

func (h *hub) start(l *Log) {
	h.l = l
	h.rev = l.Rev()
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

// notify fans out the events of revision rev, committed in order.
func (h *hub) notify(rev int64, evs []mvccpb.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cache.add(rev, evs)
	h.rev = rev
	if h.synced.size == 0 {
		return
	}
	batches := make(map[*watcher][]mvccpb.Event)
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
	compactRev := h.l.CompactRev()
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
		h.l.lg.Warn("watch: reading history failed; will retry", "err", err)
		return h.lagging()
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range chosen {
		// Cancelled, or moved on by someone else, while the lock was free.
		if _, still := h.unsynced[w]; !still || w.minRev != from[w] {
			continue
		}
		batch, revs, next, last := []mvccpb.Event(nil), 0, int64(0), int64(0)
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

// history returns the events of revisions from..to, whole revisions only,
// and the last revision it covers (which may be less than to when the range
// is large).
func (h *hub) history(from, to int64) ([]mvccpb.Event, int64, error) {
	if evs, ok := h.cache.get(from, to); ok {
		return evs, to, nil
	}
	return h.l.readEvents(context.Background(), from, to, historyRows, historyBytes)
}

// eventCache keeps the events of recent revisions, oldest first.
type eventCache struct {
	revs  []cachedRev
	count int
	bytes int
	// floor is the revision from which the cache is complete; 0 when empty.
	floor int64
}

type cachedRev struct {
	rev   int64
	evs   []mvccpb.Event
	bytes int
}

func (c *eventCache) add(rev int64, evs []mvccpb.Event) {
	if c.floor == 0 {
		c.floor = rev
	}
	size := 0
	for _, ev := range evs {
		size += len(ev.Kv.Key) + len(ev.Kv.Value) + 64
	}
	c.revs = append(c.revs, cachedRev{rev, evs, size})
	c.count += len(evs)
	c.bytes += size
	for (c.count > cacheEvents || c.bytes > cacheBytes) && len(c.revs) > 0 {
		c.count -= len(c.revs[0].evs)
		c.bytes -= c.revs[0].bytes
		c.floor = c.revs[0].rev + 1
		c.revs[0] = cachedRev{}
		c.revs = c.revs[1:]
	}
	if len(c.revs) == 0 {
		c.floor = rev + 1
	}
}

// get returns the cached events of revisions from..to if the cache holds
// all of them.
func (c *eventCache) get(from, to int64) ([]mvccpb.Event, bool) {
	if c.floor == 0 || from < c.floor {
		return nil, false
	}
	var evs []mvccpb.Event
	for _, r := range c.revs {
		if r.rev >= from && r.rev <= to {
			evs = append(evs, r.evs...)
		}
	}
	return evs, true
}

// compactedError reports that the database has been compacted at rev, above
// the revision a read of history started from.
type compactedError struct{ rev int64 }

func (e *compactedError) Error() string {
	return fmt.Sprintf("history compacted at revision %d", e.rev)
}

// readEvents reads the events of revisions from..to from the log, at most
// about limit rows and maxBytes of keys and values, cut at a revision
// boundary (a single revision is always read whole). It returns the last
// revision it covers. It reads in one snapshot with the compact revision:
// rows at or above the compact revision are never deleted, so the events are
// complete, or it fails with a *compactedError when that is above from (some
// of the rows may be gone, whether or not this process knows yet).
func (l *Log) readEvents(ctx context.Context, from, to int64, limit, maxBytes int) ([]mvccpb.Event, int64, error) {
	tx, err := l.be.Dialect.BeginSnapshot(ctx, l.be.Read)
	if err != nil {
		return nil, 0, err
	}
	defer tx.Rollback()
	var compactRev int64
	if err := tx.QueryRowContext(ctx, `SELECT compact_rev FROM shimd_meta WHERE id = 1`).Scan(&compactRev); err != nil {
		return nil, 0, err
	}
	if compactRev > from {
		return nil, 0, &compactedError{rev: compactRev}
	}
	evs, upTo, err := l.readEventsIn(ctx, tx, from, to, limit, maxBytes)
	if err != nil {
		return nil, 0, err
	}
	return evs, upTo, tx.Commit()
}

func (l *Log) readEventsIn(ctx context.Context, q queryer, from, to int64, limit, maxBytes int) ([]mvccpb.Event, int64, error) {
	// Ordered as the (rev, id) index is (the same order as id's), so the
	// LIMIT stops the scan: by id alone, SQLite sorts every row of the range,
	// values included, before the first is returned.
	rows, err := q.QueryContext(ctx, l.q(`SELECT rev, kv_key, value, create_rev, version, lease, deleted FROM shimd_log WHERE rev >= ? AND rev <= ? ORDER BY rev, id LIMIT ?`), from, to, limit+1)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var evs []mvccpb.Event
	size, full := 0, false
	for rows.Next() {
		var kv mvccpb.KeyValue
		var deleted bool
		if err := rows.Scan(&kv.ModRevision, &kv.Key, &kv.Value, &kv.CreateRevision, &kv.Version, &kv.Lease, &deleted); err != nil {
			return nil, 0, err
		}
		evs = append(evs, event(&kv, deleted))
		if size += len(kv.Key) + len(kv.Value); size > maxBytes && len(evs) <= limit {
			// Over the byte bound: like the row bound, keep whole revisions.
			full = true
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	rows.Close()
	if len(evs) <= limit && !full {
		return evs, to, nil
	}
	// Over the limit: drop the last, possibly partial, revision, unless it is
	// the only one, which is then read whole.
	last := evs[len(evs)-1].Kv.ModRevision
	if evs[0].Kv.ModRevision == last {
		all, _, err := l.readEventsIn(ctx, q, last, last, math.MaxInt32, math.MaxInt)
		return all, last, err
	}
	i := len(evs)
	for evs[i-1].Kv.ModRevision == last {
		i--
	}
	return evs[:i], last - 1, nil
}

// event builds a watch event from a log row; a delete carries only the key
// and revision, as etcd's do.
func event(kv *mvccpb.KeyValue, deleted bool) mvccpb.Event {
	if deleted {
		return mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: kv.ModRevision}}
	}
	return mvccpb.Event{Type: mvccpb.PUT, Kv: kv}
}
