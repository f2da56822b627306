// Package sqlite opens shimd's embedded default backend: one SQLite file in
// the data directory, through the pure-Go modernc.org/sqlite driver.
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/shimd/shimd/drivers"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// FileName is the database file created in the data directory.
const FileName = "shimd.db"

// Open opens (creating if needed) the SQLite database at path. path may be a
// plain file path or a "sqlite://" / "file:" URL. It takes an exclusive lock
// beside the file: the log keeps its index in memory, so a second process on
// the same file would go unnoticed.
func Open(path string) (*drivers.Backend, error) {
	path = strings.TrimPrefix(strings.TrimPrefix(path, "sqlite://"), "file:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if path == "" {
		return nil, fmt.Errorf("sqlite: empty database path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("sqlite: %s is in use by another shimd process", path)
	}

	// WAL lets readers run beside the writer; synchronous=FULL makes every
	// acknowledged commit survive power loss, as etcd's fsync does.
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(OFF)"} {
		q.Add("_pragma", p)
	}
	// Readers get a small page cache each: the OS page cache holds the file
	// once for all of them, while every connection's own cache is process
	// memory.
	rq := url.Values{}
	for k, v := range q {
		rq[k] = append([]string(nil), v...)
	}
	rq.Add("_pragma", "cache_size(-512)")
	readDSN := "file:" + path + "?" + rq.Encode()
	// Only the writer's transactions take the write lock up front. Its
	// commits leave checkpoints to a background connection (below), so that
	// no commit waits for WAL pages to be copied into the file and synced;
	// the automatic checkpoint stays, at a larger size, as a backstop.
	q.Set("_txlock", "immediate")
	q.Add("_pragma", fmt.Sprintf("wal_autocheckpoint(%d)", backstopPages))
	dsn := "file:" + path + "?" + q.Encode()

	write, err := sql.Open("sqlite", dsn)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	if err := write.Ping(); err != nil {
		write.Close()
		lock.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	read, err := sql.Open("sqlite", readDSN)
	if err != nil {
		write.Close()
		lock.Close()
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	read.SetMaxOpenConns(4)
	read.SetMaxIdleConns(4)
	read.SetConnMaxLifetime(0)

	stop := make(chan struct{})
	stopped := make(chan struct{})
	go checkpointer(read, stop, stopped)
	return &drivers.Backend{
		Name:    "sqlite",
		Write:   write,
		Read:    read,
		Dialect: dialect{},
		Close: func() error {
			close(stop)
			<-stopped
			err := read.Close()
			if werr := write.Close(); err == nil {
				err = werr
			}
			lock.Close()
			return err
		},
	}, nil
}

// checkpointInterval is how often the background checkpoint runs, and
// backstopPages the WAL size (in pages) at which a commit checkpoints by
// itself, should the background fall behind.
const (
	checkpointInterval = 100 * time.Millisecond
	backstopPages      = 16384
)

// checkpointer copies committed WAL pages into the database file in the
// background. PASSIVE never waits for readers or the writer; the WAL is
// reused from its start by the first commit after a complete checkpoint.
func checkpointer(db *sql.DB, stop <-chan struct{}, stopped chan<- struct{}) {
	defer close(stopped)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		// An error (a busy database, say) is retried on the next tick; the
		// backstop bounds the WAL meanwhile.
		db.Exec(`PRAGMA wal_checkpoint(PASSIVE)`)
	}
}

type dialect struct{}

// SQLite's types are affinities: every integer is an INTEGER, and an
// INTEGER PRIMARY KEY is the table's rowid.
func (dialect) Schema() drivers.Schema {
	return drivers.Schema{
		Int:    "INTEGER",
		BigInt: "INTEGER",
		Key:    "BLOB",
		Bytes:  "BLOB",
		Bool:   "INTEGER",
		Text:   "TEXT",
		Checks: true,
	}
}

func (dialect) Rebind(q string) string { return q }

// BEGIN IMMEDIATE (via _txlock) already holds the database's write lock.
func (dialect) ForUpdate() string { return "" }

func (dialect) Notify() string { return "" }

// Size counts the file's pages; the free list is what a VACUUM would give back.
func (dialect) Size(ctx context.Context, db *sql.DB, _ drivers.Tables) (int64, int64, error) {
	var pages, free, pageSize int64
	if err := db.QueryRowContext(ctx, `SELECT page_count, freelist_count, page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()`).Scan(&pages, &free, &pageSize); err != nil {
		return 0, 0, fmt.Errorf("sqlite: size: %w", err)
	}
	return pages * pageSize, (pages - free) * pageSize, nil
}

// Defragment runs a full VACUUM, which rewrites the file without its free
// pages (incremental vacuum would only trim free pages at the end, and needs
// auto_vacuum chosen when the file was created). Like etcd's defrag it
// blocks writers while it runs; readers go on, from the WAL. The checkpoint
// then truncates the WAL so the space really goes back to the filesystem.
func (dialect) Defragment(ctx context.Context, db *sql.DB, _ drivers.Tables) error {
	if _, err := db.ExecContext(ctx, `VACUUM`); err != nil {
		return fmt.Errorf("sqlite: vacuum: %w", err)
	}
	// The background checkpointer may hold the checkpoint for a moment:
	// then this one reports busy, and is tried again.
	for try := 0; ; try++ {
		var busy, log, done int64
		err := db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &log, &done)
		if err == nil && busy == 0 {
			return nil
		}
		if try == 50 {
			if err != nil {
				return fmt.Errorf("sqlite: checkpoint: %w", err)
			}
			return nil // the WAL is truncated by a later checkpoint
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// A deferred transaction in WAL mode reads one snapshot from its first read.
func (dialect) BeginSnapshot(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, nil)
}

func (dialect) BeginWrite(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, nil)
}
