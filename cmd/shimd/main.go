// Command shimd serves etcd's v3 gRPC API from a SQL database.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/shimd/shimd/compact"
	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/drivers/mysql"
	"github.com/shimd/shimd/drivers/postgres"
	"github.com/shimd/shimd/drivers/sqlite"
	"github.com/shimd/shimd/server"
	"github.com/shimd/shimd/sqllog"
)

// config is every flag; the names are etcd's where etcd has the flag.
type config struct {
	name              string
	dataDir           string
	listenClientURLs  string
	endpoint          string
	quotaBackendBytes int64
	maxRequestBytes   int
	maxTxnOps         int
	logLevel          string
	progressInterval  time.Duration
	dbMaxConns        int
	dbConnectTimeout  time.Duration
	dbPollInterval    time.Duration
	pgVacuumFull      bool
	compactionMode    string
	compactionRetain  string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "snapshot" {
		if err := snapshotCommand(os.Args[2:], os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "shimd: %v\n", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "shimd: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "shimd: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, out io.Writer) (*config, error) {
	cfg := &config{}
	fs := flag.NewFlagSet("shimd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.name, "name", "default", "Human-readable name for this member.")
	fs.StringVar(&cfg.dataDir, "data-dir", "", "Path to the data directory (default \"${name}.shimd\"); holds the SQLite database unless --endpoint names another.")
	fs.StringVar(&cfg.listenClientURLs, "listen-client-urls", "http://127.0.0.1:2379", "List of URLs to listen on for client traffic.")
	fs.StringVar(&cfg.endpoint, "endpoint", "", "Database to store data in: empty for SQLite in the data dir, sqlite://PATH, postgres://USER@HOST:PORT/DB, or mysql://USER:PASS@tcp(HOST:PORT)/DB.")
	fs.IntVar(&cfg.dbMaxConns, "db-max-conns", 16, "Most connections in the database read pool (PostgreSQL, MySQL).")
	fs.DurationVar(&cfg.dbConnectTimeout, "db-connect-timeout", 5*time.Second, "Time allowed to open one database connection.")
	fs.BoolVar(&cfg.pgVacuumFull, "postgres-vacuum-full", false, "Make defragment run VACUUM FULL on PostgreSQL: returns all free space to the filesystem, but locks shimd's tables while it runs.")
	fs.DurationVar(&cfg.dbPollInterval, "db-poll-interval", sqllog.DefaultPollInterval, "How often a shared database (PostgreSQL, MySQL) is polled for other shimd processes' writes.")
	fs.Int64Var(&cfg.quotaBackendBytes, "quota-backend-bytes", 0, "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).")
	fs.IntVar(&cfg.maxRequestBytes, "max-request-bytes", server.DefaultMaxRequestBytes, "Maximum client request size in bytes the server will accept.")
	fs.IntVar(&cfg.maxTxnOps, "max-txn-ops", server.DefaultMaxTxnOps, "Maximum number of operations permitted in a transaction.")
	fs.DurationVar(&cfg.progressInterval, "watch-progress-notify-interval", server.DefaultProgressNotifyInterval, "Duration of periodic watch progress notifications.")
	fs.StringVar(&cfg.compactionMode, "auto-compaction-mode", compact.ModePeriodic, "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention.")
	fs.StringVar(&cfg.compactionRetain, "auto-compaction-retention", "0", "Auto compaction retention for mvcc key value store. 0 means disable auto compaction.")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "Configures log level. Only supports debug, info, warn, error.")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: shimd [flags]\n\nshimd serves the etcd v3 API from a SQL database.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags take the form --name=value)", fs.Arg(0))
	}
	if cfg.dataDir == "" {
		cfg.dataDir = cfg.name + ".shimd"
	}
	if cfg.maxRequestBytes <= 0 {
		return nil, fmt.Errorf("--max-request-bytes must be positive, got %d", cfg.maxRequestBytes)
	}
	if cfg.maxTxnOps <= 0 {
		return nil, fmt.Errorf("--max-txn-ops must be positive, got %d", cfg.maxTxnOps)
	}
	if cfg.quotaBackendBytes < 0 {
		return nil, fmt.Errorf("--quota-backend-bytes must not be negative, got %d", cfg.quotaBackendBytes)
	}
	if _, err := parseLevel(cfg.logLevel); err != nil {
		return nil, err
	}
	if _, _, err := compact.ParseRetention(cfg.compactionMode, cfg.compactionRetain); err != nil {
		return nil, err
	}
	if _, err := parseListenURLs(cfg.listenClientURLs); err != nil {
		return nil, err
	}
	return cfg, nil
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level %q is not one of debug, info, warn, error", s)
}

// parseListenURLs returns the host:port of each http:// URL in a comma list.
func parseListenURLs(list string) ([]string, error) {
	var addrs []string
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("--listen-client-urls: %q is not a URL: %v", raw, err)
		}
		switch u.Scheme {
		case "http":
		case "https":
			return nil, fmt.Errorf("--listen-client-urls: %q: TLS is not supported yet", raw)
		default:
			return nil, fmt.Errorf("--listen-client-urls: %q: scheme must be http", raw)
		}
		if u.Port() == "" {
			return nil, fmt.Errorf("--listen-client-urls: %q has no port", raw)
		}
		addrs = append(addrs, u.Host)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("--listen-client-urls is empty")
	}
	return addrs, nil
}

// clientURLs lists the URLs clients reach this member on.
func clientURLs(list string) []string {
	var out []string
	for _, u := range strings.Split(list, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// openBackend opens the database --endpoint names.
func openBackend(ctx context.Context, cfg *config) (*drivers.Backend, error) {
	ep := cfg.endpoint
	opts := drivers.Options{MaxOpenConns: cfg.dbMaxConns, ConnectTimeout: cfg.dbConnectTimeout}
	switch {
	case ep == "":
		return sqlite.Open(filepath.Join(cfg.dataDir, sqlite.FileName))
	case strings.HasPrefix(ep, "sqlite://"), strings.HasPrefix(ep, "file:"):
		return sqlite.Open(ep)
	case strings.HasPrefix(ep, "postgres://"), strings.HasPrefix(ep, "postgresql://"):
		postgres.FullVacuum = cfg.pgVacuumFull
		return postgres.Open(ctx, ep, opts)
	case strings.HasPrefix(ep, "mysql://"):
		return mysql.Open(ctx, ep, opts)
	}
	scheme, _, _ := strings.Cut(ep, "://")
	return nil, fmt.Errorf("--endpoint: unsupported database %q (supported: sqlite://, postgres://, mysql://, or empty for SQLite in --data-dir)", scheme)
}

func run(ctx context.Context, cfg *config) error {
	level, _ := parseLevel(cfg.logLevel)
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	addrs, _ := parseListenURLs(cfg.listenClientURLs)

	be, err := openBackend(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	log, err := sqllog.Open(ctx, be, sqllog.Options{Logger: lg, PollInterval: cfg.dbPollInterval})
	if err != nil {
		be.Close()
		return fmt.Errorf("open database: %w", err)
	}
	defer log.Close()

	srv := server.New(log, server.Config{
		Name:                   cfg.name,
		ClientURLs:             clientURLs(cfg.listenClientURLs),
		QuotaBackendBytes:      cfg.quotaBackendBytes,
		MaxTxnOps:              cfg.maxTxnOps,
		MaxRequestBytes:        cfg.maxRequestBytes,
		ProgressNotifyInterval: cfg.progressInterval,
		Logger:                 lg,
	})
	defer srv.Close()
	retention, revisions, _ := compact.ParseRetention(cfg.compactionMode, cfg.compactionRetain)
	compactCtx, stopCompact := context.WithCancel(ctx)
	defer stopCompact()
	go compact.Run(compactCtx, log, compact.Config{
		Mode: cfg.compactionMode, Retention: retention, Revisions: revisions,
		Active: srv.CompactionLeader, Logger: lg,
	})
	g := grpc.NewServer(srv.GRPCOptions()...)
	srv.Register(g)

	var listeners []net.Listener
	for _, addr := range addrs {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		listeners = append(listeners, ln)
	}
	errc := make(chan error, len(listeners))
	for _, ln := range listeners {
		go func(ln net.Listener) { errc <- g.Serve(ln) }(ln)
		lg.Info("serving client traffic", "address", ln.Addr().String(), "backend", be.Name, "revision", log.Rev())
	}

	select {
	case <-ctx.Done():
		lg.Info("shutting down")
	case err := <-errc:
		g.Stop()
		return fmt.Errorf("serve: %w", err)
	}
	// Let in-flight requests finish, but do not wait on clients forever.
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	return nil
}
