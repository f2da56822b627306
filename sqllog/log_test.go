package sqllog

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/shimd/shimd/drivers/sqlite"
)

func openAt(t testing.TB, path string) *Log {
	t.Helper()
	be, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(context.Background(), be, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func openTemp(t testing.TB) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shimd.db")
	l := openAt(t, path)
	t.Cleanup(func() { l.Close() })
	return l, path
}

func put(t testing.TB, l *Log, kvs ...string) int64 {
	t.Helper()
	var rev int64
	err := l.Write(context.Background(), func(tw *TxnWrite) error {
		for i := 0; i < len(kvs); i += 2 {
			rev = tw.Put([]byte(kvs[i]), []byte(kvs[i+1]), 0)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func get(t testing.TB, l *Log, key string, rev int64) (string, int64, bool) {
	t.Helper()
	v, err := l.View(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rr, err := v.Range(context.Background(), []byte(key), nil, RangeOptions{Rev: rev})
	if err != nil {
		t.Fatalf("get %q at %d: %v", key, rev, err)
	}
	if len(rr.KVs) == 0 {
		return "", 0, false
	}
	return string(rr.KVs[0].Value), rr.KVs[0].Version, true
}

func rowCount(t testing.TB, l *Log) int {
	t.Helper()
	var n int
	if err := l.be.Read.QueryRow(`SELECT COUNT(*) FROM shimd_log`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestOneRevisionPerRequest(t *testing.T) {
	l, _ := openTemp(t)
	if l.Rev() != 1 {
		t.Fatalf("empty log at revision %d, etcd starts at 1", l.Rev())
	}
	if rev := put(t, l, "a", "1", "b", "2", "c", "3"); rev != 2 {
		t.Fatalf("three puts in one request got revision %d, want 2", rev)
	}
	if l.Rev() != 2 {
		t.Fatalf("log at %d after one request, want 2", l.Rev())
	}
	var ids []int64
	rows, err := l.be.Read.Query(`SELECT id FROM shimd_log WHERE rev = 2 ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	if len(ids) != 3 {
		t.Fatalf("revision 2 has %d rows, want 3", len(ids))
	}
}

func TestFailedRequestTakesNoRevision(t *testing.T) {
	l, _ := openTemp(t)
	boom := errors.New("boom")
	err := l.Write(context.Background(), func(tw *TxnWrite) error {
		tw.Put([]byte("a"), []byte("1"), 0)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the request's own error", err)
	}
	if _, _, ok := get(t, l, "a", 0); ok {
		t.Fatal("a failed request's put is visible")
	}
	if rev := put(t, l, "b", "1"); rev != 2 {
		t.Fatalf("next write got revision %d, want 2", rev)
	}
}

// Concurrent writers are grouped into batches; every request still gets its
// own revision, gapless, and a failing request in a batch affects no other.
func TestGroupCommitGapless(t *testing.T) {
	l, _ := openTemp(t)
	const writers, each = 8, 50
	revs := make(chan int64, writers*each)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				var rev int64
				err := l.Write(context.Background(), func(tw *TxnWrite) error {
					rev = tw.Put([]byte(fmt.Sprintf("k%d-%d", w, i)), []byte("v"), 0)
					if i%10 == 0 {
						return errors.New("rejected")
					}
					return nil
				})
				if err == nil {
					revs <- rev
				}
			}
		}(w)
	}
	wg.Wait()
	close(revs)
	seen := map[int64]bool{}
	for r := range revs {
		if seen[r] {
			t.Fatalf("revision %d acknowledged twice", r)
		}
		seen[r] = true
	}
	want := writers * (each - each/10)
	if len(seen) != want || l.Rev() != int64(want)+1 {
		t.Fatalf("%d acknowledged writes, log at %d; want %d writes ending at %d", len(seen), l.Rev(), want, want+1)
	}
	for r := int64(2); r <= l.Rev(); r++ {
		if !seen[r] {
			t.Fatalf("revision %d missing: revisions must be gapless", r)
		}
	}
}

func TestReopenRestoresState(t *testing.T) {
	l, path := openTemp(t)
	put(t, l, "a", "1")
	put(t, l, "a", "2")
	put(t, l, "b", "1")
	if err := l.Write(context.Background(), func(tw *TxnWrite) error {
		tw.DeleteRange([]byte("b"), nil)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l.Close()

	l = openAt(t, path)
	defer l.Close()
	if l.Rev() != 5 {
		t.Fatalf("reopened at revision %d, want 5", l.Rev())
	}
	if v, ver, _ := get(t, l, "a", 0); v != "2" || ver != 2 {
		t.Fatalf("a = %q version %d, want 2 version 2", v, ver)
	}
	if v, _, _ := get(t, l, "a", 2); v != "1" {
		t.Fatalf("a at revision 2 = %q, want 1", v)
	}
	if _, _, ok := get(t, l, "b", 0); ok {
		t.Fatal("deleted key b is back after reopen")
	}
	if v, _, _ := get(t, l, "b", 4); v != "1" {
		t.Fatalf("b at revision 4 = %q, want 1", v)
	}
}

func TestCompactDeletesSupersededRows(t *testing.T) {
	l, path := openTemp(t)
	put(t, l, "a", "1") // 2
	put(t, l, "a", "2") // 3
	put(t, l, "b", "1") // 4
	if err := l.Write(context.Background(), func(tw *TxnWrite) error {
		tw.DeleteRange([]byte("b"), nil) // 5
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	put(t, l, "a", "3") // 6
	done, err := l.Compact(context.Background(), 5)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	// Kept: a@3 (the version live at 5), b's tombstone at exactly 5 (etcd
	// 3.6 keeps it for watchers from 5) and a@6. Gone: a@2, b@4.
	if n := rowCount(t, l); n != 3 {
		t.Fatalf("%d rows after compaction at 5, want 3", n)
	}
	if v, _, _ := get(t, l, "a", 5); v != "2" {
		t.Fatalf("a at the compact revision = %q, want 2", v)
	}
	v, _ := l.View(context.Background())
	if _, err := v.Range(context.Background(), []byte("a"), nil, RangeOptions{Rev: 4}); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read below the compact revision: %v, want ErrCompacted", err)
	}
	if _, err := l.Compact(context.Background(), 5); !errors.Is(err, ErrCompacted) {
		t.Fatalf("compacting again at 5: %v, want ErrCompacted", err)
	}
	if _, err := l.Compact(context.Background(), 7); !errors.Is(err, ErrFutureRev) {
		t.Fatalf("compacting at a future revision: %v, want ErrFutureRev", err)
	}
	done, err = l.Compact(context.Background(), 6)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	if n := rowCount(t, l); n != 1 {
		t.Fatalf("%d rows after compaction at 6, want 1 (a@6)", n)
	}
	l.Close()

	l = openAt(t, path)
	defer l.Close()
	if l.CompactRev() != 6 {
		t.Fatalf("compact revision %d after reopen, want 6", l.CompactRev())
	}
	if v, ver, _ := get(t, l, "a", 0); v != "3" || ver != 3 {
		t.Fatalf("a = %q version %d after reopen, want 3 version 3", v, ver)
	}
}

// A crash after a compaction is recorded but before its rows are deleted
// leaves garbage that the next start removes.
func TestCompactResumesAfterCrash(t *testing.T) {
	l, path := openTemp(t)
	put(t, l, "a", "1")
	put(t, l, "a", "2")
	put(t, l, "a", "3")
	if _, err := l.be.Write.Exec(`UPDATE shimd_meta SET compact_rev = 4`); err != nil {
		t.Fatal(err)
	}
	l.Close()

	l = openAt(t, path)
	defer l.Close()
	// Wait for the background deletion through a compaction-queue barrier.
	<-l.compactor.enqueue(compactJob{})
	if n := rowCount(t, l); n != 1 {
		t.Fatalf("%d rows after restart, want 1: the recorded compaction was not resumed", n)
	}
}
