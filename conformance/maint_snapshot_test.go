package conformance

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestSnapshotRestore: `etcdctl snapshot save` against shimd on each
// backend, then `shimd snapshot restore` of that file into a fresh store of
// every backend (the same kind and the others: SQLite into PostgreSQL,
// PostgreSQL into MariaDB, MariaDB into SQLite, ...), and shimd started on
// the restored store must answer like the original: every key, value,
// revision and version at every retained revision, the compaction revision,
// HashKV, shimd's Hash, the leases and their keys, and the next revision.
func TestSnapshotRestore(t *testing.T) {
	requireShimd(t, "snapshot restore")
	ctl := etcdctl(t)
	for _, src := range harness.Backends() {
		t.Run("from-"+src.Name, func(t *testing.T) {
			needBackend(t, src)
			orig := startShimd(t, src, harness.Options{})
			compactRev := maintSnapshotHistory(t, orig)
			file := filepath.Join(t.TempDir(), "snap.db")
			out, err := runCtl(t, ctl, orig.proc.Endpoint, "", "snapshot", "save", file)
			if err != nil {
				t.Fatalf("etcdctl snapshot save: %v\n%s", err, out)
			}
			t.Logf("$ etcdctl snapshot save %s\n%s", file, out)
			if !strings.Contains(out, "Snapshot saved at "+file) {
				t.Errorf("etcdctl snapshot save answered %q", out)
			}

			for _, dst := range harness.Backends() {
				t.Run("into-"+dst.Name, func(t *testing.T) {
					needBackend(t, dst)
					st := newStore(t, dst)
					dataDir := tempDir(t, "restored")
					args := []string{"snapshot", "restore", file, "--data-dir", dataDir}
					if st.Backend.Endpoint != "" {
						args = append(args, "--endpoint", st.Backend.Endpoint)
					}
					if out, err := exec.Command(sutBin, args...).CombinedOutput(); err != nil {
						t.Fatalf("shimd %s: %v\n%s", strings.Join(args, " "), err, out)
					}
					// A second restore into the now non-empty store is refused.
					if out, err := exec.Command(sutBin, args...).CombinedOutput(); err == nil {
						t.Errorf("a restore into a non-empty store succeeded:\n%s", out)
					} else if !strings.Contains(string(out), "not empty") {
						t.Errorf("a restore into a non-empty store failed without saying why: %s", out)
					}
					restored := startShimdOn(t, st.Backend, dataDir, harness.Options{})
					maintCompareRestored(t, orig, restored, compactRev, true)
				})
			}
		})
	}
}

// maintSnapshotHistory writes a history: leases, overwrites, deletes, txns with several puts, a
// revoked lease, a compaction at a delete, and writes after it. Returns the
// compaction revision.
func maintSnapshotHistory(t *testing.T, s *server) int64 {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	cli := s.cli
	r := newRand(11)
	must := func(resp any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("writing the history: %v%s", err, s.crashInfo())
		}
	}
	for _, l := range []struct{ id, ttl int64 }{{0x51, 3600}, {0x52, 7200}, {0x53, 600}} {
		_, err := s.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: l.id, TTL: l.ttl})
		must(nil, err)
	}
	for i := 0; i < 40; i++ {
		val := fmt.Sprintf("v%d", i)
		if i%7 == 0 {
			val = maintRandValue(r, 10<<10) // binary, not valid UTF-8
		}
		must(cli.Put(ctx, fmt.Sprintf("snap/k%02d", i%13), val))
	}
	must(cli.Put(ctx, "snap/leased/a", "1", clientv3.WithLease(0x51)))
	must(cli.Put(ctx, "snap/leased/b", "1", clientv3.WithLease(0x52)))
	must(cli.Put(ctx, "snap/leased/c", "1", clientv3.WithLease(0x53)))
	must(cli.Put(ctx, "snap/leased/d", "1", clientv3.WithLease(0x53)))
	must(cli.Txn(ctx).Then(clientv3.OpPut("snap/t1", "1"), clientv3.OpPut("snap/t2", "2"), clientv3.OpDelete("snap/k00")).Commit())
	must(cli.Delete(ctx, "snap/k01", clientv3.WithRange("snap/k04")))
	must(cli.Put(ctx, "snap/empty", ""))
	must(cli.Put(ctx, "snap/\x00\xff", "odd key"))
	d, err := cli.Delete(ctx, "snap/k05")
	must(d, err)
	compactRev := d.Header.Revision
	must(cli.Put(ctx, "snap/k06", "after"))
	_, err = s.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: 0x53})
	must(nil, err)
	must(cli.Compact(ctx, compactRev, clientv3.WithCompactPhysical()))
	for i := 0; i < 10; i++ {
		must(cli.Put(ctx, fmt.Sprintf("snap/k%02d", i), fmt.Sprintf("post%d", i)))
	}
	must(cli.Delete(ctx, "snap/t1"))
	return compactRev
}

// maintCompareRestored compares the original and the restored server op by
// op; bothShimd adds shimd's own Hash, which etcd computes differently.
func maintCompareRestored(t *testing.T, orig, restored *server, compactRev int64, bothShimd bool) {
	t.Helper()
	same := func(desc string, fn opFunc) (any, error) {
		t.Helper()
		a, aerr := call(orig, fn)
		b, berr := call(restored, fn)
		if d := diffOutcomes(a, aerr, b, berr); d != "" {
			t.Fatalf("\nDIFFERENCE after the restore: %s\n\n%s\ndiff (-original +restored):\n%s%s",
				desc, sideBySide("original", outcomeLines(a, aerr), "restored", outcomeLines(b, berr)), d, restored.crashInfo())
		}
		return a, aerr
	}
	all := func(rev int64) opFunc {
		return func(ctx context.Context, s *server) (any, error) {
			return s.kv.Range(ctx, &pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00"), Revision: rev})
		}
	}
	resp, err := same("Range everything", all(0))
	if err != nil {
		t.Fatalf("range: %v", err)
	}
	cur := resp.(*pb.RangeResponse).Header.Revision
	for rev := compactRev; rev <= cur; rev++ {
		same(fmt.Sprintf("Range everything at revision %d", rev), all(rev))
		// At the compact revision itself the original answers from the hash
		// its compaction remembered (as etcd does); a restored store, like a
		// restored etcd, has no such memory.
		if rev == compactRev {
			continue
		}
		same(fmt.Sprintf("HashKV at revision %d", rev), func(ctx context.Context, s *server) (any, error) {
			return maint(s).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
		})
	}
	if _, err := same(fmt.Sprintf("Range everything at revision %d (compacted)", compactRev-1), all(compactRev-1)); errCode(err) != errCode(rpctypes.ErrGRPCCompacted) {
		t.Errorf("range below the compaction revision %d: %v, want %v", compactRev, err, rpctypes.ErrGRPCCompacted)
	}
	same("HashKV {revision:0}", func(ctx context.Context, s *server) (any, error) {
		return maint(s).HashKV(ctx, &pb.HashKVRequest{})
	})
	if bothShimd {
		same("Hash (shimd's hash of the whole log and leases)", func(ctx context.Context, s *server) (any, error) {
			return maint(s).Hash(ctx, &pb.HashRequest{})
		})
	}
	same(fmt.Sprintf("Compact {revision:%d} (already compacted)", compactRev), func(ctx context.Context, s *server) (any, error) {
		return s.kv.Compact(ctx, &pb.CompactionRequest{Revision: compactRev})
	})
	same("Watch from the compaction revision", func(ctx context.Context, s *server) (any, error) {
		return maintCollectWatch(ctx, s, &pb.WatchCreateRequest{Key: b("\x00"), RangeEnd: b("\x00"), StartRevision: compactRev, PrevKv: true},
			func(v maintWatchView) bool {
				return len(v.Events) > 0 && v.Events[len(v.Events)-1].Kv.ModRevision >= cur
			}, 10*time.Second, 200*time.Millisecond)
	})
	same("LeaseLeases (ids, sorted)", func(ctx context.Context, s *server) (any, error) {
		r, err := s.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
		if err != nil {
			return nil, err
		}
		var ids []int64
		for _, l := range r.Leases {
			ids = append(ids, l.ID)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		return fmt.Sprint(ids), nil
	})
	for _, id := range []int64{0x51, 0x52, 0x53} {
		same(fmt.Sprintf("LeaseTimeToLive {ID:%#x keys:true} (TTL left not compared)", id), func(ctx context.Context, s *server) (any, error) {
			r, err := s.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id, Keys: true})
			if err != nil {
				return nil, err
			}
			r.TTL = 0
			r.Header = nil
			// etcd lists a lease's keys in no particular order.
			sort.Slice(r.Keys, func(i, j int) bool { return string(r.Keys[i]) < string(r.Keys[j]) })
			return r, nil
		})
	}
	// The restored leases run: a keep-alive works.
	for _, s := range []*server{orig, restored} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := s.cli.KeepAliveOnce(ctx, 0x51); err != nil {
			t.Errorf("%s: keep-alive of lease 0x51: %v", s.name, err)
		}
		cancel()
	}

	// Writes continue the history (on the restored server only: the
	// original is compared with the next restore too). The new key is
	// named after the revision, so that restores can be chained.
	ctx := ctxT(t, time.Minute)
	next := fmt.Sprintf("snap/next%d", cur)
	before, err := orig.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: 0x52, Keys: true})
	if err != nil {
		t.Fatalf("original: lease 0x52: %v", err)
	}
	k06, err := orig.cli.Get(ctx, "snap/k06")
	if err != nil || len(k06.Kvs) != 1 {
		t.Fatalf("original: get snap/k06: %v", err)
	}
	p, err := restored.kv.Put(ctx, &pb.PutRequest{Key: b(next), Value: b("1"), Lease: 0x52, PrevKv: true})
	if err != nil {
		t.Fatalf("restored: put: %v", err)
	}
	if p.Header.Revision != cur+1 || p.PrevKv != nil {
		t.Errorf("restored: the first put got revision %d (prev_kv %v), want %d", p.Header.Revision, p.PrevKv, cur+1)
	}
	p, err = restored.kv.Put(ctx, &pb.PutRequest{Key: b("snap/k06"), Value: b("x"), PrevKv: true})
	if err != nil {
		t.Fatalf("restored: put: %v", err)
	}
	if kv := k06.Kvs[0]; p.Header.Revision != cur+2 || p.PrevKv == nil || p.PrevKv.String() != kv.String() {
		t.Errorf("restored: put snap/k06 got revision %d and prev_kv %v, want %d and %v", p.Header.Revision, p.PrevKv, cur+2, kv)
	}
	g, err := restored.cli.Get(ctx, "snap/k06")
	if err != nil || len(g.Kvs) != 1 || g.Kvs[0].CreateRevision != k06.Kvs[0].CreateRevision || g.Kvs[0].Version != k06.Kvs[0].Version+1 {
		t.Errorf("restored: snap/k06 after a put: %v %v (before: %v)", g, err, k06.Kvs[0])
	}
	ttl, err := restored.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: 0x52, Keys: true})
	if err != nil || len(ttl.Keys) != len(before.Keys)+1 || !slices.ContainsFunc(ttl.Keys, func(k []byte) bool { return string(k) == next }) {
		t.Errorf("restored: lease 0x52 after a put with it: %v %v", ttl, err)
	}
}
