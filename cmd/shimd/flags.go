package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/shimd/shimd"
	"github.com/shimd/shimd/compact"
	"github.com/shimd/shimd/server"
	"github.com/shimd/shimd/sqllog"
)

// config is every flag; the names are etcd's where etcd has the flag. Most
// are bound to shimd.Config's fields directly; the rest are converted by
// runConfig.
type config struct {
	shimd.Config
	listenClientURLs    string
	listenMetricsURLs   string
	advertiseClientURLs string
	maxStreams          uint
	authTokenTTL        uint
	valueCacheSize      int64
	logLevel            string
	logFormat           string
	configFile          string
}

const usageHeader = `Usage:

  shimd [flags]
    Serve the etcd v3 API from a SQL database.
  shimd snapshot restore FILE [--data-dir DIR | --endpoint DSN]
    Load a snapshot taken with 'etcdctl snapshot save' into a fresh database.
  shimd migrate --from URL [--data-dir DIR | --endpoint DSN]
    Copy every key and lease from a running etcd (or kine) into a fresh database.
  shimd healthcheck [--url URL]
    Exit 0 if the shimd at URL reports itself healthy (for container health checks).

Every flag may also be given as an environment variable, SHIMD_ and the flag
name in upper case with dashes as underscores (SHIMD_DATA_DIR=...), or in the
YAML file named by --config-file, keyed by flag name. A flag on the command
line wins over the environment, which wins over the config file.

Flags:
`

func newFlagSet(cfg *config, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("shimd", flag.ContinueOnError)
	fs.SetOutput(out)
	// Member
	fs.StringVar(&cfg.Name, "name", "default", "Human-readable name for this member.")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "Path to the data directory (default \"${name}.shimd\"); holds the SQLite database unless --endpoint names another.")
	fs.StringVar(&cfg.listenClientURLs, "listen-client-urls", "http://127.0.0.1:2379", "List of URLs to listen on for client traffic (gRPC, and HTTP /health, /livez, /readyz, /metrics, /version).")
	fs.StringVar(&cfg.advertiseClientURLs, "advertise-client-urls", "", "List of this member's client URLs to advertise to the rest of the cluster (default: --listen-client-urls).")
	fs.StringVar(&cfg.listenMetricsURLs, "listen-metrics-urls", "", "List of additional URLs to listen on that respond to the metrics and health endpoints.")
	fs.StringVar(&cfg.configFile, "config-file", "", "Path to a YAML file of flag values, keyed by flag name.")
	// Storage
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "Database to store data in: empty for SQLite in the data dir, sqlite://PATH, postgres://USER@HOST:PORT/DB?sslmode=..., or mysql://USER:PASS@tcp(HOST:PORT)/DB.")
	fs.IntVar(&cfg.DBMaxConns, "db-max-conns", 16, "Most connections in the database read pool (PostgreSQL, MySQL); the writer and PostgreSQL's listener use up to 5 more.")
	fs.DurationVar(&cfg.DBConnectTimeout, "db-connect-timeout", 5*time.Second, "Time allowed to open one database connection.")
	fs.DurationVar(&cfg.DBTimeout, "db-timeout", sqllog.DefaultDBTimeout, "Time allowed for a commit, and for each database call of the background work; a hung database connection is abandoned after it.")
	fs.DurationVar(&cfg.DBPollInterval, "db-poll-interval", sqllog.DefaultPollInterval, "How often a shared database (PostgreSQL, MySQL) is polled for other shimd processes' writes.")
	fs.StringVar(&cfg.PeerWakeAddr, "peer-wake-addr", "127.0.0.1:0", "UDP host:port on which to hear other shimd processes' commits on a MySQL database at once rather than at the next poll (port 0: any free one; \"off\" disables).")
	fs.StringVar(&cfg.AdvertisePeerWakeAddr, "advertise-peer-wake-addr", "", "UDP host:port other shimd processes send wake-ups to (default: --peer-wake-addr, actual port).")
	fs.Int64Var(&cfg.valueCacheSize, "value-cache-size", sqllog.DefaultValueCacheBytes, "Bytes of memory kept for recently written and read values, so that reads of them skip the database (0 disables).")
	fs.BoolVar(&cfg.PostgresVacuumFull, "postgres-vacuum-full", false, "Make defragment run VACUUM FULL on PostgreSQL: returns all free space to the filesystem, but locks shimd's tables while it runs.")
	fs.Int64Var(&cfg.QuotaBackendBytes, "quota-backend-bytes", 0, "Raise alarms when backend size exceeds the given quota (0 defaults to etcd's 2 GiB).")
	fs.StringVar(&cfg.AutoCompactionMode, "auto-compaction-mode", compact.ModePeriodic, "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention.")
	fs.StringVar(&cfg.AutoCompactionRetention, "auto-compaction-retention", "0", "Auto compaction retention for mvcc key value store. 0 means disable auto compaction.")
	// Requests
	fs.IntVar(&cfg.MaxRequestBytes, "max-request-bytes", server.DefaultMaxRequestBytes, "Maximum client request size in bytes the server will accept.")
	fs.IntVar(&cfg.MaxTxnOps, "max-txn-ops", server.DefaultMaxTxnOps, "Maximum number of operations permitted in a transaction.")
	fs.DurationVar(&cfg.WatchProgressNotifyInterval, "watch-progress-notify-interval", server.DefaultProgressNotifyInterval, "Duration of periodic watch progress notifications.")
	fs.DurationVar(&cfg.GRPCKeepAliveMinTime, "grpc-keepalive-min-time", 5*time.Second, "Minimum interval duration that a client should wait before pinging server.")
	fs.DurationVar(&cfg.GRPCKeepAliveInterval, "grpc-keepalive-interval", 2*time.Hour, "Frequency duration of server-to-client ping to check if a connection is alive.")
	fs.DurationVar(&cfg.GRPCKeepAliveTimeout, "grpc-keepalive-timeout", 20*time.Second, "Additional duration of wait before closing a non-responsive connection.")
	fs.UintVar(&cfg.maxStreams, "max-concurrent-streams", math.MaxUint32, "Maximum concurrent streams that each client can open at a time.")
	fs.DurationVar(&cfg.WarningApplyDuration, "warning-apply-duration", server.DefaultWarningApplyDuration, "Time duration after which a warning is generated if request takes more time.")
	// Security
	fs.StringVar(&cfg.CertFile, "cert-file", "", "Path to the client server TLS cert file.")
	fs.StringVar(&cfg.KeyFile, "key-file", "", "Path to the client server TLS key file.")
	fs.StringVar(&cfg.TrustedCAFile, "trusted-ca-file", "", "Path to the client server TLS trusted CA cert file; setting it requires client certificates, as in etcd, whatever --client-cert-auth says.")
	fs.BoolVar(&cfg.ClientCertAuth, "client-cert-auth", false, "Enable client cert authentication.")
	// Auth
	fs.StringVar(&cfg.AuthToken, "auth-token", "simple", "Specify auth token specific options: simple, or jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…].")
	fs.UintVar(&cfg.authTokenTTL, "auth-token-ttl", 300, "The lifetime in seconds of an unused simple auth token.")
	fs.IntVar(&cfg.BcryptCost, "bcrypt-cost", 10, "Specify bcrypt algorithm cost factor for auth password hashing.")
	// Logging
	fs.StringVar(&cfg.logLevel, "log-level", "info", "Configures log level. Only supports debug, info, warn, error.")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "Configures log format. Only supports text, json.")
	// Errors are reported by the caller in one line; usage only on -h.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// printUsage writes the help text, flags spelled --name as in etcd's.
func printUsage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprint(out, usageHeader)
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		if name != "" {
			name = " " + name
		}
		fmt.Fprintf(out, "  --%s%s\n    \t%s", f.Name, name, usage)
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
			fmt.Fprintf(out, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(out)
	})
}

// parseFlags reads the command line, then fills the flags it left unset from
// the environment and then from the config file.
func parseFlags(args []string, out io.Writer, getenv func(string) string) (*config, error) {
	cfg := &config{}
	fs := newFlagSet(cfg, out)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, out)
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags take the form --name=value)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := "SHIMD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" && !set[f.Name] && err == nil {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %v", env, v, serr)
			}
			set[f.Name] = true
		}
	})
	if err != nil {
		return nil, err
	}
	if cfg.configFile != "" {
		if err := applyConfigFile(fs, cfg.configFile, set); err != nil {
			return nil, err
		}
	}
	return cfg, validate(cfg)
}

// applyConfigFile sets the flags not already set from a YAML map of flag
// names to values (lists are joined with commas, as flags take them).
func applyConfigFile(fs *flag.FlagSet, path string, set map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config-file: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("--config-file %s: %w", path, err)
	}
	for k, v := range m {
		if fs.Lookup(k) == nil {
			return fmt.Errorf("--config-file %s: unknown setting %q", path, k)
		}
		if set[k] {
			continue
		}
		var s string
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			s = strings.Join(parts, ",")
		case float64:
			s = fmt.Sprint(int64(v))
			if float64(int64(v)) != v {
				s = fmt.Sprint(v)
			}
		default:
			s = fmt.Sprint(v)
		}
		if err := fs.Set(k, s); err != nil {
			return fmt.Errorf("--config-file %s: %s: %v", path, k, err)
		}
	}
	return nil
}

// validate checks what the flags mean beyond shimd.Config (whose zero
// values are defaults, where a flag's 0 is an error), then the Config, and
// fills in the Config fields the flags do not bind directly.
func validate(cfg *config) error {
	if cfg.DataDir == "" {
		cfg.DataDir = cfg.Name + ".shimd"
	}
	switch {
	case cfg.MaxRequestBytes <= 0:
		return fmt.Errorf("--max-request-bytes must be positive, got %d", cfg.MaxRequestBytes)
	case cfg.MaxTxnOps <= 0:
		return fmt.Errorf("--max-txn-ops must be positive, got %d", cfg.MaxTxnOps)
	case cfg.maxStreams == 0 || cfg.maxStreams > math.MaxUint32:
		return fmt.Errorf("--max-concurrent-streams must be between 1 and %d", uint32(math.MaxUint32))
	case cfg.QuotaBackendBytes < 0:
		return fmt.Errorf("--quota-backend-bytes must not be negative, got %d", cfg.QuotaBackendBytes)
	case cfg.valueCacheSize < 0:
		return fmt.Errorf("--value-cache-size must not be negative, got %d", cfg.valueCacheSize)
	case cfg.logFormat != "text" && cfg.logFormat != "json":
		return fmt.Errorf("--log-format %q is not one of text, json", cfg.logFormat)
	}
	if _, err := parseLevel(cfg.logLevel); err != nil {
		return err
	}
	cfg.ListenClientURLs = splitList(cfg.listenClientURLs)
	cfg.ListenMetricsURLs = splitList(cfg.listenMetricsURLs)
	cfg.AdvertiseClientURLs = splitList(cfg.advertiseClientURLs)
	if len(cfg.ListenClientURLs) == 0 {
		return fmt.Errorf("--listen-client-urls is empty")
	}
	cfg.MaxConcurrentStreams = uint32(cfg.maxStreams)
	cfg.AuthTokenTTL = time.Duration(cfg.authTokenTTL) * time.Second
	cfg.ValueCacheSize = cfg.valueCacheSize
	if cfg.ValueCacheSize == 0 {
		cfg.ValueCacheSize = -1 // the flag's 0 disables; the Config's 0 is the default
	}
	return cfg.Validate()
}

// splitList reads a comma-separated flag value, ignoring empty items.
func splitList(list string) []string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
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

// newLogger is the logger --log-level and --log-format ask for.
func newLogger(cfg *config, out io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.logLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(out, opts))
	}
	return slog.New(slog.NewTextHandler(out, opts))
}
