package kube

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Settings (environment):
//
//	KUBE_VERSIONS   comma-separated Kubernetes releases ("1.37", "v1.37" or
//	                "v1.37.2"), each built by its module under k8s/; default
//	                all of them, newest first.
//	KUBE_BACKENDS   comma-separated runs, default defaultBackends; each runs
//	                for every release of KUBE_VERSIONS.
//	                A "-mtls" suffix (e.g. sqlite-mtls) serves shimd over https with
//	                client certificates, which kube-apiserver presents.
//	                A "-nocache" suffix (e.g. sqlite-nocache) runs kube-apiserver
//	                with --watch-cache=false, so every list and watch goes
//	                to the storage directly.
//	KUBE_NO_RESTART set: skip the step that restarts the backend under
//	                kube-apiserver.
//	KUBE_KEEP       set: keep the PostgreSQL schema / MariaDB database.
//	KUBE_SHIMD_REF  a git ref (e.g. HEAD): build shimd from that commit
//	                (git archive into .cache/src) instead of the working tree.
//	SHIMD_TEST_POSTGRES, SHIMD_TEST_MYSQL, SHIMD_REQUIRE_BACKENDS: as in the
//	                conformance suite (database servers to create stores on;
//	                an unreachable one fails instead of skipping).
//
// Every run leaves its logs (kube-apiserver.log, backend log, kubectl.log,
// health.log, storage-errors.txt) in .cache/runs/<time>/<version>/<run>/.
const defaultBackends = "sqlite,sqlite-nocache,sqlite-mtls,postgres,mariadb,etcd"

var (
	shimdOnce sync.Once
	shimdBin  string
	shimdErr  error
	runRoot   string
)

// binaries builds (once per test) shimd and (once per release, if missing
// or stale) kube-apiserver and kubectl of r.
func binaries(t *testing.T, r Release) *Binaries {
	t.Helper()
	logf := func(f string, a ...any) { t.Logf(f, a...) }
	shimdOnce.Do(func() {
		shimdBin, shimdErr = buildShimd(logf)
		if shimdErr == nil {
			runRoot = filepath.Join(cacheDir, "runs", time.Now().Format("20060102-150405"))
			shimdErr = os.MkdirAll(runRoot, 0o755)
			pruneRuns(filepath.Join(cacheDir, "runs"), 10)
		}
	})
	if shimdErr != nil {
		t.Fatalf("building shimd: %v", shimdErr)
	}
	apiserver, kubectl, err := buildKube(r, logf)
	if err != nil {
		t.Fatalf("building Kubernetes %s: %v", r.Version, err)
	}
	return &Binaries{
		KubeVersion:   r.Version,
		KubeAPIServer: apiserver,
		Kubectl:       kubectl,
		Shimd:         shimdBin,
		Etcd:          filepath.Join(binDir, "etcd"),
	}
}

// pruneRuns keeps the newest keep run directories.
func pruneRuns(dir string, keep int) {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	for len(names) > keep {
		os.RemoveAll(filepath.Join(dir, names[0]))
		names = names[1:]
	}
}

func TestKubeAPIServer(t *testing.T) {
	releases, err := selectReleases(os.Getenv("KUBE_VERSIONS"))
	if err != nil {
		t.Fatal(err)
	}
	list := os.Getenv("KUBE_BACKENDS")
	if list == "" {
		list = defaultBackends
	}
	for _, r := range releases {
		// TestKubeAPIServer/<version>/<run>/<step>
		t.Run(r.Version, func(t *testing.T) {
			b := binaries(t, r)
			for _, name := range strings.Split(list, ",") {
				name = strings.TrimSpace(name)
				if name == "" {
					continue
				}
				t.Run(name, func(t *testing.T) { runKube(t, r, b, name) })
			}
		})
	}
}

// Stores (PostgreSQL schemas, MariaDB databases) are named
// shimd_kube_<unix time>_<random>; those older than 12h were left by a killed
// run and are dropped by the next one.
const storePrefix = "shimd_kube_"

var (
	storeNameRE = regexp.MustCompile(`^shimd_kube_([0-9]+)_[0-9a-f]+$`)
	mysqlDSNRE  = regexp.MustCompile(`^mysql://([^:@/]*)(?::([^@]*))?@tcp\(([^:)]+):([0-9]+)\)/([^?]*)(\?.*)?$`)
)

func staleStores(list string) []string {
	var r []string
	for _, name := range strings.Fields(list) {
		m := storeNameRE.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if ts, err := strconv.ParseInt(m[1], 10, 64); err == nil && time.Since(time.Unix(ts, 0)) > 12*time.Hour {
			r = append(r, name)
		}
	}
	return r
}

// unavailable skips the run, or fails it under SHIMD_REQUIRE_BACKENDS=1 (CI).
func unavailable(t *testing.T, what string, err error) {
	t.Helper()
	if os.Getenv("SHIMD_REQUIRE_BACKENDS") != "" {
		t.Fatalf("%s unavailable (SHIMD_REQUIRE_BACKENDS is set): %v", what, err)
	}
	t.Skipf("%s unavailable: %v", what, err)
}

func randName(prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%d_%s", prefix, time.Now().Unix(), hex.EncodeToString(b[:]))
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// newBackend prepares (does not start) the storage of one run.
func newBackend(t *testing.T, kind, dir string, b *Binaries) *Backend {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	be := &Backend{Name: kind, Port: port, DataDir: filepath.Join(dir, "data"), bins: b}
	be.LogFile = filepath.Join(dir, "shimd.log")
	keep := os.Getenv("KUBE_KEEP") != ""
	switch kind {
	case "sqlite":
	case "etcd":
		be.LogFile = filepath.Join(dir, "etcd.log")
		if err := buildEtcd(b, func(f string, a ...any) { t.Logf(f, a...) }); err != nil {
			t.Fatalf("building etcd: %v", err)
		}
	case "postgres":
		admin := envOr("SHIMD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
		psql := func(sql string) (string, error) {
			out, err := exec.Command("psql", admin, "-v", "ON_ERROR_STOP=1", "-Atqc", sql).CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("psql %q: %v: %s", sql, err, out)
			}
			return string(out), nil
		}
		if _, err := psql("SELECT 1"); err != nil {
			unavailable(t, "PostgreSQL", err)
		}
		if out, err := psql("SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE '" + storePrefix + "%'"); err == nil {
			for _, name := range staleStores(out) {
				_, _ = psql("DROP SCHEMA IF EXISTS " + name + " CASCADE")
			}
		}
		schema := randName(storePrefix)
		if _, err := psql("CREATE SCHEMA " + schema); err != nil {
			t.Fatal(err)
		}
		sep := "?"
		if strings.Contains(admin, "?") {
			sep = "&"
		}
		be.Endpoint = admin + sep + "search_path=" + schema
		t.Logf("PostgreSQL schema %s", schema)
		if !keep {
			be.cleanup = func() error { _, err := psql("DROP SCHEMA IF EXISTS " + schema + " CASCADE"); return err }
		}
	case "mariadb":
		dsn := envOr("SHIMD_TEST_MYSQL", "mysql://root@tcp(127.0.0.1:3306)/test")
		m := mysqlDSNRE.FindStringSubmatch(dsn)
		if m == nil {
			t.Fatalf("SHIMD_TEST_MYSQL=%q: want mysql://USER[:PASS]@tcp(HOST:PORT)/DB", dsn)
		}
		user, pass, host, port := m[1], m[2], m[3], m[4]
		mysql := func(sql string) (string, error) {
			cmd := exec.Command("mysql", "-h", host, "-P", port, "-u", user, "-N", "-B", "-e", sql)
			if pass != "" {
				cmd.Env = append(os.Environ(), "MYSQL_PWD="+pass)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				return "", fmt.Errorf("mysql %q: %v: %s", sql, err, out)
			}
			return string(out), nil
		}
		if _, err := mysql("SELECT 1"); err != nil {
			unavailable(t, "MariaDB", err)
		}
		if out, err := mysql("SHOW DATABASES LIKE '" + storePrefix + "%'"); err == nil {
			for _, name := range staleStores(out) {
				_, _ = mysql("DROP DATABASE IF EXISTS " + name)
			}
		}
		db := randName(storePrefix)
		if _, err := mysql("CREATE DATABASE " + db); err != nil {
			t.Fatal(err)
		}
		cred := user
		if pass != "" {
			cred += ":" + pass
		}
		be.Endpoint = fmt.Sprintf("mysql://%s@tcp(%s:%s)/%s%s", cred, host, port, db, m[6])
		t.Logf("MariaDB database %s", db)
		if !keep {
			be.cleanup = func() error { _, err := mysql("DROP DATABASE IF EXISTS " + db); return err }
		}
	default:
		t.Fatalf("unknown backend %q (want sqlite, postgres, mariadb or etcd, optionally with -nocache or -mtls)", kind)
	}
	return be
}

func runKube(t *testing.T, r Release, b *Binaries, name string) {
	kind, mTLS := strings.CutSuffix(name, "-mtls")
	kind, noCache := strings.CutSuffix(kind, "-nocache")
	dir := filepath.Join(runRoot, r.Version, name)
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("logs in %s", dir)
	be := newBackend(t, kind, dir, b)
	if be.cleanup != nil {
		t.Cleanup(func() {
			if err := be.cleanup(); err != nil {
				t.Logf("dropping the store: %v", err)
			}
		})
	}
	pki, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	if mTLS {
		if kind == "etcd" {
			t.Fatal("the -mtls variant is for shimd backends")
		}
		be.TLS = pki
	}
	start := time.Now()
	if err := be.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := be.Stop(); err != nil {
			t.Errorf("stopping %s: %v", be.Name, err)
		}
	}()
	extra := []string{
		// Compact every 30s instead of every 5m so that the run sees
		// several compactions.
		"--etcd-compaction-interval=30s",
		// Events live in etcd leases of ttl+3s: let them expire in the run.
		"--event-ttl=1m",
		// store.go and watcher.go at V(4) (etcd3's and the registry's: a
		// few lines): conflict retries and, from 1.37 on, "etcd server
		// does not support RangeStream ...; falling back to paginated
		// list" (a list, or a watch's initial sync), which scanLogs turns
		// into a failure.
		"--vmodule=store=4,watcher=4",
	}
	if noCache {
		extra = append(extra, "--watch-cache=false")
	}
	if mTLS {
		// kube-apiserver to shimd over mutual TLS, as to a secured etcd.
		extra = append(extra, "--etcd-cafile="+pki.CAFile, "--etcd-certfile="+pki.ClientCert, "--etcd-keyfile="+pki.ClientKey)
	}
	a, err := startAPIServer(b, pki, dir, be.URL(), extra)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stopAPI := func() {
		if !stopped {
			stopped = true
			if err := a.Stop(); err != nil {
				t.Errorf("stopping kube-apiserver: %v", err)
			}
		}
	}
	defer stopAPI()
	if err := a.waitReady(2 * time.Minute); err != nil {
		stopAPI()
		be.DumpGoroutines()
		t.Fatalf("%v\n(%s's goroutines, if it was stuck, are in %s)", err, be.Name, be.LogFile)
	}
	t.Logf("kube-apiserver %s ready on %s after %s (storage: %s %s)", b.KubeVersion, a.URL(),
		time.Since(start).Round(100*time.Millisecond), be.Name, be.URL())

	k, err := newKubectl(t, b.Kubectl, a.Kubeconfig, dir)
	if err != nil {
		t.Fatal(err)
	}
	h := watchHealth(a, time.Second)
	sc := &scenario{t: t, k: k, a: a, b: be, h: h, dir: dir, bins: b, rel: r, noCache: noCache, start: start}
	sc.run()

	checks, fails := h.finish()
	writeLines(filepath.Join(dir, "health.log"), fails)
	if len(fails) > 0 {
		t.Errorf("%d of %d health checks failed (outside the backend restart); first ones:\n  %s",
			len(fails), checks, strings.Join(first(fails, 10), "\n  "))
	} else {
		t.Logf("health: %d checks of %s, all ok", checks, strings.Join(healthPaths, " "))
	}
	stopAPI()
	t.Logf("scenario of %s on %s took %s", r.Version, name, time.Since(start).Round(time.Second))
	sc.scanLogs()
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func writeLines(file string, lines []string) {
	_ = os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}
