package sqllog

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// A snapshot is shimd's own portable format, the same from every database:
// a magic line, then records (a type byte and varint-encoded fields), then
// etcd's trailer, the SHA-256 of everything before it. Records: 'M' meta
// (revision, compact revision, last id, cluster id), 'R' a log row, 'L' a
// lease, the auth store's (authsnap.go), 'E' the end.
const snapshotMagic = "SHIMD-SNAPSHOT-1\n"

// WriteSnapshot writes a consistent snapshot of the database to w. It reads
// inside one read-only transaction, so writers go on meanwhile.
func (mt *maintenance) WriteSnapshot(ctx context.Context, w io.Writer) error {
	tx, err := mt.st.be.Dialect.BeginSnapshot(ctx, mt.st.be.Read)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer tx.Rollback()
	m, err := mt.st.readMeta(ctx, mt.st.be.Read, false)
	if err != nil {
		return err
	}
	// Re-read inside the transaction: that is the state the rows match.
	if err := tx.QueryRowContext(ctx, `SELECT rev, last_id, compact_rev, cluster_id FROM shimd_meta WHERE id = 1`).Scan(&m.rev, &m.lastID, &m.compactRev, &m.clusterID); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 64<<10)
	rec := &recordWriter{w: bw}
	bw.WriteString(snapshotMagic)
	rec.begin('M')
	rec.int(m.rev, m.compactRev, m.lastID, m.clusterID)

	rows, err := tx.QueryContext(ctx, `SELECT id, rev, sub, create_rev, version, lease, deleted, kv_key, value FROM shimd_log ORDER BY id`)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	for rows.Next() {
		var id, rev, sub, create, version, lease int64
		var deleted bool
		var key, value []byte
		if err := rows.Scan(&id, &rev, &sub, &create, &version, &lease, &deleted, &key, &value); err != nil {
			rows.Close()
			return fmt.Errorf("snapshot: %w", err)
		}
		del := int64(0)
		if deleted {
			del = 1
		}
		rec.begin('R')
		rec.int(id, rev, sub, create, version, lease, del)
		rec.bytes(key, value)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	lrows, err := tx.QueryContext(ctx, `SELECT id, ttl, expires_at FROM shimd_lease ORDER BY id`)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	for lrows.Next() {
		var id, ttl, exp int64
		if err := lrows.Scan(&id, &ttl, &exp); err != nil {
			lrows.Close()
			return fmt.Errorf("snapshot: %w", err)
		}
		rec.begin('L')
		rec.int(id, ttl, exp)
	}
	lrows.Close()
	if err := lrows.Err(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := writeAuthRecords(ctx, mt.st, tx, rec); err != nil {
		return err
	}
	rec.begin('E')
	// etcd's client only accepts a snapshot whose body fills whole 512-byte
	// blocks (a bbolt file always does) before the checksum.
	if pad := (512 - (rec.n+len(snapshotMagic))%512) % 512; pad > 0 && rec.err == nil {
		_, rec.err = bw.Write(make([]byte, pad))
	}
	if rec.err != nil {
		return rec.err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err = w.Write(h.Sum(nil))
	return err
}

type recordWriter struct {
	w   *bufio.Writer
	buf [binary.MaxVarintLen64]byte
	n   int // bytes written
	err error
}

func (r *recordWriter) write(b []byte) {
	if r.err == nil {
		var n int
		n, r.err = r.w.Write(b)
		r.n += n
	}
}

func (r *recordWriter) begin(t byte) { r.write([]byte{t}) }

func (r *recordWriter) int(vs ...int64) {
	for _, v := range vs {
		n := binary.PutVarint(r.buf[:], v)
		r.write(r.buf[:n])
	}
}

func (r *recordWriter) bytes(bs ...[]byte) {
	for _, b := range bs {
		r.int(int64(len(b)))
		r.write(b)
	}
}

// ErrNotEmpty means a restore was pointed at a database that holds data.
var ErrNotEmpty = errors.New("the database is not empty: restore needs a fresh one")

// Restore loads a snapshot written by WriteSnapshot into an empty database
// (one Open created and nothing has written). The snapshot's checksum is
// verified before anything is written. Leases get their full TTL from now,
// as etcd's do after a restore.
func Restore(ctx context.Context, l *Log, r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(data) < sha256.Size+len(snapshotMagic) || string(data[:len(snapshotMagic)]) != snapshotMagic {
		return fmt.Errorf("not a shimd snapshot")
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return fmt.Errorf("snapshot checksum mismatch: the file is damaged or truncated")
	}
	s, st := l.state, l.store
	if p := s.position(); p.rev != 1 || p.lastID != 0 {
		return ErrNotEmpty
	}
	rd := &recordReader{b: body[len(snapshotMagic):]}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	tx, err := st.be.Dialect.BeginWrite(ctx, st.be.Write)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var m meta
	var ar authRestore
	b := &batch{values: map[int64][]byte{}}
	flush := func() error {
		if len(b.changes) == 0 {
			return nil
		}
		err := st.insert(ctx, tx, b.changes)
		b.changes = b.changes[:0]
		return err
	}
	for done := false; !done; {
		switch t := rd.byte(); t {
		case 'M':
			m.rev, m.compactRev, m.lastID, m.clusterID = rd.int(), rd.int(), rd.int(), rd.int()
		case 'R':
			var c Change
			c.e.id, c.e.rev, c.sub, c.e.create, c.e.version, c.e.lease = rd.int(), rd.int(), rd.int(), rd.int(), rd.int(), rd.int()
			if rd.int() == 1 {
				c.e.version = 0
			}
			c.Key, c.Value = rd.bytes(), rd.bytes()
			b.changes = append(b.changes, c)
			if len(b.changes) >= insertRows {
				if err := flush(); err != nil {
					return err
				}
			}
		case 'L':
			id, ttl := rd.int(), rd.int()
			rd.int() // the expiry at snapshot time; restarted below
			if err := st.writeLeaseOps(ctx, tx, []leaseOp{{lease: Lease{ID: id, TTL: ttl, Expiry: time.Now().Add(time.Duration(ttl) * time.Second)}}}); err != nil {
				return err
			}
		case 'E':
			done = true
		default:
			if ok, err := ar.record(t, rd); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("snapshot: unknown record %q", t)
			}
		}
		if rd.err != nil {
			return fmt.Errorf("snapshot: %w", rd.err)
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if err := ar.apply(ctx, st, tx); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, st.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, compact_rev = ?, cluster_id = ?, lease_gen = lease_gen + 1 WHERE id = 1`), m.rev, m.lastID, m.compactRev, m.clusterID); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if ar.seen {
		l.authTables.saw(ar.d.Gen())
	}
	return nil
}

type recordReader struct {
	b   []byte
	err error
}

func (r *recordReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = io.ErrUnexpectedEOF
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *recordReader) int() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = io.ErrUnexpectedEOF
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *recordReader) bytes() []byte {
	n := r.int()
	if r.err != nil || n < 0 || int64(len(r.b)) < n {
		r.err = io.ErrUnexpectedEOF
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}
