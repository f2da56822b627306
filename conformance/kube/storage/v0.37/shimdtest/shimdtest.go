// Package shimdtest starts shimd, on a fresh store, for one test of
// k8s.io/apiserver's etcd3 package. The package's testserver.RunEtcd is
// replaced (see ../testdata/hook.go) by one that calls Start instead of
// starting an embedded etcd when the environment names a shimd backend:
//
//	SHIMD_STORAGE_BACKEND  sqlite, postgres or mariadb; empty or "etcd" for
//	                       the embedded etcd, as upstream
//	SHIMD_STORAGE_DSN      for postgres and mariadb: the server on which a
//	                       fresh schema or database is created per test
//	SHIMD_STORAGE_BIN      the shimd binary
//
// shimd runs as a subprocess: it registers etcd's metric names with
// Prometheus' default registry, as the embedded etcd linked into the same
// test binary does, so the two cannot share a process.
package shimdtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	shimdmysql "github.com/shimd/shimd/drivers/mysql"
)

// Environment variables read by Backend and Start.
const (
	EnvBackend = "SHIMD_STORAGE_BACKEND"
	EnvDSN     = "SHIMD_STORAGE_DSN"
	EnvBin     = "SHIMD_STORAGE_BIN"
)

// Backend is the backend named by SHIMD_STORAGE_BACKEND: "etcd" when unset.
func Backend() string {
	if b := strings.TrimSpace(os.Getenv(EnvBackend)); b != "" {
		return b
	}
	return "etcd"
}

// Enabled reports whether tests run against shimd rather than etcd.
func Enabled() bool { return Backend() != "etcd" }

// StartedMarker begins the line Start logs for every shimd it started.
const StartedMarker = "shimdtest: started shimd on"

// Options are the embedded etcd settings a test may change that shimd has
// too; zero is the default.
type Options struct {
	WatchProgressNotifyInterval time.Duration
	MaxRequestBytes             uint
	MaxTxnOps                   uint
}

// Start runs shimd on a fresh store of Backend() for the rest of t and
// returns its client URL. The server is stopped (SIGTERM) and the store
// dropped when t ends.
func Start(t testing.TB, opts Options) string {
	t.Helper()
	bin := os.Getenv(EnvBin)
	if bin == "" {
		t.Fatalf("shimdtest: %s is not set", EnvBin)
	}
	var endpoint string
	switch b := Backend(); b {
	case "sqlite":
	case "postgres", "mariadb":
		ep, err := newStore(t, b, os.Getenv(EnvDSN))
		if err != nil {
			t.Fatalf("shimdtest: %s store: %v", b, err)
		}
		endpoint = ep
	default:
		t.Fatalf("shimdtest: unknown %s %q (sqlite, postgres, mariadb or etcd)", EnvBackend, b)
	}
	dataDir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		url, err := start(t, bin, dataDir, endpoint, opts)
		if err == nil {
			t.Logf("%s %s at %s", StartedMarker, Backend(), url)
			return url
		}
		lastErr = err
	}
	t.Fatalf("shimdtest: start shimd on %s: %v", Backend(), lastErr)
	return ""
}

// start runs one shimd process on a free port and waits until /health
// answers.
func start(t testing.TB, bin, dataDir, endpoint string, opts Options) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	clientURL := "http://" + l.Addr().String()
	l.Close()
	args := []string{"--listen-client-urls", clientURL, "--data-dir", dataDir, "--log-level", "warn"}
	if endpoint != "" {
		args = append(args, "--endpoint", endpoint)
	}
	if opts.WatchProgressNotifyInterval > 0 {
		args = append(args, "--watch-progress-notify-interval", opts.WatchProgressNotifyInterval.String())
	}
	if opts.MaxRequestBytes > 0 {
		args = append(args, "--max-request-bytes", strconv.FormatUint(uint64(opts.MaxRequestBytes), 10))
	}
	if opts.MaxTxnOps > 0 {
		args = append(args, "--max-txn-ops", strconv.FormatUint(uint64(opts.MaxTxnOps), 10))
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: time.Second}
	for {
		select {
		case err := <-exited:
			return "", fmt.Errorf("shimd %v exited: %v", args, err)
		default:
		}
		if resp, err := hc.Get(clientURL + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("shimd %v: not healthy after 30s", args)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(stop)
	return clientURL, nil
}

// storePrefix starts every store's name, followed by its creation time
// (Unix seconds) and a random part.
const storePrefix = "shimd_st_"

// DropStale drops the stores on db's server older than age: left by a run
// that was killed before its cleanup. It returns how many it dropped.
func DropStale(ctx context.Context, backend string, db *sql.DB, age time.Duration) (int, error) {
	q := `SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'shimd\_st\_%'`
	drop := "DROP SCHEMA IF EXISTS %s CASCADE"
	if backend == "mariadb" {
		q = `SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'shimd\_st\_%'`
		drop = "DROP DATABASE IF EXISTS %s"
	}
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return 0, err
	}
	var stale []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return 0, err
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(name, storePrefix), "_")
		if sec, err := strconv.ParseInt(ts, 10, 64); err == nil && time.Since(time.Unix(sec, 0)) > age {
			stale = append(stale, name)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, name := range stale {
		if _, err := db.ExecContext(ctx, fmt.Sprintf(drop, name)); err != nil {
			return 0, err
		}
	}
	return len(stale), nil
}

// newStore creates a PostgreSQL schema or a MariaDB database on the server
// of dsn, registers its removal with t, and returns shimd's endpoint for it.
func newStore(t testing.TB, backend, dsn string) (string, error) {
	if dsn == "" {
		return "", fmt.Errorf("%s is empty", EnvDSN)
	}
	db, err := OpenAdmin(backend, dsn)
	if err != nil {
		return "", err
	}
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	name := fmt.Sprintf("%s%d_%s", storePrefix, time.Now().Unix(), hex.EncodeToString(rnd[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var endpoint string
	switch backend {
	case "postgres":
		if _, err := db.ExecContext(ctx, "CREATE SCHEMA "+name); err != nil {
			db.Close()
			return "", err
		}
		u, err := url.Parse(dsn)
		if err != nil {
			db.Close()
			return "", err
		}
		q := u.Query()
		q.Set("search_path", name)
		q.Set("application_name", name)
		u.RawQuery = q.Encode()
		endpoint = u.String()
	case "mariadb":
		if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
			db.Close()
			return "", err
		}
		mc, err := shimdmysql.ParseDSN(dsn)
		if err != nil {
			db.Close()
			return "", err
		}
		mc.DBName = name
		endpoint = "mysql://" + mc.FormatDSN()
	}
	// Registered before shimd's Close, so it runs after it.
	t.Cleanup(func() {
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stmt := "DROP SCHEMA IF EXISTS " + name + " CASCADE"
		if backend == "mariadb" {
			stmt = "DROP DATABASE IF EXISTS " + name
		}
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Logf("shimdtest: drop store %s: %v", name, err)
		}
	})
	return endpoint, nil
}

// OpenAdmin opens a connection pool to the server of dsn (postgres:// or
// mysql://) for creating and dropping stores.
func OpenAdmin(backend, dsn string) (*sql.DB, error) {
	switch backend {
	case "postgres":
		return sql.Open("pgx", dsn)
	case "mariadb":
		mc, err := shimdmysql.ParseDSN(dsn)
		if err != nil {
			return nil, err
		}
		mc.Timeout = 5 * time.Second
		conn, err := gomysql.NewConnector(mc)
		if err != nil {
			return nil, err
		}
		return sql.OpenDB(conn), nil
	}
	return nil, fmt.Errorf("no database server for backend %q", backend)
}
