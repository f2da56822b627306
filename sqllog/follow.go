package sqllog

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
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

// follow keeps the index and the watchers up with commits by other processes
// sharing the database: at once when the database notifies, else by polling.
func (l *Log) follow(interval time.Duration) {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{}, 1)
	poke := func(payload string) {
		if rev, err := strconv.ParseInt(payload, 10, 64); err == nil {
			// A revision this process has applied needs no catch-up: most
			// often it is this process's own commit. Wait for a batch being
			// applied (its NOTIFY may arrive first) before deciding.
			l.applyMu.Lock()
			l.applyMu.Unlock()
			if rev <= l.Rev() {
				return
			}
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	if l.be.Listen != nil {
		l.follower.Add(1)
		go func() {
			defer l.follower.Done()
			l.be.Listen(ctx, poke)
		}()
	}
	l.follower.Add(1)
	go func() {
		defer l.follower.Done()
		defer cancel()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-l.quit:
				return
			case <-t.C:
			case <-wake:
			}
			err := l.sync(ctx)
			if err == nil {
				err = l.loadAlarms(ctx)
			}
			if err != nil && ctx.Err() == nil {
				l.lg.Warn("following the shared log failed; will retry", "err", err)
			}
		}
	}()
}

// Barrier makes this process current with the database: on a shared
// database it applies, and hands to watchers, everything other processes
// committed before the call. Elsewhere it does nothing.
func (l *Log) Barrier(ctx context.Context) error {
	if !l.be.Shared {
		return nil
	}
	return l.sync(ctx)
}

// sync catches the index up with the database's committed revision.
func (l *Log) sync(ctx context.Context) error {
	start := time.Now()
	m, err := l.readMeta(ctx, l.be.Read, false)
	observe("read_meta", start)
	if err != nil {
		return err
	}
	l.mu.RLock()
	current := m.rev <= l.rev && m.compactRev <= l.compactRev && m.leaseGen == l.leaseGen
	followerLag.Set(float64(max(0, m.rev-l.rev)))
	l.mu.RUnlock()
	if current {
		polls.WithLabelValues("idle").Inc()
		return nil
	}
	polls.WithLabelValues("changed").Inc()
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	return l.catchUpSnapshot(ctx)
}

// load reads the index from the database when the log opens.
func (l *Log) load(ctx context.Context) error {
	return l.catchUpSnapshot(ctx)
}

// catchUpSnapshot reads the meta row and the rows after this process's
// revision in one snapshot and applies them. The caller holds applyMu.
func (l *Log) catchUpSnapshot(ctx context.Context) error {
	tx, err := l.be.Dialect.BeginSnapshot(ctx, l.be.Read)
	if err != nil {
		return fmt.Errorf("begin catch-up: %w", err)
	}
	defer tx.Rollback()
	m, err := l.readMeta(ctx, tx, false)
	if err != nil {
		return err
	}
	if err := l.catchUp(ctx, tx, m); err != nil {
		return err
	}
	return tx.Commit()
}

// catchUp applies the rows committed after the index's revision up to m.rev,
// then any compaction recorded in m, and hands the new events to the
// watchers. q must see the same state of the database as m: a snapshot, or
// the transaction holding the meta row's lock. The caller holds applyMu (or
// is Open, before there are watchers).
func (l *Log) catchUp(ctx context.Context, q queryer, m meta) error {
	if m.rev < l.Rev() {
		return fmt.Errorf("database revision %d is behind this process's %d: the database was replaced or restored underneath shimd", m.rev, l.Rev())
	}
	loading := l.hub.l == nil
	switch {
	case loading || m.compactRev > l.Rev():
		// Rows this process never applied may have been compacted away.
		if err := l.reload(ctx, q, m, loading); err != nil {
			return err
		}
	case m.rev > l.Rev():
		if err := l.applyRows(ctx, q, m); err != nil {
			return err
		}
	}
	if m.compactRev > l.CompactRev() {
		l.compactIndex(m.compactRev, -1)
	}
	if m.leaseGen != l.leaseGen {
		// Another process granted or revoked leases.
		if err := l.loadLeases(ctx, q); err != nil {
			return err
		}
		l.mu.Lock()
		l.leaseGen = m.leaseGen
		l.mu.Unlock()
	}
	return nil
}

// applyRows applies the rows of the revisions after the index's up to m.rev
// and hands them to the watchers. (Ordered by rev, id, the order of the
// (rev, id) index, and so of ids: by id alone, SQLite would sort every
// value read.)
func (l *Log) applyRows(ctx context.Context, q queryer, m meta) error {
	rows, err := q.QueryContext(ctx, l.q(`SELECT id, rev, sub, kv_key, value, LENGTH(value), create_rev, version, lease, deleted FROM shimd_log WHERE rev > ? AND rev <= ? ORDER BY rev, id`), l.Rev(), m.rev)
	if err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	var batch []Change
	for rows.Next() {
		var c Change
		var deleted bool
		var vlen int64
		if err := rows.Scan(&c.e.id, &c.e.rev, &c.sub, &c.Key, &c.Value, &vlen, &c.e.create, &c.e.version, &c.e.lease, &deleted); err != nil {
			rows.Close()
			return fmt.Errorf("read log: %w", err)
		}
		if deleted {
			c.e.version = 0
		}
		c.e.size = int64(len(c.Key)) + vlen
		batch = append(batch, c)
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	l.mu.Lock()
	for _, c := range batch {
		l.idx.add(c.Key, c.e)
		l.liveBytes += c.e.size
		l.liveRows++
	}
	l.applyAttachments(batch)
	l.rev = m.rev
	l.lastID = m.lastID
	l.mu.Unlock()
	currentRevGauge.Set(float64(m.rev))
	for _, c := range batch {
		if !c.e.tombstone() {
			l.values.put(c.e.id, c.Value)
		}
	}
	l.notifyWatchers(batch)
	return nil
}

// reload replaces the index with one read from every row up to m.rev,
// compacted at m.compactRev. Unless loading, the watchers are told the log
// jumped: the events in between were never fanned out. Cached values stay:
// a row id names one value forever.
func (l *Log) reload(ctx context.Context, q queryer, m meta, loading bool) error {
	start := time.Now()
	rows, err := q.QueryContext(ctx, l.q(`SELECT id, rev, kv_key, LENGTH(value), create_rev, version, lease, deleted FROM shimd_log WHERE rev <= ? ORDER BY id`), m.rev)
	if err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	idx := newIndex()
	var liveBytes, liveRows int64
	for rows.Next() {
		var e entry
		var key []byte
		var deleted bool
		var vlen int64
		if err := rows.Scan(&e.id, &e.rev, &key, &vlen, &e.create, &e.version, &e.lease, &deleted); err != nil {
			rows.Close()
			return fmt.Errorf("read log: %w", err)
		}
		if deleted {
			e.version = 0
		}
		e.size = int64(len(key)) + vlen
		idx.add(key, e)
		liveBytes += e.size
		liveRows++
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read log: %w", err)
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
	l.mu.Lock()
	before := l.rev
	l.idx = idx
	l.rev, l.lastID = m.rev, m.lastID
	l.compactRev = m.compactRev
	l.liveBytes, l.liveRows = liveBytes, liveRows
	l.leases.keyLease, l.leases.leaseKeys = attached.keyLease, attached.leaseKeys
	l.leaseGen = -1 // reload the lease table too
	l.mu.Unlock()
	currentRevGauge.Set(float64(m.rev))
	compactRevGauge.Set(float64(m.compactRev))
	// Whoever compacted deletes these rows too; every process deleting the
	// garbage of every compaction, in order, is what keeps the rows a
	// rebuild reads consistent (see compactIndex).
	l.compactor.enqueue(compactJob{ids: garbage})
	if !loading {
		reloads.Inc()
		l.lg.Warn("fell behind a compaction of the shared log: index rebuilt from the database; watchers that missed compacted revisions are cancelled",
			"applied_revision", before, "compact_revision", m.compactRev, "revision", m.rev, "took", time.Since(start).Round(time.Millisecond))
		l.hub.jump(m.rev)
	}
	return nil
}

// notifyWatchers hands committed changes, in log order, to the watchers, one
// revision at a time.
func (l *Log) notifyWatchers(changes []Change) {
	for i := 0; i < len(changes); {
		rev := changes[i].e.rev
		var evs []mvccpb.Event
		for ; i < len(changes) && changes[i].e.rev == rev; i++ {
			c := changes[i]
			evs = append(evs, event(&mvccpb.KeyValue{Key: c.Key, Value: c.Value, CreateRevision: c.e.create, ModRevision: c.e.rev, Version: c.e.version, Lease: c.e.lease}, c.e.tombstone()))
		}
		l.hub.notify(rev, evs)
	}
}
