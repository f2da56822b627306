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
	q.Set("_txlock", "immediate")
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
	read, err := sql.Open("sqlite", dsn)
	if err != nil {
		write.Close()
		lock.Close()
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	read.SetMaxOpenConns(8)
	read.SetMaxIdleConns(8)
	read.SetConnMaxLifetime(0)

	return &drivers.Backend{
		Name:    "sqlite",
		Write:   write,
		Read:    read,
		Dialect: dialect{},
		Close: func() error {
			err := read.Close()
			if werr := write.Close(); err == nil {
				err = werr
			}
			lock.Close()
			return err
		},
	}, nil
}

type dialect struct{}

func (dialect) Schema() []string {
	return []string{
		`CREATE TABLE IF NOT EXISTS shimd_meta (
			id INTEGER PRIMARY KEY CHECK (id = 1),
			schema_version INTEGER NOT NULL,
			rev INTEGER NOT NULL,
			last_id INTEGER NOT NULL,
			compact_rev INTEGER NOT NULL,
			lease_gen INTEGER NOT NULL,
			cluster_id INTEGER NOT NULL
		)`,
		`CREATE TABLE IF NOT EXISTS shimd_log (
			id INTEGER PRIMARY KEY,
			rev INTEGER NOT NULL,
			kv_key BLOB NOT NULL,
			value BLOB NOT NULL,
			create_rev INTEGER NOT NULL,
			version INTEGER NOT NULL,
			lease INTEGER NOT NULL,
			deleted INTEGER NOT NULL
		)`,
		`CREATE INDEX IF NOT EXISTS shimd_log_rev ON shimd_log (rev, id)`,
		`CREATE TABLE IF NOT EXISTS shimd_lease (
			id INTEGER PRIMARY KEY,
			ttl INTEGER NOT NULL,
			expires_at INTEGER NOT NULL
		)`,
	}
}

func (dialect) Rebind(q string) string { return q }

// BEGIN IMMEDIATE (via _txlock) already holds the database's write lock.
func (dialect) ForUpdate() string { return "" }

func (dialect) Notify() string { return "" }

func (dialect) BeginWrite(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, nil)
}
