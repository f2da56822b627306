package sqllog

import (
	"container/list"
	"context"
	"database/sql"
	"sync"
)

// valueCache keeps recently written or read values by row id, bounded in
// bytes, least recently used out first. A row's value never changes, so
// entries need no invalidation; compaction's garbage just ages out.
type valueCache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	order *list.List // front: most recent
	byID  map[int64]*list.Element
}

type cachedValue struct {
	id    int64
	value []byte
}

// valueOverhead approximates the bookkeeping of one cached value.
const valueOverhead = 96

// maxCachedValue is the largest value cached: Kubernetes objects are far
// smaller, and megabyte values would crowd them out.
const maxCachedValue = 256 << 10

func newValueCache(maxBytes int64) *valueCache {
	return &valueCache{max: maxBytes, order: list.New(), byID: make(map[int64]*list.Element)}
}

func (c *valueCache) get(id int64) ([]byte, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byID[id]; ok {
		c.order.MoveToFront(el)
		return el.Value.(*cachedValue).value, true
	}
	return nil, false
}

func (c *valueCache) put(id int64, value []byte) {
	cost := int64(len(value)) + valueOverhead
	if c.max <= 0 || len(value) > maxCachedValue {
		return // a large value would flush many small ones
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byID[id]; ok {
		return
	}
	c.byID[id] = c.order.PushFront(&cachedValue{id, value})
	c.size += cost
	for c.size > c.max {
		el := c.order.Back()
		v := c.order.Remove(el).(*cachedValue)
		delete(c.byID, v.id)
		c.size -= int64(len(v.value)) + valueOverhead
	}
}

// stmts caches prepared statements per pool and query text, so that the
// database parses each of shimd's few statements once per connection.
type stmts struct {
	mu sync.Mutex
	m  map[stmtKey]*sql.Stmt
}

type stmtKey struct {
	db    *sql.DB
	query string
}

func (s *stmts) get(ctx context.Context, db *sql.DB, query string) (*sql.Stmt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.m[stmtKey{db, query}]; ok {
		return st, nil
	}
	st, err := db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if s.m == nil {
		s.m = make(map[stmtKey]*sql.Stmt)
	}
	s.m[stmtKey{db, query}] = st
	return st, nil
}

// lookup returns the prepared form of query, if prepared.
func (s *stmts) lookup(db *sql.DB, query string) *sql.Stmt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[stmtKey{db, query}]
}

func (s *stmts) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.m {
		st.Close()
	}
	s.m = nil
}

// sizeClass rounds an id count up to one of few sizes, so that value reads
// use few distinct statements; the list is padded by repeating an id.
func sizeClass(n int) int {
	for _, c := range []int{1, 4, 16, 64, fetchChunk} {
		if n <= c {
			return c
		}
	}
	return fetchChunk
}
