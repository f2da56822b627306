// Package harness starts the two sides of the conformance suite: a reference
// etcd embedded in the test process and a shimd subprocess.
package harness

import (
	"os"
	"strings"
)

// Backend is a SQL store shimd can run on. An empty Endpoint means shimd's
// default: SQLite inside --data-dir.
type Backend struct {
	Name     string
	Endpoint string // passed to shimd as --endpoint when non-empty
}

// Backends lists the stores every conformance test runs against. SQLite is
// always included; more can be added without code changes through
// CONFORMANCE_BACKENDS="name=dsn;name2=dsn2" (hook for PostgreSQL/MariaDB).
func Backends() []Backend {
	bs := []Backend{{Name: "sqlite"}}
	for _, item := range strings.Split(os.Getenv("CONFORMANCE_BACKENDS"), ";") {
		name, dsn, ok := strings.Cut(strings.TrimSpace(item), "=")
		if ok && name != "" {
			bs = append(bs, Backend{Name: name, Endpoint: dsn})
		}
	}
	return bs
}

// Options are the server limits shared by etcd and shimd. Zero means the
// server default (128 ops, 1.5 MiB).
type Options struct {
	MaxTxnOps       uint
	MaxRequestBytes uint
}
