package sqllog

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// TxnWrite is one write request's view of the log inside a write batch. It
// reads the state left by the requests before it and stages changes that all
// share the revision Rev()+1. It is only valid inside the function passed to
// Log.Write.
type TxnWrite struct {
	l        *Log
	b        *batch
	beginRev int64
	mark     int // first of this request's changes in b.changes
	opsMark  int // first of this request's lease ops in b.leaseOps
	ops      int // ranges, puts and deletes, for etcd's txn metric
}

// batch is a group of write requests committed in one database transaction;
// each request still gets its own revision.
type batch struct {
	rev      int64 // revision after the last request so far
	lastID   int64
	changes  []Change
	values   map[int64][]byte // staged values by row id
	leaseOps []leaseOp
	leaseGen int64
	// tx is the locked write transaction, nil while the batch runs against
	// memory first.
	tx *sql.Tx
	// needTx is set by a request that must read the database under the
	// lock; the batch then runs again there.
	needTx bool
}

// Change is one row appended to the log.
type Change struct {
	Key   []byte
	Value []byte
	sub   int64 // etcd's sub-revision: the change's place in its request
	e     entry
}

// Rev is the revision before this request.
func (tw *TxnWrite) Rev() int64 { return tw.beginRev }

// FirstRev is the oldest revision that can still be read.
func (tw *TxnWrite) FirstRev() int64 { return tw.l.CompactRev() }

// Changes is the number of changes this request has staged.
func (tw *TxnWrite) Changes() int { return len(tw.b.changes) - tw.mark }

// curRev is the revision reads inside the request see: its own writes are
// visible once it has made any.
func (tw *TxnWrite) curRev() int64 {
	if tw.Changes() > 0 {
		return tw.beginRev + 1
	}
	return tw.beginRev
}

// Range reads as etcd's write transaction does, including staged changes.
func (tw *TxnWrite) Range(ctx context.Context, key, end []byte, ro RangeOptions) (*RangeResult, error) {
	tw.ops++
	rangeCounter.Inc()
	return tw.l.rangeKeys(ctx, key, end, tw.curRev(), ro, tw.b.values)
}

// Put stages key=value with lease and returns the request's revision.
func (tw *TxnWrite) Put(key, value []byte, lease int64) int64 {
	tw.ops++
	putCounter.Inc()
	rev := tw.beginRev + 1
	e := entry{rev: rev, create: rev, version: 1, lease: lease}
	if ki := tw.l.idx.get(key); ki != nil {
		key = ki.key
		if prev, live := ki.at(rev); live {
			e.create = prev.create
			e.version = prev.version + 1
		}
	} else {
		key = append([]byte(nil), key...)
	}
	if value == nil {
		value = []byte{}
	}
	tw.stage(key, value, e)
	return rev
}

// DeleteRange stages tombstones for the live keys in [key, end) and returns
// how many, with the revision the response reports.
func (tw *TxnWrite) DeleteRange(key, end []byte) (n, rev int64) {
	tw.ops++
	deleteCounter.Inc()
	var keys [][]byte
	readRev := tw.curRev()
	tw.l.mu.RLock()
	tw.l.idx.ascend(key, end, func(ki *keyIndex) bool {
		if _, live := ki.at(readRev); live {
			keys = append(keys, ki.key)
		}
		return true
	})
	tw.l.mu.RUnlock()
	for _, k := range keys {
		tw.stage(k, []byte{}, entry{rev: tw.beginRev + 1})
	}
	if len(keys) != 0 || tw.Changes() > 0 {
		return int64(len(keys)), tw.beginRev + 1
	}
	return 0, tw.beginRev
}

func (tw *TxnWrite) stage(key, value []byte, e entry) {
	tw.b.lastID++
	e.id = tw.b.lastID
	e.size = int64(len(key) + len(value))
	tw.b.changes = append(tw.b.changes, Change{Key: key, Value: value, sub: int64(tw.Changes()), e: e})
	tw.b.values[e.id] = value
	// Readers only look at committed revisions, so a staged entry is invisible
	// to them until the batch commits and l.rev moves past it.
	tw.l.mu.Lock()
	tw.l.idx.add(key, e)
	tw.l.mu.Unlock()
}

// unstage removes the changes staged after position mark.
func (b *batch) unstage(l *Log, mark int) {
	l.mu.Lock()
	for i := len(b.changes) - 1; i >= mark; i-- {
		c := b.changes[i]
		l.idx.removeLast(c.Key)
		delete(b.values, c.e.id)
	}
	l.mu.Unlock()
	b.changes = b.changes[:mark]
	if mark > 0 {
		b.lastID = b.changes[mark-1].e.id
	}
}

type writeReq struct {
	ctx  context.Context
	fn   func(tw *TxnWrite) error
	err  error
	done chan struct{}
}

// Write runs fn as one write request and returns once its changes are
// durable. fn sees every earlier write; if it returns an error its changes
// are discarded and no revision is used. Requests arriving together are
// committed in one database transaction (group commit).
func (l *Log) Write(ctx context.Context, fn func(tw *TxnWrite) error) error {
	r := &writeReq{ctx: ctx, fn: fn, done: make(chan struct{})}
	l.closeMu.RLock()
	if l.closed {
		l.closeMu.RUnlock()
		return ErrClosed
	}
	select {
	case l.writes <- r:
	case <-ctx.Done():
		l.closeMu.RUnlock()
		return ctx.Err()
	}
	l.closeMu.RUnlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		// The request may still commit, as an etcd proposal may still apply.
		return ctx.Err()
	}
}

func (l *Log) writer() {
	defer close(l.stopped)
	for {
		var reqs []*writeReq
		select {
		case <-l.quit:
			for {
				select {
				case r := <-l.writes:
					r.err = ErrClosed
					close(r.done)
				default:
					return
				}
			}
		case r := <-l.writes:
			reqs = append(reqs, r)
		}
	gather:
		for len(reqs) < l.maxBatch {
			select {
			case r := <-l.writes:
				reqs = append(reqs, r)
			default:
				break gather
			}
		}
		l.commit(reqs)
		for _, r := range reqs {
			close(r.done)
		}
	}
}

// commit runs reqs as one batch and sets each one's err.
//
// The requests run first against the in-memory state (the index at l.Rev()),
// then the batch is written on the condition that the database's meta row
// still says what memory says. When another process wrote meanwhile (shared
// database), or a commit reported as failed did land, the condition fails:
// the batch is undone, memory catches up from the log under the meta row's
// lock, and the requests run again there.
func (l *Log) commit(reqs []*writeReq) {
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	ctx := context.Background()
	batchSize.Observe(float64(len(reqs)))
	l.mu.RLock()
	exp := meta{rev: l.rev, lastID: l.lastID, compactRev: l.compactRev, leaseGen: l.leaseGen}
	l.mu.RUnlock()

	b := &batch{rev: exp.rev, lastID: exp.lastID, values: make(map[int64][]byte)}
	l.run(reqs, b)
	switch {
	case b.needTx || l.unsure:
		// A request must read the database under the lock.
	case len(b.changes) == 0 && len(b.leaseOps) == 0:
		if !l.be.Shared {
			return // memory is the truth: one process owns the database
		}
		// Read-only outcomes (a failed compare) must not be stale.
		m, err := l.readMeta(ctx, l.be.Read, false)
		if err != nil {
			fail(reqs, err)
			return
		}
		if m.rev == exp.rev && m.leaseGen == exp.leaseGen && m.compactRev <= exp.compactRev {
			return
		}
	case l.fastOK(b):
		ok, err := l.appendBatch(ctx, b, exp)
		if err != nil {
			// The outcome is unknown: the next batch checks the log.
			l.unsure = true
			b.unstage(l, 0)
			fail(reqs, err)
			return
		}
		if ok {
			l.apply(b)
			return
		}
		l.fastCooldown = fastCooldownBatches
	default:
		if l.fastCooldown > 0 {
			l.fastCooldown--
		}
		l.commitLocked(ctx, reqs, b, exp)
		return
	}
	// Run again under the lock, on the database's state.
	b.unstage(l, 0)
	for _, r := range reqs {
		r.err = nil
	}
	l.commitLocked(ctx, reqs, nil, exp)
}

// fastCooldownBatches is how many batches take the locked path after the
// one-statement append found the database changed by another process: under
// contention, the failed attempt would only add a round trip.
const fastCooldownBatches = 64

// fastOK tells whether b can be appended in one statement.
func (l *Log) fastOK(b *batch) bool {
	if l.appendQuery == "" || l.fastCooldown > 0 || len(b.leaseOps) > 0 {
		return false
	}
	size := 0
	for _, c := range b.changes {
		size += len(c.Key) + len(c.Value)
	}
	return size <= appendBatchBytes
}

// appendBatchBytes bounds the batch appended in one statement.
const appendBatchBytes = 16 << 20

// appendBatch appends b and moves the meta row on in one statement, if the
// meta row is still exp; ok is false (and nothing written) if it was not.
func (l *Log) appendBatch(ctx context.Context, b *batch, exp meta) (ok bool, err error) {
	defer observe("append_batch", time.Now())
	n := len(b.changes)
	ids, revs, subs := make([]int64, n), make([]int64, n), make([]int64, n)
	creates, versions, leases := make([]int64, n), make([]int64, n), make([]int64, n)
	keys, values, deleted := make([][]byte, n), make([][]byte, n), make([]bool, n)
	for i, c := range b.changes {
		ids[i], revs[i], subs[i], keys[i], values[i] = c.e.id, c.e.rev, c.sub, c.Key, c.Value
		creates[i], versions[i], leases[i], deleted[i] = c.e.create, c.e.version, c.e.lease, c.e.tombstone()
	}
	var matched int64
	// The statement is its own transaction: its time is the commit's.
	defer func(start time.Time) { commitSec.Observe(time.Since(start).Seconds()) }(time.Now())
	err = l.be.Write.QueryRowContext(ctx, l.appendQuery, b.rev, b.lastID, exp.rev, exp.lastID, exp.leaseGen, exp.compactRev,
		ids, revs, subs, keys, values, creates, versions, leases, deleted).Scan(&matched)
	if err != nil {
		return false, fmt.Errorf("append to log: %w", err)
	}
	b.leaseGen = exp.leaseGen
	return matched == 1, nil
}

// run runs each request's function against b, undoing the changes of those
// that fail.
func (l *Log) run(reqs []*writeReq, b *batch) {
	for _, r := range reqs {
		if r.ctx.Err() != nil {
			r.err = r.ctx.Err()
			continue
		}
		tw := &TxnWrite{l: l, b: b, beginRev: b.rev, mark: len(b.changes), opsMark: len(b.leaseOps)}
		err := r.fn(tw)
		if tw.ops > 1 {
			txnCounter.Inc()
		}
		if err != nil {
			b.unstage(l, tw.mark)
			b.leaseOps = b.leaseOps[:tw.opsMark]
			r.err = err
			if b.needTx {
				return // the batch runs again under the lock
			}
			continue
		}
		if tw.Changes() > 0 {
			b.rev++
		}
	}
}

// fail sets err on the requests that have none.
func fail(reqs []*writeReq, err error) {
	for _, r := range reqs {
		if r.err == nil {
			r.err = err
		}
	}
}

// commitLocked writes the batch in a database transaction that holds the
// meta row's lock. b is the batch run against memory at exp, or nil: if the
// database has moved on from exp, memory catches up and the requests run
// (again) against b's replacement.
func (l *Log) commitLocked(ctx context.Context, reqs []*writeReq, b *batch, exp meta) {
	// abort undoes the batch staged so far and fails the requests.
	abort := func(err error) {
		if b != nil {
			b.unstage(l, 0)
		}
		fail(reqs, err)
	}
	tx, err := l.be.Dialect.BeginWrite(ctx, l.be.Write)
	if err != nil {
		abort(fmt.Errorf("begin write: %w", err))
		return
	}
	defer tx.Rollback()
	m, err := l.readMeta(ctx, tx, true)
	if err != nil {
		abort(err)
		return
	}
	if b == nil || m.rev != exp.rev || m.lastID != exp.lastID || m.compactRev > exp.compactRev || m.leaseGen != exp.leaseGen {
		if b != nil {
			b.unstage(l, 0)
			for _, r := range reqs {
				r.err = nil
			}
		}
		// Another process wrote (shared database), or a commit whose outcome
		// was reported as failed did land: either way the log is the truth.
		if m.rev != l.Rev() || m.compactRev > l.CompactRev() || m.leaseGen != l.leaseGen {
			if err := l.catchUp(ctx, tx, m); err != nil {
				fail(reqs, err)
				return
			}
		}
		b = &batch{rev: l.Rev(), lastID: m.lastID, values: make(map[int64][]byte), tx: tx}
		l.run(reqs, b)
	}
	l.unsure = false
	b.tx = tx
	if len(b.changes) == 0 && len(b.leaseOps) == 0 {
		return
	}
	if err := l.insert(ctx, tx, b); err != nil {
		abort(err)
		return
	}
	if err := l.writeLeaseOps(ctx, tx, b.leaseOps); err != nil {
		abort(err)
		return
	}
	if err := l.advance(ctx, tx, b); err != nil {
		abort(err)
		return
	}
	start := time.Now()
	err = tx.Commit()
	commitSec.Observe(time.Since(start).Seconds())
	if err != nil {
		l.unsure = true
		abort(fmt.Errorf("commit: %w", err))
		return
	}
	l.apply(b)
}

// apply makes a committed batch visible: values, leases, the index's
// revision, then watchers.
func (l *Log) apply(b *batch) {
	for _, c := range b.changes {
		if !c.e.tombstone() {
			l.values.put(c.e.id, c.Value)
		}
	}
	l.mu.Lock()
	l.applyLeaseOps(b.leaseOps)
	l.applyAttachments(b.changes)
	for _, c := range b.changes {
		l.liveBytes += c.e.size
	}
	l.liveRows += int64(len(b.changes))
	l.leaseGen = b.leaseGen
	l.rev = b.rev
	currentRevGauge.Set(float64(b.rev))
	l.lastID = b.lastID
	l.mu.Unlock()
	// Readers see a revision before watchers hear of it, so a client that
	// got an event and then reads never reads an older revision. (A watch
	// created in between starts at the revision its created response names,
	// and so still gets the event.)
	l.notifyWatchers(b.changes)
	l.notify(b.rev)
}

// exec runs a statement of the write path in tx, using its prepared form
// when Open prepared one. (Preparing here could deadlock: the writer's
// transaction may hold the pool's only connection.)
func (l *Log) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) error {
	var err error
	if st := l.stmts.lookup(l.be.Write, query); st != nil {
		_, err = tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	} else {
		_, err = tx.ExecContext(ctx, query, args...)
	}
	return err
}

// writeStatements are the statements every write batch runs.
func (l *Log) writeStatements() []string {
	out := []string{l.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, lease_gen = ? WHERE id = 1`)}
	for _, n := range []int{1, 4, 16, 64} {
		out = append(out, l.q(`INSERT INTO shimd_log (id, rev, sub, kv_key, value, create_rev, version, lease, deleted) VALUES (?,?,?,?,?,?,?,?,?)`+
			strings.Repeat(`,(?,?,?,?,?,?,?,?,?)`, n-1)))
	}
	return out
}

// insertRows and insertBytes bound one INSERT statement (MySQL refuses
// packets over max_allowed_packet, 16 MiB by default).
const (
	insertRows  = 64
	insertBytes = 4 << 20
)

// insert appends the batch's rows and moves the meta row on.
func (l *Log) insert(ctx context.Context, tx *sql.Tx, b *batch) error {
	defer observe("insert", time.Now())
	for rest := b.changes; len(rest) > 0; {
		n, size := 1, len(rest[0].Key)+len(rest[0].Value)
		for n < len(rest) && n < insertRows && size+len(rest[n].Key)+len(rest[n].Value) <= insertBytes {
			size += len(rest[n].Key) + len(rest[n].Value)
			n++
		}
		// Whole size classes only, so that few statements are ever prepared.
		for _, c := range []int{64, 16, 4, 1} {
			if n >= c {
				n = c
				break
			}
		}
		chunk := rest[:n]
		rest = rest[n:]
		args := make([]any, 0, len(chunk)*8)
		for _, c := range chunk {
			args = append(args, c.e.id, c.e.rev, c.sub, c.Key, c.Value, c.e.create, c.e.version, c.e.lease, c.e.tombstone())
		}
		query := l.q(`INSERT INTO shimd_log (id, rev, sub, kv_key, value, create_rev, version, lease, deleted) VALUES (?,?,?,?,?,?,?,?,?)` +
			strings.Repeat(`,(?,?,?,?,?,?,?,?,?)`, len(chunk)-1))
		if err := l.exec(ctx, tx, query, args...); err != nil {
			return fmt.Errorf("append to log: %w", err)
		}
	}
	return nil
}

// advance moves the meta row on past the batch.
func (l *Log) advance(ctx context.Context, tx *sql.Tx, b *batch) error {
	gen := l.leaseGen
	if len(b.leaseOps) > 0 {
		gen++
	}
	if err := l.exec(ctx, tx, l.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, lease_gen = ? WHERE id = 1`), b.rev, b.lastID, gen); err != nil {
		return fmt.Errorf("advance revision: %w", err)
	}
	b.leaseGen = gen
	if notify := l.be.Dialect.Notify(); notify != "" {
		if _, err := tx.ExecContext(ctx, notify, strconv.FormatInt(b.rev, 10)); err != nil {
			return fmt.Errorf("notify: %w", err)
		}
	}
	return nil
}
