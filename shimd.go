// Package shimd runs shimd, etcd's v3 API served from a SQL database,
// inside a Go program, as k3s embeds kine: Run opens the database, listens
// on the client (and metrics) URLs and serves until its context ends or
// Close is called. cmd/shimd is this package behind command-line flags.
//
// Prometheus metrics are registered with the default registry, which every
// Server in a process shares.
package shimd

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/shimd/shimd/auth"
	"github.com/shimd/shimd/compact"
)

// Config is what cmd/shimd's flags set; each field names its flag. A zero
// field takes the flag's default, except where its comment says otherwise.
type Config struct {
	// Name is the member's name (--name; default "default").
	Name string
	// DataDir holds the SQLite database when Endpoint is empty
	// (--data-dir; default Name + ".shimd").
	DataDir string
	// Endpoint is the database (--endpoint): empty for SQLite in DataDir,
	// sqlite://PATH, file:PATH, postgres://..., postgresql://... or
	// mysql://....
	Endpoint string

	// ListenClientURLs are the http:// and https:// URLs serving gRPC and
	// the HTTP endpoints (--listen-client-urls; default
	// http://127.0.0.1:2379). Port 0 picks a free port: Server.ClientURLs
	// reports it.
	ListenClientURLs []string
	// AdvertiseClientURLs are the client URLs members report
	// (--advertise-client-urls; default: the listened URLs, actual ports).
	AdvertiseClientURLs []string
	// ListenMetricsURLs serve only /metrics and the health endpoints
	// (--listen-metrics-urls; default none).
	ListenMetricsURLs []string

	// DBMaxConns bounds the read pool of PostgreSQL and MySQL
	// (--db-max-conns; default 16).
	DBMaxConns int
	// DBConnectTimeout bounds opening one connection (--db-connect-timeout;
	// default 5 s).
	DBConnectTimeout time.Duration
	// DBTimeout bounds each commit and each database call of the background
	// work (--db-timeout; default sqllog.DefaultDBTimeout).
	DBTimeout time.Duration
	// DBPollInterval is how often a shared database is polled for other
	// processes' writes (--db-poll-interval; default
	// sqllog.DefaultPollInterval).
	DBPollInterval time.Duration
	// PeerWakeAddr is the UDP host:port on which the process hears other
	// processes' commits on a MySQL database at once instead of at its next
	// poll (--peer-wake-addr; default 127.0.0.1:0, loopback and any free
	// port; "off" disables). PostgreSQL has LISTEN/NOTIFY instead and
	// SQLite one process: neither uses it.
	PeerWakeAddr string
	// AdvertisePeerWakeAddr is the address other processes send wake-ups
	// to (--advertise-peer-wake-addr; default the one listened on).
	AdvertisePeerWakeAddr string
	// ValueCacheSize is the bytes of values kept in memory
	// (--value-cache-size). Unlike the flag, 0 is the default
	// (sqllog.DefaultValueCacheBytes) and a negative size disables it.
	ValueCacheSize int64
	// PostgresVacuumFull makes defragment run VACUUM FULL
	// (--postgres-vacuum-full).
	PostgresVacuumFull bool

	// QuotaBackendBytes raises the NOSPACE alarm above this size
	// (--quota-backend-bytes; default etcd's 2 GiB).
	QuotaBackendBytes int64
	// AutoCompactionMode is "periodic" or "revision"
	// (--auto-compaction-mode; default periodic).
	AutoCompactionMode string
	// AutoCompactionRetention is, in periodic mode, hours or a duration,
	// in revision mode a count (--auto-compaction-retention; empty or "0"
	// disables auto-compaction).
	AutoCompactionRetention string

	// MaxRequestBytes (--max-request-bytes), MaxTxnOps (--max-txn-ops):
	// defaults as etcd's.
	MaxRequestBytes int
	MaxTxnOps       int
	// WatchProgressNotifyInterval (--watch-progress-notify-interval;
	// default 10 min).
	WatchProgressNotifyInterval time.Duration
	// GRPCKeepAliveMinTime, GRPCKeepAliveInterval, GRPCKeepAliveTimeout
	// (--grpc-keepalive-*; defaults 5 s, 2 h, 20 s).
	GRPCKeepAliveMinTime  time.Duration
	GRPCKeepAliveInterval time.Duration
	GRPCKeepAliveTimeout  time.Duration
	// MaxConcurrentStreams per client connection (--max-concurrent-streams;
	// default unlimited).
	MaxConcurrentStreams uint32
	// WarningApplyDuration: slower requests are logged
	// (--warning-apply-duration; default 100 ms).
	WarningApplyDuration time.Duration

	// CertFile and KeyFile are the server's TLS certificate and key, needed
	// by https:// URLs (--cert-file, --key-file).
	CertFile string
	KeyFile  string
	// TrustedCAFile verifies client certificates, which are then required
	// whatever ClientCertAuth says, as in etcd (--trusted-ca-file).
	TrustedCAFile string
	// ClientCertAuth requires client certificates; it needs TrustedCAFile
	// (--client-cert-auth).
	ClientCertAuth bool

	// AuthToken is etcd's --auth-token: "simple" (the default) or
	// "jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…]".
	AuthToken string
	// AuthTokenTTL is how long an unused simple token lives
	// (--auth-token-ttl; default 300 s).
	AuthTokenTTL time.Duration
	// BcryptCost hashes passwords (--bcrypt-cost; default 10, etcd's).
	BcryptCost int

	// Logger receives shimd's logs (default slog.Default()).
	Logger *slog.Logger
}

// Defaults of the fields whose zero value is not the server packages' own.
const (
	defaultName             = "default"
	defaultClientURL        = "http://127.0.0.1:2379"
	defaultDBMaxConns       = 16
	defaultDBConnectTimeout = 5 * time.Second
	defaultPeerWakeAddr     = "127.0.0.1:0"
	// peerWakeOff is the PeerWakeAddr that turns wake-ups off.
	peerWakeOff = "off"
)

// withDefaults returns cfg with its zero fields set to the defaults that
// this package (rather than sqllog or server) applies.
func (cfg Config) withDefaults() Config {
	if cfg.Name == "" {
		cfg.Name = defaultName
	}
	if cfg.DataDir == "" {
		cfg.DataDir = cfg.Name + ".shimd"
	}
	if len(cfg.ListenClientURLs) == 0 {
		cfg.ListenClientURLs = []string{defaultClientURL}
	}
	if cfg.DBMaxConns == 0 {
		cfg.DBMaxConns = defaultDBMaxConns
	}
	if cfg.DBConnectTimeout == 0 {
		cfg.DBConnectTimeout = defaultDBConnectTimeout
	}
	if cfg.PeerWakeAddr == "" {
		cfg.PeerWakeAddr = defaultPeerWakeAddr
	}
	if cfg.AutoCompactionMode == "" {
		cfg.AutoCompactionMode = compact.ModePeriodic
	}
	if cfg.AutoCompactionRetention == "" {
		cfg.AutoCompactionRetention = "0"
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = math.MaxUint32
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// Validate reports settings Run would refuse. Its messages name
// cmd/shimd's flags, which Config's fields mirror.
func (cfg Config) Validate() error {
	cfg = cfg.withDefaults()
	switch {
	case (cfg.CertFile == "") != (cfg.KeyFile == ""):
		return fmt.Errorf("--cert-file and --key-file go together")
	case cfg.ClientCertAuth && cfg.TrustedCAFile == "":
		return fmt.Errorf("--client-cert-auth needs --trusted-ca-file")
	case cfg.QuotaBackendBytes < 0:
		return fmt.Errorf("--quota-backend-bytes must not be negative, got %d", cfg.QuotaBackendBytes)
	}
	if _, _, err := compact.ParseRetention(cfg.AutoCompactionMode, cfg.AutoCompactionRetention); err != nil {
		return err
	}
	if cfg.AuthToken != "" {
		if _, _, err := auth.ParseTokenOptions(cfg.AuthToken); err != nil {
			return fmt.Errorf("--auth-token %q: %v", cfg.AuthToken, err)
		}
	}
	for _, list := range [][]string{cfg.ListenClientURLs, cfg.ListenMetricsURLs} {
		urls, err := parseURLs(list)
		if err != nil {
			return err
		}
		for _, u := range urls {
			if u.Scheme == "https" && cfg.CertFile == "" {
				return fmt.Errorf("%s needs --cert-file and --key-file", u)
			}
		}
	}
	if _, err := parseURLs(cfg.AdvertiseClientURLs); err != nil {
		return fmt.Errorf("--advertise-client-urls: %v", err)
	}
	if cfg.PeerWakeAddr != peerWakeOff {
		if _, _, err := net.SplitHostPort(cfg.PeerWakeAddr); err != nil {
			return fmt.Errorf("--peer-wake-addr %q: want host:port or %q: %v", cfg.PeerWakeAddr, peerWakeOff, err)
		}
	}
	if cfg.AdvertisePeerWakeAddr != "" {
		if _, _, err := net.SplitHostPort(cfg.AdvertisePeerWakeAddr); err != nil {
			return fmt.Errorf("--advertise-peer-wake-addr %q: want host:port: %v", cfg.AdvertisePeerWakeAddr, err)
		}
	}
	return checkEndpoint(cfg.Endpoint)
}

// checkEndpoint rejects a database this package cannot open.
func checkEndpoint(ep string) error {
	if ep == "" {
		return nil
	}
	for _, p := range []string{"sqlite://", "file:", "postgres://", "postgresql://", "mysql://"} {
		if strings.HasPrefix(ep, p) {
			return nil
		}
	}
	scheme, _, _ := strings.Cut(ep, "://")
	return fmt.Errorf("--endpoint: unsupported database %q (supported: sqlite://, postgres://, mysql://, or empty for SQLite in --data-dir)", scheme)
}

// parseURLs reads http:// and https:// URLs, each with a port (0 for a
// listener: any free one).
func parseURLs(list []string) ([]*url.URL, error) {
	var out []*url.URL
	for _, raw := range list {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%q is not a URL: %v", raw, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("%q: scheme must be http or https", raw)
		}
		if u.Port() == "" {
			return nil, fmt.Errorf("%q has no port", raw)
		}
		out = append(out, u)
	}
	return out, nil
}
