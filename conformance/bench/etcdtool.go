package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// --etcd-tool runs etcd's own benchmark tool (tools/benchmark of etcd's
// repository, the load etcd publishes its figures with) instead of the
// Kubernetes-like load, against the same servers: etcd and shimd on each
// database, each a fresh process of this run, side by side, the targets
// taking turns at each operation. It prints the tool's summaries as one
// table of same-run ratios to etcd.
//
// The tool is built from the conformance module, which requires
// go.etcd.io/etcd/v3 for it (tools.go): that module's replace directives
// only apply in etcd's own tree, so here its client libraries resolve to
// the conformance module's etcd release. The module proxy serves
// go.etcd.io/etcd/v3 v3.7.1 but refuses v3.7.2–v3.7.4 ("403 Forbidden: This
// module version is not available"), so the tool's own code is v3.7.1's
// while the client, api and report packages it links are v3.7.3's, those of
// the reference etcd.
const toolPkg = "go.etcd.io/etcd/v3/tools/benchmark"

// toolConfig is the tool's load; each total is configurable so that the
// whole run stays within a few minutes on 2 cores.
type toolConfig struct {
	enabled           bool
	bin               string
	ops               string
	total             int
	clients, conns    int
	keySize, valSize  int
	watchPuts         int
	watchRate         int
	watchStreams      int
	watchersPerStream int
}

func (tc *toolConfig) flags() {
	flag.BoolVar(&tc.enabled, "etcd-tool", false, "run etcd's benchmark tool ("+toolPkg+") instead of the Kubernetes-like load; the --tool-* flags set its load; default targets etcd,sqlite,postgres,mariadb (kine and -auth targets are skipped)")
	flag.StringVar(&tc.bin, "tool-bin", "", "etcd's benchmark binary (default: build "+toolPkg+" from this module)")
	flag.StringVar(&tc.ops, "tool-ops", strings.Join(toolOpNames(), ","), "operations to run, comma-separated")
	flag.IntVar(&tc.total, "tool-total", 20000, "requests of each put, range and txn-put run")
	flag.IntVar(&tc.clients, "tool-clients", 64, "gRPC clients of put, range and txn-put")
	flag.IntVar(&tc.conns, "tool-conns", 8, "gRPC connections those clients share")
	flag.IntVar(&tc.keySize, "tool-key-size", 8, "key size of put and txn-put")
	flag.IntVar(&tc.valSize, "tool-val-size", 256, "value size of put and txn-put (and of the key range reads)")
	flag.IntVar(&tc.watchPuts, "tool-watch-puts", 1000, "watch-latency: puts (--put-total)")
	flag.IntVar(&tc.watchRate, "tool-watch-rate", 100, "watch-latency: puts per second (--put-rate)")
	flag.IntVar(&tc.watchStreams, "tool-watch-streams", 10, "watch-latency: watch streams (--streams)")
	flag.IntVar(&tc.watchersPerStream, "tool-watchers-per-stream", 10, "watch-latency: watchers per stream (--watchers-per-stream)")
}

// rangeKey is the key the range runs read, as in etcd's documented range
// benchmark (one key, written beforehand; the put run's keys are binary and
// cannot be passed on a command line).
const rangeKey = "foo"

// toolOp is one invocation of the tool per target.
type toolOp struct {
	name string
	args func(tc *toolConfig) []string
	// summary marks the summary that is measured when the tool prints more
	// than one (watch-latency: its puts', then its watch events').
	summary string
	rate    bool // requests/sec is meaningful (not for watch events)
}

var toolOps = []toolOp{
	{name: "put", rate: true, args: func(tc *toolConfig) []string {
		// Random keys over a space as large as the run, so that it both
		// creates and overwrites keys and leaves about 63% of them.
		return append(tc.load(), "put", "--total", itoa(tc.total), "--key-size", itoa(tc.keySize), "--val-size", itoa(tc.valSize),
			"--sequential-keys=false", "--key-space-size", itoa(tc.total))
	}},
	{name: "range-l", rate: true, args: func(tc *toolConfig) []string {
		return append(tc.load(), "range", rangeKey, "--consistency", "l", "--total", itoa(tc.total))
	}},
	{name: "range-s", rate: true, args: func(tc *toolConfig) []string {
		return append(tc.load(), "range", rangeKey, "--consistency", "s", "--total", itoa(tc.total))
	}},
	{name: "txn-put", rate: true, args: func(tc *toolConfig) []string {
		return append(tc.load(), "txn-put", "--total", itoa(tc.total), "--key-size", itoa(tc.keySize), "--val-size", itoa(tc.valSize),
			"--key-space-size", itoa(tc.total))
	}},
	{name: "watch-latency", summary: "Watch events summary:", args: func(tc *toolConfig) []string {
		// The tool's own defaults for the connection (one client): its
		// streams share it, as in etcd's examples.
		return []string{"watch-latency", "--put-total", itoa(tc.watchPuts), "--put-rate", itoa(tc.watchRate),
			"--streams", itoa(tc.watchStreams), "--watchers-per-stream", itoa(tc.watchersPerStream)}
	}},
}

var toolLabels = map[string]string{
	"put":           "put",
	"range-l":       "range (linearizable)",
	"range-s":       "range (serializable)",
	"txn-put":       "txn-put",
	"watch-latency": "watch-latency (put→event)",
}

func toolOpNames() []string {
	var names []string
	for _, op := range toolOps {
		names = append(names, op.name)
	}
	return names
}

func (tc *toolConfig) load() []string {
	return []string{"--clients", itoa(tc.clients), "--conns", itoa(tc.conns)}
}

func itoa(n int) string { return strconv.Itoa(n) }

// runTool is main's --etcd-tool mode.
func runTool(cfg *config) error {
	tc := &cfg.tool
	if tc.total < 1 || tc.clients < 1 || tc.conns < 1 || tc.keySize < 1 || tc.valSize < 0 || tc.watchPuts < 1 || tc.watchRate < 1 || tc.watchStreams < 1 || tc.watchersPerStream < 1 {
		return errors.New("the --tool-* counts must be positive")
	}
	var ops []toolOp
	for _, name := range strings.Split(tc.ops, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, op := range toolOps {
			if op.name == name {
				ops, found = append(ops, op), true
			}
		}
		if !found && name != "" {
			return fmt.Errorf("--tool-ops: unknown operation %q (want %s)", name, strings.Join(toolOpNames(), ","))
		}
	}
	if len(ops) == 0 {
		return errors.New("--tool-ops: empty")
	}

	// The tool speaks etcd's plain API: kine's Put of an existing key is
	// not etcd's, and auth would need the tool's --user on every target.
	var want, notices []string
	for _, t := range cfg.targets {
		if isKine(t) || strings.HasSuffix(t, authSuffix) {
			notices = append(notices, t+": not a target of --etcd-tool: skipped")
			continue
		}
		want = append(want, t)
	}
	for _, n := range notices {
		fmt.Fprintln(os.Stderr, "bench: NOTICE:", n)
	}
	backends, targets, more := availableTargets(want)
	notices = append(notices, more...)
	if len(targets) == 0 {
		return errors.New("no target left to run")
	}

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
	if contains(targets, "etcd") && cfg.etcdBin == "" {
		logf("building bench/etcd (etcd 3.7 server)")
		if cfg.etcdBin, err = harness.Build(confDir, "./bench/etcd", binDir, "etcd"); err != nil {
			return err
		}
	}
	needShimd := false
	for _, t := range targets {
		needShimd = needShimd || isShimd(t)
	}
	if needShimd && (cfg.profileDir != "" || cfg.shimdBin == "") {
		if cfg.shimdBin, err = buildShimd(cfg, confDir, binDir); err != nil {
			return err
		}
	}
	if tc.bin == "" {
		logf("building %s", toolPkg)
		if tc.bin, err = harness.Build(confDir, toolPkg, binDir, "benchmark"); err != nil {
			return err
		}
	}

	rep := &report{cfg: cfg, targets: targets, notices: notices, start: time.Now(), machine: machine()}
	for r := 0; r < cfg.runs; r++ {
		runRes := map[string]*result{}
		servers := startTargets(cfg, targets, backends, r, nil)
		for i, op := range ops {
			rep.sampleLoad(r)
			logf("run %d/%d: %s (load %s)", r+1, cfg.runs, op.name, loadavg())
			// Each operation starts with the next target, so that no
			// target always runs right after the same one.
			for k := range servers {
				s := servers[(i+k)%len(servers)]
				if s.failed {
					continue
				}
				time.Sleep(cfg.settle)
				if err := s.toolStep(tc, op); err != nil {
					s.failed = true
					s.res.Err = fmt.Sprintf("%s: %v", op.name, err)
					fmt.Fprintf(os.Stderr, "bench: %s: %s\n", s.name, s.res.Err)
				}
			}
		}
		for _, s := range servers {
			runRes[s.name] = s.finish()
		}
		rep.sampleLoad(r)
		rep.runs = append(rep.runs, runRes)
	}
	rep.end = time.Now()
	rep.printTool(os.Stdout, ops)
	return nil
}

// toolStep runs one operation of the tool on the server and records its
// summary: <op>.rps, and <op>.avg, .p50 and .p99 in milliseconds.
func (s *server) toolStep(tc *toolConfig, op toolOp) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.l.cfg.phaseTimeout)
	defer cancel()
	if strings.HasPrefix(op.name, "range") {
		if _, err := s.l.clis[0].Put(ctx, rangeKey, strings.Repeat("v", tc.valSize)); err != nil {
			return fmt.Errorf("put %s: %v", rangeKey, err)
		}
	}
	args := append([]string{"--endpoints", s.p.Endpoint, "--precise"}, op.args(tc)...)
	cmd := exec.CommandContext(ctx, tc.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr // stderr: the progress bar, errors
	s.l.prof.start("tool-" + op.name)
	err := cmd.Run()
	s.l.prof.stop()
	if err != nil {
		return fmt.Errorf("benchmark %s: %v\n%s%s", strings.Join(args, " "), err, tail(stdout.String(), 1000), tail(stderr.String(), 1000))
	}
	sum, err := parseToolSummary(stdout.String(), op.summary)
	if err != nil {
		return fmt.Errorf("benchmark %s: %v\n%s", strings.Join(args, " "), err, tail(stdout.String(), 2000))
	}
	if sum.errors > 0 {
		return fmt.Errorf("%d failed requests: %s", sum.errors, sum.errorText)
	}
	m := s.res.Metrics
	if op.rate {
		m[op.name+".rps"] = sum.rps
	}
	for id, v := range map[string]float64{"avg": sum.avg, "p50": sum.p50, "p99": sum.p99} {
		if v > 0 {
			m[op.name+"."+id] = v * 1000
		}
	}
	return nil
}

// toolSummary is what the tool's report (go.etcd.io/etcd/pkg/v3/report)
// prints: "Requests/sec:", "Average: <s> secs." and the "Latency
// distribution:" lines "50% in <s> secs."; then an optional "Error
// distribution:" of "[count]\terror" lines.
type toolSummary struct {
	rps, avg, p50, p99 float64 // seconds but rps
	errors             int
	errorText          string
}

func parseToolSummary(out, marker string) (toolSummary, error) {
	var sum toolSummary
	if marker != "" {
		i := strings.Index(out, marker)
		if i < 0 {
			return sum, fmt.Errorf("no %q in the output", marker)
		}
		out = out[i+len(marker):]
	}
	i := strings.Index(out, "Summary:")
	if i < 0 {
		if j := strings.Index(out, "Error distribution:"); j >= 0 {
			out = out[j:] // every request failed: no summary, only errors
		} else {
			return sum, errors.New("no summary in the output")
		}
	} else {
		out = out[i:]
	}
	secs := func(s string) (float64, error) {
		return strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "secs.")), 64)
	}
	inErrors := false
	var err error
	for n, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if n > 0 && (line == "Summary:" || strings.HasSuffix(line, " summary:")) {
			break // the next report's
		}
		switch {
		case strings.HasPrefix(line, "Requests/sec:"):
			sum.rps, err = strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, "Requests/sec:")), 64)
		case strings.HasPrefix(line, "Average:"):
			sum.avg, err = secs(strings.TrimPrefix(line, "Average:"))
		case strings.HasPrefix(line, "50% in "):
			sum.p50, err = secs(strings.TrimPrefix(line, "50% in "))
		case strings.HasPrefix(line, "99% in "):
			sum.p99, err = secs(strings.TrimPrefix(line, "99% in "))
		case line == "Error distribution:":
			inErrors = true
		case inErrors && strings.HasPrefix(line, "["):
			n, rest, _ := strings.Cut(strings.TrimPrefix(line, "["), "]")
			c, _ := strconv.Atoi(n)
			sum.errors += c
			if sum.errorText == "" {
				sum.errorText = strings.TrimSpace(rest)
			}
		}
		if err != nil {
			return sum, fmt.Errorf("%q: %v", line, err)
		}
	}
	if sum.avg == 0 && sum.errors == 0 {
		return sum, errors.New("no average latency in the summary")
	}
	return sum, nil
}

// printTool prints the tool's table: per operation requests/sec and
// average, p50 and p99 latency, each target's median over runs and, in
// brackets, the median of its same-run ratios to etcd.
func (r *report) printTool(w io.Writer, ops []toolOp) {
	cfg, tc := r.cfg, &r.cfg.tool
	fmt.Fprintf(w, "\n## etcd's benchmark tool, %s\n\n", r.start.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s. ", r.machine)
	if cfg.shimdDesc != "" {
		fmt.Fprintf(w, "shimd: %s. ", cfg.shimdDesc)
	}
	if len(cfg.shimdArgs) > 0 {
		fmt.Fprintf(w, "shimd flags: %s. ", strings.Join(cfg.shimdArgs, " "))
	}
	fmt.Fprintf(w, "Tool: %s. ", describeTool(tc.bin))
	fmt.Fprintf(w, "Load: put, range and txn-put %d requests each from %d clients over %d connections, keys %d B, values %d B; "+
		"watch-latency %d puts at %d/s, %d streams × %d watchers; %d run(s)", tc.total, tc.clients, tc.conns, tc.keySize, tc.valSize,
		tc.watchPuts, tc.watchRate, tc.watchStreams, tc.watchersPerStream, cfg.runs)
	if cfg.runs > 1 {
		fmt.Fprint(w, ", medians")
	}
	fmt.Fprintf(w, ". Took %s.\n\n", r.end.Sub(r.start).Round(time.Second))
	for i, l := range r.loads {
		fmt.Fprintf(w, "Run %d: %s.\n", i+1, loadSummary(l))
	}
	fmt.Fprintln(w)

	head := []string{"operation", "metric"}
	head = append(head, r.targets...)
	t := [][]string{head}
	for _, op := range ops {
		metrics := [][2]string{{"avg", "avg ms"}, {"p50", "p50 ms"}, {"p99", "p99 ms"}}
		if op.rate {
			metrics = append([][2]string{{"rps", "requests/s"}}, metrics...)
		}
		for j, m := range metrics {
			label := ""
			if j == 0 {
				label = toolLabels[op.name]
			}
			line := []string{label, m[1]}
			unit := "ms"
			if m[0] == "rps" {
				unit = "ops"
			}
			for _, target := range r.targets {
				id := op.name + "." + m[0]
				v, ok := r.value(target, id)
				switch {
				case !ok:
					line = append(line, "—")
				case target == "etcd":
					line = append(line, format(unit, v))
				default:
					cell := format(unit, v)
					if q, ok := r.ratio(target, id); ok {
						cell += fmt.Sprintf(" (%.2f×)", q)
					}
					line = append(line, cell)
				}
			}
			t = append(t, line)
		}
	}
	writeMarkdown(w, t)
	fmt.Fprintln(w, "\nIn brackets: shimd/etcd from the same run (requests/s: above 1 is faster; latency: below 1 is faster).")
	for _, n := range r.notices {
		fmt.Fprintf(w, "Notice: %s.\n", n)
	}
	for i, run := range r.runs {
		for _, target := range r.targets {
			if res := run[target]; res != nil && res.Err != "" {
				fmt.Fprintf(w, "Run %d, %s failed: %s\n", i+1, target, firstLine(res.Err))
			}
		}
	}
}

// describeTool names the tool's module version and the etcd client it
// links, from its build information.
func describeTool(bin string) string {
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		return bin
	}
	tool, client := "?", "?"
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "mod" && f[1] == "go.etcd.io/etcd/v3":
			tool = f[2]
		case len(f) >= 3 && f[0] == "dep" && f[1] == "go.etcd.io/etcd/client/v3":
			client = f[2]
		}
	}
	return fmt.Sprintf("tools/benchmark of go.etcd.io/etcd/v3 %s, etcd client %s", tool, client)
}
