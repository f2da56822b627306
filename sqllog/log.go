package sqllog

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/shimd/shimd/drivers"
)

// Log is the revision log of one database, with its in-memory index.
type Log struct {
	be *drivers.Backend
	lg *slog.Logger

	// applyMu is held by whoever advances the index: the writer for a whole
	// batch, the catch-up of other processes' rows, and compaction. It keeps
	// rows from being applied twice or out of order.
	applyMu sync.Mutex

	// mu guards the fields below. Readers hold it only while walking the index.
	mu         sync.RWMutex
	idx        *index
	rev        int64 // committed revision the index reflects
	compactRev int64
	lastID     int64
	clusterID  uint64
	leases     leases
	leaseGen   int64 // meta.lease_gen the lease map reflects
	liveBytes  int64 // keys and values of the retained rows
	liveRows   int64 // retained rows
	alarms     []Alarm

	writes   chan *writeReq
	maxBatch int
	// appendQuery is the dialect's one-statement batch append ("" if none);
	// fastCooldown counts the batches that skip it after it found another
	// process's write. unsure is set when a commit's outcome is unknown.
	appendQuery  string
	fastCooldown int
	unsure       bool
	quit         chan struct{}
	stopped      chan struct{}
	closeMu      sync.RWMutex
	closed       bool

	compactor compactor
	hub       hub
	values    *valueCache
	stmts     stmts

	hashMu        sync.Mutex
	compactHashes []KVHash

	follower sync.WaitGroup

	listenMu  sync.Mutex
	listeners []func(rev int64)
}

// Options tune a Log.
type Options struct {
	Logger *slog.Logger
	// MaxBatch bounds how many write requests share one database transaction.
	MaxBatch int
	// PollInterval is how often a shared database is checked for other
	// processes' commits when nothing wakes the log sooner.
	PollInterval time.Duration
	// ValueCacheBytes is the size of the cache of recent values (0: the
	// default; negative or under 1 MiB: no cache).
	ValueCacheBytes int64
}

// DefaultValueCacheBytes is the default size of the value cache.
const DefaultValueCacheBytes = 16 << 20

// Open creates shimd's tables if needed, loads the index from the log and
// starts the writer.
func Open(ctx context.Context, be *drivers.Backend, opts Options) (*Log, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	l := &Log{
		be:       be,
		lg:       opts.Logger,
		idx:      newIndex(),
		leases:   newLeases(),
		leaseGen: -1, // load the lease table on the first catch-up
		writes:   make(chan *writeReq, 1024),
		maxBatch: opts.MaxBatch,
		quit:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	if opts.ValueCacheBytes == 0 {
		opts.ValueCacheBytes = DefaultValueCacheBytes
	}
	l.values = newValueCache(opts.ValueCacheBytes)
	if ba, ok := be.Dialect.(drivers.BatchAppender); ok {
		l.appendQuery = ba.AppendBatchQuery(tableNames)
	}
	if err := l.initSchema(ctx); err != nil {
		return nil, err
	}
	for _, q := range l.writeStatements() {
		if _, err := l.stmts.get(ctx, be.Write, q); err != nil {
			return nil, fmt.Errorf("prepare: %w", err)
		}
	}
	registerPool(be.Read, "shimd_read")
	registerPool(be.Write, "shimd_write")
	m, err := l.readMeta(ctx, be.Read, false)
	if err != nil {
		return nil, err
	}
	if m.schemaVersion != SchemaVersion {
		return nil, fmt.Errorf("database schema version %d, this shimd reads version %d", m.schemaVersion, SchemaVersion)
	}
	l.clusterID = uint64(m.clusterID)
	l.compactor.start(l)
	if err := l.load(ctx); err != nil {
		l.compactor.stop()
		return nil, err
	}
	if err := l.loadAlarms(ctx); err != nil {
		l.compactor.stop()
		return nil, err
	}
	l.hub.start(l)
	go l.writer()
	if be.Shared {
		l.follow(opts.PollInterval)
	}
	return l, nil
}

// Close stops the writer after the batch in flight and releases the backend.
func (l *Log) Close() error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return nil
	}
	l.closed = true
	l.closeMu.Unlock()
	close(l.quit)
	<-l.stopped
	l.follower.Wait()
	l.hub.stop()
	l.compactor.stop()
	l.stmts.close()
	l.values.close()
	return l.be.Close()
}

// Backend returns the database the log is stored in.
func (l *Log) Backend() *drivers.Backend { return l.be }

// Rev returns the latest committed revision.
func (l *Log) Rev() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rev
}

// CompactRev returns the revision the log has been compacted to (0 if never).
func (l *Log) CompactRev() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.compactRev
}

// ClusterID identifies the database: every process on it reports the same id.
func (l *Log) ClusterID() uint64 { return l.clusterID }

// OnCommit registers fn to be called with the new revision after each commit
// or catch-up. fn must not block.
func (l *Log) OnCommit(fn func(rev int64)) {
	l.listenMu.Lock()
	l.listeners = append(l.listeners, fn)
	l.listenMu.Unlock()
}

func (l *Log) notify(rev int64) {
	l.listenMu.Lock()
	fns := l.listeners
	l.listenMu.Unlock()
	for _, fn := range fns {
		fn(rev)
	}
}

func (l *Log) q(query string) string { return l.be.Dialect.Rebind(query) }

type meta struct {
	schemaVersion int64
	rev           int64
	lastID        int64
	compactRev    int64
	leaseGen      int64
	clusterID     int64
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// readMeta reads the meta row; with lock (inside a write transaction) it
// also locks it until the transaction ends.
func (l *Log) readMeta(ctx context.Context, q queryer, lock bool) (meta, error) {
	var m meta
	query := `SELECT schema_version, rev, last_id, compact_rev, lease_gen, cluster_id FROM shimd_meta WHERE id = 1`
	if lock {
		query += l.be.Dialect.ForUpdate()
	}
	err := q.QueryRowContext(ctx, query).Scan(&m.schemaVersion, &m.rev, &m.lastID, &m.compactRev, &m.leaseGen, &m.clusterID)
	if err != nil {
		return m, fmt.Errorf("read meta: %w", err)
	}
	return m, nil
}
