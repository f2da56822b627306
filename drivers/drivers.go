// Package drivers connects shimd's revision log to a SQL database. Each
// database has its own subpackage that opens connections and supplies the few
// statements whose SQL differs between backends; everything else in sqllog is
// portable SQL.
package drivers

import (
	"context"
	"database/sql"
	"time"
)

// Backend is an opened database, ready for sqllog.
type Backend struct {
	// Name is the backend kind: "sqlite", "postgres" or "mysql".
	Name string
	// Write carries the single writer's transactions. sqllog serialises its
	// writes itself, so one connection is enough and keeps SQLite's writer lock
	// in one place.
	Write *sql.DB
	// Read is the pool used for reading values; it may be the same as Write.
	Read *sql.DB
	// Shared reports that other shimd processes may write the same database, so
	// the log must re-check the database's revision before trusting its memory.
	Shared bool
	// Dialect supplies the backend-specific SQL.
	Dialect Dialect
	// Listen, when set, calls wake whenever another process may have
	// committed, until ctx ends (PostgreSQL's LISTEN/NOTIFY). Without it the
	// log polls.
	Listen func(ctx context.Context, wake func())
	// Close releases connections and any lock the driver holds.
	Close func() error
}

// Options are the connection settings common to the server databases.
type Options struct {
	// MaxOpenConns bounds the read pool (the writer has its own connections).
	MaxOpenConns int
	// ConnectTimeout bounds establishing one connection.
	ConnectTimeout time.Duration
}

// Dialect is the SQL that differs between databases. Statements use '?'
// placeholders; Rebind turns them into the backend's form.
type Dialect interface {
	// Schema returns the statements that create shimd's tables if absent.
	Schema() []string
	// Rebind rewrites '?' placeholders for this backend.
	Rebind(query string) string
	// ForUpdate is the clause that makes a SELECT of the meta row inside a
	// write transaction lock it until commit, so that writers are serialised
	// across processes (revisions are allocated from that row).
	ForUpdate() string
	// BeginWrite starts a transaction that will write.
	BeginWrite(ctx context.Context, db *sql.DB) (*sql.Tx, error)
	// BeginSnapshot starts a read-only transaction that sees one consistent
	// state of the database throughout.
	BeginSnapshot(ctx context.Context, db *sql.DB) (*sql.Tx, error)
	// Notify is a statement run in each write transaction to wake other
	// processes when it commits, or "" if the database has no such thing.
	Notify() string
	// Size returns the bytes shimd's tables take on disk and, if the
	// database can tell, how many of them hold live data (-1 if not).
	Size(ctx context.Context, db *sql.DB) (size, inUse int64, err error)
	// Defragment gives the space of deleted rows back, as etcd's defrag does
	// for its file.
	Defragment(ctx context.Context, db *sql.DB) error
}
