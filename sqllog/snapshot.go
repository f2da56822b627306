package sqllog

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"
)

// SHIMD-SNAPSHOT-1 is the format shimd's snapshots had before they became
// etcd backend files; Restore still reads it, for backups already taken:
// a magic line, then records (a type byte and varint-encoded fields), then
// etcd's trailer, the SHA-256 of everything before it. Records: 'M' meta
// (revision, compact revision, last id, cluster id), 'R' a log row, 'L' a
// lease, 'E' the end.
const snapshotMagic = "SHIMD-SNAPSHOT-1\n"

// ErrNotEmpty means a restore was pointed at a database that holds data.
var ErrNotEmpty = errors.New("the database is not empty: restore needs a fresh one")

// restoreLegacy loads a SHIMD-SNAPSHOT-1 snapshot into an empty database
// (one Open created and nothing has written). The snapshot's checksum is
// verified before anything is written. Leases get their full TTL from now,
// as etcd's do after a restore.
func restoreLegacy(ctx context.Context, l *Log, r io.Reader) error {
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
			return fmt.Errorf("snapshot: unknown record %q", t)
		}
		if rd.err != nil {
			return fmt.Errorf("snapshot: %w", rd.err)
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, st.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, compact_rev = ?, cluster_id = ?, lease_gen = lease_gen + 1 WHERE id = 1`), m.rev, m.lastID, m.compactRev, m.clusterID); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return tx.Commit()
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

// statusLegacy reads a SHIMD-SNAPSHOT-1 file for `shimd snapshot status`.
func statusLegacy(path string) (SnapshotStatus, error) {
	ds := SnapshotStatus{Format: "shimd-1"}
	data, err := os.ReadFile(path)
	if err != nil {
		return ds, err
	}
	if len(data) < len(snapshotMagic)+sha256.Size {
		return ds, ErrSnapshotChecksum
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return ds, ErrSnapshotChecksum
	}
	ds.TotalSize = int64(len(data))
	ds.Hash = crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))
	live := map[string]bool{}
	rd := &recordReader{b: body[len(snapshotMagic):]}
	for done := false; !done && rd.err == nil; {
		switch t := rd.byte(); t {
		case 'M':
			ds.Revision = rd.int()
			rd.int()
			rd.int()
			rd.int()
		case 'R':
			for range 6 {
				rd.int()
			}
			del := rd.int() == 1
			key := string(rd.bytes())
			rd.bytes()
			if del {
				delete(live, key)
			} else {
				live[key] = true
			}
		case 'L':
			rd.int()
			rd.int()
			rd.int()
		case 'E':
			done = true
		default:
			return ds, fmt.Errorf("snapshot: unknown record %q", t)
		}
	}
	ds.TotalKey = len(live)
	return ds, rd.err
}
