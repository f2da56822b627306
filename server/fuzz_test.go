package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/shimd/shimd/drivers/sqlite"
	"github.com/shimd/shimd/sqllog"
)

// Fuzz targets for request validation and application: each sends requests
// with arbitrary fields through loopback gRPC to a shimd on SQLite (one per
// fuzz worker) and checks that shimd does not panic, that an invalid request
// gets one of etcd's errors and changes nothing (same revision, same data),
// and that a valid one does what etcd does. Run them with `make fuzz`.

const (
	fuzzMaxTxnOps       = 8
	fuzzMaxRequestBytes = 64 << 10
	longTTL             = 24 * 3600 // leases that never expire during a run
)

// fuzzKeys is the key space the fuzz targets keep populated: byte-order
// corners and a prefix.
var fuzzKeys = []string{"\x00", "\x00\x00", "a", "a\x00", "a\xff", "ab", "b", "k/1", "k/2", "k/3", "\xff", "\xff\xff"}

type fuzzServer struct {
	kv     pb.KVClient
	lease  pb.LeaseClient
	watch  pb.WatchClient
	leases []int64 // long-lived leases, the first attached to k/1
}

// startFuzzServer serves a fresh shimd on SQLite (on tmpfs when there is
// one) over loopback gRPC, with small limits so that the fuzzer reaches
// them, and fills the key space.
func startFuzzServer(f *testing.F) *fuzzServer {
	f.Helper()
	dir := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "server-fuzz-"); err == nil {
			dir = d
			f.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	if dir == "" {
		dir = f.TempDir()
	}
	be, err := sqlite.Open(filepath.Join(dir, "shimd.db"))
	if err != nil {
		f.Fatal(err)
	}
	log, err := sqllog.Open(context.Background(), be, sqllog.Options{})
	if err != nil {
		f.Fatal(err)
	}
	srv := New(log, Config{MaxTxnOps: fuzzMaxTxnOps, MaxRequestBytes: fuzzMaxRequestBytes})
	g := grpc.NewServer(srv.GRPCOptions()...)
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go g.Serve(ln)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		conn.Close()
		g.Stop()
		srv.Close()
		log.Close()
	})
	fs := &fuzzServer{kv: pb.NewKVClient(conn), lease: pb.NewLeaseClient(conn), watch: pb.NewWatchClient(conn)}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		r, err := fs.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: longTTL})
		if err != nil {
			f.Fatal(err)
		}
		fs.leases = append(fs.leases, r.ID)
	}
	for round := 0; round < 2; round++ { // versions above 1
		fs.refill(f, true)
	}
	return fs
}

// refill puts the missing keys of the key space back (all of them when
// all), in one txn.
func (fs *fuzzServer) refill(tb testing.TB, all bool) {
	tb.Helper()
	s := fs.snapshot(tb)
	var ops []*pb.RequestOp
	for i, k := range fuzzKeys {
		if _, ok := s.kvs[k]; ok && !all {
			continue
		}
		p := &pb.PutRequest{Key: []byte(k), Value: []byte(fmt.Sprintf("v%d-%d", i, s.rev))}
		if k == "k/1" {
			p.Lease = fs.leases[0]
		}
		ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}})
	}
	for len(ops) > 0 {
		n := min(len(ops), fuzzMaxTxnOps)
		if _, err := fs.kv.Txn(context.Background(), &pb.TxnRequest{Success: ops[:n]}); err != nil {
			tb.Fatalf("refill: %v", err)
		}
		ops = ops[n:]
	}
}

// snap is the whole key space at a revision.
type snap struct {
	rev     int64
	kvs     map[string]*mvccpb.KeyValue
	ordered []*mvccpb.KeyValue
}

func (fs *fuzzServer) snapshotAt(tb testing.TB, rev int64) snap {
	tb.Helper()
	r, err := fs.kv.Range(context.Background(), &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
	if err != nil {
		tb.Fatalf("read the whole key space at %d: %v", rev, err)
	}
	s := snap{rev: r.Header.Revision, kvs: map[string]*mvccpb.KeyValue{}, ordered: r.Kvs}
	for _, kv := range r.Kvs {
		s.kvs[string(kv.Key)] = kv
	}
	return s
}

func (fs *fuzzServer) snapshot(tb testing.TB) snap { return fs.snapshotAt(tb, 0) }

func kvEq(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version && a.Lease == b.Lease
}

// sameAs reports how s differs from o ("" if not at all).
func (s snap) diff(o snap) string {
	if s.rev != o.rev {
		return fmt.Sprintf("revision %d -> %d", s.rev, o.rev)
	}
	for k, kv := range s.kvs {
		if !kvEq(kv, o.kvs[k]) {
			return fmt.Sprintf("key %q: %v -> %v", k, kv, o.kvs[k])
		}
	}
	for k, kv := range o.kvs {
		if s.kvs[k] == nil {
			return fmt.Sprintf("key %q appeared: %v", k, kv)
		}
	}
	return ""
}

// requireEtcdError fails unless err is one of etcd's errors (what clientv3
// turns into an rpctypes error), and if want is set, that one.
func requireEtcdError(t *testing.T, what string, err error, want error) {
	t.Helper()
	if _, ok := rpctypes.Error(err).(rpctypes.EtcdError); !ok {
		t.Fatalf("%s: error %v is not one of etcd's", what, err)
	}
	if want != nil && rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

// unchanged fails if anything changed since before.
func (fs *fuzzServer) unchanged(t *testing.T, what string, before snap) {
	t.Helper()
	if d := before.diff(fs.snapshot(t)); d != "" {
		t.Fatalf("%s: a refused request changed the store: %s", what, d)
	}
}

func fuzzCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// inRange is etcd's range membership: end empty is the key alone, "\x00"
// every key from key.
func inRange(k, key, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(k, key)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(k, key) >= 0
	}
	return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
}

func FuzzRange(f *testing.F) {
	fs := startFuzzServer(f)
	f.Add([]byte("a"), []byte("b"), int64(0), int64(0), int32(0), int32(0), false, false, int64(0), int64(0), int64(0), int64(0))
	f.Add([]byte{0}, []byte{0}, int64(2), int64(0), int32(2), int32(4), true, false, int64(3), int64(0), int64(0), int64(20))
	f.Add([]byte("k/"), []byte("k0"), int64(1), int64(5), int32(1), int32(1), false, true, int64(0), int64(9), int64(2), int64(0))
	f.Add([]byte("\xff"), []byte{}, int64(-1), int64(-3), int32(7), int32(-1), false, false, int64(0), int64(0), int64(0), int64(0))
	f.Add([]byte{}, []byte("z"), int64(9223372036854775807), int64(1<<40), int32(0), int32(9), true, true, int64(-1), int64(-1), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, key, end []byte, limit, rev int64, order, target int32, keysOnly, countOnly bool, minMod, maxMod, minCreate, maxCreate int64) {
		r := &pb.RangeRequest{Key: key, RangeEnd: end, Limit: limit, Revision: rev, SortOrder: pb.RangeRequest_SortOrder(order),
			SortTarget: pb.RangeRequest_SortTarget(target), KeysOnly: keysOnly, CountOnly: countOnly,
			MinModRevision: minMod, MaxModRevision: maxMod, MinCreateRevision: minCreate, MaxCreateRevision: maxCreate}
		checkRangeRequest(t, fs, r)
	})
}

// checkRangeRequest sends r and checks the answer against etcd's range
// semantics applied to the whole key space at the same revision.
func checkRangeRequest(t *testing.T, fs *fuzzServer, r *pb.RangeRequest) {
	ctx := fuzzCtx(t)
	before := fs.snapshot(t)
	resp, err := fs.kv.Range(ctx, r)
	var want error
	switch {
	case len(r.Key) == 0:
		want = rpctypes.ErrGRPCEmptyKey
	case pb.RangeRequest_SortOrder_name[int32(r.SortOrder)] == "" || pb.RangeRequest_SortTarget_name[int32(r.SortTarget)] == "":
		want = rpctypes.ErrGRPCInvalidSortOption
	case r.Revision > before.rev:
		want = rpctypes.ErrGRPCFutureRev
	}
	if err != nil || want != nil {
		if err == nil {
			t.Fatalf("range %v: succeeded, want %v", r, want)
		}
		requireEtcdError(t, fmt.Sprintf("range %v", r), err, want)
		fs.unchanged(t, "range", before)
		return
	}
	at := before
	if r.Revision > 0 {
		at = fs.snapshotAt(t, r.Revision)
	}
	if resp.Header.Revision != before.rev {
		t.Fatalf("range %v: header revision %d, store at %d", r, resp.Header.Revision, before.rev)
	}
	var inR []*mvccpb.KeyValue
	for _, kv := range at.ordered {
		if inRange(kv.Key, r.Key, r.RangeEnd) {
			inR = append(inR, kv)
		}
	}
	if resp.Count != int64(len(inR)) {
		t.Fatalf("range %v: count %d, %d keys in range", r, resp.Count, len(inR))
	}
	if r.CountOnly {
		if len(resp.Kvs) != 0 || resp.More {
			t.Fatalf("range %v: count-only answered %d kvs, more %v", r, len(resp.Kvs), resp.More)
		}
		return
	}
	var exp []*mvccpb.KeyValue
	for _, kv := range inR {
		if r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision || r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision ||
			r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision || r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision {
			continue
		}
		exp = append(exp, kv)
	}
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	cmp := func(a, b *mvccpb.KeyValue) int {
		switch r.SortTarget {
		case pb.RangeRequest_VERSION:
			return int(sign(a.Version - b.Version))
		case pb.RangeRequest_CREATE:
			return int(sign(a.CreateRevision - b.CreateRevision))
		case pb.RangeRequest_MOD:
			return int(sign(a.ModRevision - b.ModRevision))
		case pb.RangeRequest_VALUE:
			return bytes.Compare(a.Value, b.Value)
		}
		return bytes.Compare(a.Key, b.Key)
	}
	if order == pb.RangeRequest_DESCEND {
		c := cmp
		cmp = func(a, b *mvccpb.KeyValue) int { return -c(a, b) }
	}
	// etcd's sort is not stable: check order and membership, not positions
	// among equal elements.
	sorted := append([]*mvccpb.KeyValue(nil), exp...)
	sort.SliceStable(sorted, func(i, j int) bool { return cmp(sorted[i], sorted[j]) < 0 })
	n := len(sorted)
	if r.Limit > 0 && int64(n) > r.Limit {
		n = int(r.Limit)
	}
	if len(resp.Kvs) != n || resp.More != (n < len(sorted)) {
		t.Fatalf("range %v: %d kvs (more %v), expected %d of %d", r, len(resp.Kvs), resp.More, n, len(sorted))
	}
	byKey := map[string]*mvccpb.KeyValue{}
	for _, kv := range exp {
		byKey[string(kv.Key)] = kv
	}
	seen := map[string]bool{}
	for i, kv := range resp.Kvs {
		w := byKey[string(kv.Key)]
		if w == nil || seen[string(kv.Key)] {
			t.Fatalf("range %v: kv #%d %q is not in the expected result (or repeated)", r, i, kv.Key)
		}
		seen[string(kv.Key)] = true
		wv := proto.Clone(w).(*mvccpb.KeyValue)
		if r.KeysOnly {
			// etcd 3.7: keys only carry no value, and no lease unless sorted by value.
			wv.Value = nil
			if r.SortTarget != pb.RangeRequest_VALUE {
				wv.Lease = 0
			}
		}
		if !kvEq(kv, wv) {
			t.Fatalf("range %v: kv #%d is %v, the store has %v", r, i, kv, wv)
		}
		if i > 0 && cmp(resp.Kvs[i-1], kv) > 0 && !(r.KeysOnly && r.SortTarget == pb.RangeRequest_VALUE) {
			t.Fatalf("range %v: kvs out of order at #%d", r, i)
		}
		// Everything left out by the limit sorts at or after the last kept.
		if i == n-1 && n < len(sorted) && cmp(kv, sorted[n]) > 0 && !(r.KeysOnly && r.SortTarget == pb.RangeRequest_VALUE) {
			t.Fatalf("range %v: the limit kept %q but dropped %q, which sorts before it", r, kv.Key, sorted[n].Key)
		}
	}
	fs.unchanged(t, "range", before)
}

func sign(x int64) int64 {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}

// lease picks a lease id from sel: none, a live lease, a missing one or raw.
func (fs *fuzzServer) leaseID(sel uint8, raw int64) int64 {
	switch sel % 4 {
	case 0:
		return 0
	case 1:
		return fs.leases[int(sel/4)%len(fs.leases)]
	case 2:
		return 0x7eadbeef
	}
	return raw
}

func FuzzPut(f *testing.F) {
	fs := startFuzzServer(f)
	f.Add([]byte("a"), []byte("v"), uint16(1), uint8(0), int64(0), false, false, false)
	f.Add([]byte("k/1"), []byte{}, uint16(1), uint8(1), int64(0), true, true, false)
	f.Add([]byte("new\x00key"), []byte("x"), uint16(1), uint8(2), int64(0), true, false, false)
	f.Add([]byte("a\xff"), []byte{}, uint16(0), uint8(3), int64(-5), false, false, true)
	f.Add([]byte{}, []byte("v"), uint16(1), uint8(0), int64(0), false, false, false)
	f.Add([]byte("b"), []byte("0123456789abcdef0123456789abcdef"), uint16(2047), uint8(0), int64(0), false, false, false)
	f.Add([]byte("b"), []byte("0123456789abcdef0123456789abcdef"), uint16(2040), uint8(1), int64(0), true, false, false)
	// The value is repeated (repeat % 4096) times: large values without
	// large inputs, which the fuzzer is slow to minimize.
	f.Fuzz(func(t *testing.T, key, value []byte, repeat uint16, leaseSel uint8, rawLease int64, prevKV, ignoreValue, ignoreLease bool) {
		ctx := fuzzCtx(t)
		value = bytes.Repeat(value, int(repeat%4096))
		r := &pb.PutRequest{Key: key, Value: value, Lease: fs.leaseID(leaseSel, rawLease), PrevKv: prevKV, IgnoreValue: ignoreValue, IgnoreLease: ignoreLease}
		before := fs.snapshot(t)
		old := before.kvs[string(key)]
		leaseOK := r.Lease == 0
		for _, id := range fs.leases {
			leaseOK = leaseOK || r.Lease == id
		}
		var want error
		switch {
		case len(key) == 0:
			want = rpctypes.ErrGRPCEmptyKey
		case ignoreValue && len(value) != 0:
			want = rpctypes.ErrGRPCValueProvided
		case ignoreLease && r.Lease != 0:
			want = rpctypes.ErrGRPCLeaseProvided
		case proto.Size(&pb.InternalRaftRequest{Header: &pb.RequestHeader{ID: raftHeaderID}, Put: r}) > fuzzMaxRequestBytes:
			want = rpctypes.ErrGRPCRequestTooLarge
		case !leaseOK:
			want = rpctypes.ErrGRPCLeaseNotFound
		case (ignoreValue || ignoreLease) && old == nil:
			want = rpctypes.ErrGRPCKeyNotFound
		}
		resp, err := fs.kv.Put(ctx, r)
		what := fmt.Sprintf("put %q (%d bytes) lease %x prev_kv %v ignore_value %v ignore_lease %v", key, len(value), r.Lease, prevKV, ignoreValue, ignoreLease)
		if err != nil || want != nil {
			if err == nil {
				t.Fatalf("%s: succeeded, want %v", what, want)
			}
			if want == nil && len(value) > fuzzMaxRequestBytes/2 {
				want = rpctypes.ErrGRPCRequestTooLarge // the gRPC limit's own error is not etcd's
			}
			requireEtcdError(t, what, err, want)
			fs.unchanged(t, what, before)
			return
		}
		after := fs.snapshot(t)
		if resp.Header.Revision != before.rev+1 || after.rev != before.rev+1 {
			t.Fatalf("%s: header revision %d, store %d -> %d", what, resp.Header.Revision, before.rev, after.rev)
		}
		exp := &mvccpb.KeyValue{Key: key, Value: value, Lease: r.Lease, ModRevision: after.rev, CreateRevision: after.rev, Version: 1}
		if old != nil {
			exp.CreateRevision, exp.Version = old.CreateRevision, old.Version+1
			if ignoreValue {
				exp.Value = old.Value
			}
			if ignoreLease {
				exp.Lease = old.Lease
			}
		}
		if got := after.kvs[string(key)]; !kvEq(got, exp) {
			t.Fatalf("%s: the key is now %v, want %v", what, got, exp)
		}
		if prevKV && !kvEq(resp.PrevKv, old) || !prevKV && resp.PrevKv != nil {
			t.Fatalf("%s: prev_kv %v, the key was %v", what, resp.PrevKv, old)
		}
		delete(after.kvs, string(key))
		delete(before.kvs, string(key))
		before.rev = after.rev
		if d := before.diff(after); d != "" {
			t.Fatalf("%s: other keys changed: %s", what, d)
		}
	})
}

func FuzzDeleteRange(f *testing.F) {
	fs := startFuzzServer(f)
	f.Add([]byte("a"), []byte{}, false)
	f.Add([]byte("a"), []byte("b"), true)
	f.Add([]byte{0}, []byte{0}, true)
	f.Add([]byte("b"), []byte("a"), false)
	f.Add([]byte{}, []byte("a"), false)
	f.Add([]byte("\xff"), []byte{0}, true)
	f.Fuzz(func(t *testing.T, key, end []byte, prevKV bool) {
		ctx := fuzzCtx(t)
		defer fs.refill(t, false)
		before := fs.snapshot(t)
		r := &pb.DeleteRangeRequest{Key: key, RangeEnd: end, PrevKv: prevKV}
		what := fmt.Sprintf("delete [%q, %q) prev_kv %v", key, end, prevKV)
		resp, err := fs.kv.DeleteRange(ctx, r)
		if len(key) == 0 || err != nil {
			var want error
			if len(key) == 0 {
				want = rpctypes.ErrGRPCEmptyKey
			}
			if err == nil {
				t.Fatalf("%s: succeeded, want %v", what, want)
			}
			requireEtcdError(t, what, err, want)
			fs.unchanged(t, what, before)
			return
		}
		var gone []*mvccpb.KeyValue
		for _, kv := range before.ordered {
			if inRange(kv.Key, key, end) {
				gone = append(gone, kv)
			}
		}
		wantRev := before.rev
		if len(gone) > 0 {
			wantRev++
		}
		after := fs.snapshot(t)
		if resp.Deleted != int64(len(gone)) || resp.Header.Revision != wantRev || after.rev != wantRev {
			t.Fatalf("%s: deleted %d at revision %d (store at %d); expected %d at %d", what, resp.Deleted, resp.Header.Revision, after.rev, len(gone), wantRev)
		}
		if prevKV {
			if len(resp.PrevKvs) != len(gone) {
				t.Fatalf("%s: %d prev_kvs, %d keys deleted", what, len(resp.PrevKvs), len(gone))
			}
			for i := range gone {
				if !kvEq(resp.PrevKvs[i], gone[i]) {
					t.Fatalf("%s: prev_kv #%d %v, the key was %v", what, i, resp.PrevKvs[i], gone[i])
				}
			}
		} else if len(resp.PrevKvs) != 0 {
			t.Fatalf("%s: prev_kvs without prev_kv", what)
		}
		for _, kv := range gone {
			delete(before.kvs, string(kv.Key))
		}
		before.rev = after.rev
		if d := before.diff(after); d != "" {
			t.Fatalf("%s: %s", what, d)
		}
	})
}

// FuzzTxn unmarshals a TxnRequest (nested txns, arbitrary compares and ops)
// from the input. Refused: an etcd error and no change. Accepted: the
// branch taken is the compares' verdict on the state before, the response
// mirrors the ops of the branches taken, and the revision moves by one if
// and only if something changed.
func FuzzTxn(f *testing.F) {
	fs := startFuzzServer(f)
	for _, seed := range fuzzTxnSeeds(fs.leases[0]) {
		b, err := proto.Marshal(seed)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r pb.TxnRequest
		if err := proto.Unmarshal(data, &r); err != nil || !roundTrips(&pb.InternalRaftRequest{Txn: &r}) {
			return
		}
		checkTxnRequest(t, fs, &r)
	})
}

// FuzzTxnOps is FuzzTxn with the txn built from the input by a small
// decoder instead of protobuf, so that every input is a txn: nested up to
// three levels, compares of every target and result (and invalid ones),
// ranges with revisions, limits and sort options, puts with leases and
// ignore_* flags, deletes with "\x00" ends, on the populated key space.
func FuzzTxnOps(f *testing.F) {
	fs := startFuzzServer(f)
	f.Add([]byte{})
	f.Add([]byte{1, 2, 0, 2, 1, 1, 3, 0, 0, 1, 7, 0, 0, 2, 4, 1, 1})
	f.Add([]byte{0, 3, 1, 5, 1, 0, 0, 3, 2, 2, 9, 1, 0, 1, 4, 4, 1, 2, 0, 8, 0, 0, 1, 3})
	f.Add([]byte{2, 2, 3, 9, 1, 0, 2, 0, 1, 3, 3, 0, 1, 2, 2, 1, 0, 3, 3, 0, 0, 0, 1, 1, 2, 2, 2, 0, 5, 6, 7})
	f.Add([]byte("\x01\x04\x00\x03\x02\x00\x01\x00\x02\x06\x01\x00\x00\x03\x03\x01\x03\x00\x07\x02\x01\x02\x02\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &txnGen{b: data, leases: fs.leases}
		checkTxnRequest(t, fs, g.txn(0))
	})
}

// checkTxnRequest sends r: refused, it must get an etcd error and change
// nothing; accepted, the revision moves by one if and only if something
// changed, and the response has the shape checkTxnShape checks.
func checkTxnRequest(t *testing.T, fs *fuzzServer, r *pb.TxnRequest) {
	ctx := fuzzCtx(t)
	defer fs.refill(t, false)
	before := fs.snapshot(t)
	what := "txn " + shortProto(r)
	resp, err := fs.kv.Txn(ctx, r)
	if err != nil {
		requireEtcdError(t, what, err, nil)
		fs.unchanged(t, what, before)
		return
	}
	after := fs.snapshot(t)
	switch {
	case resp.Header.Revision != after.rev:
		t.Fatalf("%s: header revision %d, store at %d", what, resp.Header.Revision, after.rev)
	case after.rev == before.rev:
		if d := before.diff(after); d != "" {
			t.Fatalf("%s: changed the store without a revision: %s", what, d)
		}
	case after.rev != before.rev+1:
		t.Fatalf("%s: revision %d -> %d", what, before.rev, after.rev)
	case before.diff(snap{rev: after.rev, kvs: after.kvs}) == "" && len(before.kvs) == len(after.kvs):
		// Every put moves a mod_revision and every delete removes a key.
		t.Fatalf("%s: took revision %d but changed nothing", what, after.rev)
	}
	checkTxnShape(t, what, r, resp, before)
}

// txnGen decodes a txn from fuzz bytes; past the end it reads zeros.
type txnGen struct {
	b      []byte
	i      int
	leases []int64
}

func (g *txnGen) next() byte {
	g.i++
	if g.i-1 < len(g.b) {
		return g.b[g.i-1]
	}
	return 0
}

func (g *txnGen) key() []byte {
	c := g.next()
	switch {
	case int(c) < len(fuzzKeys):
		return []byte(fuzzKeys[c])
	case c == 0xff:
		return nil
	case c >= 0xf0:
		return []byte{g.next(), g.next()}
	}
	return []byte(fmt.Sprintf("new/%d", c%8))
}

func (g *txnGen) end() []byte {
	switch g.next() % 4 {
	case 0:
		return nil
	case 1:
		return []byte{0}
	}
	return g.key()
}

func (g *txnGen) num() int64 {
	switch c := g.next(); c {
	case 0xff:
		return 1 << 40
	case 0xfe:
		return -1
	default:
		return int64(c % 32)
	}
}

func (g *txnGen) txn(depth int) *pb.TxnRequest {
	r := &pb.TxnRequest{}
	for n := g.next() % 3; n > 0; n-- {
		r.Compare = append(r.Compare, g.compare())
	}
	for n := g.next() % 4; n > 0; n-- {
		r.Success = append(r.Success, g.op(depth))
	}
	for n := g.next() % 3; n > 0; n-- {
		r.Failure = append(r.Failure, g.op(depth))
	}
	return r
}

func (g *txnGen) compare() *pb.Compare {
	c := &pb.Compare{Key: g.key(), RangeEnd: g.end(), Target: pb.Compare_CompareTarget(g.next() % 6), Result: pb.Compare_CompareResult(g.next() % 5)}
	switch c.Target {
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: g.num()}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: g.num()}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: g.num()}
	case pb.Compare_VALUE:
		c.TargetUnion = &pb.Compare_Value{Value: []byte(fmt.Sprintf("v%d", g.next()%12))}
	case pb.Compare_LEASE:
		c.TargetUnion = &pb.Compare_Lease{Lease: g.lease()}
	}
	return c
}

func (g *txnGen) lease() int64 {
	switch c := g.next() % 5; c {
	case 0, 1:
		return 0
	case 2, 3:
		return g.leases[int(c)%len(g.leases)]
	}
	return 0x7eadbeef
}

func (g *txnGen) op(depth int) *pb.RequestOp {
	switch c := g.next() % 6; {
	case c == 0:
		rr := &pb.RangeRequest{Key: g.key(), RangeEnd: g.end(), Limit: g.num(), Revision: g.num(),
			SortOrder: pb.RangeRequest_SortOrder(g.next() % 4), SortTarget: pb.RangeRequest_SortTarget(g.next() % 6)}
		f := g.next()
		rr.CountOnly, rr.KeysOnly = f&1 != 0, f&2 != 0
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: rr}}
	case c == 1 || c == 2:
		p := &pb.PutRequest{Key: g.key(), Lease: g.lease()}
		f := g.next()
		if f&8 == 0 {
			p.Value = []byte(fmt.Sprintf("w%d", g.next()))
		}
		p.PrevKv, p.IgnoreValue, p.IgnoreLease = f&1 != 0, f&2 != 0, f&4 != 0
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}}
	case c == 3:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: g.key(), RangeEnd: g.end(), PrevKv: g.next()%2 == 0}}}
	case c == 4 && depth < 3:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: g.txn(depth + 1)}}
	}
	return &pb.RequestOp{} // an op with no request
}

// checkTxnShape checks the branch taken (compares evaluated on the state
// before the txn, as etcd evaluates all of them before applying) and that
// each response matches its op.
func checkTxnShape(t *testing.T, what string, r *pb.TxnRequest, resp *pb.TxnResponse, before snap) {
	t.Helper()
	ok := true
	for _, c := range r.Compare {
		ok = ok && evalCompare(c, before)
	}
	if resp.Succeeded != ok {
		t.Fatalf("%s: succeeded %v, the compares on the state before say %v", what, resp.Succeeded, ok)
	}
	ops := r.Success
	if !ok {
		ops = r.Failure
	}
	if len(resp.Responses) != len(ops) {
		t.Fatalf("%s: %d responses for %d ops", what, len(resp.Responses), len(ops))
	}
	for i, op := range ops {
		out := resp.Responses[i]
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			if out.GetResponseRange() == nil {
				t.Fatalf("%s: op #%d is a range, its response %v", what, i, out)
			}
		case *pb.RequestOp_RequestPut:
			if out.GetResponsePut() == nil {
				t.Fatalf("%s: op #%d is a put, its response %v", what, i, out)
			}
		case *pb.RequestOp_RequestDeleteRange:
			if out.GetResponseDeleteRange() == nil {
				t.Fatalf("%s: op #%d is a delete, its response %v", what, i, out)
			}
		case *pb.RequestOp_RequestTxn:
			if out.GetResponseTxn() == nil {
				t.Fatalf("%s: op #%d is a txn, its response %v", what, i, out)
			}
			checkTxnShape(t, what, o.RequestTxn, out.GetResponseTxn(), before)
		}
	}
}

// evalCompare is etcd's compare: true when every key in range satisfies it;
// with no key in range a value compare fails and the others compare zero.
func evalCompare(c *pb.Compare, s snap) bool {
	var kvs []*mvccpb.KeyValue
	for _, kv := range s.ordered {
		if inRange(kv.Key, c.Key, c.RangeEnd) {
			kvs = append(kvs, kv)
		}
	}
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false
		}
		kvs = []*mvccpb.KeyValue{{}}
	}
	for _, kv := range kvs {
		var r int
		switch c.Target {
		case pb.Compare_VALUE:
			r = bytes.Compare(kv.Value, c.GetValue())
		case pb.Compare_CREATE:
			r = int(sign(kv.CreateRevision - c.GetCreateRevision()))
		case pb.Compare_MOD:
			r = int(sign(kv.ModRevision - c.GetModRevision()))
		case pb.Compare_VERSION:
			r = int(sign(kv.Version - c.GetVersion()))
		case pb.Compare_LEASE:
			r = int(sign(kv.Lease - c.GetLease()))
		}
		var ok bool
		switch c.Result {
		case pb.Compare_EQUAL:
			ok = r == 0
		case pb.Compare_NOT_EQUAL:
			ok = r != 0
		case pb.Compare_GREATER:
			ok = r > 0
		case pb.Compare_LESS:
			ok = r < 0
		default:
			ok = true
		}
		if !ok {
			return false
		}
	}
	return true
}

// roundTrips reports whether m, decoded from fuzz bytes, encodes into a
// message that decodes again: unknown fields are kept verbatim and some
// re-encode into bytes no decoder accepts, which gRPC refuses before shimd
// sees the request.
func roundTrips(m proto.Message) bool {
	b, err := proto.Marshal(m)
	if err != nil {
		return false
	}
	return proto.Unmarshal(b, m.ProtoReflect().New().Interface()) == nil
}

func shortProto(m fmt.Stringer) string {
	s := fmt.Sprint(m)
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func put(key, value string, lease int64) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(value), Lease: lease}}}
}

func del(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end), PrevKv: true}}}
}

func rng(key, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(key), RangeEnd: []byte(end)}}}
}

func txnOp(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}

func fuzzTxnSeeds(lease int64) []*pb.TxnRequest {
	mod := func(key string, rev int64) *pb.Compare {
		return &pb.Compare{Key: []byte(key), Target: pb.Compare_MOD, Result: pb.Compare_GREATER, TargetUnion: &pb.Compare_ModRevision{ModRevision: rev}}
	}
	val := func(key, end, v string) *pb.Compare {
		return &pb.Compare{Key: []byte(key), RangeEnd: []byte(end), Target: pb.Compare_VALUE, Result: pb.Compare_NOT_EQUAL, TargetUnion: &pb.Compare_Value{Value: []byte(v)}}
	}
	return []*pb.TxnRequest{
		{Compare: []*pb.Compare{mod("a", 0)}, Success: []*pb.RequestOp{put("a", "1", 0), rng("a", "")}, Failure: []*pb.RequestOp{rng("b", "")}},
		{Success: []*pb.RequestOp{del("a", "b"), put("b", "2", lease)}},
		{Compare: []*pb.Compare{val("k/", "k0", "x")}, Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{
			Compare: []*pb.Compare{mod("k/1", 1)},
			Success: []*pb.RequestOp{put("k/9", "n", 0), del("\x00", "\x00")},
			Failure: []*pb.RequestOp{put("k/9", "m", 0)},
		}), rng("k/", "k0")}},
		// Delete with a "\x00" end, then put (etcd's duplicate check quirk).
		{Success: []*pb.RequestOp{del("a", "\x00"), put("zz", "p", 0)}},
		{Success: []*pb.RequestOp{put("a", "1", 0), put("a", "2", 0)}},
		{Success: []*pb.RequestOp{put("", "1", 0)}},
		{Success: []*pb.RequestOp{{}}},
		{Compare: []*pb.Compare{{Key: []byte("a"), Target: 9, Result: 7}}, Success: []*pb.RequestOp{rng("a", "\x00")}},
		{Success: []*pb.RequestOp{put("k/2", "", 0), txnOp(&pb.TxnRequest{Success: []*pb.RequestOp{txnOp(&pb.TxnRequest{Success: []*pb.RequestOp{put("k/3", "deep", 0)}})}})}},
		{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), IgnoreValue: true, IgnoreLease: true}}}, del("\x00", "\x00")}},
		{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), Revision: 1 << 40}}}, put("a", "x", 0)}},
	}
}

// FuzzWatchCreate sends an arbitrary WatchCreateRequest (and a progress
// request and a cancel behind it) on a new stream: the first answer must be
// a created response (canceled, with a reason, if refused), every event must
// lie in the watched range at or after the start revision, the cancel must
// be answered, and the store must not change.
func FuzzWatchCreate(f *testing.F) {
	fs := startFuzzServer(f)
	for _, seed := range []*pb.WatchCreateRequest{
		{Key: []byte("a")},
		{Key: []byte{0}, RangeEnd: []byte{0}, StartRevision: 1, PrevKv: true},
		{Key: []byte("k/"), RangeEnd: []byte("k0"), StartRevision: 3, Filters: []pb.WatchCreateRequest_FilterType{0, 1}, ProgressNotify: true, Fragment: true},
		{Key: []byte("b"), RangeEnd: []byte("a")},
		{Key: []byte{}, StartRevision: -1},
		{Key: []byte("x"), WatchId: 7, StartRevision: 1 << 40, Filters: []pb.WatchCreateRequest_FilterType{5}},
		{Key: []byte("x"), WatchId: -3},
	} {
		b, err := proto.Marshal(seed)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, progress bool) {
		var c pb.WatchCreateRequest
		if err := proto.Unmarshal(data, &c); err != nil || !roundTrips(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &c}}) {
			return
		}
		ctx := fuzzCtx(t)
		before := fs.snapshot(t)
		what := "watch " + shortProto(&c)
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := fs.watch.Watch(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &c}}); err != nil {
			t.Fatalf("%s: send: %v", what, err)
		}
		if progress {
			if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
				t.Fatalf("%s: send progress: %v", what, err)
			}
		}
		// A progress notification may come before the created response
		// (etcd sends both without ordering them), but no event it covers
		// may come after it.
		var progressRev int64
		checkEvents := func(resp *pb.WatchResponse) {
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= progressRev {
					t.Fatalf("%s: event at revision %d after a progress notification at %d", what, ev.Kv.ModRevision, progressRev)
				}
			}
			if isProgress(resp) {
				progressRev = max(progressRev, resp.Header.Revision)
			}
		}
		var first *pb.WatchResponse
		for first == nil || isProgress(first) {
			if first, err = stream.Recv(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			checkEvents(first)
		}
		if !first.Created {
			t.Fatalf("%s: first response %v is not a created response", what, first)
		}
		if first.Canceled {
			if first.CancelReason == "" {
				t.Fatalf("%s: refused without a reason: %v", what, first)
			}
			fs.unchanged(t, what, before)
			return
		}
		id := first.WatchId
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}); err != nil {
			t.Fatalf("%s: send cancel: %v", what, err)
		}
		key, end := c.Key, c.RangeEnd
		if len(key) == 0 {
			key = []byte{0}
		}
		for {
			resp, err := stream.Recv()
			if err == io.EOF || err != nil {
				t.Fatalf("%s: stream ended before the cancel was answered: %v", what, err)
			}
			for _, ev := range resp.Events {
				if !inRange(ev.Kv.Key, key, end) || ev.Kv.ModRevision < c.StartRevision {
					t.Fatalf("%s: event %v outside the watch", what, ev)
				}
			}
			checkEvents(resp)
			if resp.Canceled && resp.WatchId == id {
				break
			}
		}
		fs.unchanged(t, what, before)
	})
}

func isProgress(r *pb.WatchResponse) bool {
	return len(r.Events) == 0 && !r.Created && !r.Canceled && r.CompactRevision == 0
}

// FuzzLease runs one lease operation with arbitrary fields. Grants never
// change the revision and answer the granted TTL (at least etcd's minimum);
// a revoke takes a revision only when keys go with the lease; unknown
// leases answer etcd's errors (or TTL -1 / 0); nothing panics.
func FuzzLease(f *testing.F) {
	fs := startFuzzServer(f)
	f.Add(uint8(0), uint8(3), int64(0), int64(5), false)
	f.Add(uint8(0), uint8(3), int64(77), int64(9000000001), false)
	f.Add(uint8(1), uint8(2), int64(0), int64(0), true)
	f.Add(uint8(2), uint8(1), int64(0), int64(0), true)
	f.Add(uint8(3), uint8(3), int64(-1), int64(0), false)
	f.Add(uint8(4), uint8(1), int64(0), int64(-7), true)
	f.Add(uint8(5), uint8(3), int64(1<<62), int64(1<<40), true)
	f.Fuzz(func(t *testing.T, op, sel uint8, raw, ttl int64, attach bool) {
		ctx := fuzzCtx(t)
		id := fs.leaseID(sel, raw)
		known := false
		for _, l := range fs.leases {
			known = known || l == id
		}
		before := fs.snapshot(t)
		what := fmt.Sprintf("lease op %d id %x ttl %d", op%6, id, ttl)
		switch op % 6 {
		case 0, 5: // grant, maybe with a key, then revoke
			if known {
				id = 0 // never grant over the shared leases
			}
			r, err := fs.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl})
			if err != nil {
				var want error
				if ttl > maxLeaseTTL {
					want = rpctypes.ErrGRPCLeaseTTLTooLarge
				}
				requireEtcdError(t, what, err, want)
				fs.unchanged(t, what, before)
				return
			}
			if ttl > maxLeaseTTL {
				t.Fatalf("%s: granted a TTL over etcd's maximum", what)
			}
			if r.TTL != max(ttl, minLeaseTTL) || r.ID == 0 || id != 0 && r.ID != id || r.Header.Revision != before.rev {
				t.Fatalf("%s: granted %v (store at %d)", what, r, before.rev)
			}
			fs.unchanged(t, what, before)
			if _, err := fs.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: r.ID, TTL: ttl}); err == nil {
				t.Fatalf("%s: the same id granted twice", what)
			} else {
				requireEtcdError(t, what+" (again)", err, rpctypes.ErrGRPCLeaseExist)
			}
			mid := before
			if attach {
				if _, err := fs.kv.Put(ctx, &pb.PutRequest{Key: []byte("lease/key"), Value: []byte("v"), Lease: r.ID}); err != nil {
					t.Fatalf("%s: put with the new lease: %v", what, err)
				}
				mid = fs.snapshot(t)
			}
			rv, err := fs.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: r.ID})
			if err != nil {
				if ttl <= minLeaseTTL+1 {
					return // it may have expired already
				}
				t.Fatalf("%s: revoke: %v", what, err)
			}
			after := fs.snapshot(t)
			wantRev := mid.rev
			if attach {
				wantRev++
				if after.kvs["lease/key"] != nil {
					t.Fatalf("%s: the revoked lease's key is still there", what)
				}
			}
			if rv.Header.Revision != wantRev || after.rev != wantRev {
				t.Fatalf("%s: revoke at revision %d, store %d -> %d (want %d)", what, rv.Header.Revision, mid.rev, after.rev, wantRev)
			}
		case 1: // revoke an unknown (or a raw) lease
			if known {
				return
			}
			_, err := fs.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id})
			if err == nil {
				t.Fatalf("%s: revoked a lease that was never granted", what)
			}
			requireEtcdError(t, what, err, rpctypes.ErrGRPCLeaseNotFound)
			fs.unchanged(t, what, before)
		case 2: // time to live
			r, err := fs.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: id, Keys: attach})
			if err != nil {
				requireEtcdError(t, what, err, nil)
			} else if known && (r.TTL <= 0 || r.GrantedTTL != longTTL) || !known && r.TTL != -1 {
				t.Fatalf("%s: %v", what, r)
			} else if known && id == fs.leases[0] && attach && (len(r.Keys) != 1 || string(r.Keys[0]) != "k/1") {
				t.Fatalf("%s: keys %q, want k/1", what, r.Keys)
			}
			fs.unchanged(t, what, before)
		case 3: // keep alive
			s, err := fs.lease.LeaseKeepAlive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
				t.Fatal(err)
			}
			r, err := s.Recv()
			if err != nil {
				t.Fatalf("%s: keep-alive: %v", what, err)
			}
			if r.ID != id || known && r.TTL != longTTL || !known && r.TTL != 0 {
				t.Fatalf("%s: keep-alive answered %v", what, r)
			}
			s.CloseSend()
			fs.unchanged(t, what, before)
		case 4: // leases
			r, err := fs.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			have := map[int64]bool{}
			for _, l := range r.Leases {
				have[l.ID] = true
			}
			for _, l := range fs.leases {
				if !have[l] {
					t.Fatalf("%s: lease %x missing from %v", what, l, r.Leases)
				}
			}
		}
	})
}
