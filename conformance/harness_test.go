package conformance

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/conformance/harness"
)

// Environment knobs.
const (
	envSelfTest = "CONFORMANCE_SELFTEST" // 1: run an etcd subprocess in place of shimd
	envBin      = "SHIMD_BIN"            // prebuilt server binary to test
)

var (
	sutBin      string // binary under test
	sutBuildErr error
	sutName     = "shimd"
	// runBinDir holds the programs built for this run of the test binary
	// (shimd, etcd 3.6); TestMain removes it at the end.
	runBinDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if testing.Short() {
		// Nothing to set up; tests skip themselves.
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "conformance-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	runBinDir = tmp
	switch {
	case os.Getenv(envBin) != "":
		sutBin = os.Getenv(envBin)
	case harness.EnvBool(envSelfTest):
		sutName = "etcd-subprocess"
		sutBin, sutBuildErr = harness.Build(".", "./internal/fakeshimd", tmp, "fakeshimd")
	default:
		sutBin, sutBuildErr = harness.Build(".", "github.com/shimd/shimd/cmd/shimd", tmp, "shimd")
		if sutBuildErr != nil {
			// go.sum here may lag behind a dependency the server just
			// added; building in the main module still tests the same code.
			var err2 error
			sutBin, err2 = harness.Build("..", "./cmd/shimd", tmp, "shimd")
			if err2 == nil {
				fmt.Fprintf(os.Stderr, "conformance: built shimd in the main module (conformance go.sum needs `go mod tidy`): %v\n", sutBuildErr)
				sutBuildErr = nil
			}
		}
	}
	if err := harness.BackendsError(); err != nil {
		fmt.Fprintf(os.Stderr, "conformance: %v\n", err)
		return 2
	}
	for _, b := range harness.Backends() {
		if b.Unavailable == nil {
			continue
		}
		if harness.RequireBackends() {
			fmt.Fprintf(os.Stderr, "conformance: FAIL: %v; its tests fail (%s=1)\n", b.Unavailable, harness.EnvRequireBackends)
		} else {
			fmt.Fprintf(os.Stderr, "conformance: NOTICE: %v; its tests are SKIPPED (set %s=1 to fail instead)\n", b.Unavailable, harness.EnvRequireBackends)
		}
	}
	return m.Run()
}

// needBackend skips the test if b's database is unreachable, or fails it
// under SHIMD_REQUIRE_BACKENDS=1.
func needBackend(t testing.TB, b harness.Backend) {
	t.Helper()
	if b.Unavailable == nil {
		return
	}
	if harness.RequireBackends() {
		t.Fatalf("%v (%s=1: unreachable databases are failures)", b.Unavailable, harness.EnvRequireBackends)
	}
	t.Skipf("SKIPPED: %v (set %s=1 to make this a failure)", b.Unavailable, harness.EnvRequireBackends)
}

// newStore creates a fresh empty store on b (a PostgreSQL schema or a MySQL
// database; nothing for SQLite) and drops it when t ends. The returned
// store's Backend is what shimd is started on; restarts reuse it.
func newStore(t testing.TB, b harness.Backend) *harness.Store {
	t.Helper()
	needBackend(t, b)
	st, err := harness.NewStore(b)
	if err != nil {
		t.Fatalf("%s: create a fresh store: %v", b.Name, err)
	}
	t.Cleanup(func() {
		if err := st.Drop(); err != nil {
			t.Errorf("%s: drop store %s: %v", b.Name, st.Name, err)
		}
	})
	return st
}

// requireSUT skips in -short mode and fails if the server could not be built.
func requireSUT(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("conformance tests start servers; skipped in -short mode")
	}
	if sutBuildErr != nil {
		t.Fatalf("cannot build the server under test: %v", sutBuildErr)
	}
}

// server is one side of the comparison, reached through clientv3.
type server struct {
	name  string
	cli   *clientv3.Client
	kv    pb.KVClient    // raw calls on the same connection
	lease pb.LeaseClient // raw calls on the same connection
	proc  *harness.Process
	stop  func()
}

func dial(endpoint string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

func newServer(name, endpoint string, stop func()) (*server, error) {
	cli, err := dial(endpoint)
	if err != nil {
		stop()
		return nil, err
	}
	conn := cli.ActiveConnection()
	return &server{name: name, cli: cli, kv: pb.NewKVClient(conn), lease: pb.NewLeaseClient(conn), stop: func() { cli.Close(); stop() }}, nil
}

// startRef starts the in-process reference etcd.
func startRef(t *testing.T, o harness.Options) *server {
	t.Helper()
	e, err := harness.StartEtcd(harness.EtcdConfig{Dir: t.TempDir(), Options: o, NoFsync: true})
	if err != nil {
		t.Fatalf("start reference etcd: %v", err)
	}
	s, err := newServer("etcd", e.Endpoint, e.Close)
	if err != nil {
		t.Fatalf("connect to reference etcd: %v", err)
	}
	return s
}

// startSUT starts the server under test as a subprocess.
func startSUT(t *testing.T, b harness.Backend, o harness.Options, dataDir string) *server {
	t.Helper()
	requireSUT(t)
	if b.Endpoint == "" {
		b = newStore(t, b).Backend
	}
	p, err := harness.StartProcess(sutBin, dataDir, b, o)
	if err != nil {
		t.Fatalf("start %s (%s): %v", sutName, b.Name, err)
	}
	s, err := newServer(sutName, p.Endpoint, func() {
		if err := p.Stop(); err != nil {
			t.Errorf("%s: stop: %v\n%s", sutName, err, p.Output())
		}
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", sutName, err)
	}
	s.proc = p
	return s
}

// crashInfo describes the server process if it is no longer running.
func (s *server) crashInfo() string {
	if s.proc == nil {
		return ""
	}
	select {
	case <-s.proc.Exited():
		return fmt.Sprintf("\n%s EXITED (%v); output tail:\n%s", s.name, s.proc.ExitErr(), s.proc.Output())
	default:
		return ""
	}
}

// pair is a reference etcd and a server under test fed the same operations.
type pair struct {
	ref, sut *server
}

func startPair(t *testing.T, b harness.Backend, o harness.Options) *pair {
	t.Helper()
	sut := startSUT(t, b, o, t.TempDir())
	ref := startRef(t, o)
	return &pair{ref: ref, sut: sut}
}

func (p *pair) close() {
	p.ref.stop()
	p.sut.stop()
}

// suite runs named scenarios on one shared pair. A failed scenario leaves the
// two servers in different states, so the pair is replaced before the next
// scenario; scenarios must therefore not rely on each other's keys.
type suite struct {
	t       *testing.T
	backend harness.Backend
	opts    harness.Options
	p       *pair
}

func forEachBackend(t *testing.T, o harness.Options, fn func(s *suite)) {
	requireSUT(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			s := &suite{t: t, backend: b, opts: o}
			defer func() {
				if s.p != nil {
					s.p.close()
				}
			}()
			fn(s)
		})
	}
}

func (s *suite) run(name string, fn func(c *sc)) {
	if s.p == nil {
		s.p = startPair(s.t, s.backend, s.opts)
	}
	ok := s.t.Run(name, func(t *testing.T) {
		fn(&sc{t: t, p: s.p, name: t.Name()})
	})
	if !ok {
		s.p.close()
		s.p = nil
	}
}

// sc is one running scenario: it numbers the operations and compares the two
// servers after each one.
type sc struct {
	t    *testing.T
	p    *pair
	name string
	n    int
}

type opFunc func(ctx context.Context, s *server) (any, error)

// do sends one operation to etcd, then to the server under test, and fails
// the scenario if the responses differ. It returns etcd's outcome.
func (c *sc) do(desc string, fn opFunc) (any, error) {
	c.t.Helper()
	c.n++
	start := time.Now()
	refResp, refErr := call(c.p.ref, fn)
	mid := time.Now()
	sutResp, sutErr := call(c.p.sut, fn)
	if d := time.Since(start); d > time.Second {
		c.t.Logf("slow op #%d %s: etcd %v, %s %v", c.n, truncate(desc, 80), mid.Sub(start), c.p.sut.name, time.Since(mid))
	}
	if d := diffOutcomes(refResp, refErr, sutResp, sutErr); d != "" {
		c.t.Fatalf("%s%s", mismatchReport(c.name, c.n, desc, c.p.sut.name, refResp, refErr, sutResp, sutErr, d), c.p.sut.crashInfo())
	}
	return refResp, refErr
}

func call(s *server, fn opFunc) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return fn(ctx, s)
}

// Typed wrappers around do. Each returns etcd's response (nil on error).

func (c *sc) Range(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	c.t.Helper()
	resp, err := c.do("Range "+oneLine(r), func(ctx context.Context, s *server) (any, error) { return s.kv.Range(ctx, r) })
	out, _ := resp.(*pb.RangeResponse)
	return out, err
}

// RangeStream compares the whole stream, chunk by chunk.
func (c *sc) RangeStream(r *pb.RangeRequest) ([]*pb.RangeResponse, error) {
	c.t.Helper()
	resp, err := c.do("RangeStream "+oneLine(r), func(ctx context.Context, s *server) (any, error) {
		st, err := s.kv.RangeStream(ctx, r)
		if err != nil {
			return nil, err
		}
		var chunks []*pb.RangeResponse
		for {
			m, err := st.Recv()
			if err == io.EOF {
				return chunks, nil
			}
			if err != nil {
				// Chunks already received are part of the outcome.
				return chunks, err
			}
			chunks = append(chunks, m.RangeResponse)
		}
	})
	out, _ := resp.([]*pb.RangeResponse)
	return out, err
}

func (c *sc) Put(r *pb.PutRequest) (*pb.PutResponse, error) {
	c.t.Helper()
	resp, err := c.do("Put "+oneLine(r), func(ctx context.Context, s *server) (any, error) { return s.kv.Put(ctx, r) })
	out, _ := resp.(*pb.PutResponse)
	return out, err
}

func (c *sc) Delete(r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	c.t.Helper()
	resp, err := c.do("DeleteRange "+oneLine(r), func(ctx context.Context, s *server) (any, error) { return s.kv.DeleteRange(ctx, r) })
	out, _ := resp.(*pb.DeleteRangeResponse)
	return out, err
}

func (c *sc) Txn(r *pb.TxnRequest) (*pb.TxnResponse, error) {
	c.t.Helper()
	resp, err := c.do("Txn "+oneLine(r), func(ctx context.Context, s *server) (any, error) { return s.kv.Txn(ctx, r) })
	out, _ := resp.(*pb.TxnResponse)
	return out, err
}

func (c *sc) Compact(r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	c.t.Helper()
	resp, err := c.do("Compact "+oneLine(r), func(ctx context.Context, s *server) (any, error) { return s.kv.Compact(ctx, r) })
	out, _ := resp.(*pb.CompactionResponse)
	return out, err
}

func (c *sc) LeaseGrant(id, ttl int64) {
	c.t.Helper()
	r := &pb.LeaseGrantRequest{ID: id, TTL: ttl}
	c.ok(c.do("LeaseGrant "+oneLine(r), func(ctx context.Context, s *server) (any, error) { return s.lease.LeaseGrant(ctx, r) }))
}

// Client wrappers: the same operations through clientv3's API, which is what
// etcdctl and most applications use.

func (c *sc) Get(key string, opts ...opt) (*clientv3.GetResponse, error) {
	c.t.Helper()
	resp, err := c.do(fmt.Sprintf("clientv3.Get(%s%s)", quoteTrunc([]byte(key)), optString(opts)), func(ctx context.Context, s *server) (any, error) {
		return s.cli.Get(ctx, key, clientOpts(opts)...)
	})
	out, _ := resp.(*clientv3.GetResponse)
	return out, err
}

func (c *sc) CPut(key, val string, opts ...opt) (*clientv3.PutResponse, error) {
	c.t.Helper()
	resp, err := c.do(fmt.Sprintf("clientv3.Put(%s, %s%s)", quoteTrunc([]byte(key)), quoteTrunc([]byte(val)), optString(opts)), func(ctx context.Context, s *server) (any, error) {
		return s.cli.Put(ctx, key, val, clientOpts(opts)...)
	})
	out, _ := resp.(*clientv3.PutResponse)
	return out, err
}

func (c *sc) CDelete(key string, opts ...opt) (*clientv3.DeleteResponse, error) {
	c.t.Helper()
	resp, err := c.do(fmt.Sprintf("clientv3.Delete(%s%s)", quoteTrunc([]byte(key)), optString(opts)), func(ctx context.Context, s *server) (any, error) {
		return s.cli.Delete(ctx, key, clientOpts(opts)...)
	})
	out, _ := resp.(*clientv3.DeleteResponse)
	return out, err
}

// CTxn runs a txn through clientv3's builder; desc says what it does.
func (c *sc) CTxn(desc string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	c.t.Helper()
	resp, err := c.do("clientv3.Txn: "+desc, func(ctx context.Context, s *server) (any, error) {
		return s.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	})
	out, _ := resp.(*clientv3.TxnResponse)
	return out, err
}

// CCompact compacts through clientv3.
func (c *sc) CCompact(rev int64, physical bool) (*clientv3.CompactResponse, error) {
	c.t.Helper()
	var o []clientv3.CompactOption
	if physical {
		o = append(o, clientv3.WithCompactPhysical())
	}
	resp, err := c.do(fmt.Sprintf("clientv3.Compact(%d, physical=%v)", rev, physical), func(ctx context.Context, s *server) (any, error) {
		return s.cli.Compact(ctx, rev, o...)
	})
	out, _ := resp.(*clientv3.CompactResponse)
	return out, err
}

// opt is a clientv3 option with a printable name, for op descriptions.
type opt struct {
	name string
	o    clientv3.OpOption
}

func optString(opts []opt) string {
	var b strings.Builder
	for _, o := range opts {
		b.WriteString(", " + o.name)
	}
	return b.String()
}

func clientOpts(opts []opt) []clientv3.OpOption {
	out := make([]clientv3.OpOption, len(opts))
	for i, o := range opts {
		out[i] = o.o
	}
	return out
}

var (
	withPrefix       = opt{"WithPrefix()", clientv3.WithPrefix()}
	withFromKey      = opt{"WithFromKey()", clientv3.WithFromKey()}
	withPrevKV       = opt{"WithPrevKV()", clientv3.WithPrevKV()}
	withIgnoreValue  = opt{"WithIgnoreValue()", clientv3.WithIgnoreValue()}
	withIgnoreLease  = opt{"WithIgnoreLease()", clientv3.WithIgnoreLease()}
	withKeysOnly     = opt{"WithKeysOnly()", clientv3.WithKeysOnly()}
	withCountOnly    = opt{"WithCountOnly()", clientv3.WithCountOnly()}
	withSerializable = opt{"WithSerializable()", clientv3.WithSerializable()}
)

func withRange(end string) opt {
	return opt{"WithRange(" + quoteTrunc([]byte(end)) + ")", clientv3.WithRange(end)}
}
func withRev(r int64) opt   { return opt{fmt.Sprintf("WithRev(%d)", r), clientv3.WithRev(r)} }
func withLimit(n int64) opt { return opt{fmt.Sprintf("WithLimit(%d)", n), clientv3.WithLimit(n)} }
func withLease(id int64) opt {
	return opt{fmt.Sprintf("WithLease(%#x)", id), clientv3.WithLease(clientv3.LeaseID(id))}
}
func withSort(t clientv3.SortTarget, o clientv3.SortOrder) opt {
	return opt{fmt.Sprintf("WithSort(%v, %v)", pb.RangeRequest_SortTarget(t), pb.RangeRequest_SortOrder(o)), clientv3.WithSort(t, o)}
}
func withMinModRev(r int64) opt {
	return opt{fmt.Sprintf("WithMinModRev(%d)", r), clientv3.WithMinModRev(r)}
}
func withMaxModRev(r int64) opt {
	return opt{fmt.Sprintf("WithMaxModRev(%d)", r), clientv3.WithMaxModRev(r)}
}
func withMinCreateRev(r int64) opt {
	return opt{fmt.Sprintf("WithMinCreateRev(%d)", r), clientv3.WithMinCreateRev(r)}
}
func withMaxCreateRev(r int64) opt {
	return opt{fmt.Sprintf("WithMaxCreateRev(%d)", r), clientv3.WithMaxCreateRev(r)}
}

// ok fails if etcd itself rejected an operation the scenario expects to work:
// that is a bug in the scenario, not in the server under test.
func (c *sc) ok(_ any, err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatalf("scenario bug: etcd failed op #%d: %v", c.n, err)
	}
}

// wantErr checks that etcd answered the last op with want, so the scenario
// really exercises the error path it is named after.
func (c *sc) wantErr(err, want error) {
	c.t.Helper()
	if errCode(err) != errCode(want) || rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(want) {
		c.t.Fatalf("scenario bug: op #%d: etcd returned %v, scenario expects %v", c.n, err, want)
	}
}

// check asserts a scenario invariant on etcd's responses.
func (c *sc) check(cond bool, format string, args ...any) {
	c.t.Helper()
	if !cond {
		c.t.Fatalf("scenario bug after op #%d: "+format, append([]any{c.n}, args...)...)
	}
}

// errCode extracts the gRPC code whether the error is a status error or
// clientv3's rpctypes.EtcdError (for which status.Code says Unknown).
func errCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if ee, ok := err.(rpctypes.EtcdError); ok {
		return ee.Code()
	}
	return status.Code(err)
}

func errString(err error) string {
	return fmt.Sprintf("ERROR code=%s desc=%q", errCode(err), rpctypes.ErrorDesc(err))
}

// diffOutcomes returns "" when both outcomes are equal after normalisation.
func diffOutcomes(refResp any, refErr error, sutResp any, sutErr error) string {
	switch {
	case refErr != nil || sutErr != nil:
		if refErr == nil || sutErr == nil {
			return "one server failed, the other succeeded"
		}
		if a, b := errString(refErr), errString(sutErr); a != b {
			return fmt.Sprintf("errors differ:\n  etcd:  %s\n  other: %s", a, b)
		}
		return ""
	}
	a, b := normalize(refResp), normalize(sutResp)
	return truncate(cmp.Diff(a, b, ignoreXXX), 6000)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("\n... (%d more bytes)", len(s)-n)
}

// mismatchReport renders both outcomes side by side.
func mismatchReport(scenario string, n int, desc, sutName string, refResp any, refErr error, sutResp any, sutErr error, diff string) string {
	left, right := outcomeLines(refResp, refErr), outcomeLines(sutResp, sutErr)
	var b strings.Builder
	fmt.Fprintf(&b, "\nMISMATCH in %s, op #%d\n  op: %s\n\n", scenario, n, truncate(desc, 2000))
	b.WriteString(sideBySide("etcd", left, sutName, right))
	fmt.Fprintf(&b, "\ndiff (-etcd +%s), ignoring header cluster_id/member_id/raft_term:\n%s\n", sutName, diff)
	return b.String()
}

func outcomeLines(resp any, err error) []string {
	if err != nil {
		return []string{errString(err)}
	}
	return render(normalize(resp))
}

func sideBySide(ln string, left []string, rn string, right []string) string {
	w := len(ln)
	for _, l := range left {
		w = max(w, len(l))
	}
	w = min(w, 90)
	var b strings.Builder
	fmt.Fprintf(&b, "    %-*s | %s\n", w, ln, rn)
	fmt.Fprintf(&b, "    %s-+-%s\n", strings.Repeat("-", w), strings.Repeat("-", max(len(rn), 20)))
	for i := 0; i < max(len(left), len(right)); i++ {
		var l, r string
		if i < len(left) {
			l = left[i]
		}
		if i < len(right) {
			r = right[i]
		}
		mark := "  "
		if l != r {
			mark = "≠ "
		}
		fmt.Fprintf(&b, "  %s%-*s | %s\n", mark, w, l, r)
	}
	return b.String()
}

// tempDir is t.TempDir under a name that shows up in failure messages.
func tempDir(t testing.TB, name string) string {
	d := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}
