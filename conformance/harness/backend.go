// Package harness starts the two sides of the conformance suite: a reference
// etcd embedded in the test process and a shimd subprocess.
package harness

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Kind is the database behind a Backend.
type Kind string

const (
	KindSQLite   Kind = "sqlite"   // shimd's default: a file in --data-dir
	KindPostgres Kind = "postgres" // a PostgreSQL server; one schema per store
	KindMySQL    Kind = "mysql"    // a MySQL/MariaDB server; one database per store
)

// Environment knobs of the backend list (see Backends).
const (
	EnvPostgres        = "SHIMD_TEST_POSTGRES"    // PostgreSQL server DSN, or "off"
	EnvMySQL           = "SHIMD_TEST_MYSQL"       // MySQL/MariaDB server DSN, or "off"
	EnvRequireBackends = "SHIMD_REQUIRE_BACKENDS" // 1: an unreachable database fails its tests
	EnvBackends        = "CONFORMANCE_BACKENDS"   // which backends run (see Backends)

	DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultMySQLDSN    = "mysql://root@tcp(127.0.0.1:3306)/test"
)

// Backend is a SQL store shimd can run on.
type Backend struct {
	Name string
	Kind Kind
	// Endpoint is passed to shimd as --endpoint when non-empty. It is empty
	// for SQLite (shimd's default: a file in --data-dir) and, for the server
	// databases, set only on a Store's copy of the backend (NewStore).
	Endpoint string
	// AdminDSN is the server on which NewStore creates schemas/databases
	// (PostgreSQL: the database the schemas go in).
	AdminDSN string
	// Unavailable is why the server could not be reached when the list was
	// built; tests on it are skipped, or fail under SHIMD_REQUIRE_BACKENDS=1.
	Unavailable error
}

// IsShared reports whether several shimd processes can share the backend's
// stores (the server databases; not SQLite in a data dir).
func (b Backend) IsShared() bool { return b.Kind == KindPostgres || b.Kind == KindMySQL }

var (
	backendsOnce sync.Once
	backends     []Backend
	backendsErr  error
)

// Backends lists the stores every conformance test runs against:
//
//   - sqlite, always;
//   - postgres, on SHIMD_TEST_POSTGRES (default DefaultPostgresDSN);
//   - mariadb, on SHIMD_TEST_MYSQL (default DefaultMySQLDSN).
//
// SHIMD_TEST_POSTGRES=off or SHIMD_TEST_MYSQL=off leaves a server out.
// CONFORMANCE_BACKENDS, when set, replaces the server list: a comma- or
// semicolon-separated list of names ("postgres", "mariadb") and of
// name=dsn items (a backend called name on the server dsn, its kind taken
// from the scheme: postgres:// or mysql://). sqlite always stays.
//
// Each server is probed once (5 s); an unreachable one is still listed, with
// Unavailable set. The list is computed on first use; a malformed
// CONFORMANCE_BACKENDS makes it return only sqlite and BackendsError the
// problem.
func Backends() []Backend {
	backendsOnce.Do(func() { backends, backendsErr = buildBackends() })
	return append([]Backend(nil), backends...)
}

// BackendsError is the configuration problem found by Backends, if any.
func BackendsError() error {
	Backends()
	return backendsErr
}

// RequireBackends reports whether an unreachable database must fail its
// tests instead of skipping them (SHIMD_REQUIRE_BACKENDS=1, set by CI).
func RequireBackends() bool { return EnvBool(EnvRequireBackends) }

func buildBackends() ([]Backend, error) {
	bs := []Backend{{Name: "sqlite", Kind: KindSQLite}}
	var servers []Backend
	if list := strings.TrimSpace(os.Getenv(EnvBackends)); list != "" {
		for _, item := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ';' }) {
			item = strings.TrimSpace(item)
			name, dsn, hasDSN := strings.Cut(item, "=")
			name = strings.TrimSpace(name)
			switch {
			case item == "" || name == "sqlite":
			case hasDSN:
				dsn = strings.TrimSpace(dsn)
				kind := kindOf(dsn)
				if kind == "" {
					return bs, fmt.Errorf("%s: %q: the DSN must start with postgres:// or mysql://", EnvBackends, item)
				}
				servers = append(servers, Backend{Name: name, Kind: kind, AdminDSN: dsn})
			case name == "postgres" || name == "postgresql" || name == "pg":
				servers = append(servers, defaultPostgres())
			case name == "mariadb" || name == "mysql":
				servers = append(servers, defaultMySQL())
			default:
				return bs, fmt.Errorf("%s: unknown backend %q (want sqlite, postgres, mariadb or name=dsn)", EnvBackends, item)
			}
		}
	} else {
		servers = []Backend{defaultPostgres(), defaultMySQL()}
	}
	for _, b := range servers {
		if b.AdminDSN == "off" {
			continue
		}
		b.Unavailable = probe(b)
		if b.Unavailable != nil {
			b.Unavailable = fmt.Errorf("%s (%s) is unreachable: %w", b.Name, RedactDSN(b.AdminDSN), b.Unavailable)
		}
		bs = append(bs, b)
	}
	return bs, nil
}

func defaultPostgres() Backend {
	return Backend{Name: "postgres", Kind: KindPostgres, AdminDSN: envOr(EnvPostgres, DefaultPostgresDSN)}
}

func defaultMySQL() Backend {
	return Backend{Name: "mariadb", Kind: KindMySQL, AdminDSN: envOr(EnvMySQL, DefaultMySQLDSN)}
}

func envOr(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}

func kindOf(dsn string) Kind {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return KindPostgres
	case strings.HasPrefix(dsn, "mysql://"):
		return KindMySQL
	}
	return ""
}

// Options are the server limits shared by etcd and shimd. Zero means the
// server default (128 ops, 1.5 MiB).
type Options struct {
	MaxTxnOps       uint
	MaxRequestBytes uint
	// QuotaBackendBytes is the space quota (--quota-backend-bytes; embedded
	// etcd: cfg.QuotaBackendBytes). 0 means the default, 2 GiB.
	QuotaBackendBytes int64
	// WatchProgressNotifyInterval is passed to both servers
	// (--watch-progress-notify-interval; embedded etcd:
	// cfg.WatchProgressNotifyInterval). 0 means etcd's default, 10 minutes.
	WatchProgressNotifyInterval time.Duration
	// ElectionMs is the election timeout of the reference etcd and of the
	// self-test stand-in (passed to it as EnvElectionMs); shimd has no
	// elections and ignores it. 0 means the harness's fast 100 ms. etcd
	// derives its minimum lease TTL from it: ceil(1.5 × election timeout),
	// so 1 s at 100 ms and 2 s at etcd's default 1000 ms.
	ElectionMs uint
	// AuthToken is --auth-token for both servers ("" = the default,
	// simple; embedded etcd: cfg.AuthToken).
	AuthToken string
	// BcryptCost is --bcrypt-cost for both (0 = the default, 10; tests use
	// bcrypt's minimum, 4, for speed).
	BcryptCost uint
}

// EnvElectionMs carries Options.ElectionMs to a self-test stand-in.
const EnvElectionMs = "CONFORMANCE_ETCD_ELECTION_MS"

// RedactDSN hides the password of a DSN for messages.
func RedactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil && !strings.Contains(dsn, "@tcp(") {
		return u.Redacted()
	}
	// user:password@tcp(...) (the MySQL driver's form)
	if at := strings.Index(dsn, "@"); at > 0 {
		userinfo := dsn[:at]
		if c := strings.Index(userinfo, ":"); c >= 0 && !strings.HasSuffix(userinfo[:c+1], "//") {
			if i := strings.LastIndex(userinfo, ":"); i > strings.Index(userinfo, "://")+2 {
				return userinfo[:i+1] + "xxxxx" + dsn[at:]
			}
		}
	}
	return dsn
}
