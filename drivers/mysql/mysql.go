// Package mysql stores shimd's log in MySQL or MariaDB, through
// go-sql-driver/mysql. Several shimd processes may share one database; they
// find each other's commits by polling.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/shimd/shimd/drivers"
)

// ParseDSN accepts the driver's own DSN (user:pass@tcp(host:port)/db) with
// or without a mysql:// prefix, and the URL form mysql://user:pass@host:port/db.
func ParseDSN(endpoint string) (*mysql.Config, error) {
	rest := strings.TrimPrefix(endpoint, "mysql://")
	if cfg, err := mysql.ParseDSN(rest); err == nil && strings.Contains(rest, "(") {
		return cfg, nil
	}
	u, err := url.Parse("mysql://" + rest)
	if err != nil {
		return nil, fmt.Errorf("not a MySQL DSN or URL")
	}
	cfg := mysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.Net = "tcp"
	cfg.Addr = u.Host
	if u.Port() == "" {
		cfg.Addr = u.Host + ":3306"
	}
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	for k, v := range u.Query() {
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params[k] = v[0]
	}
	return cfg, nil
}

// Open connects to the database endpoint names.
func Open(ctx context.Context, endpoint string, opts drivers.Options) (*drivers.Backend, error) {
	cfg, err := ParseDSN(endpoint)
	if err != nil {
		return nil, fmt.Errorf("mysql: bad endpoint: %w", err)
	}
	if cfg.DBName == "" {
		return nil, fmt.Errorf("mysql: the endpoint names no database")
	}
	if opts.ConnectTimeout > 0 {
		cfg.Timeout = opts.ConnectTimeout
	}
	// Affected rows are the rows matched, as in the other databases: an
	// UPDATE that writes an unchanged value still found its row.
	cfg.ClientFoundRows = true
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	be, err := drivers.OpenServer(ctx, connector, opts)
	if err != nil {
		return nil, fmt.Errorf("mysql: connect to %s: %w", cfg.Addr, err)
	}
	be.Name = "mysql"
	be.Dialect = dialect{}
	return be, nil
}

type dialect struct{}

// Keys and values are LONGBLOB: binary, compared byte-wise, and as large as
// --max-request-bytes allows. The index on (rev, id) is declared inline
// because MySQL has no CREATE INDEX IF NOT EXISTS. The tables take the
// database's default character set and collation (only shimd_member's
// TEXT columns have one).
func (dialect) Schema() drivers.Schema {
	return drivers.Schema{
		Int:           "INT",
		BigInt:        "BIGINT",
		Key:           "LONGBLOB",
		Bytes:         "LONGBLOB",
		Bool:          "BOOLEAN",
		Text:          "TEXT",
		TableOptions:  " ENGINE=InnoDB",
		InlineIndexes: true,
	}
}

func (dialect) Rebind(q string) string { return q }

func (dialect) ForUpdate() string { return " FOR UPDATE" }

// The errors of a write transaction that lost against a concurrent one and
// rolled back. ER_LOCK_DEADLOCK: InnoDB chose it as a deadlock victim, or
// Galera failed its certification against a transaction committed on
// another node. ER_DUP_ENTRY: on Galera, a writeset from another node being
// applied can insert the log rows this transaction then tries to insert
// after it read the meta row (it fails before COMMIT, so it never commits).
const (
	erLockDeadlock = 1213
	erDupEntry     = 1062
)

func (dialect) Conflict(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == erLockDeadlock || me.Number == erDupEntry)
}

func (dialect) Notify() string { return "" }

// Size is what InnoDB holds for the tables: data, indexes and the free space
// inside them; data_free is the part OPTIMIZE TABLE would give back. InnoDB's
// figures are statistics, refreshed by ANALYZE TABLE and OPTIMIZE TABLE.
func (dialect) Size(ctx context.Context, db *sql.DB, tables drivers.Tables) (int64, int64, error) {
	// The tablespace files' sizes are current; the table statistics lag
	// until ANALYZE. MariaDB and MySQL 8 name the view differently.
	for _, view := range []string{"INNODB_SYS_TABLESPACES", "INNODB_TABLESPACES"} {
		var size sql.NullInt64
		q := `SELECT SUM(FILE_SIZE) FROM information_schema.` + view + ` WHERE NAME IN (` + tablespaces(tables) + `)`
		if err := db.QueryRowContext(ctx, q).Scan(&size); err == nil && size.Valid {
			return size.Int64, -1, nil
		}
	}
	var size int64
	q := `SELECT COALESCE(SUM(data_length + index_length + data_free), 0)
		FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name IN (` + quoteList(tables.All()) + `)`
	if err := db.QueryRowContext(ctx, q).Scan(&size); err != nil {
		return 0, 0, fmt.Errorf("mysql: size: %w", err)
	}
	return size, -1, nil
}

// quoteList is names as a list of SQL strings. The names are sqllog's
// constants.
func quoteList(names []string) string {
	return "'" + strings.Join(names, "', '") + "'"
}

// tablespaces names shimd's file-per-table tablespaces ("db/table").
func tablespaces(tables drivers.Tables) string {
	var b strings.Builder
	for i, t := range tables.All() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("CONCAT(DATABASE(), '/" + t + "')")
	}
	return b.String()
}

// Defragment runs OPTIMIZE TABLE, which InnoDB performs as an online
// rebuild: reads and writes go on while it copies. OPTIMIZE reports a table
// it could not rebuild (a lock wait timeout, say) as a result row, not as
// an SQL error: unchecked, a defrag that gave nothing back would succeed.
func (dialect) Defragment(ctx context.Context, db *sql.DB, tables drivers.Tables) error {
	rows, err := db.QueryContext(ctx, `OPTIMIZE TABLE `+strings.Join([]string{tables.Log, tables.Lease, tables.Alarm, tables.Member}, ", "))
	if err != nil {
		return fmt.Errorf("mysql: optimize: %w", err)
	}
	defer rows.Close()
	var failed []string
	for rows.Next() {
		var table, op, msgType, msgText []byte
		if err := rows.Scan(&table, &op, &msgType, &msgText); err != nil {
			return fmt.Errorf("mysql: optimize: %w", err)
		}
		if strings.EqualFold(string(msgType), "error") {
			failed = append(failed, string(table)+": "+string(msgText))
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("mysql: optimize: %w", err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("mysql: optimize: %s", strings.Join(failed, "; "))
	}
	return nil
}

// Read committed: the writer locks the meta row, then must see every row
// committed before it got the lock.
func (dialect) BeginSnapshot(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
}

func (dialect) BeginWrite(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
}
