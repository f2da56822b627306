package sqllog

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Appending to the log: a write batch's rows, its lease grants and revokes,
// and the meta row moved past it, in the writer's transaction; or all of it
// in one conditional statement where the dialect has one.

// writeStatements are the statements every write batch runs.
func (st *store) writeStatements() []string {
	out := []string{st.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, lease_gen = ? WHERE id = 1`)}
	for _, n := range []int{1, 4, 16, 64} {
		out = append(out, st.insertQuery(n))
	}
	return out
}

func (st *store) insertQuery(rows int) string {
	return st.q(`INSERT INTO shimd_log (id, rev, sub, kv_key, value, create_rev, version, lease, deleted) VALUES (?,?,?,?,?,?,?,?,?)` +
		strings.Repeat(`,(?,?,?,?,?,?,?,?,?)`, rows-1))
}

// insertRows and insertBytes bound one INSERT statement (MySQL refuses
// packets over max_allowed_packet, 16 MiB by default).
const (
	insertRows  = 64
	insertBytes = 4 << 20
)

// insert appends changes as rows of the log.
func (st *store) insert(ctx context.Context, tx *sql.Tx, changes []Change) error {
	defer observe("insert", time.Now())
	for rest := changes; len(rest) > 0; {
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
		args := make([]any, 0, len(chunk)*9)
		for _, c := range chunk {
			args = append(args, c.e.id, c.e.rev, c.sub, c.Key, c.Value, c.e.create, c.e.version, c.e.lease, c.e.tombstone())
		}
		if err := st.exec(ctx, tx, st.insertQuery(len(chunk)), args...); err != nil {
			return fmt.Errorf("append to log: %w", err)
		}
	}
	return nil
}

// advance moves the meta row on to rev and lastID, and the lease generation
// to gen, and wakes other processes when the transaction commits.
func (st *store) advance(ctx context.Context, tx *sql.Tx, rev, lastID, gen int64) error {
	if err := st.exec(ctx, tx, st.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, lease_gen = ? WHERE id = 1`), rev, lastID, gen); err != nil {
		return fmt.Errorf("advance revision: %w", err)
	}
	if notify := st.be.Dialect.Notify(); notify != "" {
		if _, err := tx.ExecContext(ctx, notify, strconv.FormatInt(rev, 10)); err != nil {
			return fmt.Errorf("notify: %w", err)
		}
	}
	return nil
}

// appendBatchBytes bounds the batch appended in one statement.
const appendBatchBytes = 16 << 20

// canAppendBatch tells whether changes can be appended in one statement.
func (st *store) canAppendBatch(changes []Change) bool {
	if st.appendQuery == "" {
		return false
	}
	size := 0
	for _, c := range changes {
		size += len(c.Key) + len(c.Value)
	}
	return size <= appendBatchBytes
}

// appendBatch appends changes and moves the meta row on to rev and lastID
// in one statement, if the meta row is still exp; ok is false (and nothing
// written) if it was not.
func (st *store) appendBatch(ctx context.Context, changes []Change, rev, lastID int64, exp meta) (ok bool, err error) {
	defer observe("append_batch", time.Now())
	n := len(changes)
	ids, revs, subs := make([]int64, n), make([]int64, n), make([]int64, n)
	creates, versions, leases := make([]int64, n), make([]int64, n), make([]int64, n)
	keys, values, deleted := make([][]byte, n), make([][]byte, n), make([]bool, n)
	for i, c := range changes {
		ids[i], revs[i], subs[i], keys[i], values[i] = c.e.id, c.e.rev, c.sub, c.Key, c.Value
		creates[i], versions[i], leases[i], deleted[i] = c.e.create, c.e.version, c.e.lease, c.e.tombstone()
	}
	var matched int64
	// The statement is its own transaction: its time is the commit's.
	defer func(start time.Time) { commitSec.Observe(time.Since(start).Seconds()) }(time.Now())
	err = st.be.Write.QueryRowContext(ctx, st.appendQuery, rev, lastID, exp.rev, exp.lastID, exp.leaseGen, exp.compactRev,
		ids, revs, subs, keys, values, creates, versions, leases, deleted, exp.authGen).Scan(&matched)
	if err != nil {
		return false, fmt.Errorf("append to log: %w", err)
	}
	return matched == 1, nil
}

// writeLeaseOps persists a batch's grants and revokes.
func (st *store) writeLeaseOps(ctx context.Context, tx *sql.Tx, ops []leaseOp) error {
	for _, op := range ops {
		var err error
		if op.revoke {
			_, err = tx.ExecContext(ctx, st.q(`DELETE FROM shimd_lease WHERE id = ?`), op.lease.ID)
		} else {
			_, err = tx.ExecContext(ctx, st.q(`INSERT INTO shimd_lease (id, ttl, expires_at) VALUES (?, ?, ?)`), op.lease.ID, op.lease.TTL, op.lease.Expiry.UnixMilli())
		}
		if err != nil {
			return fmt.Errorf("write lease: %w", err)
		}
	}
	return nil
}
