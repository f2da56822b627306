package conformance

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/conformance/harness"
)

// `shimd migrate --from URL` from an embedded etcd 3.6 holding a
// Kubernetes-like dataset, into every backend, then shimd started on the
// result: the same keys and values, the same leases with their keys and no
// more time left than at the source, and revisions that continue above the
// source's.

// kubeDataset fills an etcd with about 2,000 keys under /registry/ (0.5 to
// 4 KiB binary values, like kube-apiserver's protobuf objects), with some
// history (overwrites and deletes), and events attached to leases as
// kube-apiserver attaches them. It returns the lease ids.
func kubeDataset(t *testing.T, s *server) []int64 {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	r := newRand(42)
	value := func() string {
		n := 512 + r.IntN(4096-512+1)
		b := make([]byte, n)
		copy(b, "k8s\x00")
		for i := 4; i < n; i++ {
			b[i] = byte(r.UintN(256))
		}
		return string(b)
	}
	var leases []int64
	for _, ttl := range []int64{600, 1200, 3600, 900} { // the last gets no keys
		g, err := s.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, g.ID)
	}
	type put struct {
		key, val string
		lease    int64
	}
	var puts []put
	ns := func(i int) string { return fmt.Sprintf("ns-%02d", i%20) }
	for i := 0; i < 20; i++ {
		puts = append(puts, put{"/registry/namespaces/" + ns(i), value(), 0})
	}
	for i := 0; i < 400; i++ {
		puts = append(puts, put{fmt.Sprintf("/registry/configmaps/%s/cm-%04d", ns(i), i), value(), 0})
	}
	for i := 0; i < 300; i++ {
		puts = append(puts, put{fmt.Sprintf("/registry/secrets/%s/secret-%04d", ns(i), i), value(), 0})
	}
	for i := 0; i < 800; i++ {
		puts = append(puts, put{fmt.Sprintf("/registry/pods/%s/pod-%04d", ns(i), i), value(), 0})
	}
	for i := 0; i < 480; i++ {
		puts = append(puts, put{fmt.Sprintf("/registry/events/%s/pod-%04d.%x", ns(i), i, r.Uint32()), value(), leases[i%3]})
	}
	// History: pod status updates and deleted configmaps.
	for i := 0; i < 200; i++ {
		puts = append(puts, put{fmt.Sprintf("/registry/pods/%s/pod-%04d", ns(i*3), i*3), value(), 0})
	}
	work := make(chan put)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				_, err := s.kv.Put(ctx, &pb.PutRequest{Key: []byte(p.key), Value: []byte(p.val), Lease: p.lease})
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		}()
	}
	// The overwrites must follow their creates.
	for _, p := range puts[:len(puts)-200] {
		work <- p
	}
	close(work)
	wg.Wait()
	for _, p := range puts[len(puts)-200:] {
		if _, err := s.kv.Put(ctx, &pb.PutRequest{Key: []byte(p.key), Value: []byte(p.val)}); err != nil {
			t.Fatal(err)
		}
	}
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	for i := 0; i < 50; i++ {
		if _, err := s.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte(fmt.Sprintf("/registry/configmaps/%s/cm-%04d", ns(i*7), i*7))}); err != nil {
			t.Fatal(err)
		}
	}
	return leases
}

// allKVs reads every key (paged), at rev (0: latest), and the revision read.
func allKVs(ctx context.Context, kv pb.KVClient, rev int64) (map[string]*mvccpb.KeyValue, int64, error) {
	out := map[string]*mvccpb.KeyValue{}
	key := []byte{0}
	for {
		r, err := kv.Range(ctx, &pb.RangeRequest{Key: key, RangeEnd: []byte{0}, Limit: 500, Revision: rev})
		if err != nil {
			return nil, 0, err
		}
		rev = r.Header.Revision
		for _, x := range r.Kvs {
			out[string(x.Key)] = x
		}
		if !r.More {
			return out, rev, nil
		}
		key = append(append([]byte(nil), r.Kvs[len(r.Kvs)-1].Key...), 0)
	}
}

// leaseView is a lease as TimeToLive reports it.
type leaseView struct {
	ttl, granted int64
	keys         []string
}

func leaseViews(ctx context.Context, lc pb.LeaseClient, ids []int64) (map[int64]leaseView, error) {
	out := map[int64]leaseView{}
	for _, id := range ids {
		r, err := lc.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id, Keys: true})
		if err != nil {
			return nil, err
		}
		v := leaseView{ttl: r.TTL, granted: r.GrantedTTL}
		for _, k := range r.Keys {
			v.keys = append(v.keys, string(k))
		}
		sort.Strings(v.keys)
		out[id] = v
	}
	return out, nil
}

var migrateLine = regexp.MustCompile(`copied (\d+) keys and (\d+) leases from \S+ at revision (\d+)`)

func TestOpsMigrate(t *testing.T) {
	requireShimd(t, "shimd migrate")
	src := startRef(t, harness.Options{})
	t.Cleanup(src.stop)
	leases := kubeDataset(t, src)
	srcURL := src.cli.Endpoints()[0]

	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			ctx := ctxT(t, 3*time.Minute)
			st := newStore(t, b)
			dataDir := tempDir(t, "migrated")
			target := []string{"--data-dir", dataDir}
			if b.IsShared() {
				target = []string{"--endpoint", st.Backend.Endpoint}
			}

			want, srcRev, err := allKVs(ctx, src.kv, 0)
			if err != nil {
				t.Fatal(err)
			}
			srcLeases, err := leaseViews(ctx, src.lease, leases)
			if err != nil {
				t.Fatal(err)
			}
			copyStart := time.Now()
			res := runShimd(t, "", opsEnv(), 2*time.Minute, append([]string{"migrate", "--from", srcURL}, target...)...)
			copyTook := time.Since(copyStart)
			if res.code != 0 {
				t.Fatalf("shimd migrate: exit %d\n%s", res.code, res.stderr)
			}
			t.Logf("shimd migrate (%v): %s", copyTook.Round(time.Millisecond), strings.TrimSpace(res.stderr))
			m := migrateLine.FindStringSubmatch(res.stderr)
			if m == nil {
				t.Fatalf("shimd migrate said %q; want \"copied N keys and M leases from URL at revision R\"", res.stderr)
			}
			if n, _ := strconv.Atoi(m[1]); n != len(want) {
				t.Errorf("migrate reports %d keys copied, the source has %d", n, len(want))
			}
			if n, _ := strconv.Atoi(m[2]); n != len(leases) {
				t.Errorf("migrate reports %d leases copied, the source has %d", n, len(leases))
			}
			if rev, _ := strconv.ParseInt(m[3], 10, 64); rev != srcRev {
				t.Errorf("migrate reports the source at revision %s, it was at %d", m[3], srcRev)
			}

			// A second copy into the same, now non-empty, database is
			// refused (and changes nothing: the comparison below).
			again := runShimd(t, "", opsEnv(), 2*time.Minute, append([]string{"migrate", "--from", srcURL}, target...)...)
			if again.code == 0 || !strings.Contains(again.stderr, "not empty") {
				t.Errorf("shimd migrate into a non-empty database: exit %d, %q; want a failure saying it is not empty", again.code, again.stderr)
			}

			var srv *server
			if b.IsShared() {
				srv = startShimdOn(t, st.Backend, tempDir(t, "shimd"), harness.Options{})
			} else {
				srv = startShimdOn(t, st.Backend, dataDir, harness.Options{})
			}
			got, rev, err := allKVs(ctx, srv.kv, 0)
			if err != nil {
				t.Fatal(err)
			}
			if rev <= srcRev {
				t.Errorf("shimd's revision after the copy is %d, not above the source's %d", rev, srcRev)
			}
			missing, extra, differ := 0, 0, 0
			for k, w := range want {
				g, ok := got[k]
				switch {
				case !ok:
					if missing++; missing <= 5 {
						t.Errorf("key %q is missing", k)
					}
				case !bytes.Equal(g.Value, w.Value) || g.Lease != w.Lease:
					if differ++; differ <= 5 {
						t.Errorf("key %q: value %d bytes lease %x, source %d bytes lease %x (values equal: %v)", k, len(g.Value), g.Lease, len(w.Value), w.Lease, bytes.Equal(g.Value, w.Value))
					}
				case g.ModRevision <= srcRev:
					t.Errorf("key %q has mod_revision %d, not above the source revision %d", k, g.ModRevision, srcRev)
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					if extra++; extra <= 5 {
						t.Errorf("key %q is not in the source", k)
					}
				}
			}
			if missing+extra+differ > 0 {
				t.Errorf("%d keys missing, %d extra, %d different (of %d)", missing, extra, differ, len(want))
			}

			shimdLeases, err := leaseViews(ctx, srv.lease, leases)
			if err != nil {
				t.Fatal(err)
			}
			elapsed := int64(time.Since(copyStart).Seconds()) + 2
			for _, id := range leases {
				s, g := srcLeases[id], shimdLeases[id]
				if g.ttl > s.ttl || g.ttl < s.ttl-elapsed || g.granted != s.granted {
					t.Errorf("lease %x: TTL %d of %d granted; the source had %d of %d before the copy (%ds ago)", id, g.ttl, g.granted, s.ttl, s.granted, elapsed)
				}
				if strings.Join(g.keys, "\n") != strings.Join(s.keys, "\n") {
					t.Errorf("lease %x has %d keys attached, the source %d", id, len(g.keys), len(s.keys))
				}
			}
			if ll, err := srv.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{}); err != nil || len(ll.Leases) != len(leases) {
				t.Errorf("LeaseLeases on shimd: %v, %v; want the %d leases", ll, err, len(leases))
			}

			// New writes continue above the source's revisions.
			p, err := srv.cli.Put(ctx, "/registry/after-migration", "x")
			if err != nil || p.Header.Revision <= rev {
				t.Errorf("put after the migration: %v, %v; want a revision above %d", p, err, rev)
			}
			// Revisions up to the source's are not in shimd's log: a read
			// there must not answer an empty (or partial) store, but fail
			// as a compacted revision does, so that clients relist.
			if r, err := srv.kv.Range(ctx, &pb.RangeRequest{Key: []byte("/registry/"), RangeEnd: []byte("/registry0"), CountOnly: true, Revision: srcRev}); !opsErrIs(err, rpctypes.ErrGRPCCompacted) {
				t.Errorf("a count of /registry/ at the source revision %d on shimd: count %d, error %v; want %v", srcRev, r.GetCount(), err, rpctypes.ErrGRPCCompacted)
			}

		})
	}
}

func opsErrIs(err, want error) bool {
	return err != nil && status.Code(err) == status.Code(want) && rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(want)
}

// kineLike serves the KV of an etcd through a Lease service that, as kine
// does, answers LeaseLeases and LeaseTimeToLive with an error.
type kineLike struct {
	pb.UnimplementedKVServer
	pb.UnimplementedLeaseServer
	kv pb.KVClient
}

func (k kineLike) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return k.kv.Range(ctx, r)
}

func (kineLike) LeaseLeases(context.Context, *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	return nil, status.Error(codes.Unknown, "lease leases is not supported")
}

func (kineLike) LeaseTimeToLive(context.Context, *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	return nil, status.Error(codes.Unknown, "lease time to live is not supported")
}

// TestOpsMigrateKineLike migrates from a source with kine's Lease service
// (k3s-io/kine answers LeaseLeases and LeaseTimeToLive with "... is not
// supported"): `shimd --help` says migrate copies from kine, so every key
// and value must arrive.
func TestOpsMigrateKineLike(t *testing.T) {
	requireShimd(t, "shimd migrate")
	src := startRef(t, harness.Options{})
	t.Cleanup(src.stop)
	ctx := ctxT(t, 2*time.Minute)
	for i := 0; i < 50; i++ {
		if _, err := src.cli.Put(ctx, fmt.Sprintf("/registry/configmaps/default/cm-%02d", i), strings.Repeat("v", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	k := &kineLike{kv: src.kv}
	pb.RegisterKVServer(g, k)
	pb.RegisterLeaseServer(g, k)
	go g.Serve(ln)
	t.Cleanup(g.Stop)

	dir := tempDir(t, "from-kine")
	res := runShimd(t, "", opsEnv(), time.Minute, "migrate", "--from", "http://"+ln.Addr().String(), "--data-dir", dir)
	if res.code != 0 {
		t.Fatalf("shimd migrate from a kine-like source: exit %d: %s", res.code, strings.TrimSpace(res.stderr))
	}
	srv := startShimdOn(t, harness.Backend{Name: "sqlite", Kind: harness.KindSQLite}, dir, harness.Options{})
	got, _, err := allKVs(ctx, srv.kv, 0)
	if err != nil || len(got) != 50 {
		t.Errorf("after migrating from a kine-like source shimd holds %d keys (err %v), want 50", len(got), err)
	}
}
