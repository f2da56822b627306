package robust

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Pending is the return time of an operation whose outcome is unknown: it is
// still in flight when the history ends, so it may be linearized anywhere
// after its call, or not at all (etcd's robustness tests do the same).
const Pending int64 = math.MaxInt64

// Op is one recorded operation.
type Op struct {
	Client       int
	Req          Request
	Resp         Response
	Call, Return int64 // nanoseconds since the history's start
}

// History records the operations of concurrent clients.
type History struct {
	mu   sync.Mutex
	base time.Time
	ops  []Op
}

// NewHistory starts an empty history; times count from now.
func NewHistory() *History { return &History{base: time.Now()} }

// Now is the current time on the history's clock (monotonic).
func (h *History) Now() int64 { return int64(time.Since(h.base)) }

// Record adds an operation called at call that returns now (or never, for
// an Unknown outcome).
func (h *History) Record(client int, req Request, call int64, resp Response) {
	ret := h.Now()
	if resp.Unknown {
		ret = Pending
	}
	h.mu.Lock()
	h.ops = append(h.ops, Op{Client: client, Req: req, Resp: resp, Call: call, Return: ret})
	h.mu.Unlock()
}

// Ops returns the recorded operations.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// PatchStats counts what Patch did with the operations of unknown outcome.
type PatchStats struct {
	Unknown        int // operations whose outcome the client did not learn
	DroppedReads   int // unknown reads and lease grants: they change nothing
	DroppedWrites  int // unknown puts/CASes absent from the log: they never happened
	PersistedWrite int // unknown puts/CASes found in the log: pending, at their revision
	PendingDeletes int // unknown deletes: pending, outcome open
	PendingCompact int // unknown compactions: pending, outcome open
}

func (s PatchStats) String() string {
	c := ""
	if s.PendingCompact > 0 {
		c = fmt.Sprintf(", %d compactions left open", s.PendingCompact)
	}
	return fmt.Sprintf("%d unknown outcomes (%d reads/grants dropped, %d writes never applied, %d writes applied, %d deletes left open%s)",
		s.Unknown, s.DroppedReads, s.DroppedWrites, s.PersistedWrite, s.PendingDeletes, c)
}

// Patch resolves operations of unknown outcome with the log, as etcd's
// robustness tests do: every put carries a unique value, so the log (a
// watch from before the history's first revision) tells whether it was
// applied and at which revision. Unknown reads and lease grants change
// nothing and are dropped; unknown puts and CASes not in the log never took
// effect and are dropped; those in the log stay pending with their
// revision; unknown deletes and compactions stay pending with an open
// outcome.
func Patch(ops []Op, log []Event) ([]Op, PatchStats) {
	putAt := map[string]int64{}
	for _, e := range log {
		if !e.Delete {
			putAt[e.Key+"\x00"+e.Value] = e.Mod
		}
	}
	var st PatchStats
	out := make([]Op, 0, len(ops))
	for _, op := range ops {
		if !op.Resp.Unknown {
			out = append(out, op)
			continue
		}
		st.Unknown++
		switch op.Req.Kind {
		case OpGet, OpRange, OpLeaseGrant:
			st.DroppedReads++
			continue
		case OpPut, OpCAS:
			rev, ok := putAt[op.Req.Key+"\x00"+op.Req.Value]
			if !ok {
				st.DroppedWrites++
				continue
			}
			op.Resp.Rev = rev
			st.PersistedWrite++
		case OpDelete:
			st.PendingDeletes++
		case OpCompact:
			st.PendingCompact++
		}
		out = append(out, op)
	}
	return out, st
}

// CheckResult is the outcome of a linearizability check.
type CheckResult struct {
	Result porcupine.CheckResult
	Ops    int
	// Report explains an Illegal result: the longest partial linearization
	// and the operations that could not follow it.
	Report string
	// Visualization is porcupine's HTML rendering of an Illegal history
	// (a file that the test leaves behind), or "".
	Visualization string
}

// Check runs porcupine on ops from the initial state, for at most timeout.
func Check(init State, ops []Op, timeout time.Duration, name string) CheckResult {
	model := Model(init)
	hist := make([]porcupine.Operation, len(ops))
	for i, op := range ops {
		hist[i] = porcupine.Operation{ClientId: op.Client, Input: op.Req, Call: op.Call, Output: op.Resp, Return: op.Return}
	}
	res, info := porcupine.CheckOperationsVerbose(model, hist, timeout)
	cr := CheckResult{Result: res, Ops: len(ops)}
	if res != porcupine.Illegal {
		return cr
	}
	cr.Report = explain(init, ops, info)
	dir := filepath.Join(os.TempDir(), "shimd-robust")
	if os.MkdirAll(dir, 0o755) == nil {
		safe := strings.NewReplacer("/", "_", " ", "_").Replace(name)
		path := filepath.Join(dir, fmt.Sprintf("%s-%d.html", safe, time.Now().UnixNano()))
		if porcupine.VisualizePath(model, info, path) == nil {
			cr.Visualization = path
		}
		txt := strings.TrimSuffix(path, ".html") + ".txt"
		if os.WriteFile(txt, []byte(Dump(ops)), 0o644) == nil {
			cr.Report += "\nfull history: " + txt
		}
	}
	return cr
}

// explain describes the longest partial linearization's end and the
// operations that could not be appended to it.
func explain(init State, ops []Op, info porcupine.LinearizationInfo) string {
	var best []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, lin := range part {
			if len(lin) > len(best) {
				best = lin
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "longest linearizable prefix: %d of %d operations\n", len(best), len(ops))
	s := Model(init).Init().(State)
	from := max(0, len(best)-12)
	for i, o := range best {
		_, s = Step(s, o.Input.(Request), o.Output.(Response))
		if i >= from {
			fmt.Fprintf(&b, "  #%d c%d [%s] %s\n", i, o.ClientId, span(o.Call, o.Return), DescribeOp(o.Input.(Request), o.Output.(Response)))
		}
	}
	fmt.Fprintf(&b, "state after it: %s\n", Model(init).DescribeState(s))
	// The operations not in the prefix that return first: one of them can
	// follow no linearization.
	in := map[[2]int64]int{}
	for _, o := range best {
		in[[2]int64{o.Call, int64(o.ClientId)}]++
	}
	var rest []Op
	for _, op := range ops {
		k := [2]int64{op.Call, int64(op.Client)}
		if in[k] > 0 {
			in[k]--
			continue
		}
		rest = append(rest, op)
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].Return < rest[j].Return })
	b.WriteString("operations that could not come next (earliest returns first):\n")
	for i, op := range rest {
		if i == 8 {
			break
		}
		ok, _ := Step(s, op.Req, op.Resp)
		fmt.Fprintf(&b, "  c%d [%s] %s (applies to that state: %v)\n", op.Client, span(op.Call, op.Return), DescribeOp(op.Req, op.Resp), ok)
	}
	return b.String()
}

func span(call, ret int64) string {
	r := "∞"
	if ret != Pending {
		r = fmt.Sprintf("%.3fms", float64(ret)/1e6)
	}
	return fmt.Sprintf("%.3fms..%s", float64(call)/1e6, r)
}

// Dump renders a history, by call time.
func Dump(ops []Op) string {
	ops = append([]Op(nil), ops...)
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	var b strings.Builder
	for _, op := range ops {
		fmt.Fprintf(&b, "c%d [%s] %s\n", op.Client, span(op.Call, op.Return), DescribeOp(op.Req, op.Resp))
	}
	return b.String()
}
