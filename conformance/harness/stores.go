package harness

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	shimdmysql "github.com/shimd/shimd/drivers/mysql"
)

// Store is one fresh, empty database for shimd: a PostgreSQL schema or a
// MariaDB/MySQL database created on the backend's server. Every shimd start
// of a test gets its own store (so revisions start at 1, like the reference
// etcd); restarts of that shimd reuse it, and several shimd processes may be
// pointed at the same store. For SQLite a Store is a no-op: the database
// lives in shimd's --data-dir.
type Store struct {
	// Backend is the backend with Endpoint naming this store.
	Backend Backend
	// Name is the schema (PostgreSQL) or database (MySQL) name; "" for
	// SQLite. shimd's PostgreSQL connections carry it as application_name.
	Name string

	admin *sql.DB
	once  sync.Once
	err   error
}

// storePrefix starts every store name; stores whose embedded creation time
// is older than staleAfter are dropped by the next run (left by a run that
// was killed before its cleanup).
const (
	storePrefix = "shimd_ct_"
	staleAfter  = 12 * time.Hour
)

var storeNameRE = regexp.MustCompile(`^shimd_ct_([0-9]+)_[0-9a-f]+$`)

// NewStore creates a fresh store on b's server.
func NewStore(b Backend) (*Store, error) {
	if b.Kind == KindSQLite || b.Kind == "" {
		return &Store{Backend: b}, nil
	}
	if b.Unavailable != nil {
		return nil, b.Unavailable
	}
	db, err := adminDB(b)
	if err != nil {
		return nil, err
	}
	var rnd [5]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s%d_%s", storePrefix, time.Now().Unix(), hex.EncodeToString(rnd[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &Store{Backend: b, Name: name, admin: db}
	switch b.Kind {
	case KindPostgres:
		if err := adminExec(ctx, db, "CREATE SCHEMA "+name); err != nil {
			return nil, fmt.Errorf("%s: create schema: %w", b.Name, err)
		}
		s.Backend.Endpoint, err = postgresEndpoint(b.AdminDSN, name)
	case KindMySQL:
		if err := adminExec(ctx, db, "CREATE DATABASE "+name); err != nil {
			return nil, fmt.Errorf("%s: create database: %w", b.Name, err)
		}
		s.Backend.Endpoint, err = mysqlEndpoint(b.AdminDSN, name)
	default:
		err = fmt.Errorf("unknown backend kind %q", b.Kind)
	}
	if err != nil {
		_ = s.Drop()
		return nil, err
	}
	return s, nil
}

// Drop removes the store (first ending any connection still using it). It
// is idempotent.
func (s *Store) Drop() error {
	if s.Name == "" {
		return nil
	}
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		s.err = dropStore(ctx, s.Backend.Kind, s.admin, s.Name)
	})
	return s.err
}

// KillConnections ends every database connection that uses this store
// (PostgreSQL: pg_terminate_backend on the connections whose
// application_name is the store's name; MySQL: KILL on those whose current
// database is the store) and returns how many it ended. The harness's own
// admin connections are never among them.
func (s *Store) KillConnections(ctx context.Context) (int, error) {
	switch s.Backend.Kind {
	case KindPostgres:
		var n int
		err := retryAdmin(ctx, func() error {
			return s.admin.QueryRowContext(ctx, `SELECT count(*) FROM (
				SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()) t`, s.Name).Scan(&n)
		})
		return n, err
	case KindMySQL:
		return mysqlKill(ctx, s.admin, s.Name)
	}
	return 0, fmt.Errorf("%s: no database connections to kill", s.Backend.Name)
}

// Connections counts the database connections using this store (as
// KillConnections identifies them).
func (s *Store) Connections(ctx context.Context) (int, error) {
	var n int
	var err error
	switch s.Backend.Kind {
	case KindPostgres:
		err = s.admin.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, s.Name).Scan(&n)
	case KindMySQL:
		err = s.admin.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = ?`, s.Name).Scan(&n)
	}
	return n, err
}

// Exists reports whether the store's schema or database exists.
func (s *Store) Exists(ctx context.Context) (bool, error) {
	q := `SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1`
	if s.Backend.Kind == KindMySQL {
		q = `SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?`
	}
	var n int
	err := s.admin.QueryRowContext(ctx, q, s.Name).Scan(&n)
	return n > 0, err
}

// Admin is the harness's own connection pool to the store's server.
func (s *Store) Admin() *sql.DB { return s.admin }

func dropStore(ctx context.Context, kind Kind, db *sql.DB, name string) error {
	switch kind {
	case KindPostgres:
		return retryAdmin(ctx, func() error {
			_, _ = db.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE datname = current_database() AND application_name = $1`, name)
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "SET LOCAL lock_timeout = '20s'"); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+name+" CASCADE"); err != nil {
				return err
			}
			return tx.Commit()
		})
	case KindMySQL:
		return retryAdmin(ctx, func() error {
			if _, err := mysqlKill(ctx, db, name); err != nil {
				return err
			}
			conn, err := db.Conn(ctx)
			if err != nil {
				return err
			}
			defer conn.Close()
			if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 20"); err != nil {
				return err
			}
			_, err = conn.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name)
			return err
		})
	}
	return nil
}

func mysqlKill(ctx context.Context, db *sql.DB, name string) (int, error) {
	var ids []int64
	err := retryAdmin(ctx, func() error {
		ids = ids[:0]
		rows, err := db.QueryContext(ctx, `SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()`, name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		_, err := db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10))
		var me *gomysql.MySQLError
		switch {
		case err == nil:
			n++
		case errors.As(err, &me) && me.Number == 1094: // unknown thread id: already gone
		default:
			return n, err
		}
	}
	return n, nil
}

// adminExec runs one statement, retrying while the server is unreachable.
func adminExec(ctx context.Context, db *sql.DB, q string) error {
	return retryAdmin(ctx, func() error {
		_, err := db.ExecContext(ctx, q)
		return err
	})
}

// retryAdmin retries fn for connection-level failures (a pooled admin
// connection the server closed, or a server restarting) until ctx ends.
func retryAdmin(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func retryable(err error) bool {
	s := strings.ToLower(err.Error())
	for _, frag := range []string{"connection refused", "bad connection", "broken pipe", "connection reset",
		"terminating connection", "the database system is", "invalid connection", "unexpected eof", "conn closed", "57p01", "57p03"} {
		if strings.Contains(s, frag) {
			return true
		}
	}
	return false
}

// Admin pools, one per server DSN.
var (
	adminMu  sync.Mutex
	adminDBs = map[string]*sql.DB{}
)

func adminDB(b Backend) (*sql.DB, error) {
	adminMu.Lock()
	defer adminMu.Unlock()
	if db := adminDBs[b.AdminDSN]; db != nil {
		return db, nil
	}
	var db *sql.DB
	switch b.Kind {
	case KindPostgres:
		var err error
		if db, err = sql.Open("pgx", b.AdminDSN); err != nil {
			return nil, err
		}
	case KindMySQL:
		cfg, err := shimdmysql.ParseDSN(b.AdminDSN)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.Name, err)
		}
		cfg.Timeout = 5 * time.Second
		conn, err := gomysql.NewConnector(cfg)
		if err != nil {
			return nil, err
		}
		db = sql.OpenDB(conn)
	default:
		return nil, fmt.Errorf("no admin connection for backend kind %q", b.Kind)
	}
	db.SetMaxOpenConns(4)
	db.SetConnMaxIdleTime(time.Minute)
	adminDBs[b.AdminDSN] = db
	return db, nil
}

// probe checks that b's server answers and drops stores left behind by
// killed runs.
func probe(b Backend) error {
	db, err := adminDB(b)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return err
	}
	dropStale(b, db)
	return nil
}

func dropStale(b Backend, db *sql.DB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := `SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'shimd\_ct\_%'`
	if b.Kind == KindMySQL {
		q = `SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'shimd\_ct\_%'`
	}
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return
	}
	var stale []string
	for rows.Next() {
		var name string
		if rows.Scan(&name) != nil {
			continue
		}
		m := storeNameRE.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if sec, err := strconv.ParseInt(m[1], 10, 64); err == nil && time.Since(time.Unix(sec, 0)) > staleAfter {
			stale = append(stale, name)
		}
	}
	rows.Close()
	for _, name := range stale {
		if err := dropStore(ctx, b.Kind, db, name); err == nil {
			fmt.Fprintf(os.Stderr, "conformance: %s: dropped stale store %s\n", b.Name, name)
		}
	}
}

// postgresEndpoint points dsn at schema (search_path) and tags shimd's
// connections with it (application_name) so they can be told apart.
func postgresEndpoint(dsn, schema string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		q := u.Query()
		q.Set("search_path", schema)
		q.Set("application_name", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return strings.TrimSpace(dsn) + " search_path=" + schema + " application_name=" + schema, nil
}

// mysqlEndpoint is dsn with database db, in the driver's DSN form.
func mysqlEndpoint(dsn, db string) (string, error) {
	cfg, err := shimdmysql.ParseDSN(dsn)
	if err != nil {
		return "", err
	}
	cfg.DBName = db
	return "mysql://" + cfg.FormatDSN(), nil
}
