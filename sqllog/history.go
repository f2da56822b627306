package sqllog

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The history a lagging watcher is caught up from: recent revisions from
// memory, older ones from the log.

const (
	// cacheEvents and cacheBytes bound the recent events kept in memory, so
	// that watchers a little behind catch up without reading the database.
	cacheEvents = 2048
	cacheBytes  = 4 << 20
)

// history returns the events of revisions from..to, whole revisions only,
// and the last revision it covers (which may be less than to when the range
// is large).
func (h *hub) history(from, to int64) ([]*mvccpb.Event, int64, error) {
	if evs, ok := h.cache.get(from, to); ok {
		return evs, to, nil
	}
	ctx, cancel := h.st.bound(context.Background())
	defer cancel()
	return h.st.readEvents(ctx, from, to, historyRows, historyBytes)
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
	evs   []*mvccpb.Event
	bytes int
}

func (c *eventCache) add(rev int64, evs []*mvccpb.Event) {
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
func (c *eventCache) get(from, to int64) ([]*mvccpb.Event, bool) {
	if c.floor == 0 || from < c.floor {
		return nil, false
	}
	var evs []*mvccpb.Event
	for _, r := range c.revs {
		if r.rev >= from && r.rev <= to {
			evs = append(evs, r.evs...)
		}
	}
	return evs, true
}
