package sqllog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The follower's contract: a process applies every revision of the log in
// order, each exactly once, or knows that it cannot and rebuilds.
//
// It reads the meta row and the rows after its own revision in one
// consistent view of the database (a snapshot, or the write transaction that
// holds the meta row's lock). Rows after the store's compact revision are
// never deleted, so while that revision is at or below what this process has
// applied, the rows it has not applied yet are all there. When the store
// has been compacted above it (the process was paused, partitioned or slow
// while another compacted), rows it never saw may be gone: it then rebuilds
// its index from the database, as etcd rebuilds its index from a restored
// backend, and every watcher whose next revision was compacted is cancelled
// with the compact revision, so that its client lists again.

// DefaultPollInterval is how often a shared database is polled for other
// processes' commits.
const DefaultPollInterval = 100 * time.Millisecond

// follower is the only code that moves this process forward over commits it
// did not make: other processes' rows, compactions and lease changes, read
// from the database. The writer calls it too, when its conditional commit
// finds the database moved on.
type follower struct {
	s         *state
	st        *store
	hub       *hub
	compactor *compactor
	leases    *lessor
	alarms    *alarmSet
	auth      *authTables
	lg        *slog.Logger

	barriers barriers
	// behind is set from finding the database behind memory until resync
	// has rebuilt the index from it.
	behind atomic.Bool
	// wake prompts the following loop to run at once (made by Open,
	// before any writer can call noticeBehind).
	wake chan struct{}

	quit chan struct{}
	wg   sync.WaitGroup
}

// follow keeps the index and the watchers up with commits by other processes
// sharing the database: at once when the database notifies, else by polling.
func (f *follower) start(interval time.Duration) {
	f.quit = make(chan struct{})
	if !f.st.be.Shared {
		return
	}
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	ctx, cancel := context.WithCancel(context.Background())
	wake := f.wake
	poke := func(payload string) {
		if rev, err := strconv.ParseInt(payload, 10, 64); err == nil {
			// A revision this process has applied needs no catch-up: most
			// often it is this process's own commit. Wait for a batch being
			// applied (its NOTIFY may arrive first) before deciding.
			f.s.applyMu.Lock()
			f.s.applyMu.Unlock()
			if rev <= f.s.Rev() {
				return
			}
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	if f.st.be.Listen != nil {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.st.be.Listen(ctx, poke)
		}()
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer cancel()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-f.quit:
				return
			case <-t.C:
			case <-wake:
			}
			err := f.sync(ctx)
			if err == nil {
				actx, acancel := f.st.bound(ctx)
				err = f.alarms.load(actx)
				acancel()
			}
			if err != nil && ctx.Err() == nil {
				f.lg.Warn("following the shared log failed; will retry", "err", err)
			}
		}
	}()
}

func (f *follower) stop() {
	close(f.quit)
	f.wg.Wait()
}

// Barrier makes this process current with the database: on a shared
// database it applies, and hands to watchers, everything other processes
// committed before the call. Elsewhere it does nothing. Concurrent calls
// share their reads of the database (barrier.go).
func (f *follower) Barrier(ctx context.Context) error {
	if !f.st.be.Shared {
		return nil
	}
	return f.barriers.wait(ctx, f.sync)
}

// sync catches the index up with the database's committed revision. The
// meta row's read is bounded by the store's timeout; the catch-up, whose
// size is what other processes wrote meanwhile, by catchUpTimeouts of it. A
// call cut short by them fails with ErrDBTimeout.
func (f *follower) sync(ctx context.Context) (err error) {
	start := time.Now()
	mctx, cancel := f.st.bound(ctx)
	defer cancel()
	defer func() {
		if err != nil && mctx.Err() != nil && ctx.Err() == nil && !errors.Is(err, ErrDBTimeout) {
			err = fmt.Errorf("%w: %v", ErrDBTimeout, err)
		}
		if errors.Is(err, ErrDBTimeout) {
			f.st.dropIdle()
		}
	}()
	m, err := f.st.readMeta(mctx, f.st.be.Read, false)
	observe("read_meta", start)
	if err != nil {
		return err
	}
	f.auth.saw(m.authGen)
	s := f.s
	s.mu.RLock()
	current := m.rev <= s.rev && m.compactRev <= s.compactRev && m.leaseGen == s.leaseGen && m.lastID == s.lastID && !f.behind.Load()
	lag, rebuild := m.rev-s.rev, m.compactRev > s.rev
	followerLag.Set(float64(max(0, lag)))
	s.mu.RUnlock()
	if current {
		polls.WithLabelValues("idle").Inc()
		return nil
	}
	polls.WithLabelValues("changed").Inc()
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	cctx, ccancel := context.WithTimeout(ctx, catchUpBudget(f.st.timeout, lag, rebuild))
	defer ccancel()
	err = f.catchUpSnapshot(cctx, false)
	if isBehind(err) || (err == nil && f.behind.Load()) {
		err = f.resync(cctx)
	}
	if err != nil {
		if cctx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("%w: %v", ErrDBTimeout, err)
		}
		return err
	}
	return nil
}

// catchUpTimeouts is how many of the store's timeouts a catch-up may take at
// most: it reads all that other processes committed since the last one, which
// a process paused for a while finds large, or the whole index when it fell
// behind a compaction.
const catchUpTimeouts = 10

// catchUpRevsPerTimeout is how many revisions a catch-up is given one
// timeout for: far more than a healthy database serves in one.
const catchUpRevsPerTimeout = 20000

// catchUpBudget is the time a catch-up of lag revisions (a rebuild of the
// whole index with rebuild) may take. It holds applyMu, and so every write,
// for that long when the database hangs (a primary frozen mid-read): the
// common small catch-up gets one timeout, not ten.
func catchUpBudget(timeout time.Duration, lag int64, rebuild bool) time.Duration {
	if rebuild {
		return catchUpTimeouts * timeout
	}
	return time.Duration(min(catchUpTimeouts, 1+max(lag, 0)/catchUpRevsPerTimeout)) * timeout
}

// catchUpSnapshot reads the meta row and the rows after this process's
// revision in one snapshot and applies them; loading is the first time, when
// the log opens. The caller holds applyMu.
func (f *follower) catchUpSnapshot(ctx context.Context, loading bool) error {
	tx, err := f.st.be.Dialect.BeginSnapshot(ctx, f.st.be.Read)
	if err != nil {
		return fmt.Errorf("begin catch-up: %w", err)
	}
	defer tx.Rollback()
	m, err := f.st.readMeta(ctx, tx, false)
	if err != nil {
		return err
	}
	if loading {
		if err := f.reload(ctx, tx, m, true); err != nil {
			return err
		}
	}
	if err := f.catchUp(ctx, tx, m); err != nil {
		return err
	}
	return tx.Commit()
}

// catchUp applies the rows committed after the index's revision up to m.rev,
// then any compaction recorded in m, and hands the new events to the
// watchers. q must see the same state of the database as m: a snapshot, or
// the transaction holding the meta row's lock. The caller holds applyMu.
func (f *follower) catchUp(ctx context.Context, q queryer, m meta) error {
	s := f.s
	if pos := s.position(); diverged(m, pos) || f.behind.Load() {
		// Never applied on top of: the follower resynchronises (resync.go).
		return f.noticeBehind(m, pos)
	}
	switch {
	case m.compactRev > s.Rev():
		// Rows this process never applied may have been compacted away.
		if err := f.reload(ctx, q, m, false); err != nil {
			return err
		}
	case m.rev > s.Rev():
		if err := f.applyRows(ctx, q, m); err != nil {
			return err
		}
	}
	if m.compactRev > s.CompactRev() {
		f.compactor.compactIndex(m.compactRev, -1)
	}
	if m.leaseGen != s.leaseGen {
		// Another process granted or revoked leases.
		if err := f.leases.load(ctx, q); err != nil {
			return err
		}
		s.mu.Lock()
		s.leaseGen = m.leaseGen
		s.mu.Unlock()
	}
	return nil
}

// applyRows applies the rows of the revisions after the index's up to m.rev
// and hands them to the watchers.
func (f *follower) applyRows(ctx context.Context, q queryer, m meta) error {
	s := f.s
	changes, err := f.st.readChanges(ctx, q, s.Rev(), m.rev)
	if err != nil {
		return err
	}
	// Row ids are dense: rows that do not follow on from memory's last
	// are another history's (the database lost commits, then took new ones).
	if pos := s.position(); len(changes) > 0 && changes[0].e.id != pos.lastID+1 {
		return f.noticeBehind(m, pos)
	}
	s.mu.Lock()
	for _, c := range changes {
		s.idx.add(c.Key, c.e)
	}
	s.applyChanges(changes, m.rev, m.lastID)
	s.mu.Unlock()
	for _, c := range changes {
		if !c.e.tombstone() {
			f.st.values.put(c.e.id, c.Value)
		}
	}
	f.hub.notifyChanges(changes)
	return nil
}

// reload replaces the index with one read from every row up to m.rev,
// compacted at m.compactRev. Unless loading, the watchers are told the log
// jumped: the events in between were never fanned out. Cached values stay:
// a row id names one value forever.
func (f *follower) reload(ctx context.Context, q queryer, m meta, loading bool) error {
	start := time.Now()
	idx, liveBytes, liveRows, err := f.st.readIndex(ctx, q, m.rev)
	if err != nil {
		return err
	}
	var garbage []int64
	if m.compactRev > 0 {
		var freed int64
		garbage, freed = idx.compact(m.compactRev)
		liveBytes -= freed
		liveRows -= int64(len(garbage))
	}
	// Keys' leases as of the last change of each.
	attached := newLeases()
	idx.tree.Ascend(func(ki *keyIndex) bool {
		if last := ki.revs[len(ki.revs)-1]; !last.tombstone() {
			attached.attach(ki.key, last.lease)
		}
		return true
	})
	s := f.s
	s.mu.Lock()
	before := s.rev
	s.idx = idx
	s.rev, s.lastID = m.rev, m.lastID
	s.compactRev = m.compactRev
	s.liveBytes, s.liveRows = liveBytes, liveRows
	s.leases.keyLease, s.leases.leaseKeys = attached.keyLease, attached.leaseKeys
	s.leaseGen = -1 // reload the lease table too
	s.mu.Unlock()
	currentRevGauge.Set(float64(m.rev))
	compactRevGauge.Set(float64(m.compactRev))
	// Whoever compacted deletes these rows too; every process deleting the
	// garbage of every compaction, in order, is what keeps the rows a
	// rebuild reads consistent (see compactor.compactIndex).
	f.compactor.enqueue(compactJob{ids: garbage})
	if !loading {
		reloads.Inc()
		f.lg.Warn("fell behind a compaction of the shared log: index rebuilt from the database; watchers that missed compacted revisions are cancelled",
			"applied_revision", before, "compact_revision", m.compactRev, "revision", m.rev, "took", time.Since(start).Round(time.Millisecond))
		f.hub.jump(m.rev)
	}
	return nil
}
