// Package postgres stores shimd's log in PostgreSQL, through pgx. Several
// shimd processes may share one database; LISTEN/NOTIFY wakes each of them
// as soon as another commits.
package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/shimd/shimd/drivers"
)

// channel is the NOTIFY channel writers signal on.
const channel = "shimd_log"

// Open connects to the database dsn names: a postgres:// or postgresql://
// URL, with pgx's parameters (sslmode, search_path, ...).
func Open(ctx context.Context, dsn string, opts drivers.Options) (*drivers.Backend, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: bad endpoint: %w", redact(err, dsn))
	}
	if opts.ConnectTimeout > 0 && !strings.Contains(dsn, "connect_timeout=") {
		cfg.ConnectTimeout = opts.ConnectTimeout
	}
	cfg.DialFunc = keepaliveDialer().DialContext
	be, err := drivers.OpenServer(ctx, stdlib.GetConnector(*cfg, stdlib.OptionBeforeConnect(fitConnectTimeout)), opts)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to %s:%d: %w", cfg.Host, cfg.Port, redact(err, cfg.Password))
	}
	be.Name = "postgres"
	be.Dialect = dialect{vacuumFull: opts.PostgresVacuumFull}
	be.Listen = func(ctx context.Context, wake func(string)) { listen(ctx, cfg, wake) }
	return be, nil
}

// listen holds a connection subscribed to the channel and calls wake for
// every notification; it reconnects after errors, waking once each time in
// case a commit slipped by while it was away.
func listen(ctx context.Context, cfg *pgx.ConnConfig, wake func(string)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN "+channel)
			if err == nil {
				backoff = 100 * time.Millisecond
				wake("")
				for err == nil {
					var n *pgconn.Notification
					if n, err = waitNotification(ctx, conn); err == nil && n != nil {
						wake(n.Payload)
					}
				}
			}
			conn.Close(context.Background())
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}

// listenCheck is how long the listening connection may stay silent before
// it is pinged: a frozen or partitioned server keeps it open and silent
// forever, and the notifications would never come from the new primary.
const listenCheck = 10 * time.Second

// waitNotification waits for a notification; after listenCheck of silence
// it checks the connection answers and returns no notification.
func waitNotification(ctx context.Context, conn *pgx.Conn) (*pgconn.Notification, error) {
	wctx, cancel := context.WithTimeout(ctx, listenCheck)
	n, err := conn.WaitForNotification(wctx)
	cancel()
	if err == nil || ctx.Err() != nil || wctx.Err() == nil {
		return n, err
	}
	// A timeout leaves the connection usable (pgconn closes it on any other
	// error).
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	return nil, conn.Ping(pctx)
}

// redact keeps a password out of an error message.
func redact(err error, secret string) error {
	if secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return fmt.Errorf("%s", strings.ReplaceAll(err.Error(), secret, "xxxxx"))
}

type dialect struct {
	vacuumFull bool // see drivers.Options.PostgresVacuumFull
}

func (dialect) Schema() drivers.Schema {
	return drivers.Schema{
		Int:    "INTEGER",
		BigInt: "BIGINT",
		Key:    "BYTEA",
		Bytes:  "BYTEA",
		Bool:   "BOOLEAN",
		Text:   "TEXT",
		Checks: true,
		// Processes starting together must not race to create the tables.
		Lock: `SELECT pg_advisory_xact_lock(7361696)`,
	}
}

// Rebind numbers the placeholders: ? becomes $1, $2, ...
func (dialect) Rebind(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

func (dialect) ForUpdate() string { return " FOR UPDATE" }

// Size is the tables' total relation size (heap, indexes, TOAST). PostgreSQL
// cannot say cheaply how much of it is live, so the log estimates that.
func (dialect) Size(ctx context.Context, db *sql.DB, tables drivers.Tables) (int64, int64, error) {
	var size int64
	q := `SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c
		WHERE c.relname = ANY($1) AND c.relkind = 'r' AND c.relnamespace = to_regnamespace(current_schema())`
	if err := db.QueryRowContext(ctx, q, tables.All()).Scan(&size); err != nil {
		return 0, 0, fmt.Errorf("postgres: size: %w", err)
	}
	return size, -1, nil
}

// Defragment runs VACUUM, or VACUUM FULL when opened with
// drivers.Options.PostgresVacuumFull (see there for the difference).
func (d dialect) Defragment(ctx context.Context, db *sql.DB, tables drivers.Tables) error {
	stmt := "VACUUM (ANALYZE) "
	if d.vacuumFull {
		stmt = "VACUUM (FULL, ANALYZE) "
	}
	if _, err := db.ExecContext(ctx, stmt+strings.Join(tables.All(), ", ")); err != nil {
		return fmt.Errorf("postgres: vacuum: %w", err)
	}
	return nil
}

func (dialect) Notify() string { return `SELECT pg_notify('` + channel + `', $1)` }

// AppendBatchQuery appends a batch in one statement: the UPDATE of the meta
// row (waiting for its lock, then re-checking its condition on the committed
// row, as READ COMMITTED does) gates the INSERT from arrays, and the NOTIFY,
// through its RETURNING row. A SELECT in WITH only runs when referenced,
// hence the subqueries.
func (dialect) AppendBatchQuery(tables drivers.Tables) string {
	return `WITH m AS (
	UPDATE ` + tables.Meta + ` SET rev = $1, last_id = $2
	WHERE id = 1 AND rev = $3 AND last_id = $4 AND lease_gen = $5 AND compact_rev <= $6 AND auth_gen = $16
	RETURNING id
), ins AS (
	INSERT INTO ` + tables.Log + ` (id, rev, sub, kv_key, value, create_rev, version, lease, deleted)
	SELECT r.* FROM unnest($7::bigint[], $8::bigint[], $9::bigint[], $10::bytea[], $11::bytea[],
		$12::bigint[], $13::bigint[], $14::bigint[], $15::boolean[]) AS r, m
	RETURNING 1
), n AS (
	SELECT pg_notify('` + channel + `', $1::text) FROM m
)
SELECT (SELECT count(*) FROM m) + 0 * (SELECT count(*) FROM n) + 0 * (SELECT count(*) FROM ins)`
}

func (dialect) BeginSnapshot(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
}

func (dialect) BeginWrite(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
}
