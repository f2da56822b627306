package sqllog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/shimd/shimd/drivers"
)

// commit runs reqs as one batch and sets each one's err. A batch the
// database rejected for a conflict with a concurrent transaction (Galera's
// certification failure, a deadlock), which therefore did not commit, runs
// again: clients never see those errors, only the outcome of a retry.
func (w *writer) commit(reqs []*writeReq) {
	c, _ := w.st.be.Dialect.(drivers.ConflictDetector)
	// Retries stop where one commit's deadline would have.
	deadline := time.Now().Add(w.st.timeout)
	for attempt := 0; ; attempt++ {
		w.commitOnce(reqs)
		if c == nil || !conflicted(c, reqs) || time.Now().After(deadline) {
			return
		}
		conflictRetries.Inc()
		for _, r := range reqs {
			r.err = nil
		}
		// Writers on other nodes that keep committing would win again and
		// again against one that retried at once: a random, growing pause
		// (exponential backoff with jitter) spreads the attempts out.
		time.Sleep(time.Duration(rand.Int64N(int64(min(time.Millisecond<<min(attempt, 5), maxConflictBackoff)))))
	}
}

// maxConflictBackoff bounds the pause before a retry.
const maxConflictBackoff = 32 * time.Millisecond

// conflicted tells whether the batch failed for a conflict c recognises.
func conflicted(c drivers.ConflictDetector, reqs []*writeReq) bool {
	for _, r := range reqs {
		if r.err != nil && c.Conflict(r.err) {
			return true
		}
	}
	return false
}

// commitOnce is one attempt at the batch.
//
// The requests run first against the in-memory state (the index at its
// revision), then the batch is written on the condition that the database's
// meta row still says what memory says. When another process wrote
// meanwhile (shared database), or a commit reported as failed did land, the
// condition fails: the batch is undone, memory catches up from the log
// under the meta row's lock, and the requests run again there.
func (w *writer) commitOnce(reqs []*writeReq) {
	w.stallSince.CompareAndSwap(0, time.Now().UnixNano())
	w.inFlight.Store(true)
	defer w.inFlight.Store(false)
	w.s.applyMu.Lock()
	defer w.s.applyMu.Unlock()
	// A commit that outlives the timeout fails its requests; its outcome is
	// then unknown, and the next batch reads the database to settle it.
	ctx, cancel := w.st.bound(context.Background())
	defer cancel()
	defer func() {
		if ctx.Err() == nil {
			w.stallSince.Store(0)
		}
	}()
	defer func() {
		if ctx.Err() != nil {
			w.st.dropIdle()
		}
		timedOut(ctx, reqs)
	}()
	batchSize.Observe(float64(len(reqs)))
	exp := w.s.position()
	exp.authGen = w.auth.AuthGen()

	b := &batch{rev: exp.rev, lastID: exp.lastID, authGen: exp.authGen, values: make(map[int64][]byte)}
	w.run(reqs, b)
	switch {
	case b.needTx || w.unsure:
		// A request must read the database under the lock.
	case len(b.changes) == 0 && len(b.leaseOps) == 0:
		if !w.st.be.Shared {
			return // memory is the truth: one process owns the database
		}
		// Read-only outcomes (a failed compare) must not be stale.
		m, err := w.st.readMeta(ctx, w.st.be.Read, false)
		if err != nil {
			fail(reqs, err)
			return
		}
		if m.rev == exp.rev && m.leaseGen == exp.leaseGen && m.compactRev <= exp.compactRev && m.authGen == exp.authGen {
			return
		}
	case w.fastOK(b):
		ok, err := w.st.appendBatch(ctx, b.changes, b.rev, b.lastID, exp)
		if err != nil {
			// The outcome is unknown: the next batch checks the log.
			w.unsure = true
			b.unstage(w.s, 0)
			fail(reqs, err)
			return
		}
		if ok {
			b.leaseGen = exp.leaseGen
			w.apply(b)
			return
		}
		w.fastCooldown = fastCooldownBatches
	default:
		if w.fastCooldown > 0 {
			w.fastCooldown--
		}
		w.commitLocked(ctx, reqs, b, exp)
		return
	}
	// Run again under the lock, on the database's state.
	b.unstage(w.s, 0)
	for _, r := range reqs {
		r.err = nil
	}
	w.commitLocked(ctx, reqs, nil, exp)
}

// timedOut marks the failures of reqs that the commit's deadline caused.
func timedOut(ctx context.Context, reqs []*writeReq) {
	if ctx.Err() == nil {
		return
	}
	for _, r := range reqs {
		if r.err != nil && !errors.Is(r.err, ErrDBTimeout) && r.ctx.Err() == nil {
			r.err = fmt.Errorf("%w: %v", ErrDBTimeout, r.err)
		}
	}
}

// fastCooldownBatches is how many batches take the locked path after the
// one-statement append found the database changed by another process: under
// contention, the failed attempt would only add a round trip.
const fastCooldownBatches = 64

// fastOK tells whether b can be appended in one statement.
func (w *writer) fastOK(b *batch) bool {
	return w.fastCooldown == 0 && len(b.leaseOps) == 0 && w.st.canAppendBatch(b.changes)
}

// commitLocked writes the batch in a database transaction that holds the
// meta row's lock. b is the batch run against memory at exp, or nil: if the
// database has moved on from exp, memory catches up and the requests run
// (again) against b's replacement.
func (w *writer) commitLocked(ctx context.Context, reqs []*writeReq, b *batch, exp meta) {
	// abort undoes the batch staged so far and fails the requests.
	abort := func(err error) {
		if b != nil {
			b.unstage(w.s, 0)
		}
		fail(reqs, err)
	}
	tx, err := w.st.be.Dialect.BeginWrite(ctx, w.st.be.Write)
	if err != nil {
		abort(fmt.Errorf("begin write: %w", err))
		return
	}
	defer tx.Rollback()
	m, err := w.st.readMeta(ctx, tx, true)
	if err != nil {
		abort(err)
		return
	}
	if m.authGen != exp.authGen {
		// Auth changed: requests checked before it run again, and fail.
		w.auth.saw(m.authGen)
	}
	if b == nil || m.rev != exp.rev || m.lastID != exp.lastID || m.compactRev > exp.compactRev || m.leaseGen != exp.leaseGen || m.authGen != exp.authGen {
		if b != nil {
			b.unstage(w.s, 0)
			for _, r := range reqs {
				r.err = nil
			}
		}
		// Another process wrote (shared database), or a commit whose outcome
		// was reported as failed did land: either way the log is the truth.
		if pos := w.s.position(); m.rev != pos.rev || m.lastID != pos.lastID || m.compactRev > pos.compactRev || m.leaseGen != pos.leaseGen || w.f.Resyncing() {
			if err := w.f.catchUp(ctx, tx, m); err != nil {
				fail(reqs, err)
				return
			}
		}
		b = &batch{rev: w.s.Rev(), lastID: m.lastID, authGen: m.authGen, values: make(map[int64][]byte), tx: tx}
		w.run(reqs, b)
	}
	w.unsure = false
	b.tx = tx
	if len(b.changes) == 0 && len(b.leaseOps) == 0 {
		return
	}
	gen := w.s.leaseGen
	if len(b.leaseOps) > 0 {
		gen++
	}
	if err := w.st.insert(ctx, tx, b.changes); err != nil {
		abort(err)
		return
	}
	if err := w.st.writeLeaseOps(ctx, tx, b.leaseOps); err != nil {
		abort(err)
		return
	}
	if err := w.st.advance(ctx, tx, b.rev, b.lastID, gen); err != nil {
		abort(err)
		return
	}
	b.leaseGen = gen
	start := time.Now()
	err = tx.Commit()
	commitSec.Observe(time.Since(start).Seconds())
	if err != nil {
		w.unsure = true
		abort(fmt.Errorf("commit: %w", err))
		return
	}
	w.apply(b)
}

// apply makes a committed batch visible: values, leases, the index's
// revision, then watchers.
func (w *writer) apply(b *batch) {
	for _, c := range b.changes {
		if !c.e.tombstone() {
			w.st.values.put(c.e.id, c.Value)
		}
	}
	w.s.mu.Lock()
	w.s.applyLeaseOps(b.leaseOps)
	w.s.applyChanges(b.changes, b.rev, b.lastID)
	w.s.leaseGen = b.leaseGen
	w.s.mu.Unlock()
	// Readers see a revision before watchers hear of it, so a client that
	// got an event and then reads never reads an older revision. (A watch
	// created in between starts at the revision its created response names,
	// and so still gets the event.)
	w.hub.notifyChanges(b.changes)
	if w.st.be.Announce != nil && len(b.changes) > 0 {
		w.st.be.Announce(b.rev)
	}
}
