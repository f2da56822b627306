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
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ErrSnapshotChecksum means a snapshot's trailing SHA-256 does not match it.
var ErrSnapshotChecksum = errors.New("snapshot checksum mismatch: the file is damaged or truncated")

// SnapshotStatus is what `shimd snapshot status` reports, as etcdutl's
// does: the hash is CRC-32C over every bucket's name, keys and values.
type SnapshotStatus struct {
	Hash      uint32 `json:"hash"`
	Revision  int64  `json:"revision"`
	TotalKey  int    `json:"totalKey"`
	TotalSize int64  `json:"totalSize"`
	Version   string `json:"version"`
	// Format is "etcd" (a bbolt backend file) or "shimd-1" (shimd's old format).
	Format string `json:"format"`
}

// checkSnapshotFile verifies the trailing SHA-256 of an etcd snapshot if it
// has one (etcd's rule: a file whose size is a multiple of 512 plus 32
// bytes), and tells whether it had.
func checkSnapshotFile(f *os.File) (hasHash bool, err error) {
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	n := st.Size()
	if n%512 != sha256.Size {
		return false, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, n-sha256.Size)); err != nil {
		return true, err
	}
	sum := make([]byte, sha256.Size)
	if _, err := f.ReadAt(sum, n-sha256.Size); err != nil {
		return true, err
	}
	if !bytes.Equal(h.Sum(nil), sum) {
		return true, ErrSnapshotChecksum
	}
	return true, nil
}

// isLegacySnapshot tells whether the file is in shimd's old format.
func isLegacySnapshot(f *os.File) bool {
	b := make([]byte, len(snapshotMagic))
	n, _ := f.ReadAt(b, 0)
	return string(b[:n]) == snapshotMagic
}

// openSnapshotDB opens an etcd snapshot read-only, after its checksum,
// and checks bbolt's own structure, which a damaged file without a
// checksum fails; bbolt panics on some damage, which becomes an error.
func openSnapshotDB(path string, skipHashCheck bool) (db *bolt.DB, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// A bbolt file starts with a meta page: its magic follows the 16-byte
	// page header.
	head := make([]byte, 20)
	if n, _ := f.ReadAt(head, 0); n < len(head) || binary.LittleEndian.Uint32(head[16:]) != 0xED0CDAED && binary.BigEndian.Uint32(head[16:]) != 0xED0CDAED {
		f.Close()
		return nil, errors.New("not an etcd snapshot: the file does not start with a bbolt database (empty, truncated at the start, or another format)")
	}
	hasHash, err := checkSnapshotFile(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	if !hasHash && !skipHashCheck {
		return nil, errors.New("the snapshot has no SHA-256 trailer (truncated, or copied from a data directory): give --skip-hash-check to restore it anyway")
	}
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				db.Close()
			}
			db, err = nil, fmt.Errorf("not a valid etcd snapshot: %v", r)
		}
	}()
	db, err = bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("not a valid etcd snapshot: %w", err)
	}
	var problems []string
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			problems = append(problems, e.Error())
		}
		if tx.Bucket(bucketKey) == nil || tx.Bucket(bucketMeta) == nil {
			problems = append(problems, "no key or meta bucket")
		}
		return nil
	})
	if err == nil && len(problems) > 0 {
		err = fmt.Errorf("not a valid etcd snapshot: %d problems: %s", len(problems), strings.Join(problems[:min(len(problems), 5)], "; "))
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// parseRev decodes an etcd revision key.
func parseRev(k []byte) (main, sub int64, tombstone bool, err error) {
	if len(k) != 17 && !(len(k) == 18 && k[17] == 't') || k[8] != '_' {
		return 0, 0, false, fmt.Errorf("not a revision key: %q", k)
	}
	return int64(binary.BigEndian.Uint64(k[0:8])), int64(binary.BigEndian.Uint64(k[9:17])), len(k) == 18, nil
}

// metaRev reads a revision-encoded value of the meta bucket (0 if absent).
func metaRev(m *bolt.Bucket, key []byte) int64 {
	v := m.Get(key)
	if len(v) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v[0:8]))
}

// StatusSnapshot reads a snapshot file as `etcdutl snapshot status` does.
func StatusSnapshot(path string) (SnapshotStatus, error) {
	var ds SnapshotStatus
	f, err := os.Open(path)
	if err != nil {
		return ds, err
	}
	legacy := isLegacySnapshot(f)
	f.Close()
	if legacy {
		return statusLegacy(path)
	}
	db, err := openSnapshotDB(path, true)
	if err != nil {
		return ds, err
	}
	defer db.Close()
	ds.Format = "etcd"
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	live := map[string]bool{}
	err = db.View(func(tx *bolt.Tx) error {
		ds.TotalSize = tx.Size()
		ds.Version = string(tx.Bucket(bucketMeta).Get(metaStorageVersion))
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			h.Write(name)
			isKey := bytes.Equal(name, bucketKey)
			return b.ForEach(func(k, v []byte) error {
				h.Write(k)
				h.Write(v)
				if !isKey {
					return nil
				}
				main, _, tomb, err := parseRev(k)
				if err != nil {
					return err
				}
				ds.Revision = main
				var kv mvccpb.KeyValue
				if err := proto.Unmarshal(v, &kv); err != nil {
					return fmt.Errorf("revision %d: %w", main, err)
				}
				if tomb {
					delete(live, string(kv.Key))
				} else {
					live[string(kv.Key)] = true
				}
				return nil
			})
		})
	})
	ds.TotalKey = len(live)
	ds.Hash = h.Sum32()
	return ds, err
}

// RestoreOptions tune Restore.
type RestoreOptions struct {
	SkipHashCheck bool
	// Progress, if set, is called now and then with the revision
	// written up to and the snapshot's last one.
	Progress func(done, total int64)
}

// Restore loads a snapshot file into an empty database (one Open created
// and nothing has written): an etcd snapshot (a bbolt backend file, with
// etcd's trailing SHA-256), every retained revision of it, or shimd's old
// SHIMD-SNAPSHOT-1 format. The checksum and the file's structure are
// checked before anything is written, and everything is written in one
// transaction, so a failed restore leaves the database as it was. Leases
// get their full TTL from now, as etcd's do after a restore.
func Restore(ctx context.Context, l *Log, path string, opts RestoreOptions) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if isLegacySnapshot(f) {
		defer f.Close()
		return restoreLegacy(ctx, l, f)
	}
	f.Close()
	db, err := openSnapshotDB(path, opts.SkipHashCheck)
	if err != nil {
		return err
	}
	defer db.Close()
	s, st := l.state, l.store
	if p := s.position(); p.rev != 1 || p.lastID != 0 {
		return ErrNotEmpty
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	tx, err := st.be.Dialect.BeginWrite(ctx, st.be.Write)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var rev, lastID, compactRev int64 = 1, 0, 0
	var auth *AuthData
	err = viewSafely(db, func(btx *bolt.Tx) error {
		d, ok, err := readAuthBuckets(btx)
		if err != nil {
			return err
		}
		if ok {
			if err := restoreAuth(ctx, st, tx, d); err != nil {
				return err
			}
			auth = d
		}
		meta := btx.Bucket(bucketMeta)
		compactRev = max(metaRev(meta, metaFinishedCompact), metaRev(meta, metaScheduledCompct))
		kb := btx.Bucket(bucketKey)
		var total int64 // the last revision, for progress
		if k, _ := kb.Cursor().Last(); k != nil {
			total, _, _, _ = parseRev(k)
		}
		var changes []Change
		size := 0
		flush := func() error {
			err := st.insert(ctx, tx, changes)
			changes, size = changes[:0], 0
			if opts.Progress != nil {
				opts.Progress(rev, total)
			}
			return err
		}
		err = kb.ForEach(func(k, v []byte) error {
			main, sub, tomb, err := parseRev(k)
			if err != nil {
				return err
			}
			rev = max(rev, main)
			var kv mvccpb.KeyValue
			if err := proto.Unmarshal(v, &kv); err != nil {
				return fmt.Errorf("revision %d: %w", main, err)
			}
			if len(kv.Key) == 0 {
				return nil // a revision marker (etcdutl restore --bump-revision)
			}
			lastID++
			c := Change{Key: kv.Key, Value: kv.Value, sub: sub, e: entry{id: lastID, rev: main, create: kv.CreateRevision, version: kv.Version, lease: kv.Lease}}
			if tomb {
				c.Value, c.e.create, c.e.version, c.e.lease = []byte{}, 0, 0, 0
			} else if c.Value == nil {
				c.Value = []byte{}
			}
			changes = append(changes, c)
			if size += len(kv.Key) + len(kv.Value); size >= 4<<20 || len(changes) >= 1024 {
				return flush()
			}
			return nil
		})
		if err == nil && len(changes) > 0 {
			err = flush()
		}
		if err != nil {
			return err
		}
		now := time.Now()
		return btx.Bucket(bucketLease).ForEach(func(k, v []byte) error {
			id, ttl, err := parseLease(v)
			if err != nil {
				return err
			}
			return st.writeLeaseOps(ctx, tx, []leaseOp{{lease: Lease{ID: id, TTL: ttl, Expiry: now.Add(time.Duration(ttl) * time.Second)}}})
		})
	})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	rev = max(rev, compactRev)
	if _, err := tx.ExecContext(ctx, st.q(`UPDATE shimd_meta SET rev = ?, last_id = ?, compact_rev = ?, lease_gen = lease_gen + 1 WHERE id = 1`), rev, lastID, compactRev); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if auth != nil {
		l.authTables.saw(auth.Gen())
	}
	return nil
}

// parseLease decodes the ID and TTL of a leasepb.Lease.
func parseLease(v []byte) (id, ttl int64, err error) {
	for len(v) > 0 {
		num, typ, n := protowire.ConsumeTag(v)
		if n < 0 {
			return 0, 0, fmt.Errorf("lease: %w", protowire.ParseError(n))
		}
		v = v[n:]
		m := protowire.ConsumeFieldValue(num, typ, v)
		if m < 0 {
			return 0, 0, fmt.Errorf("lease: %w", protowire.ParseError(m))
		}
		if typ == protowire.VarintType && (num == 1 || num == 2) {
			x, _ := protowire.ConsumeVarint(v)
			if num == 1 {
				id = int64(x)
			} else {
				ttl = int64(x)
			}
		}
		v = v[m:]
	}
	return id, ttl, nil
}

// viewSafely runs fn in a read transaction of db, with a panic of bbolt on
// a damaged page turned into an error (the SQL transaction is then rolled
// back by the caller).
func viewSafely(db *bolt.DB, fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the snapshot is damaged: %v", r)
		}
	}()
	return db.View(fn)
}
