package conformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Helpers of the maintenance tests (maint_*_test.go): Compact, HashKV,
// Alarm, quota, Defragment, Status, Snapshot and auto-compaction.

// maint is the raw Maintenance client on a server's connection.
func maint(s *server) pb.MaintenanceClient {
	return pb.NewMaintenanceClient(s.cli.ActiveConnection())
}

// maintSelf stands for "the member that answered" in normalised alarm
// lists, whose member ids legitimately differ between the two servers.
const maintSelf = "self"

// maintMemberName prints an alarm's member id, or maintSelf for self.
func maintMemberName(id, self uint64) string {
	if id == self {
		return maintSelf
	}
	return fmt.Sprintf("%#x", id)
}

// maintAlarmView is an AlarmResponse with the member ids normalised and the
// alarms sorted (etcd lists them in map order).
type maintAlarmView struct {
	Revision int64
	Alarms   []string
}

func maintViewAlarms(r *pb.AlarmResponse) maintAlarmView {
	v := maintAlarmView{Revision: r.GetHeader().GetRevision()}
	self := r.GetHeader().GetMemberId()
	for _, a := range r.Alarms {
		v.Alarms = append(v.Alarms, a.Alarm.String()+"@"+maintMemberName(a.MemberID, self))
	}
	sort.Strings(v.Alarms)
	return v
}

// maintStatusView is the part of a StatusResponse both servers must agree on:
// dbSize and the raft fields legitimately differ, and etcd's storage
// version changes a while after its start (3.5.0, then 3.7.0).
type maintStatusView struct {
	Revision     int64
	Version      string
	LeaderIsSelf bool
	IsLearner    bool
	DbSizeQuota  int64
	Downgrade    string
	Errors       []string
}

func maintViewStatus(r *pb.StatusResponse) maintStatusView {
	self := r.GetHeader().GetMemberId()
	v := maintStatusView{
		Revision:     r.GetHeader().GetRevision(),
		Version:      r.Version,
		LeaderIsSelf: r.Leader == self,
		IsLearner:    r.IsLearner,
		DbSizeQuota:  r.DbSizeQuota,
		Downgrade:    r.DowngradeInfo.String(),
	}
	selfStr := "memberID:" + strconv.FormatUint(self, 10) + " "
	for _, e := range r.Errors {
		// etcd 3.7 prints an alarm with protobuf-go's text format, whose
		// spacing varies from one binary to another (one space or two
		// between fields, by design): compare the fields.
		e = strings.Join(strings.Fields(e), " ") + " "
		v.Errors = append(v.Errors, strings.TrimSpace(strings.ReplaceAll(e, selfStr, "memberID:"+maintSelf+" ")))
	}
	sort.Strings(v.Errors)
	return v
}

// Lockstep maintenance operations (compared like every other op).

func (c *sc) HashKV(rev int64) (*pb.HashKVResponse, error) {
	c.t.Helper()
	resp, err := c.do(fmt.Sprintf("HashKV {revision:%d}", rev), func(ctx context.Context, s *server) (any, error) {
		return maint(s).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
	})
	out, _ := resp.(*pb.HashKVResponse)
	return out, err
}

// Alarm sends a raw AlarmRequest; member -1 means "the answering server's own
// member id" (looked up on each server).
func (c *sc) Alarm(action pb.AlarmRequest_AlarmAction, alarm pb.AlarmType, member int64) (maintAlarmView, error) {
	c.t.Helper()
	who := fmt.Sprintf("%#x", member)
	if member == -1 {
		who = maintSelf
	}
	resp, err := c.do(fmt.Sprintf("Alarm {action:%v alarm:%v memberID:%s}", action, alarm, who), func(ctx context.Context, s *server) (any, error) {
		id := uint64(member)
		if member == -1 {
			st, err := maint(s).Status(ctx, &pb.StatusRequest{})
			if err != nil {
				return nil, fmt.Errorf("looking up the member id: %w", err)
			}
			id = st.Header.MemberId
		}
		r, err := maint(s).Alarm(ctx, &pb.AlarmRequest{Action: action, Alarm: alarm, MemberID: id})
		if err != nil {
			return nil, err
		}
		return maintViewAlarms(r), nil
	})
	out, _ := resp.(maintAlarmView)
	return out, err
}

// MaintStatus compares the server-independent part of Status.
func (c *sc) MaintStatus() (maintStatusView, error) {
	c.t.Helper()
	resp, err := c.do("Status (compared: revision, version, leader=self, learner, dbSizeQuota, downgrade, errors)", func(ctx context.Context, s *server) (any, error) {
		r, err := maint(s).Status(ctx, &pb.StatusRequest{})
		if err != nil {
			return nil, err
		}
		return maintViewStatus(r), nil
	})
	out, _ := resp.(maintStatusView)
	return out, err
}

// maintShape reduces a response to what two servers with different histories
// (the quota test fills each until its own limit) still have in common.
type maintShape struct {
	Type      string
	Keys      []string
	Count     int64
	Succeeded bool
	Deleted   int64
	TTL       int64
	Responses int
}

func maintShapeOf(v any) any {
	switch r := v.(type) {
	case *pb.RangeResponse:
		s := maintShape{Type: "range", Count: r.Count}
		for _, kv := range r.Kvs {
			s.Keys = append(s.Keys, string(kv.Key))
		}
		return s
	case *pb.PutResponse:
		return maintShape{Type: "put"}
	case *pb.DeleteRangeResponse:
		return maintShape{Type: "delete", Deleted: r.Deleted}
	case *pb.TxnResponse:
		return maintShape{Type: "txn", Succeeded: r.Succeeded, Responses: len(r.Responses)}
	case *pb.LeaseGrantResponse:
		return maintShape{Type: "lease-grant", TTL: r.TTL}
	case *pb.LeaseRevokeResponse:
		return maintShape{Type: "lease-revoke"}
	case *pb.CompactionResponse:
		return maintShape{Type: "compact"}
	case *pb.DefragmentResponse:
		return maintShape{Type: "defragment"}
	case *pb.AlarmResponse:
		v := maintViewAlarms(r)
		v.Revision = 0
		return v
	case *pb.StatusResponse:
		v := maintViewStatus(r)
		v.Revision = 0
		return v
	}
	return v
}

// doShape runs an op on both servers and compares errors exactly but
// successful responses only by shape (see shapeOf).
func (c *sc) doShape(desc string, fn opFunc) (any, error) {
	c.t.Helper()
	return c.do(desc+" [compared: error, or response shape]", func(ctx context.Context, s *server) (any, error) {
		r, err := fn(ctx, s)
		if err != nil {
			return nil, err
		}
		return maintShapeOf(r), nil
	})
}

// maintRandValue returns n incompressible bytes (PostgreSQL's TOAST and InnoDB
// must not shrink the test data).
func maintRandValue(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// maintSelfTest reports whether shimd is replaced by an etcd stand-in.
func maintSelfTest() bool { return harness.EnvBool(envSelfTest) }

// requireShimd skips tests of shimd-only features (snapshot restore,
// auto-compaction, shimd-only flags) in self-test mode.
func requireShimd(t testing.TB, what string) {
	t.Helper()
	requireSUT(t)
	if maintSelfTest() {
		t.Skipf("self-test mode: %s is shimd-only", what)
	}
}

// maintShimdArgs returns shimd-only flags, or nothing in self-test mode (the
// etcd stand-in does not accept them).
func maintShimdArgs(args ...string) []string {
	if maintSelfTest() {
		return nil
	}
	return args
}

// startShimd starts the server under test on a fresh store of b, with
// shimd-only flags, for tests without a reference etcd. It is stopped
// (SIGTERM, checked) when t ends.
func startShimd(t testing.TB, b harness.Backend, o harness.Options, extra ...string) *server {
	t.Helper()
	requireSUT(t)
	st := newStore(t, b)
	return startShimdOn(t, st.Backend, tempDir(t, "shimd"), o, extra...)
}

// startShimdOn starts the server under test on backend b (a store's backend)
// and dataDir.
func startShimdOn(t testing.TB, b harness.Backend, dataDir string, o harness.Options, extra ...string) *server {
	t.Helper()
	p := &harness.Process{Bin: sutBin, DataDir: dataDir, Backend: b, Options: o, ExtraArgs: extra}
	if err := p.Start(); err != nil {
		t.Fatalf("start %s on %s: %v", sutName, b.Name, err)
	}
	s, err := newServer(sutName, p.Endpoint, func() {
		if err := p.Stop(); err != nil {
			t.Errorf("%s on %s: stop: %v\n%s", sutName, b.Name, err, p.Output())
		}
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", sutName, err)
	}
	s.proc = p
	t.Cleanup(s.stop)
	return s
}

// ctxT is a context bounded by d, cancelled when t ends.
func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// fillUntilNoSpace overwrites key with incompressible values of valLen bytes
// until the server refuses a put, and returns how many puts succeeded and
// the refusal. It gives up (error nil) after max puts.
func fillUntilNoSpace(ctx context.Context, cli *clientv3.Client, key string, valLen, max int, seed uint64) (int, error) {
	r := newRand(seed)
	for i := 0; i < max; i++ {
		if _, err := cli.Put(ctx, key, maintRandValue(r, valLen)); err != nil {
			return i, err
		}
	}
	return max, nil
}

// etcdctl returns an etcdctl 3.6 binary built from the conformance module
// (pinned by tools.go) into t's temporary directory; the go build cache
// makes it cheap after the first time. ETCDCTL_BIN overrides it.
func etcdctl(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ETCDCTL_BIN"); p != "" {
		return p
	}
	dir := t.TempDir()
	bin, err := harness.Build(".", "go.etcd.io/etcd/etcdctl/v3", dir, "etcdctl")
	if err != nil {
		t.Fatalf("build etcdctl: %v", err)
	}
	return bin
}

// runCtl runs etcdctl against endpoint with stdin, returning its standard
// output (what the checks look at; standard error is appended to the error).
func runCtl(t testing.TB, bin, endpoint, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints=" + endpoint, "--command-timeout=60s"}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w; stderr: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Watches on one server for the compaction scenarios.

// maintWatchView is what a watch delivered: the control responses in full and
// the events of all event responses flattened (etcd's grouping of a replay
// into responses is not a guarantee).
type maintWatchView struct {
	Control []*pb.WatchResponse
	Events  []*mvccpb.Event
}

// maintCollectWatch opens a raw watch stream on s, creates req, and collects
// responses until done holds (then for settle more) or timeout passes.
func maintCollectWatch(ctx context.Context, s *server, req *pb.WatchCreateRequest, done func(v maintWatchView) bool, timeout, settle time.Duration) (maintWatchView, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := pb.NewWatchClient(s.cli.ActiveConnection()).Watch(ctx)
	if err != nil {
		return maintWatchView{}, err
	}
	if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}); err != nil {
		return maintWatchView{}, err
	}
	ch := make(chan *pb.WatchResponse, 64)
	errc := make(chan error, 1)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				errc <- err
				return
			}
			ch <- r
		}
	}()
	var v maintWatchView
	deadline := time.After(timeout)
	var settled <-chan time.Time
	for {
		select {
		case r := <-ch:
			n := normalize(r).(*pb.WatchResponse)
			if len(n.Events) > 0 && !n.Canceled && n.CompactRevision == 0 && !n.Created {
				v.Events = append(v.Events, n.Events...)
			} else {
				evs := n.Events
				n.Events = nil
				v.Control = append(v.Control, n)
				v.Events = append(v.Events, evs...)
			}
			if settled == nil && done(v) {
				settled = time.After(settle)
			}
		case err := <-errc:
			return v, fmt.Errorf("watch stream ended: %w", err)
		case <-settled:
			return v, nil
		case <-deadline:
			return v, nil
		}
	}
}

// clip shortens s to n bytes for logs.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("…(%d more bytes)\n", len(s)-n)
}
