package sqllog

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The writer of shimd's old SHIMD-SNAPSHOT-1 format, kept here to make
// such files for the tests: shimd now writes etcd backend files, and
// restores old files still.
// writeLegacySnapshot writes a consistent snapshot of the database to w. It reads
// inside one read-only transaction, so writers go on meanwhile.
func writeLegacySnapshot(mt *maintenance, ctx context.Context, w io.Writer) error {
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

// snapshotHistory writes puts, overwrites, a delete and a compaction.
func snapshotHistory(t *testing.T, l *Log) {
	t.Helper()
	for i := range 50 {
		put(t, l, fmt.Sprintf("k%02d", i%17), fmt.Sprintf("v%d", i), "\x00bin\xff", fmt.Sprint(i))
	}
	if err := l.Write(context.Background(), func(tw *TxnWrite) error {
		tw.DeleteRange([]byte("k03"), []byte("k06"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	done, err := l.Compact(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	put(t, l, "after", "1")
}

// restoredLike restores file into a fresh log and checks that it holds the
// same rows and revisions as l.
func restoredLike(t *testing.T, l *Log, file string) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "restored.db")
	r := openAt(t, path)
	if err := Restore(ctx, r, file, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r = openAt(t, path)
	t.Cleanup(func() { r.Close() })
	h1, rev1, err := l.Hash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h2, rev2, err := r.Hash(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h1 != h2 || rev1 != rev2 || l.CompactRev() != r.CompactRev() {
		t.Errorf("restored: hash %x revision %d compacted at %d; original: %x %d %d", h2, rev2, r.CompactRev(), h1, rev1, l.CompactRev())
	}
	for _, rev := range []int64{0, 30, 40} {
		a, _, _ := l.HashKV(ctx, rev)
		b, _, _ := r.HashKV(ctx, rev)
		if rev != 30 && a != b {
			t.Errorf("HashKV at %d: restored %v, original %v", rev, b, a)
		}
	}
	if v, _, ok := get(t, r, "k01", 0); !ok || v != "v35" {
		t.Errorf("restored: k01 = %q %v", v, ok)
	}
}

func TestRestoreLegacySnapshot(t *testing.T) {
	l, _ := openTemp(t)
	snapshotHistory(t, l)
	file := filepath.Join(t.TempDir(), "old.snap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeLegacySnapshot(l.maintenance, context.Background(), f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ds, err := StatusSnapshot(file)
	if err != nil || ds.Format != "shimd-1" || ds.Revision != l.Rev() || ds.TotalKey != 16 {
		t.Errorf("status of the old format: %+v %v", ds, err)
	}
	restoredLike(t, l, file)
}

func TestSnapshotRoundTrip(t *testing.T) {
	l, _ := openTemp(t)
	snapshotHistory(t, l)
	file := filepath.Join(t.TempDir(), "snap.db")
	info, err := l.WriteSnapshotDB(context.Background(), file)
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision != l.Rev() || info.CompactRevision != 30 {
		t.Errorf("snapshot info %+v", info)
	}
	// The stream's trailer, as Maintenance.Snapshot adds it.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if err := os.WriteFile(file, append(data, sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	ds, err := StatusSnapshot(file)
	if err != nil || ds.Format != "etcd" || ds.Revision != l.Rev() || ds.TotalKey != 16 || ds.Version != etcdStorageVersion {
		t.Errorf("status: %+v %v", ds, err)
	}
	restoredLike(t, l, file)
}
