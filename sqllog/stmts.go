package sqllog

import (
	"context"
	"database/sql"
	"sync"
)

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
