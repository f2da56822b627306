package sqllog

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/shimd/shimd/drivers"
)

// store is the log's database: the tables, the statements that read and
// write them, and the cache of values by row id. It holds no position of
// its own: the meta row is the truth, and state is what this process has
// applied of it.
type store struct {
	be     *drivers.Backend
	stmts  stmts
	values *valueCache
	// appendQuery is the dialect's one-statement batch append ("" if none).
	appendQuery string
	// timeout bounds the database calls of the background loops and of a
	// commit (Options.DBTimeout).
	timeout time.Duration
}

func newStore(be *drivers.Backend, cacheBytes int64, timeout time.Duration) *store {
	st := &store{be: be, values: newValueCache(cacheBytes), timeout: timeout}
	if ba, ok := be.Dialect.(drivers.BatchAppender); ok {
		st.appendQuery = ba.AppendBatchQuery(tableNames)
	}
	return st
}

// bound returns ctx with the store's deadline for database calls, unless
// ctx's own is sooner: a database that hangs (a frozen host, a partition)
// fails the call in seconds instead of holding it, and whatever waits on it,
// forever.
func (st *store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, st.timeout)
}

// dropIdle closes the idle connections of a server database's pools after
// a call ran out of time: the server (or one host of a multi-host DSN) is
// likely hung, and every idle connection to it would cost the next calls a
// whole timeout each. New connections go to whichever host answers.
func (st *store) dropIdle() {
	if !st.be.Shared {
		return
	}
	for _, db := range []*sql.DB{st.be.Read, st.be.Write} {
		n := db.Stats().MaxOpenConnections
		db.SetMaxIdleConns(0) // closes the idle ones
		db.SetMaxIdleConns(n)
	}
}

// open creates the tables if needed, prepares the write path's statements
// and returns the meta row.
func (st *store) open(ctx context.Context) (meta, error) {
	if err := st.initSchema(ctx); err != nil {
		return meta{}, err
	}
	for _, q := range st.writeStatements() {
		if _, err := st.stmts.get(ctx, st.be.Write, q); err != nil {
			return meta{}, fmt.Errorf("prepare: %w", err)
		}
	}
	registerPool(st.be.Read, "shimd_read")
	registerPool(st.be.Write, "shimd_write")
	m, err := st.readMeta(ctx, st.be.Read, false)
	if err != nil {
		return meta{}, err
	}
	if m.schemaVersion != SchemaVersion {
		return meta{}, fmt.Errorf("database schema version %d, this shimd reads version %d", m.schemaVersion, SchemaVersion)
	}
	return m, nil
}

func (st *store) close() error {
	st.stmts.close()
	st.values.close()
	return st.be.Close()
}

func (st *store) q(query string) string { return st.be.Dialect.Rebind(query) }

// exec runs a statement of the write path in tx, using its prepared form
// when open prepared one. (Preparing here could deadlock: the writer's
// transaction may hold the pool's only connection.)
func (st *store) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) error {
	var err error
	if s := st.stmts.lookup(st.be.Write, query); s != nil {
		_, err = tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	} else {
		_, err = tx.ExecContext(ctx, query, args...)
	}
	return err
}

// meta is the meta row: where the log is.
type meta struct {
	schemaVersion int64
	rev           int64
	lastID        int64
	compactRev    int64
	leaseGen      int64
	clusterID     int64
	// authGen is the auth store's generation (AuthData.Gen): every auth
	// change moves it under the meta row's lock, every write batch is
	// conditioned on it, and a barrier notices auth changes through it.
	authGen int64
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// readMeta reads the meta row; with lock (inside a write transaction) it
// also locks it until the transaction ends.
func (st *store) readMeta(ctx context.Context, q queryer, lock bool) (meta, error) {
	var m meta
	query := `SELECT schema_version, rev, last_id, compact_rev, lease_gen, cluster_id, auth_gen FROM shimd_meta WHERE id = 1`
	dest := []any{&m.schemaVersion, &m.rev, &m.lastID, &m.compactRev, &m.leaseGen, &m.clusterID, &m.authGen}
	if lock {
		query += st.be.Dialect.ForUpdate()
	}
	err := q.QueryRowContext(ctx, query).Scan(dest...)
	if err != nil {
		return m, fmt.Errorf("read meta: %w", err)
	}
	return m, nil
}
