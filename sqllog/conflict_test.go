package sqllog

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/drivers/sqlite"
)

var errTestConflict = errors.New("test: conflict with a concurrent transaction")

// conflictDialect makes the next failures write transactions lose a
// conflict, as Galera's certification makes them on MySQL.
type conflictDialect struct {
	drivers.Dialect
	failures atomic.Int64
	begun    atomic.Int64
}

func (d *conflictDialect) BeginWrite(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	d.begun.Add(1)
	if d.failures.Add(-1) >= 0 {
		return nil, errTestConflict
	}
	return d.Dialect.BeginWrite(ctx, db)
}

func (d *conflictDialect) Conflict(err error) bool { return errors.Is(err, errTestConflict) }

func openConflicting(t *testing.T, timeout time.Duration) (*Log, *conflictDialect) {
	t.Helper()
	be, err := sqlite.Open(filepath.Join(t.TempDir(), "shimd.db"))
	if err != nil {
		t.Fatal(err)
	}
	d := &conflictDialect{Dialect: be.Dialect}
	be.Dialect = d
	l, err := Open(context.Background(), be, Options{DBTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, d
}

// A batch that lost a conflict runs again: the client sees its outcome.
func TestConflictRetried(t *testing.T) {
	l, d := openConflicting(t, 0)
	d.failures.Store(3)
	d.begun.Store(0)
	if rev := put(t, l, "k", "v"); rev != 2 {
		t.Fatalf("put at revision %d, want 2", rev)
	}
	if n := d.begun.Load(); n != 4 {
		t.Fatalf("%d write transactions begun, want 4 (3 conflicts, then the commit)", n)
	}
	if v, _, ok := get(t, l, "k", 0); !ok || v != "v" {
		t.Fatalf("get k = %q, %v", v, ok)
	}
}

// Conflicts that go on past the store's timeout fail the request with the
// conflict, and take no revision.
func TestConflictRetriesEnd(t *testing.T) {
	const timeout = 200 * time.Millisecond
	l, d := openConflicting(t, timeout)
	d.failures.Store(1 << 40)
	start := time.Now()
	err := l.Write(context.Background(), func(tw *TxnWrite) error {
		tw.Put([]byte("k"), []byte("v"), 0)
		return nil
	})
	if !errors.Is(err, errTestConflict) {
		t.Fatalf("write: %v, want the conflict", err)
	}
	if took := time.Since(start); took < timeout {
		t.Fatalf("gave up after %v, before the %v timeout", took, timeout)
	}
	d.failures.Store(0)
	if rev := put(t, l, "k", "v2"); rev != 2 {
		t.Fatalf("next put at revision %d, want 2", rev)
	}
}
