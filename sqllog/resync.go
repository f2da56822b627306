package sqllog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Resynchronisation: the database lost commits this process applied.
//
// A database can go back in time underneath shimd: failover to an
// asynchronous standby that had not received the last commits, a restore
// from a backup. Memory then holds revisions, keys and row ids the database
// does not. shimd must never serve them, and must not hand out their
// revisions again for other content. So the process that notices:
//
//  1. fails reads and writes (ErrDBBehind) and reports not ready until it
//     is done;
//  2. moves the meta row past every revision it handed out and compacts the
//     log there (as etcdutl snapshot restore --bump-revision
//     --mark-compacted does): the lost revisions are compacted for every
//     reader, new commits get revisions no client has seen, and new row ids
//     no cache holds;
//  3. rebuilds its index from the database and cancels every watcher as
//     compacted, so that clients list again.
//
// Other processes see the compaction (they reload, and their watchers are
// cancelled as compacted), or, if they were further ahead, find the database
// behind them in turn and do the same.

// resyncGap is how far past its highest revision a resynchronising process
// moves the log: two, so that a process at that highest revision too has
// every watcher's next revision strictly below the new compact revision.
const resyncGap = 2

var (
	resyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "shimd", Subsystem: "db", Name: "resync_total",
		Help: "Times the database was found behind this process's memory (failover to a standby that lacked commits, restore) and the index was rebuilt from it."})
	resyncing = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "shimd", Subsystem: "db", Name: "resync_in_progress",
		Help: "1 while the database is behind this process's memory and the process is resynchronising from it (writes refused, not ready)."})
)

func init() { prometheus.MustRegister(resyncs, resyncing) }

// behindError is ErrDBBehind with the two positions.
type behindError struct{ db, mem meta }

func (e *behindError) Error() string {
	return fmt.Sprintf("%v: database revision %d (last row id %d), this process's %d (last row id %d)",
		ErrDBBehind, e.db.rev, e.db.lastID, e.mem.rev, e.mem.lastID)
}

func (e *behindError) Unwrap() error { return ErrDBBehind }

// diverged tells whether the database m lacks commits memory (at pos)
// applied. Row ids are dense and grow with revisions, so a database behind
// in revision or in row id, or at the same revision with another last row,
// has another history.
func diverged(m, pos meta) bool {
	return m.rev < pos.rev || m.lastID < pos.lastID || (m.rev == pos.rev && m.lastID != pos.lastID)
}

// Resyncing reports whether this process found the database behind its
// memory and has not finished resynchronising from it.
func (f *follower) Resyncing() bool { return f.behind.Load() }

// noticeBehind records that the database is behind memory, logging it once
// per episode, and returns the error for the caller.
func (f *follower) noticeBehind(m, pos meta) error {
	if f.behind.CompareAndSwap(false, true) {
		resyncing.Set(1)
		f.lg.Error("the database is behind this process's memory: it lacks commits this process applied, and may have acknowledged (failover to an asynchronous standby? restore?); refusing reads and writes and resynchronising from the database",
			"db_revision", m.rev, "memory_revision", pos.rev, "db_last_id", m.lastID, "memory_last_id", pos.lastID)
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
	return &behindError{db: m, mem: pos}
}

// resync moves the log past every revision this process handed out,
// compacted there, then rebuilds the index from the database (see above).
// The caller holds applyMu.
func (f *follower) resync(ctx context.Context) error {
	start := time.Now()
	tx, err := f.st.be.Dialect.BeginWrite(ctx, f.st.be.Write)
	if err != nil {
		return fmt.Errorf("begin resync: %w", err)
	}
	defer tx.Rollback()
	m, err := f.st.readMeta(ctx, tx, true)
	if err != nil {
		return err
	}
	pos, found := f.s.position(), m.rev
	// Moved on even when the database is now ahead of memory: memory's
	// history is another one (see applyRows), and its revisions must end up
	// compacted too.
	next := meta{rev: max(m.rev, pos.rev) + resyncGap, lastID: max(m.lastID, pos.lastID)}
	// lease_gen moves too: the lease table is the database's, and
	// every process reloads it.
	if _, err := tx.ExecContext(ctx, f.st.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, compact_rev = ?, lease_gen = lease_gen + 1 WHERE id = 1`),
		next.rev, next.lastID, next.rev); err != nil {
		return fmt.Errorf("resync: move the log on: %w", err)
	}
	if q := f.st.be.Dialect.Notify(); q != "" {
		if _, err := tx.ExecContext(ctx, q, fmt.Sprint(next.rev)); err != nil {
			return fmt.Errorf("resync: notify: %w", err)
		}
	}
	if m, err = f.st.readMeta(ctx, tx, true); err != nil {
		return err
	}
	// Whatever memory holds may be another history: rebuild it all from
	// the database, under the meta row's lock, and tell every watcher.
	if err := f.rebuild(ctx, tx, m); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		// The rebuilt index reflects a transaction that did not commit:
		// stay behind, the next sync starts over.
		return fmt.Errorf("resync: commit: %w", err)
	}
	f.behind.Store(false)
	resyncing.Set(0)
	resyncs.Inc()
	f.lg.Warn("resynchronised from the database: the index now holds exactly what the database does; revisions up to the compact revision are compacted and every watcher was cancelled as compacted",
		"memory_revision", pos.rev, "db_revision_found", found, "revision", m.rev, "compact_revision", m.compactRev, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// rebuild replaces the index, the lease map and the value cache with what
// the database holds at m, and cancels every watcher as compacted: none of
// them may go on from a history the database does not have.
func (f *follower) rebuild(ctx context.Context, q queryer, m meta) error {
	// Row ids of lost rows may be reused by the database's own.
	f.st.values.clear()
	if err := f.reload(ctx, q, m, true); err != nil {
		return err
	}
	f.hub.cancelAll(m.rev)
	if err := f.leases.load(ctx, q); err != nil {
		return err
	}
	f.s.mu.Lock()
	f.s.leaseGen = m.leaseGen
	f.s.mu.Unlock()
	return nil
}

// isBehind tells whether err is the database found behind memory.
func isBehind(err error) bool { return errors.Is(err, ErrDBBehind) }
