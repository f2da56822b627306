package sqllog

import (
	"context"
	"log/slog"
	"sync"
)

// maintenance is etcd's Maintenance service over the log: the database's
// size and its defragmentation (this file), hashes (hash.go) and snapshots
// (snapshot.go).
type maintenance struct {
	s         *state
	st        *store
	compactor *compactor
	lg        *slog.Logger

	hashMu        sync.Mutex
	compactHashes []KVHash
}

// rowOverhead estimates what a log row costs beyond its key and value:
// the other columns, row header and index entries.
const rowOverhead = 64

// Size returns the bytes the database holds for shimd (etcd's dbSize) and
// how many of them are live (dbSizeInUse). Where the database cannot tell
// the live part cheaply, it is estimated from the retained rows.
func (mt *maintenance) Size(ctx context.Context) (size, inUse int64, err error) {
	ctx, cancel := mt.st.bound(ctx)
	defer cancel()
	size, inUse, err = mt.st.be.Dialect.Size(ctx, mt.st.be.Read, tableNames)
	if err != nil {
		return 0, 0, err
	}
	if inUse < 0 {
		mt.s.mu.RLock()
		inUse = mt.s.liveBytes + mt.s.liveRows*rowOverhead
		mt.s.mu.RUnlock()
	}
	return size, min(size, inUse), nil
}

// Defragment gives the space of deleted rows back to the filesystem, the
// way the database does that (see each driver). It first waits until the
// rows of every compaction already applied are deleted (they go in the
// background): a rebuild that copies them keeps their space, and a delete
// that runs during the rebuild frees none, so the guide's `compact; defrag`
// would leave the size over the quota.
func (mt *maintenance) Defragment(ctx context.Context) error {
	select {
	case <-mt.compactor.enqueue(compactJob{}):
	case <-ctx.Done():
		return ctx.Err()
	}
	return mt.st.be.Dialect.Defragment(ctx, mt.st.be.Write, tableNames)
}
