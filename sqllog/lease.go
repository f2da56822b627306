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

type leaseOp struct {
	revoke bool
	lease  Lease
}

// LeaseExists reports whether lease id is granted, as of this request.
func (tw *TxnWrite) LeaseExists(id int64) bool {
	for i := len(tw.b.leaseOps) - 1; i >= 0; i-- {
		if op := tw.b.leaseOps[i]; op.lease.ID == id {
			return !op.revoke
		}
	}
	s := tw.w.s
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leases.byID[id] != nil
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
	s := tw.w.s
	cands := make(map[string]struct{})
	s.mu.RLock()
	for k := range s.leases.leaseKeys[id] {
		cands[k] = struct{}{}
	}
	s.mu.RUnlock()
	for _, c := range tw.b.changes {
		if c.e.lease == id {
			cands[string(c.Key)] = struct{}{}
		}
	}
	rev := tw.curRev()
	var keys [][]byte
	s.mu.RLock()
	for k := range cands {
		if ki := s.idx.get([]byte(k)); ki != nil {
			if e, live := ki.at(rev); live && e.lease == id {
				keys = append(keys, ki.key)
			}
		}
	}
	s.mu.RUnlock()
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
	st := tw.w.st
	err := tw.b.tx.QueryRowContext(ctx, st.q(`SELECT expires_at FROM shimd_lease WHERE id = ?`)+st.be.Dialect.ForUpdate(), id).Scan(&ms)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease: %w", err)
	}
	exp := time.UnixMilli(ms)
	s := tw.w.s
	s.mu.Lock()
	if ls := s.leases.byID[id]; ls != nil {
		ls.Expiry = exp
	}
	s.mu.Unlock()
	return !exp.After(now), nil
}
