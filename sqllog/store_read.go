package sqllog

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Reading the log: values by row id, the rows a follower applies or
// rebuilds its index from, the events a lagging watcher is sent, and the
// deletions of compaction.

// fetchChunk bounds the ids in one value query.
const fetchChunk = 256

// fetchValues reads the values of the row ids in chunk (sorted by id) into
// kvs at the places chunk gives, appending each to the (empty) slice already
// there, and caches them if cache is set. Concurrent calls write distinct
// places of kvs.
func (st *store) fetchValues(ctx context.Context, chunk []idPos, kvs []mvccpb.KeyValue, cache bool) error {
	size := sizeClass(len(chunk))
	args := make([]any, size)
	for i := range args {
		args[i] = chunk[min(i, len(chunk)-1)].id
	}
	query := st.q(`SELECT id, value FROM shimd_log WHERE id IN (?` + strings.Repeat(",?", size-1) + `)`)
	start := time.Now()
	s, err := st.stmts.get(ctx, st.be.Read, query)
	if err != nil {
		return fmt.Errorf("read values: %w", err)
	}
	rows, err := s.QueryContext(ctx, args...)
	if err != nil {
		return fmt.Errorf("read values: %w", err)
	}
	found := 0
	var id int64
	var v sql.RawBytes // copied at once into its place: no allocation per value
	for rows.Next() {
		if err := rows.Scan(&id, &v); err != nil {
			rows.Close()
			return fmt.Errorf("read values: %w", err)
		}
		if j, ok := slices.BinarySearchFunc(chunk, id, func(p idPos, id int64) int { return cmp.Compare(p.id, id) }); ok {
			i := chunk[j].i
			found++ // IN returns each row once, whatever the padding repeats
			kvs[i].Value = append(kvs[i].Value[:0], v...)
			if kvs[i].Value == nil {
				kvs[i].Value = []byte{}
			}
			if cache {
				st.values.put(id, kvs[i].Value)
			}
		}
	}
	rows.Close()
	observe("read_values", start)
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read values: %w", err)
	}
	if found < len(chunk) {
		// Compaction removed a row between the index walk and this read.
		return ErrCompacted
	}
	return nil
}

// readChanges reads the rows of revisions after from up to to, values
// included. (Ordered by rev, id, the order of the (rev, id) index, and so of
// ids: by id alone, SQLite would sort every value read.)
func (st *store) readChanges(ctx context.Context, q queryer, from, to int64) ([]Change, error) {
	rows, err := q.QueryContext(ctx, st.q(`SELECT id, rev, sub, kv_key, value, LENGTH(value), create_rev, version, lease, deleted FROM shimd_log WHERE rev > ? AND rev <= ? ORDER BY rev, id`), from, to)
	if err != nil {
		return nil, fmt.Errorf("read log: %w", err)
	}
	defer rows.Close()
	var out []Change
	for rows.Next() {
		var c Change
		var deleted bool
		var vlen int64
		if err := rows.Scan(&c.e.id, &c.e.rev, &c.sub, &c.Key, &c.Value, &vlen, &c.e.create, &c.e.version, &c.e.lease, &deleted); err != nil {
			return nil, fmt.Errorf("read log: %w", err)
		}
		if deleted {
			c.e.version = 0
		}
		c.e.size = int64(len(c.Key)) + vlen
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read log: %w", err)
	}
	return out, nil
}

// readIndex builds an index of every row up to rev, without values, and
// returns it with the rows' total size and count.
func (st *store) readIndex(ctx context.Context, q queryer, rev int64) (idx *index, size, count int64, err error) {
	rows, err := q.QueryContext(ctx, st.q(`SELECT id, rev, kv_key, LENGTH(value), create_rev, version, lease, deleted FROM shimd_log WHERE rev <= ? ORDER BY id`), rev)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read log: %w", err)
	}
	defer rows.Close()
	idx = newIndex()
	for rows.Next() {
		var e entry
		var key []byte
		var deleted bool
		var vlen int64
		if err := rows.Scan(&e.id, &e.rev, &key, &vlen, &e.create, &e.version, &e.lease, &deleted); err != nil {
			return nil, 0, 0, fmt.Errorf("read log: %w", err)
		}
		if deleted {
			e.version = 0
		}
		e.size = int64(len(key)) + vlen
		idx.add(key, e)
		size += e.size
		count++
	}
	if err := rows.Err(); err != nil {
		return nil, 0, 0, fmt.Errorf("read log: %w", err)
	}
	return idx, size, count, nil
}

// compactedError reports that the database has been compacted at rev, above
// the revision a read of history started from.
type compactedError struct{ rev int64 }

func (e *compactedError) Error() string {
	return fmt.Sprintf("history compacted at revision %d", e.rev)
}

// readEvents reads the events of revisions from..to from the log, at most
// about limit rows and maxBytes of keys and values, cut at a revision
// boundary (a single revision is always read whole). It returns the last
// revision it covers. It reads in one snapshot with the compact revision:
// rows at or above the compact revision are never deleted, so the events are
// complete, or it fails with a *compactedError when that is above from (some
// of the rows may be gone, whether or not this process knows yet).
func (st *store) readEvents(ctx context.Context, from, to int64, limit, maxBytes int) ([]*mvccpb.Event, int64, error) {
	tx, err := st.be.Dialect.BeginSnapshot(ctx, st.be.Read)
	if err != nil {
		return nil, 0, err
	}
	defer tx.Rollback()
	var compactRev int64
	if err := tx.QueryRowContext(ctx, `SELECT compact_rev FROM shimd_meta WHERE id = 1`).Scan(&compactRev); err != nil {
		return nil, 0, err
	}
	if compactRev > from {
		return nil, 0, &compactedError{rev: compactRev}
	}
	evs, upTo, err := st.readEventsIn(ctx, tx, from, to, limit, maxBytes)
	if err != nil {
		return nil, 0, err
	}
	return evs, upTo, tx.Commit()
}

func (st *store) readEventsIn(ctx context.Context, q queryer, from, to int64, limit, maxBytes int) ([]*mvccpb.Event, int64, error) {
	// Ordered as the (rev, id) index is (the same order as id's), so the
	// LIMIT stops the scan: by id alone, SQLite sorts every row of the range,
	// values included, before the first is returned.
	rows, err := q.QueryContext(ctx, st.q(`SELECT rev, kv_key, value, create_rev, version, lease, deleted FROM shimd_log WHERE rev >= ? AND rev <= ? ORDER BY rev, id LIMIT ?`), from, to, limit+1)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var evs []*mvccpb.Event
	size, full := 0, false
	for rows.Next() {
		var kv mvccpb.KeyValue
		var deleted bool
		if err := rows.Scan(&kv.ModRevision, &kv.Key, &kv.Value, &kv.CreateRevision, &kv.Version, &kv.Lease, &deleted); err != nil {
			return nil, 0, err
		}
		evs = append(evs, event(&kv, deleted))
		if size += len(kv.Key) + len(kv.Value); size > maxBytes && len(evs) <= limit {
			// Over the byte bound: like the row bound, keep whole revisions.
			full = true
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	rows.Close()
	if len(evs) <= limit && !full {
		return evs, to, nil
	}
	// Over the limit: drop the last, possibly partial, revision, unless it is
	// the only one, which is then read whole.
	last := evs[len(evs)-1].Kv.ModRevision
	if evs[0].Kv.ModRevision == last {
		all, _, err := st.readEventsIn(ctx, q, last, last, math.MaxInt32, math.MaxInt)
		return all, last, err
	}
	i := len(evs)
	for evs[i-1].Kv.ModRevision == last {
		i--
	}
	return evs[:i], last - 1, nil
}

// event builds a watch event from a log row; a delete carries only the key
// and revision, as etcd's do.
func event(kv *mvccpb.KeyValue, deleted bool) *mvccpb.Event {
	if deleted {
		return &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: kv.ModRevision}}
	}
	return &mvccpb.Event{Type: mvccpb.PUT, Kv: kv}
}

// deleteRows deletes the rows ids, in one statement.
func (st *store) deleteRows(ctx context.Context, ids []int64) error {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	query := st.q(`DELETE FROM shimd_log WHERE id IN (?` + strings.Repeat(",?", len(ids)-1) + `)`)
	defer observe("compact_delete", time.Now())
	_, err := st.be.Write.ExecContext(ctx, query, args...)
	return err
}
