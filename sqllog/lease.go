package sqllog

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"
)

// ErrLeaseNotFound means no lease has the id.
var ErrLeaseNotFound = errors.New("lease not found")

// ErrLeaseExpired means the lease has expired but is not revoked yet: it
// cannot be renewed, and is about to be revoked.
var ErrLeaseExpired = errors.New("lease expired")

// Lease is a granted lease. Its expiry is stored as wall-clock time, so a
// restart honours the time that was left rather than granting a fresh TTL.
type Lease struct {
	ID     int64
	TTL    int64
	Expiry time.Time
}

// Remaining is the time left before the lease expires.
func (ls Lease) Remaining(now time.Time) time.Duration { return ls.Expiry.Sub(now) }

// leases is the process's view of the lease table and of which keys are
// attached to which lease, kept in step with committed changes.
type leases struct {
	byID      map[int64]*Lease
	keyLease  map[string]int64
	leaseKeys map[int64]map[string]struct{}
	// epoch moves on whenever leases may have left byID (a revocation, a
	// reload of the table): a lease read from the database before that must
	// not be added after it, or a revoked lease would come back.
	epoch int64
}

func newLeases() leases {
	return leases{byID: make(map[int64]*Lease), keyLease: make(map[string]int64), leaseKeys: make(map[int64]map[string]struct{})}
}

// attach records that key is now attached to lease (0: to none).
func (ls *leases) attach(key []byte, lease int64) {
	old := ls.keyLease[string(key)]
	if old == lease {
		return
	}
	if old != 0 {
		delete(ls.leaseKeys[old], string(key))
		if len(ls.leaseKeys[old]) == 0 {
			delete(ls.leaseKeys, old)
		}
		delete(ls.keyLease, string(key))
	}
	if lease != 0 {
		set := ls.leaseKeys[lease]
		if set == nil {
			set = make(map[string]struct{})
			ls.leaseKeys[lease] = set
		}
		set[string(key)] = struct{}{}
		ls.keyLease[string(key)] = lease
	}
}

// applyChanges updates key attachments for committed changes; the caller
// holds l.mu.
func (l *Log) applyAttachments(changes []Change) {
	for _, c := range changes {
		if c.e.tombstone() {
			l.leases.attach(c.Key, 0)
		} else {
			l.leases.attach(c.Key, c.e.lease)
		}
	}
}

type leaseOp struct {
	revoke bool
	lease  Lease
}

// loadLeases replaces the lease map with the lease table.
func (l *Log) loadLeases(ctx context.Context, q queryer) error {
	rows, err := q.QueryContext(ctx, `SELECT id, ttl, expires_at FROM shimd_lease`)
	if err != nil {
		return fmt.Errorf("read leases: %w", err)
	}
	defer rows.Close()
	byID := make(map[int64]*Lease)
	for rows.Next() {
		var ls Lease
		var ms int64
		if err := rows.Scan(&ls.ID, &ls.TTL, &ms); err != nil {
			return fmt.Errorf("read leases: %w", err)
		}
		ls.Expiry = time.UnixMilli(ms)
		byID[ls.ID] = &ls
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read leases: %w", err)
	}
	l.mu.Lock()
	l.leases.byID = byID
	l.leases.epoch++
	l.mu.Unlock()
	return nil
}

// LeaseExists reports whether lease id is granted, as of this request.
func (tw *TxnWrite) LeaseExists(id int64) bool {
	for i := len(tw.b.leaseOps) - 1; i >= 0; i-- {
		if op := tw.b.leaseOps[i]; op.lease.ID == id {
			return !op.revoke
		}
	}
	tw.l.mu.RLock()
	defer tw.l.mu.RUnlock()
	return tw.l.leases.byID[id] != nil
}

// GrantLease stages a new lease. The caller has checked that id is free.
func (tw *TxnWrite) GrantLease(ls Lease) {
	tw.b.leaseOps = append(tw.b.leaseOps, leaseOp{lease: ls})
}

// RevokeLease stages the removal of lease id; the caller deletes its keys.
func (tw *TxnWrite) RevokeLease(id int64) {
	tw.b.leaseOps = append(tw.b.leaseOps, leaseOp{revoke: true, lease: Lease{ID: id}})
}

// LeaseKeys returns, in key order, the keys attached to lease id as of this
// request, including attachments staged earlier in the batch.
func (tw *TxnWrite) LeaseKeys(id int64) [][]byte {
	cands := make(map[string]struct{})
	tw.l.mu.RLock()
	for k := range tw.l.leases.leaseKeys[id] {
		cands[k] = struct{}{}
	}
	tw.l.mu.RUnlock()
	for _, c := range tw.b.changes {
		if c.e.lease == id {
			cands[string(c.Key)] = struct{}{}
		}
	}
	rev := tw.curRev()
	var keys [][]byte
	tw.l.mu.RLock()
	for k := range cands {
		if ki := tw.l.idx.get([]byte(k)); ki != nil {
			if e, live := ki.at(rev); live && e.lease == id {
				keys = append(keys, ki.key)
			}
		}
	}
	tw.l.mu.RUnlock()
	sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i], keys[j]) < 0 })
	return keys
}

// LeaseExpired reports whether lease id exists and its expiry, as stored in
// the database now, has passed. Checking the row inside the write
// transaction makes expiry happen once, even when a keep-alive reached the
// database after this process last looked; locking it until the revocation
// commits makes a renewal racing with it wait, then find the lease gone (or,
// renewed first, be seen here).
func (tw *TxnWrite) LeaseExpired(ctx context.Context, id int64, now time.Time) (bool, error) {
	if !tw.LeaseExists(id) {
		return false, nil
	}
	if tw.b.tx == nil {
		tw.b.needTx = true
		return false, errNeedTx
	}
	var ms int64
	err := tw.b.tx.QueryRowContext(ctx, tw.l.q(`SELECT expires_at FROM shimd_lease WHERE id = ?`)+tw.l.be.Dialect.ForUpdate(), id).Scan(&ms)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease: %w", err)
	}
	exp := time.UnixMilli(ms)
	tw.l.mu.Lock()
	if ls := tw.l.leases.byID[id]; ls != nil {
		ls.Expiry = exp
	}
	tw.l.mu.Unlock()
	return !exp.After(now), nil
}

// writeLeaseOps persists the batch's grants and revokes.
func (l *Log) writeLeaseOps(ctx context.Context, tx *sql.Tx, ops []leaseOp) error {
	for _, op := range ops {
		var err error
		if op.revoke {
			_, err = tx.ExecContext(ctx, l.q(`DELETE FROM shimd_lease WHERE id = ?`), op.lease.ID)
		} else {
			_, err = tx.ExecContext(ctx, l.q(`INSERT INTO shimd_lease (id, ttl, expires_at) VALUES (?, ?, ?)`), op.lease.ID, op.lease.TTL, op.lease.Expiry.UnixMilli())
		}
		if err != nil {
			return fmt.Errorf("write lease: %w", err)
		}
	}
	return nil
}

// applyLeaseOps makes committed grants and revokes visible; the caller holds l.mu.
func (l *Log) applyLeaseOps(ops []leaseOp) {
	for _, op := range ops {
		if op.revoke {
			delete(l.leases.byID, op.lease.ID)
			l.leases.epoch++
			continue
		}
		ls := op.lease
		l.leases.byID[ls.ID] = &ls
	}
}
