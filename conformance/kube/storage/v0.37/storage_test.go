package storage

// TestAPIServerStorage builds k8s.io/apiserver v0.37.2's own storage tests
// into test binaries: package k8s.io/apiserver/pkg/storage/etcd3
// (store_test.go, watcher_test.go, compact_test.go, lease_manager_test.go,
// ...) and the watch cache on top of it, .../storage/cacher. They are
// unchanged except for where they get their server: in a copy of the
// module, testserver.RunEtcd, which every one of those tests calls for a
// fresh embedded etcd, is renamed runEmbeddedEtcd and testdata/hook.go's
// RunEtcd added, which starts either that embedded etcd 3.7.3 or a fresh
// shimd process on a fresh store (package shimdtest). Each binary then runs
// once per backend (etcd, sqlite, postgres, mariadb), and every test,
// subtests included, must end the same on shimd as on etcd.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/kube/storage/v0.37/shimdtest"
)

// suites are the packages run by default: etcd3's own tests, and the
// watch cache's (cacher), which run on an etcd3 store too. Every test in
// them that starts a server gets it from testserver.RunEtcd.
var suites = []string{"etcd3", "cacher"}

const (
	storagePkg = "k8s.io/apiserver/pkg/storage/"

	defaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	defaultMySQLDSN    = "mysql://root@tcp(127.0.0.1:3306)/test"
)

// Environment of TestAPIServerStorage.
const (
	// envBackends selects backends (comma-separated; etcd always runs, as
	// the reference): default sqlite,postgres,mariadb.
	envBackends = "KUBE_STORAGE_BACKENDS"
	// envRun is passed to the test binaries as -test.run.
	envRun = "KUBE_STORAGE_RUN"
	// envSuites selects packages under k8s.io/apiserver/pkg/storage/
	// (comma-separated; default etcd3,cacher).
	envSuites = "KUBE_STORAGE_PACKAGES"
	// envLogDir keeps each backend's test2json output there (default:
	// .cache/runs/<time>, the last 10 kept).
	envLogDir  = "KUBE_STORAGE_LOGDIR"
	envPG      = "SHIMD_TEST_POSTGRES"
	envMySQL   = "SHIMD_TEST_MYSQL"
	envRequire = "SHIMD_REQUIRE_BACKENDS"
)

// result is how one test (or subtest) of the etcd3 binary ended.
type result struct {
	action string // pass, fail or skip
	output []string
}

// suite is one package's test binary.
type suite struct {
	name string // under k8s.io/apiserver/pkg/storage/
	bin  string
	dir  string // the package's source directory, where go test runs it
}

// run is one backend's run of every suite's binary; results are keyed
// suite/TestName/subtest.
type run struct {
	backend  string
	results  map[string]*result
	elapsed  map[string]time.Duration // per suite
	exitErr  []error
	logFiles []string
	rawTail  []string // output outside any test (panics, build errors)
	started  int      // shimd servers started (shimdtest's log lines)
	panicked bool
}

func (r *run) count(action string) int { return r.countIn("", action) }

// countIn counts the tests of suite ("": all) that ended with action.
func (r *run) countIn(suite, action string) int {
	n := 0
	for name, res := range r.results {
		if res.action == action && (suite == "" || strings.HasPrefix(name, suite+"/")) {
			n++
		}
	}
	return n
}

func (r *run) names(action string) []string {
	var ns []string
	for n, res := range r.results {
		if res.action == action {
			ns = append(ns, n)
		}
	}
	sort.Strings(ns)
	return ns
}

func TestAPIServerStorage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs k8s.io/apiserver's storage tests once per backend (minutes)")
	}
	work := t.TempDir()
	logDir := os.Getenv(envLogDir)
	if logDir == "" {
		logDir = newRunDir(t)
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	names := suites
	if v := strings.TrimSpace(os.Getenv(envSuites)); v != "" {
		names = strings.Split(v, ",")
	}
	ss := buildTests(t, work, names)
	shimdBin := buildShimd(t, work)

	backends := []string{"sqlite", "postgres", "mariadb"}
	if v := strings.TrimSpace(os.Getenv(envBackends)); v != "" {
		backends = strings.Split(v, ",")
	}
	runs := map[string]*run{}
	order := []string{"etcd"}
	runs["etcd"] = runTests(t, ss, logDir, "etcd", "", "")
	if runs["etcd"].count("pass") == 0 {
		t.Fatalf("no test passed against the reference etcd; see %s", runs["etcd"].logFiles)
	}
	for _, b := range backends {
		b = strings.TrimSpace(b)
		dsn, err := backendDSN(b)
		if err != nil {
			if os.Getenv(envRequire) == "1" {
				t.Errorf("%s: %v (%s=1)", b, err, envRequire)
			} else {
				t.Logf("NOTICE: backend %s SKIPPED: %v", b, err)
				fmt.Fprintf(os.Stderr, "kube-storage: NOTICE: backend %s SKIPPED: %v\n", b, err)
			}
			continue
		}
		order = append(order, b)
		runs[b] = runTests(t, ss, logDir, b, dsn, shimdBin)
	}

	for _, b := range order[1:] {
		t.Run(b, func(t *testing.T) { compareRuns(t, runs["etcd"], runs[b]) })
	}
	t.Run("etcd", func(t *testing.T) {
		// The reference's own failures are not shimd's, but they are shown:
		// a test that fails on etcd fails on shimd too or is reported above.
		for _, name := range runs["etcd"].names("fail") {
			t.Logf("fails against etcd 3.7.3 as well: %s", name)
		}
		if runs["etcd"].panicked {
			t.Errorf("the tests did not finish against etcd: %v\n%s", runs["etcd"].exitErr, strings.Join(runs["etcd"].rawTail, "\n"))
		}
	})

	var sum strings.Builder
	fmt.Fprintf(&sum, "%-9s %-8s %6s %6s %6s %9s\n", "backend", "package", "pass", "fail", "skip", "time")
	for _, b := range order {
		r := runs[b]
		for _, s := range ss {
			fmt.Fprintf(&sum, "%-9s %-8s %6d %6d %6d %9s\n", b, s.name, r.countIn(s.name, "pass"), r.countIn(s.name, "fail"), r.countIn(s.name, "skip"), r.elapsed[s.name].Round(time.Second))
		}
	}
	t.Logf("k8s.io/apiserver v0.37.2 storage tests (tests and subtests), logs in %s:\n%s", logDir, sum.String())
}

// newRunDir makes .cache/runs/<time> and removes all but the newest 10
// runs.
func newRunDir(t *testing.T) string {
	t.Helper()
	runs := filepath.Join(".cache", "runs")
	dir := filepath.Join(runs, time.Now().UTC().Format("20060102-150405"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if old, err := os.ReadDir(runs); err == nil && len(old) > 10 {
		for _, e := range old[:len(old)-10] { // ReadDir sorts by name: oldest first
			_ = os.RemoveAll(filepath.Join(runs, e.Name()))
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// backendDSN returns the database server for b's stores ("" for SQLite),
// or why b cannot run.
func backendDSN(b string) (string, error) {
	var dsn string
	switch b {
	case "sqlite":
		return "", nil
	case "postgres":
		dsn = envOr(envPG, defaultPostgresDSN)
	case "mariadb":
		dsn = envOr(envMySQL, defaultMySQLDSN)
	default:
		return "", fmt.Errorf("unknown backend (sqlite, postgres, mariadb)")
	}
	if dsn == "off" {
		return "", fmt.Errorf("turned off")
	}
	db, err := shimdtest.OpenAdmin(b, dsn)
	if err != nil {
		return "", err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return "", fmt.Errorf("unreachable: %w", err)
	}
	// Stores of killed runs (the names embed their creation time).
	if n, err := shimdtest.DropStale(ctx, b, db, 12*time.Hour); err != nil {
		return "", fmt.Errorf("dropping stale stores: %w", err)
	} else if n > 0 {
		fmt.Fprintf(os.Stderr, "kube-storage: dropped %d stale %s stores\n", n, b)
	}
	return dsn, nil
}

func envOr(name, def string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return def
}

// buildTests compiles the tests of the named packages under
// k8s.io/apiserver/pkg/storage/. The go command does not overlay files of the module cache, so k8s.io/apiserver
// is copied into .cache/ (a stable path: the build cache stays valid) and
// the build uses a go.mod with a replace directive for it: the copy differs
// from the module only in testserver, where upstream's RunEtcd becomes
// runEmbeddedEtcd and testdata/hook.go's RunEtcd calls it or starts shimd.
func buildTests(t *testing.T, work string, names []string) []suite {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", "k8s.io/apiserver").Output()
	if err != nil {
		t.Fatalf("go list -m k8s.io/apiserver: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("go list -m k8s.io/apiserver: %q", out)
	}
	src, version := f[0], f[1]
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(here, ".cache", "apiserver@"+version)
	if err := os.RemoveAll(dst); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{{"cp", "-R", src, dst}, {"chmod", "-R", "u+w", dst}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}

	tsDir := filepath.Join(dst, "pkg", "storage", "etcd3", "testserver")
	orig := filepath.Join(tsDir, "test_server.go")
	code, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(code, []byte("\nfunc RunEtcd(")); n != 1 {
		t.Fatalf("%s: %d definitions of RunEtcd, want 1 (has testserver changed?)", orig, n)
	}
	code = bytes.Replace(code, []byte("\nfunc RunEtcd("), []byte("\nfunc runEmbeddedEtcd("), 1)
	if err := os.WriteFile(orig, code, 0o644); err != nil {
		t.Fatal(err)
	}
	hook, err := os.ReadFile(filepath.Join("testdata", "hook.go"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tsDir, "shimd_hook.go"), hook, 0o644); err != nil {
		t.Fatal(err)
	}

	modFile := filepath.Join(work, "go.mod")
	for _, name := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	edit := exec.Command("go", "mod", "edit", "-modfile", modFile,
		"-replace", "k8s.io/apiserver="+dst, "-replace", "github.com/shimd/shimd="+root)
	if out, err := edit.CombinedOutput(); err != nil {
		t.Fatalf("go mod edit: %v\n%s", err, out)
	}

	var ss []suite
	for _, name := range names {
		name = strings.TrimSpace(name)
		s := suite{name: name, bin: filepath.Join(work, strings.ReplaceAll(name, "/", "_")+".test"), dir: filepath.Join(dst, "pkg", "storage", name)}
		start := time.Now()
		cmd := exec.Command("go", "test", "-c", "-modfile", modFile, "-o", s.bin, storagePkg+name)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building the %s tests: %v\n%s", storagePkg+name, err, out)
		}
		t.Logf("built the %s %s tests in %s", storagePkg+name, version, time.Since(start).Round(time.Second))
		ss = append(ss, s)
	}
	return ss
}

// buildShimd builds cmd/shimd from the repository's root module (as shipped,
// with its own dependency versions), unless SHIMD_BIN names a binary.
func buildShimd(t *testing.T, work string) string {
	t.Helper()
	if bin := os.Getenv("SHIMD_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(work, "shimd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/shimd")
	cmd.Dir = filepath.Join("..", "..", "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building shimd: %v\n%s", err, out)
	}
	return bin
}

// runTests runs every suite's binary against backend.
func runTests(t *testing.T, ss []suite, logDir, backend, dsn, shimdBin string) *run {
	t.Helper()
	r := &run{backend: backend, results: map[string]*result{}, elapsed: map[string]time.Duration{}}
	for _, s := range ss {
		runSuite(t, r, s, logDir, dsn, shimdBin)
		t.Logf("%s %s: %d passed, %d failed, %d skipped in %s", backend, s.name, r.countIn(s.name, "pass"), r.countIn(s.name, "fail"), r.countIn(s.name, "skip"), r.elapsed[s.name].Round(time.Second))
	}
	return r
}

// runSuite runs one binary against r.backend and collects how each test
// ended, from test2json's events.
func runSuite(t *testing.T, r *run, s suite, logDir, dsn, shimdBin string) {
	t.Helper()
	logFile := filepath.Join(logDir, r.backend+"-"+strings.ReplaceAll(s.name, "/", "_")+".json")
	r.logFiles = append(r.logFiles, logFile)
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()

	args := []string{"tool", "test2json", "-t", "-p", s.name, s.bin, "-test.v=test2json", "-test.count=1", "-test.timeout=40m"}
	if v := os.Getenv(envRun); v != "" {
		args = append(args, "-test.run", v)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), shimdtest.EnvBackend+"="+r.backend, shimdtest.EnvDSN+"="+dsn, shimdtest.EnvBin+"="+shimdBin)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	seen := map[string]bool{}
	for sc.Scan() {
		line := sc.Bytes()
		logf.Write(line)
		logf.Write([]byte{'\n'})
		var ev struct {
			Action string
			Test   string
			Output string
		}
		if json.Unmarshal(line, &ev) != nil {
			r.rawTail = tail(r.rawTail, string(line))
			continue
		}
		if strings.Contains(ev.Output, shimdtest.StartedMarker) {
			r.started++
		}
		if ev.Test == "" {
			if ev.Action == "output" {
				r.rawTail = tail(r.rawTail, strings.TrimRight(ev.Output, "\n"))
				if strings.HasPrefix(ev.Output, "panic:") || strings.Contains(ev.Output, "test timed out") {
					r.panicked = true
				}
			}
			continue
		}
		name := s.name + "/" + ev.Test
		seen[name] = true
		res := r.results[name]
		if res == nil {
			res = &result{}
			r.results[name] = res
		}
		switch ev.Action {
		case "output":
			if len(res.output) < 400 {
				res.output = append(res.output, strings.TrimRight(ev.Output, "\n"))
			}
			if strings.HasPrefix(ev.Output, "panic:") {
				r.panicked = true
			}
		case "pass", "fail", "skip":
			res.action = ev.Action
		}
	}
	if err := cmd.Wait(); err != nil {
		r.exitErr = append(r.exitErr, fmt.Errorf("%s: %w", s.name, err))
	}
	r.elapsed[s.name] = time.Since(start)
	// A test that never ended (panic, timeout) counts as failed.
	for name := range seen {
		if r.results[name].action == "" {
			r.results[name].action = "fail"
		}
	}
}

func tail(lines []string, line string) []string {
	lines = append(lines, line)
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	return lines
}

// compareRuns fails for every test that does not end on shimd as on etcd.
func compareRuns(t *testing.T, ref, got *run) {
	var all []string
	for n := range ref.results {
		all = append(all, n)
	}
	for n := range got.results {
		if _, ok := ref.results[n]; !ok {
			all = append(all, n)
		}
	}
	sort.Strings(all)
	same := 0
	for _, n := range all {
		want, have := ref.results[n], got.results[n]
		switch {
		case want == nil:
			t.Errorf("%s ran on %s (%s) but not on etcd", n, got.backend, have.action)
		case have == nil:
			t.Errorf("%s ran on etcd (%s) but not on %s", n, want.action, got.backend)
		case want.action == "fail" && have.action == "pass":
			// Not shimd's failure: listed under TestAPIServerStorage/etcd.
			t.Logf("%s: fails on etcd but passes on %s", n, got.backend)
		case want.action != have.action:
			t.Errorf("%s: %s on etcd, %s on %s; its output on %s:\n%s", n, want.action, have.action, got.backend, got.backend, strings.Join(have.output, "\n"))
		default:
			same++
		}
	}
	if got.started == 0 && len(all) > 0 {
		t.Errorf("no shimd was started on %s: the tests did not run against shimd", got.backend)
	}
	if got.panicked {
		t.Errorf("the tests did not finish on %s: %v\n%s", got.backend, got.exitErr, strings.Join(got.rawTail, "\n"))
	}
	t.Logf("%d of %d tests end as on etcd (%s: %d passed, %d failed, %d skipped; %d shimd servers started)", same, len(all), got.backend, got.count("pass"), got.count("fail"), got.count("skip"), got.started)
}
