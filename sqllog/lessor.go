package sqllog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Leases on a shared database. Grants and revocations by other processes
// reach the lease map when this process catches up with the log (they move
// lease_gen), renewals never do: they only rewrite a row's expires_at. So
// there the map is a cache, and what it does not know, or believes expired,
// is read from the lease table. With a single process the map is the truth
// and the table is only written.
//
// Clocks: an expiry is computed, and compared, with the clock of the
// process doing it (granting, renewing, revoking), never the database's.
// Skew between processes therefore moves a lease's end by up to the skew,
// as if its TTL were that much longer or shorter, but never makes it end
// twice or survive a revocation: a revocation locks the row it found
// expired (LeaseExpired), so a racing renewal either commits first and is
// seen there, or waits and finds the row gone.

// lessor serves lease reads and renewals; grants and revocations are
// writes, staged through TxnWrite.
type lessor struct {
	s  *state
	st *store
	f  *follower
}

// load replaces the lease map with the lease table.
func (lr *lessor) load(ctx context.Context, q queryer) error {
	rows, err := q.QueryContext(ctx, `SELECT id, ttl, expires_at FROM shimd_lease`)
	if err != nil {
		return fmt.Errorf("read leases: %w", err)
	}
	defer rows.Close()
	byID := make(map[int64]*Lease)
	for rows.Next() {
		var l Lease
		var ms int64
		if err := rows.Scan(&l.ID, &l.TTL, &ms); err != nil {
			return fmt.Errorf("read leases: %w", err)
		}
		l.Expiry = time.UnixMilli(ms)
		byID[l.ID] = &l
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read leases: %w", err)
	}
	lr.s.mu.Lock()
	lr.s.leases.byID = byID
	lr.s.leases.epoch++
	lr.s.mu.Unlock()
	return nil
}

// RenewLease restarts lease id's TTL from now and returns the TTL. An
// expired lease is not renewed but reported with ErrLeaseExpired: it is
// about to be revoked. The renewal is one conditional statement, so it
// never revives an expired lease, and one racing with a revocation waits
// for it and then finds the row gone.
func (lr *lessor) RenewLease(ctx context.Context, id int64, now time.Time) (int64, error) {
	// A keep-alive stream's context lasts as long as the stream.
	ctx, cancel := lr.st.bound(ctx)
	defer cancel()
	lr.s.mu.RLock()
	var cur Lease
	ls := lr.s.leases.byID[id]
	if ls != nil {
		cur = *ls
	}
	epoch := lr.s.leases.epoch
	lr.s.mu.RUnlock()
	switch {
	case ls != nil && cur.Expiry.After(now):
		ok, err := lr.renew(ctx, cur, now, epoch)
		if err != nil || ok {
			return cur.TTL, err
		}
		if !lr.st.be.Shared {
			return 0, ErrLeaseNotFound // revoked meanwhile
		}
		// Another process revoked it, or granted the id again.
	case !lr.st.be.Shared && ls != nil:
		return 0, ErrLeaseExpired
	case !lr.st.be.Shared:
		return 0, ErrLeaseNotFound
	}
	// The row may be newer than the map: granted, or renewed, through
	// another process. Between the read and the renewal it can change
	// again; a few tries settle it.
	for range 3 {
		row, err := lr.readLease(ctx, id)
		if err != nil {
			return 0, err
		}
		if !row.Expiry.After(now) {
			lr.learnLease(row, epoch)
			return 0, ErrLeaseExpired
		}
		ok, err := lr.renew(ctx, row, now, epoch)
		if err != nil || ok {
			return row.TTL, err
		}
	}
	return 0, ErrLeaseNotFound
}

// renew sets lease ls's expiry to now+TTL if its row still has ls's TTL and
// has not expired by now, and reports whether it did.
func (lr *lessor) renew(ctx context.Context, ls Lease, now time.Time, epoch int64) (bool, error) {
	exp := now.Add(time.Duration(ls.TTL) * time.Second)
	res, err := lr.st.be.Write.ExecContext(ctx, lr.st.q(`UPDATE shimd_lease SET expires_at = ? WHERE id = ? AND ttl = ? AND expires_at > ?`),
		exp.UnixMilli(), ls.ID, ls.TTL, now.UnixMilli())
	if err != nil {
		return false, fmt.Errorf("renew lease: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("renew lease: %w", err)
	}
	if n == 0 {
		return false, nil
	}
	ls.Expiry = exp
	lr.learnLease(ls, epoch)
	return true, nil
}

// readLease reads lease id's row.
func (lr *lessor) readLease(ctx context.Context, id int64) (Lease, error) {
	ls := Lease{ID: id}
	var ms int64
	err := lr.st.be.Read.QueryRowContext(ctx, lr.st.q(`SELECT ttl, expires_at FROM shimd_lease WHERE id = ?`), id).Scan(&ls.TTL, &ms)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, ErrLeaseNotFound
	}
	if err != nil {
		return Lease{}, fmt.Errorf("read lease: %w", err)
	}
	ls.Expiry = time.UnixMilli(ms)
	return ls, nil
}

// learnLease records ls, as read from or written to its row, in the lease
// map: a later expiry for a lease the map has, or a lease it lacks, if no
// lease left the map since epoch (the row may be revoked by now, and the
// map already told so).
func (lr *lessor) learnLease(ls Lease, epoch int64) {
	lr.s.mu.Lock()
	defer lr.s.mu.Unlock()
	if cur := lr.s.leases.byID[ls.ID]; cur != nil {
		// A different TTL is the id granted again: catching up with the
		// log replaces the entry.
		if cur.TTL == ls.TTL && cur.Expiry.Before(ls.Expiry) {
			cur.Expiry = ls.Expiry
		}
		return
	}
	if lr.s.leases.epoch == epoch {
		lr.s.leases.byID[ls.ID] = &ls
	}
}

// LookupLease returns lease id and, if withKeys, its attached keys in no
// particular order (etcd's are unordered too). On a shared database the
// lease is read from the table, where grants and keep-alives through any
// process land.
func (lr *lessor) LookupLease(ctx context.Context, id int64, withKeys bool) (Lease, [][]byte, error) {
	if !lr.st.be.Shared {
		lr.s.mu.RLock()
		defer lr.s.mu.RUnlock()
		ls := lr.s.leases.byID[id]
		if ls == nil {
			return Lease{}, nil, ErrLeaseNotFound
		}
		return *ls, lr.leaseKeys(id, withKeys), nil
	}
	// Catching up makes the attached keys, and the header's revision,
	// current.
	if err := lr.f.sync(ctx); err != nil {
		return Lease{}, nil, err
	}
	lr.s.mu.RLock()
	epoch := lr.s.leases.epoch
	lr.s.mu.RUnlock()
	ls, err := lr.readLease(ctx, id)
	if err != nil {
		return Lease{}, nil, err
	}
	lr.learnLease(ls, epoch)
	lr.s.mu.RLock()
	defer lr.s.mu.RUnlock()
	return ls, lr.leaseKeys(id, withKeys), nil
}

// leaseKeys returns the keys attached to lease id if withKeys; the caller
// holds lr.s.mu.
func (lr *lessor) leaseKeys(id int64, withKeys bool) [][]byte {
	if !withKeys {
		return nil
	}
	var keys [][]byte
	for k := range lr.s.leases.leaseKeys[id] {
		keys = append(keys, []byte(k))
	}
	return keys
}

// Leases returns every lease, soonest to expire first. On a shared database
// they are read from the table.
func (lr *lessor) Leases(ctx context.Context) ([]Lease, error) {
	var out []Lease
	if lr.st.be.Shared {
		rows, err := lr.st.be.Read.QueryContext(ctx, `SELECT id, ttl, expires_at FROM shimd_lease`)
		if err != nil {
			return nil, fmt.Errorf("read leases: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var ls Lease
			var ms int64
			if err := rows.Scan(&ls.ID, &ls.TTL, &ms); err != nil {
				return nil, fmt.Errorf("read leases: %w", err)
			}
			ls.Expiry = time.UnixMilli(ms)
			out = append(out, ls)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read leases: %w", err)
		}
	} else {
		lr.s.mu.RLock()
		out = make([]Lease, 0, len(lr.s.leases.byID))
		for _, ls := range lr.s.leases.byID {
			out = append(out, *ls)
		}
		lr.s.mu.RUnlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Expiry.Before(out[j].Expiry) })
	return out, nil
}

// ExpiredLeases returns the ids of leases whose expiry has passed. On a
// shared database the leases the map believes expired are checked against
// their rows, which renewals through other processes may have moved on; a
// lease the map does not know yet is left to the processes that do.
func (lr *lessor) ExpiredLeases(ctx context.Context, now time.Time) ([]int64, error) {
	ctx, cancel := lr.st.bound(ctx)
	defer cancel()
	lr.s.mu.RLock()
	var ids []int64
	for id, ls := range lr.s.leases.byID {
		if !ls.Expiry.After(now) {
			ids = append(ids, id)
		}
	}
	epoch := lr.s.leases.epoch
	lr.s.mu.RUnlock()
	if !lr.st.be.Shared || len(ids) == 0 {
		return ids, nil
	}
	var expired []int64
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), fetchChunk)]
		ids = ids[len(chunk):]
		// Padded to a size class (repeating an id), so that few statements
		// are ever prepared.
		args := make([]any, sizeClass(len(chunk)))
		for i := range args {
			args[i] = chunk[min(i, len(chunk)-1)]
		}
		rows, err := lr.st.be.Read.QueryContext(ctx, lr.st.q(`SELECT id, ttl, expires_at FROM shimd_lease WHERE id IN (?`+strings.Repeat(",?", len(args)-1)+`)`), args...)
		if err != nil {
			return nil, fmt.Errorf("read leases: %w", err)
		}
		for rows.Next() {
			var ls Lease
			var ms int64
			if err := rows.Scan(&ls.ID, &ls.TTL, &ms); err != nil {
				rows.Close()
				return nil, fmt.Errorf("read leases: %w", err)
			}
			ls.Expiry = time.UnixMilli(ms)
			if ls.Expiry.After(now) {
				lr.learnLease(ls, epoch)
			} else {
				expired = append(expired, ls.ID)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("read leases: %w", err)
		}
	}
	return expired, nil
}
