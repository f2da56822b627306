package sqllog

import (
	"sync"
	"syscall"
)

// valueCache keeps recently written or read values by row id in one ring
// buffer of fixed size, oldest out first. A row's value never changes, so
// entries need no invalidation (except when the database loses rows: see
// clear); compaction's garbage just ages out.
//
// The ring is allocated outside the Go heap (an anonymous mapping), so the
// cache costs exactly its size in memory: a cache of the same bytes on the
// heap would count toward the garbage collector's goal and, at the default
// GOGC, let the heap grow by as much again before each collection. Values are
// copied in and out, so nothing outside refers into the ring.
type valueCache struct {
	mu     sync.Mutex
	size   int64 // of the ring, allocated by the first put
	closed bool
	ring   []byte
	mapped bool   // ring is an anonymous mapping, unmapped by close
	head   uint64 // bytes ever appended: the next entry's position
	byID   map[int64]ringSlot
	// order lists the entries by position, so that those the ring has
	// overwritten leave byID; order[first:] are live.
	order []ringEntry
	first int
	// maxEntries bounds byID (its bookkeeping is on the heap) when values
	// are tiny.
	maxEntries int
}

type ringSlot struct {
	pos uint64
	n   uint32
}

type ringEntry struct {
	id  int64
	pos uint64
}

// maxCachedValue is the largest value cached: Kubernetes objects are far
// smaller, and megabyte values would crowd them out.
const maxCachedValue = 256 << 10

// minCachedBytes is the smallest cache worth having; smaller sizes disable
// it.
const minCachedBytes = 1 << 20

// newValueCache returns a cache of size bytes; size < minCachedBytes gives a
// cache that keeps nothing.
func newValueCache(size int64) *valueCache {
	if size < minCachedBytes {
		size = 0
	}
	return &valueCache{size: size}
}

// alloc allocates the ring.
func (c *valueCache) alloc() {
	if b, err := syscall.Mmap(-1, 0, int(c.size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE); err == nil {
		c.ring, c.mapped = b, true
	} else {
		c.ring = make([]byte, c.size)
	}
	c.byID = make(map[int64]ringSlot)
	c.maxEntries = int(c.size / 128)
}

// get returns a copy of the value of row id, if cached.
// appendTo appends the cached value of row id to dst.
func (c *valueCache) appendTo(dst []byte, id int64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring == nil {
		return nil, false
	}
	s, ok := c.byID[id]
	if !ok {
		return nil, false
	}
	off := s.pos % uint64(len(c.ring))
	out := append(dst, c.ring[off:off+uint64(s.n)]...)
	if out == nil {
		out = []byte{}
	}
	return out, true
}

// put caches a copy of the value of row id.
func (c *valueCache) put(id int64, value []byte) {
	n := uint64(len(value))
	size := uint64(c.size)
	if len(value) > maxCachedValue || n > size/8 {
		return // a large value would flush many small ones
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ring == nil {
		if c.closed {
			return
		}
		c.alloc()
	}
	if _, ok := c.byID[id]; ok {
		return
	}
	pos := c.head
	if off := pos % size; off+n > size {
		pos += size - off // entries never wrap: start again at the beginning
	}
	c.head = pos + n
	copy(c.ring[pos%size:], value)
	c.byID[id] = ringSlot{pos, uint32(n)}
	c.order = append(c.order, ringEntry{id, pos})
	// Forget the entries the ring has now overwritten (those starting more
	// than a ring's length back), and the oldest past maxEntries.
	for c.first < len(c.order) {
		e := c.order[c.first]
		if e.pos+size >= c.head && len(c.byID) <= c.maxEntries {
			break
		}
		if s, ok := c.byID[e.id]; ok && s.pos == e.pos {
			delete(c.byID, e.id)
		}
		c.first++
	}
	if c.first > len(c.order)/2 && c.first > 1024 {
		c.order = append(c.order[:0], c.order[c.first:]...)
		c.first = 0
	}
}

// close releases the ring; the cache keeps nothing afterwards.
func (c *valueCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mapped {
		syscall.Munmap(c.ring)
	}
	c.ring, c.mapped, c.byID, c.order, c.closed = nil, false, nil, nil, true
}

// clear forgets every entry: after the database lost rows (see resync), a
// row id may come to name another value.
func (c *valueCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byID != nil {
		c.byID = make(map[int64]ringSlot)
	}
	c.order, c.first = nil, 0
}
