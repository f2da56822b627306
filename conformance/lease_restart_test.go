package conformance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestLeaseRestart checks, on the server under test only (not diffed), that
// leases survive a restart on the same data dir: a long lease keeps its keys
// and can be kept alive under the same ID, and a short lease left alone
// across the restart expires afterwards exactly once, deleting its keys in
// one revision. Once with SIGTERM, once with kill -9.
func TestLeaseRestart(t *testing.T) {
	requireSUT(t)
	variants := []struct {
		name string
		down func(p *harness.Process) error
	}{
		{"sigterm", func(p *harness.Process) error { return p.Stop() }},
		{"kill9", func(p *harness.Process) error { p.Kill(); return nil }},
	}
	for _, bk := range harness.Backends() {
		for _, v := range variants {
			t.Run(bk.Name+"/"+v.name, func(t *testing.T) {
				leaseRestart(t, bk, v.down)
			})
		}
	}
}

func leaseRestart(t *testing.T, bk harness.Backend, down func(p *harness.Process) error) {
	const (
		long, short, barrier = 0x7e01, 0x7e02, 0x7e03
		longTTL, shortTTL    = 30, 3
	)
	longKeys := []string{"r/long/a", "r/long/b"}
	shortKeys := []string{"r/short/a", "r/short/b", "r/short/c"}

	p, err := harness.StartProcess(sutBin, tempDir(t, "data"), newStore(t, bk).Backend, harness.Options{})
	if err != nil {
		t.Fatalf("start %s: %v", sutName, err)
	}
	defer p.Kill()
	r := &restartClient{t: t, p: p}
	r.connect()
	defer func() { r.cli.Close() }()

	if g := r.grant(long, longTTL); g.TTL != longTTL {
		t.Fatalf("grant %#x: TTL %d, want %d", long, g.TTL, longTTL)
	}
	for _, k := range longKeys {
		r.put(k, long)
	}
	shortSent := time.Now() // the short lease cannot legitimately expire before shortSent+3s
	r.grant(short, shortTTL)
	var rev0 int64
	for _, k := range shortKeys {
		rev0 = r.put(k, short)
	}

	restart := func(when string) {
		t.Helper()
		r.cli.Close()
		start := time.Now()
		if err := down(p); err != nil {
			t.Errorf("%s: stop: %v\n%s", when, err, p.Output())
		}
		if err := p.Start(); err != nil {
			t.Fatalf("%s: restart: %v", when, err)
		}
		t.Logf("%s: restarted in %v", when, time.Since(start).Round(time.Millisecond))
		r.connect()
	}
	restart("first restart")

	// Right after the restart the short lease should usually still be there.
	if tl := r.ttl(short); tl.TTL == -1 {
		if since := time.Since(shortSent); since < shortTTL*time.Second {
			t.Errorf("lease %#x (TTL %d s) expired %v after it was granted", short, shortTTL, since.Round(time.Millisecond))
		} else {
			t.Logf("lease %#x already expired when first checked, %v after the grant (slow restart)", short, since.Round(time.Millisecond))
		}
	} else {
		r.wantTTL(tl, short, shortTTL, shortKeys)
	}
	r.wantTTL(r.ttl(long), long, longTTL, longKeys)
	ka, err := r.keepAliveOnce(long)
	if err != nil {
		t.Fatalf("KeepAliveOnce(%#x) after restart: %v", long, err)
	}
	if ka.ID != long || ka.TTL != longTTL {
		t.Errorf("KeepAliveOnce(%#x) after restart: ID %#x TTL %d, want ID %#x TTL %d", long, ka.ID, ka.TTL, long, longTTL)
	}

	// The short lease expires: one revision, one watch response.
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := r.cli.Watch(wctx, "r/", clientv3.WithPrefix(), clientv3.WithRev(rev0+1), clientv3.WithPrevKV())
	run, err := readWatch(wch, len(shortKeys), 30*time.Second)
	if err != nil {
		t.Fatalf("waiting for the expiry of %#x: %v", short, err)
	}
	if len(run.Batches) != 1 {
		t.Errorf("expiry of %#x came in %d watch responses, want 1: %s", short, len(run.Batches), oneLine(run))
	}
	var deleted []string
	for _, ev := range run.events() {
		deleted = append(deleted, string(ev.Kv.Key))
		if ev.Type != mvccpb.DELETE || ev.Kv.ModRevision != rev0+1 {
			t.Errorf("expiry event %s: want a DELETE at revision %d", oneLine(ev), rev0+1)
		}
		if ev.PrevKv == nil || ev.PrevKv.Lease != short {
			t.Errorf("expiry event %s: want prev_kv with lease %#x", oneLine(ev), short)
		}
	}
	sort.Strings(deleted)
	if !slices.Equal(deleted, shortKeys) {
		t.Errorf("expiry deleted %q, want %q", deleted, shortKeys)
	}
	// A read after the watch event must see the expiry (etcd only notifies
	// watchers of committed, readable revisions).
	if got := r.get("r/"); !slices.Equal(rangeKeys((*pb.RangeResponse)(got)), longKeys) || got.Header.Revision != rev0+1 {
		t.Errorf("Get right after the expiry's watch event: keys %q at revision %d, want %q at %d", rangeKeys((*pb.RangeResponse)(got)), got.Header.Revision, longKeys, rev0+1)
		start := time.Now()
		err := pollUntil(5*time.Second, func(ctx context.Context) (bool, error) {
			g, err := r.cli.Get(ctx, "r/", clientv3.WithPrefix())
			return err == nil && g.Header.Revision == rev0+1 && slices.Equal(rangeKeys((*pb.RangeResponse)(g)), longKeys), err
		})
		t.Logf("  ... state after polling for %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if tl := r.ttl(short); tl.TTL != -1 {
		t.Errorf("TimeToLive(%#x) after expiry: %s, want TTL -1", short, oneLine(tl))
	}
	if _, err := r.keepAliveOnce(short); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("KeepAliveOnce(%#x) after expiry: %v, want %v", short, err, rpctypes.ErrLeaseNotFound)
	}

	// Exactly once: re-create a former key of the short lease, then let a
	// barrier lease expire; the watch must show just those writes.
	rev := r.put("r/short/a", 0)
	r.grant(barrier, 2)
	r.put("r/barrier", barrier)
	run, err = readWatch(wch, 3, 30*time.Second)
	if err != nil {
		t.Fatalf("waiting for the barrier lease to expire: %v", err)
	}
	want := []string{
		fmt.Sprintf("PUT r/short/a @%d", rev),
		fmt.Sprintf("PUT r/barrier @%d", rev+1),
		fmt.Sprintf("DELETE r/barrier @%d", rev+2),
	}
	if got := eventSummary(run.events()); !slices.Equal(got, want) {
		t.Errorf("after the expiry the watch saw %q, want %q", got, want)
	}

	// Revoking the long lease after the restart deletes its keys at once.
	rr := r.revoke(long)
	run, err = readWatch(wch, len(longKeys), 10*time.Second)
	if err != nil {
		t.Fatalf("waiting for the revoke of %#x: %v", long, err)
	}
	if got, want := eventSummary(run.events()), []string{
		fmt.Sprintf("DELETE r/long/a @%d", rev+3), fmt.Sprintf("DELETE r/long/b @%d", rev+3),
	}; !slices.Equal(got, want) || len(run.Batches) != 1 || rr.Header.Revision != rev+3 {
		t.Errorf("revoke of %#x (header revision %d): watch saw %q in %d responses, want %q in one", long, rr.Header.Revision, got, len(run.Batches), want)
	}
	wcancel()

	// Nothing comes back after another restart.
	restart("second restart")
	got := r.get("r/")
	if keys := rangeKeys((*pb.RangeResponse)(got)); !slices.Equal(keys, []string{"r/short/a"}) || got.Header.Revision != rev+3 {
		t.Errorf("after the second restart: keys %q at revision %d, want [r/short/a] at %d", keys, got.Header.Revision, rev+3)
	}
	for _, id := range []int64{long, short, barrier} {
		if tl := r.ttl(id); tl.TTL != -1 {
			t.Errorf("after the second restart TimeToLive(%#x) = %s, want TTL -1", id, oneLine(tl))
		}
	}
	if err := p.Stop(); err != nil {
		t.Errorf("final stop: %v\n%s", err, p.Output())
	}
}

// restartClient wraps clientv3 calls that must succeed.
type restartClient struct {
	t   *testing.T
	p   *harness.Process
	cli *clientv3.Client
}

func (r *restartClient) connect() {
	r.t.Helper()
	cli, err := dial(r.p.Endpoint)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cli = cli
}

func (r *restartClient) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (r *restartClient) fail(what string, err error) {
	r.t.Helper()
	select {
	case <-r.p.Exited():
		r.t.Fatalf("%s: %v\n%s EXITED (%v); output tail:\n%s", what, err, sutName, r.p.ExitErr(), r.p.Output())
	default:
	}
	r.t.Fatalf("%s: %v", what, err)
}

func (r *restartClient) grant(id, ttl int64) *pb.LeaseGrantResponse {
	r.t.Helper()
	ctx, cancel := r.ctx()
	defer cancel()
	resp, err := pb.NewLeaseClient(r.cli.ActiveConnection()).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl})
	if err != nil {
		r.fail(fmt.Sprintf("LeaseGrant(%#x, %d)", id, ttl), err)
	}
	return resp
}

func (r *restartClient) revoke(id int64) *clientv3.LeaseRevokeResponse {
	r.t.Helper()
	ctx, cancel := r.ctx()
	defer cancel()
	resp, err := r.cli.Revoke(ctx, clientv3.LeaseID(id))
	if err != nil {
		r.fail(fmt.Sprintf("Revoke(%#x)", id), err)
	}
	return resp
}

func (r *restartClient) put(key string, lease int64) int64 {
	r.t.Helper()
	ctx, cancel := r.ctx()
	defer cancel()
	resp, err := r.cli.Put(ctx, key, "v", clientv3.WithLease(clientv3.LeaseID(lease)))
	if err != nil {
		r.fail(fmt.Sprintf("Put(%q, lease %#x)", key, lease), err)
	}
	return resp.Header.Revision
}

func (r *restartClient) get(prefix string) *clientv3.GetResponse {
	r.t.Helper()
	ctx, cancel := r.ctx()
	defer cancel()
	resp, err := r.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		r.fail(fmt.Sprintf("Get(%q, prefix)", prefix), err)
	}
	return resp
}

func (r *restartClient) ttl(id int64) *clientv3.LeaseTimeToLiveResponse {
	r.t.Helper()
	ctx, cancel := r.ctx()
	defer cancel()
	resp, err := r.cli.TimeToLive(ctx, clientv3.LeaseID(id), clientv3.WithAttachedKeys())
	if err != nil {
		r.fail(fmt.Sprintf("TimeToLive(%#x)", id), err)
	}
	return resp
}

func (r *restartClient) keepAliveOnce(id int64) (*clientv3.LeaseKeepAliveResponse, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	return r.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
}

// wantTTL checks a live lease's TimeToLive: granted TTL, remaining TTL in
// [0, granted], attached keys (as a set).
func (r *restartClient) wantTTL(tl *clientv3.LeaseTimeToLiveResponse, id, granted int64, keys []string) {
	r.t.Helper()
	var got []string
	for _, k := range tl.Keys {
		got = append(got, string(k))
	}
	sort.Strings(got)
	if int64(tl.ID) != id || tl.GrantedTTL != granted || tl.TTL < 0 || tl.TTL > granted || !slices.Equal(got, keys) {
		r.t.Errorf("TimeToLive(%#x) after restart: ID %#x TTL %d granted %d keys %q; want granted %d, TTL in [0, %d], keys %q",
			id, tl.ID, tl.TTL, tl.GrantedTTL, got, granted, granted, keys)
	}
}

func eventSummary(evs []*mvccpb.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s %s @%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision)
	}
	return out
}
