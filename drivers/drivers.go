// Package drivers connects shimd's revision log to a SQL database. Each
// database has its own subpackage that opens connections and supplies the few
// statements whose SQL differs between backends; everything else in sqllog is
// portable SQL.
package drivers

import (
	"context"
	"database/sql"
	"database/sql/driver"
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
	// committed, until ctx ends (PostgreSQL's LISTEN/NOTIFY), with the
	// notification's payload: the revision committed, or "" when any may
	// have been (after reconnecting). Without it the log polls.
	Listen func(ctx context.Context, wake func(payload string))
	// Announce, when set, is called after each commit of this process's
	// writer with the revision committed, to wake the other processes where
	// the database does not (see package peerwake). It must not block.
	Announce func(rev int64)
	// Close releases connections and any lock the driver holds.
	Close func() error
}

// Options are the connection settings common to the server databases.
type Options struct {
	// MaxOpenConns bounds the read pool (the writer has its own connections).
	MaxOpenConns int
	// ConnectTimeout bounds establishing one connection.
	ConnectTimeout time.Duration
	// PostgresVacuumFull makes PostgreSQL's Defragment run VACUUM FULL.
	// Plain VACUUM (the default) takes no lock that stops readers or
	// writers, so it is safe while other shimd processes and other
	// applications use the database, but it only makes the space reusable
	// and returns just empty pages at the end of each table to the
	// filesystem. VACUUM FULL rewrites the tables and returns all of it, as
	// etcd's defrag does, but holds an exclusive lock on shimd's tables for
	// its whole run, stopping every shimd process on the database. Turn it on
	// (shimd --postgres-vacuum-full) for a maintenance window. The other
	// databases ignore it.
	PostgresVacuumFull bool
}

// Tables names shimd's tables. sqllog defines the names; a driver gets them
// where its statements name the tables.
type Tables struct {
	Meta, Log, Lease, Alarm, Member string
}

// All lists the tables, the meta table first.
func (t Tables) All() []string {
	return []string{t.Meta, t.Log, t.Lease, t.Alarm, t.Member}
}

// Schema is how a database spells the parts of shimd's table definitions
// that differ between databases; sqllog writes the tables themselves (see
// sqllog/schema.go). Tables created by earlier versions must keep matching
// what these produce.
type Schema struct {
	// Column types: a 32-bit and a 64-bit integer, a key (binary, compared
	// byte-wise), a value (binary, as large as --max-request-bytes allows),
	// a boolean and a text.
	Int, BigInt, Key, Bytes, Bool, Text string
	// Checks declares the tables' CHECK constraints (MySQL's tables have
	// always been created without).
	Checks bool
	// TableOptions follows each CREATE TABLE's closing parenthesis (MySQL's
	// " ENGINE=InnoDB"), "" for none.
	TableOptions string
	// InlineIndexes declares secondary indexes inside CREATE TABLE, for a
	// database without CREATE INDEX IF NOT EXISTS (MySQL), instead of by
	// CREATE INDEX IF NOT EXISTS after it.
	InlineIndexes bool
	// Lock, if not "", is run first in the schema transaction so that
	// processes starting together do not race to create the tables.
	Lock string
}

// Dialect is the SQL that differs between databases. Statements use '?'
// placeholders; Rebind turns them into the backend's form.
type Dialect interface {
	// Schema returns how the database spells shimd's table definitions.
	Schema() Schema
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
	// processes when it commits, or "" if the database has no such thing. Its
	// one argument is the revision committed, as text.
	Notify() string
	// Size returns the bytes shimd's tables take on disk and, if the
	// database can tell, how many of them hold live data (-1 if not).
	Size(ctx context.Context, db *sql.DB, tables Tables) (size, inUse int64, err error)
	// Defragment gives the space of deleted rows back, as etcd's defrag does
	// for its file.
	Defragment(ctx context.Context, db *sql.DB, tables Tables) error
}

// BatchAppender is implemented by dialects that can append a whole write
// batch and move the meta row on in one statement, in the database's implicit
// transaction: one round trip where BEGIN, the meta row's lock, INSERT,
// UPDATE and COMMIT take five.
type BatchAppender interface {
	// AppendBatchQuery returns that statement, on the meta and log tables
	// that tables names. Its arguments are the new rev
	// and last_id; the expected rev, last_id and lease_gen and the highest
	// expected compact_rev; then the appended rows' id, rev, sub, kv_key,
	// value, create_rev, version, lease and deleted, each as an array; last
	// the expected auth_gen. It returns one row with one column: 1 if the meta row matched and the rows
	// were appended, 0 if it did not match and nothing changed.
	AppendBatchQuery(tables Tables) string
}

// ConflictDetector is implemented by dialects whose database may reject a
// transaction for a conflict with a concurrent one, after which it is known
// not to have committed and may simply run again (MySQL's deadlock error,
// which is also how Galera reports a failed certification).
type ConflictDetector interface {
	Conflict(err error) bool
}

// OpenServer opens the read and write pools of a server database (one that
// several processes may share) on connector and checks that it answers.
// The Backend's Name, Dialect and Listen are the caller's to fill.
func OpenServer(ctx context.Context, connector driver.Connector, opts Options) (*Backend, error) {
	read := sql.OpenDB(connector)
	read.SetMaxOpenConns(max(opts.MaxOpenConns, 2))
	read.SetMaxIdleConns(max(opts.MaxOpenConns, 2))
	read.SetConnMaxIdleTime(5 * time.Minute)
	// The writer's transactions, plus compaction, lease renewals, heartbeats.
	write := sql.OpenDB(connector)
	write.SetMaxOpenConns(4)
	write.SetMaxIdleConns(4)
	write.SetConnMaxIdleTime(5 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, max(opts.ConnectTimeout, 5*time.Second))
	defer cancel()
	if err := write.PingContext(pctx); err != nil {
		read.Close()
		write.Close()
		return nil, err
	}
	return &Backend{
		Write:  write,
		Read:   read,
		Shared: true,
		Close: func() error {
			err := read.Close()
			if werr := write.Close(); err == nil {
				err = werr
			}
			return err
		},
	}, nil
}
