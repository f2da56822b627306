package sqllog

import (
	"context"
	"log/slog"
	"time"

	"github.com/shimd/shimd/drivers"
)

// Log is the revision log of one database, with its in-memory index. It is
// assembled from parts with one job each, whose methods it offers:
//
//   - state (state.go): the index and the revision it reflects: Rev, CompactRev;
//   - store (store*.go, schema): the tables and every statement on them;
//   - writer (writer.go, commit.go, txnwrite.go): Write, group commit;
//   - reader (read.go): View, SerializableView, KVAt;
//   - follower (follow.go): Barrier, and catching up with the database;
//   - hub (hub.go, history.go, watch.go): NewWatchStream;
//   - compactor (compact.go): Compact;
//   - lessor (lessor.go, lease.go): RenewLease, LookupLease, Leases, ExpiredLeases;
//   - alarmSet (alarm.go): Alarms, SetAlarm;
//   - members (member.go): Heartbeat, Members;
//   - authTables (auth.go, authtoken.go): LoadAuth, UpdateAuth, AuthGen, SyncAuth,
//     and the simple tokens;
//   - maintenance (space.go, hash.go, snapshot.go): Size, Defragment,
//     HashKV, Hash, WriteSnapshot.
type Log struct {
	*state
	*store
	*writer
	*reader
	*follower
	*hub
	*compactor
	*lessor
	*alarmSet
	*members
	*authTables
	*maintenance

	clusterID uint64
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
	// DBTimeout bounds each commit and each database call of the
	// background work (following other processes, compaction, leases,
	// heartbeats, size) and of a read's catch-up (0: DefaultDBTimeout).
	DBTimeout time.Duration
}

// DefaultDBTimeout is the default Options.DBTimeout: longer than any healthy
// commit or catch-up, short enough that a hung database connection is
// abandoned (and another host of a multi-host DSN tried) well before
// clients give up.
const DefaultDBTimeout = 10 * time.Second

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
	if opts.ValueCacheBytes == 0 {
		opts.ValueCacheBytes = DefaultValueCacheBytes
	}
	if opts.DBTimeout <= 0 {
		opts.DBTimeout = DefaultDBTimeout
	}
	lg := opts.Logger
	s, st := newState(), newStore(be, opts.ValueCacheBytes, opts.DBTimeout)
	l := &Log{state: s, store: st}
	l.hub = &hub{s: s, st: st, lg: lg}
	l.alarmSet = &alarmSet{st: st}
	l.members = &members{st: st}
	l.authTables = &authTables{st: st}
	l.follower = &follower{s: s, st: st, hub: l.hub, alarms: l.alarmSet, auth: l.authTables, lg: lg, wake: make(chan struct{}, 1)}
	l.reader = &reader{s: s, st: st, f: l.follower}
	l.lessor = &lessor{s: s, st: st, f: l.follower}
	l.compactor = &compactor{s: s, st: st, f: l.follower, lg: lg}
	l.maintenance = &maintenance{s: s, st: st, compactor: l.compactor, lg: lg}
	l.follower.compactor, l.follower.leases = l.compactor, l.lessor
	l.compactor.maint = l.maintenance
	l.writer = &writer{s: s, st: st, r: l.reader, f: l.follower, hub: l.hub, auth: l.authTables, maxBatch: opts.MaxBatch}

	m, err := st.open(ctx)
	if err == nil {
		err = l.authTables.initAuth(ctx)
	}
	if err != nil {
		return nil, err
	}
	l.clusterID = uint64(m.clusterID)
	l.authTables.saw(m.authGen)
	l.compactor.start()
	s.applyMu.Lock()
	err = l.follower.catchUpSnapshot(ctx, true)
	s.applyMu.Unlock()
	if err == nil {
		err = l.alarmSet.load(ctx)
	}
	if err != nil {
		l.compactor.stop()
		return nil, err
	}
	l.hub.start()
	l.writer.start()
	l.follower.start(opts.PollInterval)
	return l, nil
}

// Close stops the writer after the batch in flight and releases the backend.
func (l *Log) Close() error {
	if !l.writer.stop() {
		return nil
	}
	l.follower.stop()
	l.hub.stop()
	l.compactor.stop()
	return l.store.close()
}

// Backend returns the database the log is stored in.
func (l *Log) Backend() *drivers.Backend { return l.store.be }

// ClusterID identifies the database: every process on it reports the same id.
func (l *Log) ClusterID() uint64 { return l.clusterID }

// Shared reports whether other processes may share the database.
func (l *Log) Shared() bool { return l.store.be.Shared }

// Resyncing reports whether the database was found behind this process's
// memory and the index is not yet rebuilt from it: writes are refused, and
// the process is not ready.
func (l *Log) Resyncing() bool { return l.follower.Resyncing() }

// WriteStalled is how long the write batch in flight, and those before it
// that ran out of time, have been committing (0 if none is in flight): long
// on a database that hangs.
func (l *Log) WriteStalled() time.Duration { return l.writer.stalled() }

// Ping checks that the database answers.
func (l *Log) Ping(ctx context.Context) error {
	_, err := l.store.readMeta(ctx, l.store.be.Read, false)
	return err
}
