// Command bench is shimd's performance benchmark: a Kubernetes-like load
// generator run, back to back, against a real etcd 3.7, against shimd on
// SQLite, PostgreSQL and MariaDB, and against kine (github.com/k3s-io/kine,
// the incumbent etcd shim) on the same databases, each server in its own
// process (so that CPU time and peak RSS are the server's alone). It prints
// one table: per phase and target the throughput or time, p50 and p99, each
// with its ratio to etcd from the same run; then the project's goals, those
// on write throughput relative to kine against kine's figures of the same
// run when that kine target ran.
//
// Run it from the conformance module:
//
//	cd conformance && go run ./bench [--keys 10000] [--value-size 1024-2048] [--clients 16] \
//	    [--history 1] [--targets etcd,sqlite,postgres,mariadb,kine-postgres] [--runs 1]
//
// The targets are etcd, sqlite, postgres, mariadb, kine-sqlite,
// kine-postgres and kine-mariadb; the default is all but kine-sqlite and
// kine-mariadb (an estimated 4 minutes on 2 cores, kine-postgres's share
// about one; kine-sqlite and kine-mariadb would add 1–2 each).
// kine is built at v0.16.4 from the Go module proxy in a temp module (its
// dependencies conflict with this module's), or taken from --kine-bin, and
// started as `kine --listen-address 127.0.0.1:PORT --metrics-bind-address 0
// [--endpoint <store DSN>]` in its data dir (SQLite: its default
// ./db/state.db there). kine serves only kube-apiserver's request shapes, so
// on kine the delete Txn carries kube-apiserver's Else Get and the watch
// phase writes with the update Txn (kine's Put of an existing key writes
// nothing); and it has no Defragment. A phase that fails on kine is shown
// as n/a with its error below the table, and the next phase runs; on etcd
// and shimd a failure ends the target's run.
//
// `make bench` runs it with the defaults. The phases, for each target:
//
//  1. create   Txn If mod_revision(key)==0 Then Put, all N keys over C clients
//  2. history  H−1 rounds of the update below, not measured
//  3. update   Txn If mod_revision==R Then Put Else Get, each key once
//  4. get      single-key Range (linearizable), N gets
//  5. list     paginated prefix LIST, limit 500 (first page at the current
//     revision, later ones at that revision from the key after the last);
//     --list-reps times; time per full list
//  6. count    count_only Range over the prefix, --count-reps times
//  7. watch    a watcher on the prefix, then --watch-puts puts at
//     --watch-rate per second; put-to-event latency
//  8. delete   Txn If mod_revision==R Then DeleteRange, all keys
//  9. compact  the N keys are created again (not measured, so that there are
//     live keys), then Compact(current revision, physical) and Defragment
//     are timed; Status.DbSize / N before compaction and after defrag, and
//     the database files' size / N (etcd's member/snap/db; SQLite's data dir)
//  10. rss     the server process's VmHWM at the end
//
// By default (--order phase) the servers run side by side and the targets
// take turns at each phase, in --slices parts (the keys or repetitions split
// evenly; each part starts with the next target; --settle apart), so that a
// ratio compares measurements taken under the same machine load even when
// other work comes and goes; --order target runs one target after the other
// instead, each alone on the machine. Only one server is under load at any
// time either way.
//
// PostgreSQL and MariaDB stores are fresh (a new schema / database per
// target and run, dropped afterwards); an unreachable server is skipped with
// a notice. Every request, phase and target has a timeout.
//
// --profile DIR runs shimd's packages inside bench/shimdprof (cmd/shimd's
// wiring plus a profiler) and writes DIR/run<i>-<target>-<phase>.pprof, a
// CPU profile of each measured phase, and <target>-heap.pprof at the end;
// read them with `go tool pprof -top DIR/run1-sqlite-create.pprof`.
// --shimd-rev HEAD benchmarks the last commit instead of the working tree.
//
// --etcd-tool runs etcd's own benchmark tool instead (put, range
// linearizable and serializable, txn-put, watch-latency; the --tool-* flags
// set its load) against etcd and shimd, with the same side-by-side servers,
// turns and same-run ratios; see etcdtool.go.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/shimd/shimd/conformance/harness"
)

type config struct {
	keys          int
	vmin, vmax    int
	clients       int
	conns         int
	history       int
	runs          int
	targets       []string
	listReps      int
	countReps     int
	watchPuts     int
	watchRate     float64
	opTimeout     time.Duration
	phaseTimeout  time.Duration
	targetTimeout time.Duration
	profileDir    string
	jsonOut       string
	pgVacuumFull  bool
	shimdBin      string
	shimdSrc      string
	shimdRev      string
	shimdDesc     string
	shimdArgs     []string
	etcdBin       string
	kineBin       string
	kineDesc      string
	workDir       string
	seed          int64
	order         string
	settle        time.Duration
	slices        int
	tool          toolConfig // --etcd-tool: etcd's benchmark tool (etcdtool.go)
}

// allTargets in table order: etcd first, then shimd, then kine (the
// incumbent shim, for the goals stated relative to it).
var allTargets = []string{"etcd", "sqlite", "postgres", "mariadb", "kine-sqlite", "kine-postgres", "kine-mariadb", "etcd-auth", "sqlite-auth", "postgres-auth", "mariadb-auth"}

// defaultTargets is what --targets defaults to (make bench). kine-postgres
// is in since the PostgreSQL write goals are stated relative to kine, and
// it adds about a minute (estimated from small runs); kine-sqlite and
// kine-mariadb would take the run past 6 minutes.
var defaultTargets = []string{"etcd", "sqlite", "postgres", "mariadb", "kine-postgres"}

// toolTargets is the default of --targets with --etcd-tool: etcd and shimd
// only (the comparison; kine and auth are not its targets).
var toolTargets = []string{"etcd", "sqlite", "postgres", "mariadb"}

func main() {
	var cfg config
	var valueSize, targets, shimdArgs string
	flag.IntVar(&cfg.keys, "keys", 10000, "number of keys N")
	flag.StringVar(&valueSize, "value-size", "1024-2048", "value size in bytes: V, or MIN-MAX for sizes drawn uniformly (random bytes)")
	flag.IntVar(&cfg.clients, "clients", 16, "concurrent clients C")
	flag.IntVar(&cfg.conns, "conns", 1, "gRPC connections the clients share (kube-apiserver multiplexes its requests over one)")
	flag.IntVar(&cfg.history, "history", 1, "history depth H: writes per key before the measured phases (1 = the create only; H−1 update rounds follow it)")
	flag.IntVar(&cfg.runs, "runs", 1, "repeat everything this many times and report medians")
	flag.StringVar(&targets, "targets", strings.Join(defaultTargets, ","), "comma-separated subset of "+strings.Join(allTargets, ","))
	flag.IntVar(&cfg.listReps, "list-reps", 10, "full paginated lists in the list phase")
	flag.IntVar(&cfg.countReps, "count-reps", 100, "count_only requests in the count phase")
	flag.IntVar(&cfg.watchPuts, "watch-puts", 500, "puts in the watch phase")
	flag.Float64Var(&cfg.watchRate, "watch-rate", 100, "puts per second in the watch phase")
	flag.DurationVar(&cfg.opTimeout, "op-timeout", 30*time.Second, "timeout of one request")
	flag.DurationVar(&cfg.phaseTimeout, "phase-timeout", 5*time.Minute, "timeout of one phase (each history round is a phase)")
	flag.DurationVar(&cfg.targetTimeout, "target-timeout", 30*time.Minute, "timeout of one target's whole run")
	flag.StringVar(&cfg.profileDir, "profile", "", "write a CPU profile of shimd per phase into this directory (runs shimd's packages in bench/shimdprof instead of cmd/shimd)")
	flag.StringVar(&cfg.jsonOut, "json", "", "also write every run's raw numbers to this file")
	flag.BoolVar(&cfg.pgVacuumFull, "postgres-vacuum-full", true, "start shimd on PostgreSQL with --postgres-vacuum-full, so that Defragment rewrites the tables as etcd's defrag rewrites its file (plain VACUUM returns almost nothing to the filesystem)")
	flag.StringVar(&cfg.shimdBin, "shimd-bin", os.Getenv("SHIMD_BIN"), "shimd binary to test (default: build ../cmd/shimd)")
	flag.StringVar(&cfg.shimdSrc, "shimd-src", "", "build shimd from this source tree (default: the repository, ..)")
	flag.StringVar(&cfg.shimdRev, "shimd-rev", "", "build shimd from this git revision of the repository (git archive into a temp dir), e.g. HEAD to leave uncommitted changes out")
	flag.StringVar(&shimdArgs, "shimd-args", "", "extra flags for every shimd, space-separated (e.g. --value-cache-size=0)")
	flag.StringVar(&cfg.etcdBin, "etcd-bin", "", "etcd binary (default: build ./bench/etcd, etcd 3.7 of this module)")
	flag.StringVar(&cfg.kineBin, "kine-bin", "", "kine binary for the kine-* targets (default: build "+kineModule+"@"+kineVersion+" from the module proxy in a temp dir)")
	flag.StringVar(&cfg.workDir, "work-dir", "", "where data directories go (default: the system temp dir; must be a real disk, not tmpfs)")
	flag.StringVar(&cfg.order, "order", "phase", "phase: all targets run at once and each phase runs on every target in turn, so that the same-run ratios compare phases a few seconds apart (fairer on a busy machine); target: one target after the other, each alone on the machine")
	flag.DurationVar(&cfg.settle, "settle", 300*time.Millisecond, "pause before each turn of each target (lets the previous one's background work, e.g. a database checkpoint, fade)")
	flag.IntVar(&cfg.slices, "slices", 5, "with --order phase, the targets take turns at each phase in this many parts (keys or repetitions split evenly; watch, recreate and compact are not split); throughput is the keys over the parts' summed time")
	flag.Int64Var(&cfg.seed, "seed", 1, "seed of the values and sizes")
	cfg.tool.flags()
	flag.Parse()
	if cfg.tool.enabled && !flagSet("targets") {
		targets = strings.Join(toolTargets, ",")
	}

	cfg.shimdArgs = strings.Fields(shimdArgs)
	var err error
	if cfg.vmin, cfg.vmax, err = parseSize(valueSize); err != nil {
		fatalf("--value-size: %v", err)
	}
	if cfg.order != "phase" && cfg.order != "target" {
		fatalf("--order: want phase or target")
	}
	if cfg.slices < 1 || cfg.order == "target" {
		cfg.slices = 1
	}
	if cfg.keys < 1 || cfg.clients < 1 || cfg.conns < 1 || cfg.history < 1 || cfg.runs < 1 || cfg.listReps < 1 || cfg.countReps < 1 || cfg.watchPuts < 1 || cfg.watchRate <= 0 {
		fatalf("--keys, --clients, --conns, --history, --runs and the repetition counts must be positive")
	}
	seen := map[string]bool{}
	for _, t := range strings.Split(targets, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		kine := strings.HasPrefix(t, "kine-")
		t = strings.TrimPrefix(t, "kine-")
		if t == "pg" || t == "postgresql" {
			t = "postgres"
		}
		if t == "mysql" {
			t = "mariadb"
		}
		if kine {
			t = "kine-" + t
		}
		if !contains(allTargets, t) {
			fatalf("--targets: unknown target %q (want %s)", t, strings.Join(allTargets, ","))
		}
		seen[t] = true
	}
	for _, t := range allTargets { // always in this order, etcd first
		if seen[t] {
			cfg.targets = append(cfg.targets, t)
		}
	}
	if len(cfg.targets) == 0 {
		fatalf("--targets: empty")
	}
	do := run
	if cfg.tool.enabled {
		do = runTool
	}
	if err := do(&cfg); err != nil {
		fatalf("%v", err)
	}
}

// flagSet reports whether the command line set the flag.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func run(cfg *config) error {
	confDir, err := conformanceDir()
	if err != nil {
		return err
	}
	binDir, err := os.MkdirTemp("", "shimd-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	if cfg.workDir == "" {
		cfg.workDir = os.TempDir()
	}
	if cfg.profileDir != "" {
		if cfg.profileDir, err = filepath.Abs(cfg.profileDir); err != nil {
			return err
		}
		if err := os.MkdirAll(cfg.profileDir, 0o755); err != nil {
			return err
		}
	}

	// Binaries.
	if (contains(cfg.targets, "etcd") || contains(cfg.targets, "etcd-auth")) && cfg.etcdBin == "" {
		logf("building bench/etcd (etcd 3.7 server)")
		if cfg.etcdBin, err = harness.Build(confDir, "./bench/etcd", binDir, "etcd"); err != nil {
			return err
		}
	}
	needShimd, needKine := false, false
	for _, t := range cfg.targets {
		needShimd = needShimd || isShimd(t)
		needKine = needKine || isKine(t)
	}
	if needShimd && (cfg.profileDir != "" || cfg.shimdBin == "") {
		if cfg.shimdBin, err = buildShimd(cfg, confDir, binDir); err != nil {
			return err
		}
	}
	if needKine {
		if cfg.kineBin == "" {
			if cfg.kineBin, err = buildKine(binDir); err != nil {
				return err
			}
		}
		cfg.kineDesc = describeKine(cfg.kineBin)
	}

	backends, targets, notices := availableTargets(cfg.targets)
	if len(targets) == 0 {
		return errors.New("no target left to run")
	}

	rep := &report{cfg: cfg, targets: targets, notices: notices, start: time.Now(), machine: machine()}
	vals := newValues(cfg)
	for r := 0; r < cfg.runs; r++ {
		runRes := map[string]*result{}
		steps := cfg.steps()
		if cfg.order == "target" {
			for _, t := range targets {
				logf("run %d/%d: %s (load %s)", r+1, cfg.runs, t, loadavg())
				s := startTarget(cfg, t, backends[backendOf(t)], r, vals)
				for _, st := range steps {
					rep.sampleLoad(r)
					s.step(st, 0, 1)
				}
				runRes[t] = s.finish()
			}
		} else {
			servers := startTargets(cfg, targets, backends, r, vals)
			for _, st := range steps {
				rep.sampleLoad(r)
				logf("run %d/%d: %s (load %s)", r+1, cfg.runs, st.name, loadavg())
				parts := 1
				if st.sliced {
					parts = cfg.slices
				}
				// The targets take turns, each part starting with the
				// next one, so that a burst of background load or one
				// server's aftermath (a checkpoint) spreads over all.
				for part := 0; part < parts; part++ {
					for k := range servers {
						s := servers[(part+k)%len(servers)]
						time.Sleep(cfg.settle)
						s.step(st, part, parts)
					}
				}
			}
			for _, s := range servers {
				runRes[s.name] = s.finish()
			}
		}
		rep.sampleLoad(r)
		rep.runs = append(rep.runs, runRes)
	}
	rep.end = time.Now()
	rep.print(os.Stdout)
	if cfg.jsonOut != "" {
		b, _ := json.MarshalIndent(rep.jsonDoc(), "", "  ")
		if err := os.WriteFile(cfg.jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// availableTargets finds the database server of each target and leaves out,
// with a notice on stderr, those whose server is not configured or does
// not answer (a kine target uses its shimd twin's).
func availableTargets(want []string) (map[string]harness.Backend, []string, []string) {
	backends := map[string]harness.Backend{"etcd": {Name: "etcd", Kind: harness.KindSQLite}, "sqlite": {Name: "sqlite", Kind: harness.KindSQLite}}
	var notices []string
	shared := false
	for _, t := range want {
		shared = shared || backendOf(t) == "postgres" || backendOf(t) == "mariadb"
	}
	if shared {
		for _, b := range harness.Backends() {
			switch {
			case b.Kind == harness.KindPostgres && backends["postgres"].Name == "":
				backends["postgres"] = b
			case b.Kind == harness.KindMySQL && backends["mariadb"].Name == "":
				backends["mariadb"] = b
			}
		}
	}
	var targets []string
	for _, t := range want {
		b, ok := backends[backendOf(t)]
		switch {
		case !ok:
			notices = append(notices, fmt.Sprintf("%s: not configured (%s / %s / %s): skipped", t, harness.EnvPostgres, harness.EnvMySQL, harness.EnvBackends))
		case b.Unavailable != nil:
			notices = append(notices, fmt.Sprintf("%s: %v: skipped", t, b.Unavailable))
		default:
			targets = append(targets, t)
		}
	}
	for _, n := range notices {
		fmt.Fprintln(os.Stderr, "bench: NOTICE:", n)
	}
	return backends, targets, notices
}

// result is one target's numbers from one run.
type result struct {
	Target  string             `json:"target"`
	Metrics map[string]float64 `json:"metrics"`
	Err     string             `json:"error,omitempty"`
	LoadIn  string             `json:"load_before"`
	LoadOut string             `json:"load_after"`
	Wall    float64            `json:"seconds"`
	// Failed holds the phases that failed without ending the run (kine
	// targets only), with their errors.
	Failed map[string]string `json:"failed_phases,omitempty"`
}

// server is one target's running server and its clients.
type server struct {
	name    string
	res     *result
	start   time.Time
	ctx     context.Context // ends at the target's timeout
	cancel  context.CancelFunc
	p       *harness.Process
	l       *load
	failed  bool
	cleanup []func() // in reverse order
}

// startTarget creates the target's store and data dir, starts its server
// and connects the clients.
// startTargets starts every target for run r, side by side; one that fails
// to start is reported and stays in the list, marked failed.
func startTargets(cfg *config, targets []string, backends map[string]harness.Backend, r int, vals *values) []*server {
	var servers []*server
	for _, t := range targets {
		logf("run %d/%d: starting %s", r+1, cfg.runs, t)
		s := startTarget(cfg, t, backends[backendOf(t)], r, vals)
		if s.failed {
			fmt.Fprintf(os.Stderr, "bench: %s: %s\n", t, s.res.Err)
		}
		servers = append(servers, s)
	}
	return servers
}

func startTarget(cfg *config, name string, b harness.Backend, runIdx int, vals *values) *server {
	s := &server{name: name, res: &result{Target: name, Metrics: map[string]float64{}, LoadIn: loadavg()}, start: time.Now()}
	s.ctx, s.cancel = context.WithTimeout(context.Background(), cfg.targetTimeout)
	s.cleanup = append(s.cleanup, s.cancel)
	fail := func(format string, args ...any) *server {
		s.res.Err = fmt.Sprintf(format, args...)
		s.failed = true
		return s
	}
	dataDir, err := os.MkdirTemp(cfg.workDir, "shimd-bench-"+name+"-")
	if err != nil {
		return fail("%v", err)
	}
	s.cleanup = append(s.cleanup, func() { os.RemoveAll(dataDir) })
	store, err := harness.NewStore(b)
	if err != nil {
		return fail("create store: %v", err)
	}
	s.cleanup = append(s.cleanup, func() {
		if err := store.Drop(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: drop store %s: %v\n", name, store.Name, err)
		}
	})

	p := &harness.Process{Bin: cfg.shimdBin, DataDir: dataDir, Backend: store.Backend}
	s.p = p
	var prof *profiler
	switch {
	case strings.TrimSuffix(name, authSuffix) == "etcd":
		p.Bin = cfg.etcdBin
	case isKine(name):
		args, err := kineArgs(store.Backend)
		if err != nil {
			return fail("%v", err)
		}
		p.Bin, p.Args = cfg.kineBin, args
		// kine's SQLite default is ./db/state.db, relative to its working
		// directory.
		p.Dir = dataDir
	default:
		p.ExtraArgs = append(p.ExtraArgs, cfg.shimdArgs...)
		if b.Kind == harness.KindPostgres && cfg.pgVacuumFull {
			p.ExtraArgs = append(p.ExtraArgs, "--postgres-vacuum-full")
		}
		if cfg.profileDir != "" {
			port, err := harness.FreePort()
			if err != nil {
				return fail("%v", err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			p.ExtraArgs = append(p.ExtraArgs, "--pprof-addr", addr)
			prof = &profiler{addr: addr, dir: cfg.profileDir, prefix: fmt.Sprintf("run%d-%s-", runIdx+1, name)}
		}
	}
	if err := p.Start(); err != nil {
		return fail("start: %v", err)
	}
	s.cleanup = append(s.cleanup, func() {
		if err := p.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: stop: %v\n%s\n", name, err, tail(p.Output(), 2000))
		}
	})
	// A stuck target: kill it when the target's time is up, which fails
	// every outstanding request.
	go func() {
		select {
		case <-s.ctx.Done():
			if errors.Is(s.ctx.Err(), context.DeadlineExceeded) {
				p.Kill()
			}
		case <-p.Exited():
		}
	}()

	user, password := "", ""
	if strings.HasSuffix(name, authSuffix) {
		if err := enableAuth(p.Endpoint); err != nil {
			return fail("enable auth: %v", err)
		}
		user, password = "root", "bench"
	}
	clis := make([]*clientv3.Client, cfg.conns+1) // the last one carries the watch
	for i := range clis {
		clis[i], err = clientv3.New(clientv3.Config{
			Endpoints:   []string{p.Endpoint},
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
			Username:    user,
			Password:    password,
		})
		if err != nil {
			return fail("client: %v", err)
		}
		s.cleanup = append(s.cleanup, func() { clis[i].Close() })
	}
	s.l = &load{cfg: cfg, clis: clis[:cfg.conns], wcli: clis[cfg.conns], endpoint: p.Endpoint, pid: p.Pid(), vals: vals, m: s.res.Metrics, prof: prof, dataDir: dataDir, kind: kindOf(name), name: name, kine: isKine(name)}
	s.l.rev = make([]int64, cfg.keys)
	return s
}

// step runs one part of a phase on the target. A failure ends the target's
// run, except on kine, which lacks parts of the API: there the phase is
// recorded as failed and the next one runs (unless the server is gone or
// the target's time is up).
func (s *server) step(st step, part, parts int) {
	if s.failed || s.res.Failed[st.name] != "" {
		return
	}
	if err := s.l.step(s.ctx, st, part, parts); err != nil {
		msg := err.Error()
		if s.ctx.Err() != nil {
			msg += fmt.Sprintf(" (target timeout %v)", s.l.cfg.targetTimeout)
		}
		exited := false
		select {
		case <-s.p.Exited():
			exited = true
			msg += fmt.Sprintf("; server exited: %v\n%s", s.p.ExitErr(), tail(s.p.Output(), 2000))
		default:
		}
		if isKine(s.name) && !exited && s.ctx.Err() == nil {
			if s.res.Failed == nil {
				s.res.Failed = map[string]string{}
			}
			s.res.Failed[st.name] = msg
			fmt.Fprintf(os.Stderr, "bench: %s: %s (phase recorded as failed; the run goes on)\n", s.name, msg)
			return
		}
		s.failed = true
		s.res.Err = msg
		fmt.Fprintf(os.Stderr, "bench: %s: %s\n", s.name, s.res.Err)
	}
}

// finish records the peak RSS, stops the server and removes its store.
func (s *server) finish() *result {
	if s.l != nil {
		s.l.prof.heap()
	}
	if s.p != nil && s.p.Pid() != 0 {
		if hwm, err := vmHWM(s.p.Pid()); err == nil {
			s.res.Metrics["rss"] = float64(hwm)
		}
	}
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		s.cleanup[i]()
	}
	s.res.LoadOut = loadavg()
	s.res.Wall = time.Since(s.start).Seconds()
	return s.res
}

func kindOf(target string) string {
	switch target = strings.TrimSuffix(target, authSuffix); target {
	case "etcd", "sqlite":
		return target
	case "kine-sqlite":
		return "sqlite" // its files are in the data dir too (db/state.db)
	}
	return "server"
}

// isShimd tells shimd's targets from etcd and kine.
func isShimd(target string) bool {
	return strings.TrimSuffix(target, authSuffix) != "etcd" && !isKine(target)
}

// authSuffix marks a target run with auth on: root with the root role, auth
// enabled, every client authenticated as root (a simple token on every
// request). Compare it with the same target without the suffix.
const authSuffix = "-auth"

// backendOf is the backend a target's store is on.
func backendOf(target string) string {
	return strings.TrimSuffix(strings.TrimPrefix(target, "kine-"), authSuffix)
}

// enableAuth adds root and enables auth on the server at endpoint.
func enableAuth(endpoint string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, "root", "bench"); err != nil {
		return err
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		return err
	}
	_, err = cli.AuthEnable(ctx)
	return err
}

// profiler switches shimdprof's CPU profile on and off around a phase.
type profiler struct {
	addr, dir, prefix string
}

func (pr *profiler) start(phase string) {
	if pr == nil {
		return
	}
	path := filepath.Join(pr.dir, pr.prefix+phase+".pprof")
	pr.get("/prof/start?path=" + path)
}

func (pr *profiler) stop() {
	if pr == nil {
		return
	}
	pr.get("/prof/stop")
}

// heap saves the server's heap profile (at the end of the run: for peak
// RSS).
func (pr *profiler) heap() {
	if pr == nil {
		return
	}
	f, err := os.Create(filepath.Join(pr.dir, pr.prefix+"heap.pprof"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: profiler: %v\n", err)
		return
	}
	defer f.Close()
	pr.getTo("/debug/pprof/heap", f)
}

func (pr *profiler) get(path string) { pr.getTo(path, io.Discard) }

func (pr *profiler) getTo(path string, w io.Writer) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + pr.addr + path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: profiler: %v\n", err)
		return
	}
	io.Copy(w, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		fmt.Fprintf(os.Stderr, "bench: profiler %s: %s\n", path, resp.Status)
	}
}

// buildShimd builds cmd/shimd, or bench/shimdprof for --profile, from the
// repository, --shimd-src or --shimd-rev.
func buildShimd(cfg *config, confDir, binDir string) (string, error) {
	repo := filepath.Join(confDir, "..")
	src := repo
	if cfg.shimdSrc != "" {
		src = cfg.shimdSrc
	}
	if cfg.shimdRev != "" {
		src = filepath.Join(binDir, "src")
		if err := os.MkdirAll(src, 0o755); err != nil {
			return "", err
		}
		logf("exporting shimd at %s", cfg.shimdRev)
		cmd := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", repo, cfg.shimdRev, src)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("git archive %s: %v\n%s", cfg.shimdRev, err, out)
		}
	}
	src, err := filepath.Abs(src)
	if err != nil {
		return "", err
	}
	cfg.shimdDesc = describe(repo, cfg.shimdRev, cfg.shimdSrc)
	if cfg.profileDir == "" {
		logf("building cmd/shimd from %s", src)
		return harness.Build(src, "./cmd/shimd", binDir, "shimd")
	}
	logf("building bench/shimdprof (shimd's packages from %s, with a per-phase CPU profiler)", src)
	// The conformance module requires shimd through replace => ../; point
	// a copy of go.mod at src instead when it is another tree.
	args := []string{"build", "-o", filepath.Join(binDir, "shimdprof")}
	if abs, _ := filepath.Abs(repo); abs != src {
		modDir := filepath.Join(binDir, "mod")
		if err := os.MkdirAll(modDir, 0o755); err != nil {
			return "", err
		}
		gomod, err := os.ReadFile(filepath.Join(confDir, "go.mod"))
		if err != nil {
			return "", err
		}
		gomod = []byte(strings.ReplaceAll(string(gomod), "github.com/shimd/shimd => ../", "github.com/shimd/shimd => "+src))
		gosum, err := os.ReadFile(filepath.Join(confDir, "go.sum"))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(modDir, "go.mod"), gomod, 0o644); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(modDir, "go.sum"), gosum, 0o644); err != nil {
			return "", err
		}
		args = append(args, "-modfile", filepath.Join(modDir, "go.mod"))
	}
	cmd := exec.Command("go", append(args, "./bench/shimdprof")...)
	cmd.Dir = confDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build bench/shimdprof: %v\n%s", err, out)
	}
	return filepath.Join(binDir, "shimdprof"), nil
}

// describe names the shimd version under test: the commit, and whether the
// working tree had uncommitted changes outside conformance/.
func describe(repo, rev, src string) string {
	git := func(args ...string) string {
		out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	switch {
	case src != "":
		return "source tree " + src
	case rev != "":
		return fmt.Sprintf("commit %s (--shimd-rev %s)", git("rev-parse", "--short=10", rev+"^{commit}"), rev)
	}
	d := "working tree at commit " + git("rev-parse", "--short=10", "HEAD")
	if git("status", "--porcelain", "--", ".", ":(exclude)conformance") != "" {
		d += " with uncommitted changes"
	}
	return d
}

// conformanceDir finds the conformance module: the working directory or its
// conformance/ subdirectory.
func conformanceDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for _, d := range []string{wd, filepath.Join(wd, "conformance")} {
		if _, err := os.Stat(filepath.Join(d, "bench", "etcd", "main.go")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("run from the conformance module (cd conformance && go run ./bench) or the repository root")
}

func parseSize(s string) (int, int, error) {
	lo, hi, rng := strings.Cut(s, "-")
	a, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return 0, 0, err
	}
	b := a
	if rng {
		if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return 0, 0, err
		}
	}
	if a < 0 || b < a {
		return 0, 0, fmt.Errorf("bad range %q", s)
	}
	return a, b, nil
}

// vmHWM is the process's peak resident set size in bytes.
func vmHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, errors.New("no VmHWM")
}

// cpuTime is the process's user+system CPU time.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	// After the command: state(0) ... utime(11) stime(12), in clock ticks
	// (USER_HZ, 100 on Linux).
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machine() string {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s/%s, %s", runtime.NumCPU(), model, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
