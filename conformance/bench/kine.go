package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/shimd/shimd/conformance/harness"
)

// kine (github.com/k3s-io/kine), the incumbent etcd shim, is benchmarked on
// the same databases as shimd so that the goals stated relative to it are
// measured rather than assumed. It is built from the module proxy in a
// throwaway module: its dependencies conflict with this module's.
const (
	kineModule  = "github.com/k3s-io/kine"
	kineVersion = "v0.16.4"
)

func isKine(target string) bool { return strings.HasPrefix(target, "kine-") }

// buildKine builds kine at kineVersion into binDir (about 1–2 minutes cold;
// the module and build caches make later builds quick).
func buildKine(binDir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := filepath.Join(binDir, "kinebuild")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(binDir, "kine")
	logf("building kine %s (%s, module proxy)", kineVersion, kineModule)
	for _, args := range [][]string{
		{"mod", "init", "kinebuild"},
		{"get", kineModule + "@" + kineVersion},
		{"build", "-o", out, kineModule},
	} {
		cmd := exec.Command(goBin, args...)
		cmd.Dir = dir
		// Not the conformance module's workspace, if there were one.
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, b)
		}
	}
	return out, nil
}

// describeKine names the kine binary's version and SQLite driver (cgo
// builds use mattn/go-sqlite3, others modernc.org/sqlite), from its build
// information.
func describeKine(bin string) string {
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		return bin
	}
	version, driver := "?", ""
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && (f[0] == "mod" || f[0] == "dep") && f[1] == kineModule:
			version = f[2]
		case len(f) >= 2 && f[0] == "dep" && f[1] == "github.com/mattn/go-sqlite3" && driver == "":
			driver = "mattn/go-sqlite3 (cgo)"
		case len(f) >= 2 && f[0] == "build" && f[1] == "CGO_ENABLED=0":
			driver = "modernc.org/sqlite (pure Go)"
		}
	}
	d := "kine " + version
	if driver != "" {
		d += ", SQLite driver " + driver
	}
	return d
}

// kineArgs is kine's command line for a store: its SQLite default
// (./db/state.db, in the working directory) or the store's DSN. kine's
// drivers take shimd's forms as they are: PostgreSQL's URL with its query
// (search_path and application_name go to pgx as run-time parameters, so
// kine's table lands in the store's schema) and mysql://<driver DSN>.
func kineArgs(b harness.Backend) (func(string) []string, error) {
	ep := b.Endpoint
	switch b.Kind {
	case harness.KindPostgres:
		if !strings.HasPrefix(ep, "postgres://") && !strings.HasPrefix(ep, "postgresql://") {
			return nil, fmt.Errorf("kine needs a postgres:// URL, not %s", harness.RedactDSN(ep))
		}
	case harness.KindMySQL:
		if !strings.HasPrefix(ep, "mysql://") {
			ep = "mysql://" + ep
		}
	default:
		ep = ""
	}
	return func(addr string) []string {
		args := []string{"--listen-address", addr, "--metrics-bind-address", "0"}
		if ep != "" {
			args = append(args, "--endpoint", ep)
		}
		return args
	}, nil
}
