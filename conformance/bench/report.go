package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

type report struct {
	cfg        *config
	targets    []string
	notices    []string
	start, end time.Time
	machine    string
	runs       []map[string]*result
	loads      [][]string // per run, the load average before each step and at the end
}

func (r *report) sampleLoad(run int) {
	for len(r.loads) <= run {
		r.loads = append(r.loads, nil)
	}
	r.loads[run] = append(r.loads[run], loadavg())
}

// loadSummary describes the 1-minute load average seen during a run.
func loadSummary(samples []string) string {
	if len(samples) == 0 {
		return "?"
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range samples {
		f := strings.Fields(s)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	return fmt.Sprintf("1-min load %.2f–%.2f (at start %s, at end %s)", lo, hi, samples[0], samples[len(samples)-1])
}

// row is one line of the table: a metric of a phase.
type row struct {
	phase, metric, id string
	unit              string // how to print the value
	higher            bool   // higher is better (throughput)
}

var rows = []row{
	{"create", "ops/s", "create.ops", "ops", true},
	{"", "p50 ms", "create.p50", "ms", false},
	{"", "p99 ms", "create.p99", "ms", false},
	{"update", "ops/s", "update.ops", "ops", true},
	{"", "p50 ms", "update.p50", "ms", false},
	{"", "p99 ms", "update.p99", "ms", false},
	{"get", "ops/s", "get.ops", "ops", true},
	{"", "p50 ms", "get.p50", "ms", false},
	{"", "p99 ms", "get.p99", "ms", false},
	{"list (full, paginated)", "p50 ms/list", "list.p50", "ms", false},
	{"", "p99 ms/list", "list.p99", "ms", false},
	{"list (RangeStream)", "p50 ms/list", "stream.p50", "ms", false},
	{"", "p99 ms/list", "stream.p99", "ms", false},
	{"", "RSS growth MiB", "stream.rss", "mib", false},
	{"count", "p50 ms", "count.p50", "ms", false},
	{"", "p99 ms", "count.p99", "ms", false},
	{"watch (put→event)", "p50 ms", "watch.p50", "ms", false},
	{"", "p99 ms", "watch.p99", "ms", false},
	{"delete", "ops/s", "delete.ops", "ops", true},
	{"", "p50 ms", "delete.p50", "ms", false},
	{"", "p99 ms", "delete.p99", "ms", false},
	{"compact (physical)", "ms", "compact.ms", "ms", false},
	{"defrag", "ms", "defrag.ms", "ms", false},
	{"disk", "DbSize B/key before compact", "disk.before", "bytes", false},
	{"", "DbSize B/key after defrag", "disk.after", "bytes", false},
	{"", "db files B/key after defrag", "files.after", "bytes", false},
	{"peak RSS", "MiB (VmHWM)", "rss", "mib", false},
}

var cpuPhases = []string{"create", "update", "get", "list", "stream", "count", "watch", "delete", "compact"}

// goal is one of the project's targets, on the median same-run ratio to etcd.
type goal struct {
	target, id, label string
	le                bool // ratio must be ≤ bound (else ≥)
	bound             float64
	note              string
}

// vsKine is the goal's bound relative to kine on the same database
// (kine-<target>): shimd's writes on PostgreSQL and MariaDB are to reach
// 2× kine's. When that kine target ran it replaces the bound to etcd, which
// assumes kine's ratio (see the note); 0 for the other goals.
func (g goal) vsKine() float64 {
	if (g.target == "postgres" || g.target == "mariadb") && (g.id == "create.ops" || g.id == "update.ops" || g.id == "delete.ops") {
		return 2
	}
	return 0
}

var goals = []goal{
	{"sqlite", "create.ops", "create ops/s", false, 1.0, ""},
	{"sqlite", "update.ops", "update ops/s", false, 1.0, ""},
	{"sqlite", "get.ops", "get ops/s", false, 1.0, ""},
	{"sqlite", "delete.ops", "delete ops/s", false, 1.0, ""},
	{"sqlite", "list.p50", "full LIST time (p50)", true, 1.0, ""},
	{"sqlite", "stream.p50", "RangeStream full list time (p50)", true, 1.0, ""},
	{"sqlite", "count.p50", "count p50", true, 1.0, ""},
	{"sqlite", "watch.p99", "watch p99", true, 1.0, ""},
	{"sqlite", "rss", "peak RSS", true, 0.5, ""},
	{"sqlite", "disk.after", "DbSize/key after compact+defrag", true, 1.0, ""},
	{"postgres", "create.ops", "create ops/s", false, 1.0, "2× kine's ≈0.5×"},
	{"postgres", "update.ops", "update ops/s", false, 1.0, "2× kine's ≈0.5×"},
	{"postgres", "delete.ops", "delete ops/s", false, 1.0, "2× kine's ≈0.5×"},
	{"postgres", "list.p50", "full LIST time (p50)", true, 2.0, ""},
	{"postgres", "count.p50", "count p50", true, 2.0, ""},
	{"mariadb", "create.ops", "create ops/s", false, 0.48, "2× kine's ≈0.24×"},
	{"mariadb", "update.ops", "update ops/s", false, 0.48, "2× kine's ≈0.24×"},
	{"mariadb", "delete.ops", "delete ops/s", false, 0.48, "2× kine's ≈0.24×"},
	{"mariadb", "list.p50", "full LIST time (p50)", true, 2.0, ""},
	{"mariadb", "count.p50", "count p50", true, 2.0, ""},
}

// value is the median over runs of a target's metric.
func (r *report) value(target, id string) (float64, bool) {
	var vs []float64
	for _, run := range r.runs {
		if res := run[target]; res != nil {
			if v, ok := res.Metrics[id]; ok {
				vs = append(vs, v)
			}
		}
	}
	return median(vs)
}

// ratio is the median over runs of target/etcd from the same run.
func (r *report) ratio(target, id string) (float64, bool) { return r.ratioTo(target, "etcd", id) }

// ratioTo is the median over runs of target/base from the same run.
func (r *report) ratioTo(target, base, id string) (float64, bool) {
	var vs []float64
	for _, run := range r.runs {
		t, e := run[target], run[base]
		if t == nil || e == nil {
			continue
		}
		tv, ok1 := t.Metrics[id]
		ev, ok2 := e.Metrics[id]
		if ok1 && ok2 && ev > 0 {
			vs = append(vs, tv/ev)
		}
	}
	return median(vs)
}

// failed reports whether the target's phase failed, without ending its run,
// in some run (kine).
func (r *report) failed(target, phase string) bool {
	for _, run := range r.runs {
		if res := run[target]; res != nil && res.Failed[phase] != "" {
			return true
		}
	}
	return false
}

// phaseOf is the phase a metric id belongs to.
func phaseOf(id string) string {
	p, _, _ := strings.Cut(id, ".")
	switch p {
	case "defrag", "disk", "files":
		return "compact"
	}
	return p
}

// missing is the cell of a value a target lacks: n/a when its phase failed
// (a server database has no db files to measure either way).
func (r *report) missing(target, id string) string {
	if r.failed(target, phaseOf(id)) && !(id == "files.after" && kindOf(target) == "server") {
		return "n/a"
	}
	return "—"
}

func median(vs []float64) (float64, bool) {
	if len(vs) == 0 {
		return 0, false
	}
	sort.Float64s(vs)
	if len(vs)%2 == 1 {
		return vs[len(vs)/2], true
	}
	return (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2, true
}

func format(unit string, v float64) string {
	switch unit {
	case "ops":
		return thousands(int64(math.Round(v)))
	case "bytes":
		return thousands(int64(math.Round(v)))
	case "mib":
		return fmt.Sprintf("%.1f", v/(1<<20))
	case "ms":
		switch {
		case v >= 100:
			return fmt.Sprintf("%.0f", v)
		case v >= 10:
			return fmt.Sprintf("%.1f", v)
		case v >= 1:
			return fmt.Sprintf("%.2f", v)
		default:
			return fmt.Sprintf("%.3f", v)
		}
	}
	return fmt.Sprint(v)
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func (r *report) print(w io.Writer) {
	cfg := r.cfg
	fmt.Fprintf(w, "\n## shimd benchmark, %s\n\n", r.start.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Machine: %s. ", r.machine)
	if cfg.shimdDesc != "" {
		fmt.Fprintf(w, "shimd: %s. ", cfg.shimdDesc)
	} else if cfg.shimdBin != "" {
		fmt.Fprintf(w, "shimd: %s. ", cfg.shimdBin)
	}
	if len(cfg.shimdArgs) > 0 {
		fmt.Fprintf(w, "shimd flags: %s. ", strings.Join(cfg.shimdArgs, " "))
	}
	vs := fmt.Sprintf("%d", cfg.vmin)
	if cfg.vmax != cfg.vmin {
		vs = fmt.Sprintf("%d–%d", cfg.vmin, cfg.vmax)
	}
	fmt.Fprintf(w, "Load: %d keys, values %s B (random), %d clients over %d connection(s), history depth %d, %d run(s)", cfg.keys, vs, cfg.clients, cfg.conns, cfg.history, cfg.runs)
	if cfg.runs > 1 {
		fmt.Fprint(w, " (medians; ratios are medians of the same-run ratios)")
	}
	fmt.Fprintf(w, "; list ×%d, count ×%d, watch %d puts at %.0f/s.", cfg.listReps, cfg.countReps, cfg.watchPuts, cfg.watchRate)
	if cfg.order == "phase" {
		fmt.Fprintf(w, " All servers run side by side; the targets take turns at each phase in %d parts.", cfg.slices)
	} else {
		fmt.Fprint(w, " One target after the other.")
	}
	fmt.Fprintf(w, " Wall time %s.\n\n", r.end.Sub(r.start).Round(time.Second))
	fmt.Fprintln(w, "Each cell: value (ratio to etcd of the same run). ops/s: higher is better; times and sizes: lower is better.")
	fmt.Fprintln(w)

	hdr := []string{"phase", "metric"}
	hdr = append(hdr, r.targets...)
	table := [][]string{hdr}
	for _, rw := range rows {
		line := []string{rw.phase, rw.metric}
		any := false
		for _, t := range r.targets {
			v, ok := r.value(t, rw.id)
			if !ok {
				line = append(line, r.missing(t, rw.id))
				continue
			}
			any = true
			cell := format(rw.unit, v)
			if t != "etcd" {
				if q, ok := r.ratio(t, rw.id); ok {
					cell += fmt.Sprintf(" (%.2f×)", q)
				}
			}
			line = append(line, cell)
		}
		if any {
			table = append(table, line)
		}
	}
	// Server CPU per phase.
	for i, ph := range cpuPhases {
		line := []string{"", ph}
		if i == 0 {
			line[0] = "server CPU s"
		}
		any := false
		for _, t := range r.targets {
			v, ok := r.value(t, ph+".cpu")
			if !ok {
				line = append(line, r.missing(t, ph+".cpu"))
				continue
			}
			any = true
			cell := fmt.Sprintf("%.2f", v)
			if t != "etcd" {
				if q, ok := r.ratio(t, ph+".cpu"); ok {
					cell += fmt.Sprintf(" (%.2f×)", q)
				}
			}
			line = append(line, cell)
		}
		if any {
			table = append(table, line)
		}
	}
	writeMarkdown(w, table)

	r.printWritePath(w)

	fmt.Fprintln(w)
	fmt.Fprintln(w, "Notes: create/update/delete are kube-apiserver's Txns on mod_revision; get and list are linearizable; list pages by 500 at the first page's revision.")
	fmt.Fprintln(w, "Disk: the N keys are deleted, then created again (not measured) so that live keys remain; then Compact(current revision, physical) and Defragment;")
	fmt.Fprintln(w, "DbSize is Maintenance.Status's, divided by N; db files = etcd's member/snap/db or SQLite's data-dir files.")
	if contains(r.targets, "postgres") && cfg.pgVacuumFull {
		fmt.Fprintln(w, "PostgreSQL's shimd runs with --postgres-vacuum-full (Defragment = VACUUM FULL, as etcd's defrag rewrites its file).")
	}
	fmt.Fprintln(w, "RSS and server CPU are the server process's own (for PostgreSQL and MariaDB, not the database server's).")
	if cfg.kineDesc != "" {
		fmt.Fprintf(w, "kine: %s, on the same stores as shimd (SQLite: its default ./db/state.db in its data dir), `--metrics-bind-address 0`, otherwise defaults; it serves only kube-apiserver's request shapes, so its delete Txn carries kube-apiserver's Else Get and its watch phase writes with the update Txn (its Put of an existing key writes nothing). A phase kine fails is n/a and the run goes on.\n", cfg.kineDesc)
	}
	fmt.Fprintln(w)
	for i := range r.runs {
		if i < len(r.loads) {
			fmt.Fprintf(w, "Machine load during run %d: %s.\n", i+1, loadSummary(r.loads[i]))
		}
	}
	for _, n := range r.notices {
		fmt.Fprintf(w, "NOTICE: %s\n", n)
	}
	for i, run := range r.runs {
		for _, t := range r.targets {
			res := run[t]
			if res == nil {
				continue
			}
			if res.Err != "" {
				fmt.Fprintf(w, "ERROR (run %d, %s): %s\n", i+1, t, firstLine(res.Err))
			}
			for _, st := range cfg.steps() {
				if e := res.Failed[st.name]; e != "" {
					fmt.Fprintf(w, "NOTICE (run %d, %s): phase %s failed: %s\n", i+1, t, st.name, firstLine(e))
				}
			}
		}
	}

	// The project's goals.
	var lines []string
	status := func(met bool) string {
		if met {
			return "met"
		}
		return "**MISSED**"
	}
	for _, g := range goals {
		if !contains(r.targets, g.target) {
			continue
		}
		note := g.note
		if kt, bound := "kine-"+g.target, g.vsKine(); bound != 0 && contains(r.targets, kt) {
			if q, ok := r.ratioTo(g.target, kt, g.id); ok {
				lines = append(lines, fmt.Sprintf("| %s | %s | ≥ %.2f× %s (same run) | %.2f× | %s |", g.target, g.label, bound, kt, q, status(q >= bound)))
				continue
			}
			note += "; " + kt + ": no data"
		}
		if !contains(r.targets, "etcd") {
			continue
		}
		goalText := fmt.Sprintf("%s %.2f×", cmp(g.le), g.bound)
		if note != "" {
			goalText += " (" + strings.TrimPrefix(note, "; ") + ")"
		}
		q, ok := r.ratio(g.target, g.id)
		if !ok {
			lines = append(lines, fmt.Sprintf("| %s | %s | %s | — | no data |", g.target, g.label, goalText))
			continue
		}
		met := q >= g.bound
		if g.le {
			met = q <= g.bound
		}
		lines = append(lines, fmt.Sprintf("| %s | %s | %s | %.2f× | %s |", g.target, g.label, goalText, q, status(met)))
	}
	// No goal on SQLite relative to kine; shown for information.
	if contains(r.targets, "sqlite") && contains(r.targets, "kine-sqlite") {
		var qs []string
		for _, ph := range []string{"create", "update", "delete"} {
			if q, ok := r.ratioTo("sqlite", "kine-sqlite", ph+".ops"); ok {
				qs = append(qs, fmt.Sprintf("%.2f×", q))
			} else {
				qs = append(qs, "—")
			}
		}
		info := fmt.Sprintf("| sqlite | create / update / delete ops/s | (no goal) vs kine-sqlite, same run | %s | info |", strings.Join(qs, " / "))
		at := 0 // after the sqlite rows
		for i, l := range lines {
			if strings.HasPrefix(l, "| sqlite |") {
				at = i + 1
			}
		}
		lines = append(lines[:at], append([]string{info}, lines[at:]...)...)
	}
	if len(lines) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| target | goal | ratio to etcd (or as stated) | measured | |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- |")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
}

func cmp(le bool) string {
	if le {
		return "≤"
	}
	return "≥"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// writeMarkdown prints an aligned Markdown table.
func writeMarkdown(w io.Writer, t [][]string) {
	width := make([]int, len(t[0]))
	for _, l := range t {
		for i, c := range l {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	for j, l := range t {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range l {
			pad := width[i] - len([]rune(c))
			if i >= 2 { // numbers right-aligned
				b.WriteString(" " + strings.Repeat(" ", pad) + c + " |")
			} else {
				b.WriteString(" " + c + strings.Repeat(" ", pad) + " |")
			}
		}
		fmt.Fprintln(w, b.String())
		if j == 0 {
			b.Reset()
			b.WriteString("|")
			for i := range l {
				if i >= 2 {
					b.WriteString(" " + strings.Repeat("-", width[i]-1) + ": |")
				} else {
					b.WriteString(" " + strings.Repeat("-", width[i]) + " |")
				}
			}
			fmt.Fprintln(w, b.String())
		}
	}
}

func (r *report) jsonDoc() any {
	cfg := r.cfg
	return map[string]any{
		"start":   r.start,
		"machine": r.machine,
		"config": map[string]any{
			"keys": cfg.keys, "value_min": cfg.vmin, "value_max": cfg.vmax, "clients": cfg.clients, "conns": cfg.conns,
			"history": cfg.history, "runs": cfg.runs, "list_reps": cfg.listReps, "count_reps": cfg.countReps,
			"watch_puts": cfg.watchPuts, "watch_rate": cfg.watchRate, "postgres_vacuum_full": cfg.pgVacuumFull,
			"shimd": cfg.shimdDesc, "kine": cfg.kineDesc, "order": cfg.order, "slices": cfg.slices, "settle": cfg.settle.String(), "shimd_rev": cfg.shimdRev, "shimd_src": cfg.shimdSrc,
		},
		"targets": r.targets,
		"notices": r.notices,
		"runs":    r.runs,
		"loads":   r.loads,
	}
}

// printWritePath prints where a write phase's time went, from the servers'
// /metrics: group-commit batches (shimd), commits, etcd's WAL fsyncs, and
// shimd's SQL statements per batch.
func (r *report) printWritePath(w io.Writer) {
	cell := func(t, id, format string) (string, bool) {
		v, ok := r.value(t, id)
		if !ok {
			return "—", false
		}
		return fmt.Sprintf(format, v), true
	}
	table := [][]string{append([]string{"write path", "figure (means)"}, r.targets...)}
	for _, ph := range []string{"create", "update", "delete"} {
		label := ph // printed on the phase's first row only
		add := func(figure string, f func(t string) (string, bool)) {
			line := []string{label, figure}
			any := false
			for _, t := range r.targets {
				c, ok := f(t)
				any = any || ok
				line = append(line, c)
			}
			if any {
				table = append(table, line)
				label = ""
			}
		}
		add("requests per batch", func(t string) (string, bool) { return cell(t, ph+".batch", "%.1f") })
		add("ms per batch (phase time / batches)", func(t string) (string, bool) {
			b, ok1 := r.value(t, ph+".batches")
			wall, ok2 := r.value(t, ph+".wall")
			if !ok1 || !ok2 || b == 0 {
				return "—", false
			}
			return fmt.Sprintf("%.2f", wall*1000/b), true
		})
		// msTimes shows a mean time in ms and how many times it was taken.
		msTimes := func(ms, count string) func(t string) (string, bool) {
			return func(t string) (string, bool) {
				c, ok := r.value(t, ph+ms)
				if !ok {
					return "—", false
				}
				k, _ := r.value(t, ph+count)
				return fmt.Sprintf("%.2f ×%.0f", c, k), true
			}
		}
		add("commit ms × count (etcd: bbolt; shimd: SQL COMMIT)", msTimes(".commitms", ".commits"))
		add("etcd WAL fsync ms × count", msTimes(".fsyncms", ".fsyncs"))
		stmts := map[string]bool{}
		for _, run := range r.runs {
			for _, res := range run {
				for k := range res.Metrics {
					if rest, ok := strings.CutPrefix(k, ph+".sql."); ok && strings.HasSuffix(rest, ".ms") {
						stmts[strings.TrimSuffix(rest, ".ms")] = true
					}
				}
			}
		}
		var names []string
		for st := range stmts {
			names = append(names, st)
		}
		sort.Strings(names)
		for _, st := range names {
			add("SQL "+st+" ms × per batch", func(t string) (string, bool) {
				c, ok := r.value(t, ph+".sql."+st+".ms")
				if !ok {
					return "—", false
				}
				k, _ := r.value(t, ph+".sql."+st+".perbatch")
				return fmt.Sprintf("%.2f ×%.2f", c, k), true
			})
		}
	}
	if len(table) > 1 {
		fmt.Fprintln(w)
		writeMarkdown(w, table)
	}
}
