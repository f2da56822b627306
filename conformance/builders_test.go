package conformance

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Small constructors for raw requests, so scenarios can send exactly the
// fields they mean (clientv3 rewrites some combinations).

func b(s string) []byte { return []byte(s) }

func opRange(r *pb.RangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opPut(r *pb.PutRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: r}}
}

func opDel(r *pb.DeleteRangeRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: r}}
}

func opTxn(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

func get(key string) *pb.RequestOp  { return opRange(&pb.RangeRequest{Key: b(key)}) }
func put(k, v string) *pb.RequestOp { return opPut(&pb.PutRequest{Key: b(k), Value: b(v)}) }
func del(k, end string) *pb.RequestOp {
	return opDel(&pb.DeleteRangeRequest{Key: b(k), RangeEnd: b(end)})
}

func ops(o ...*pb.RequestOp) []*pb.RequestOp { return o }

func cmps(c ...*pb.Compare) []*pb.Compare { return c }

func cmpValue(key string, r pb.Compare_CompareResult, v string) *pb.Compare {
	return &pb.Compare{Key: b(key), Result: r, Target: pb.Compare_VALUE, TargetUnion: &pb.Compare_Value{Value: b(v)}}
}

func cmpVersion(key string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: b(key), Result: r, Target: pb.Compare_VERSION, TargetUnion: &pb.Compare_Version{Version: v}}
}

func cmpCreate(key string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: b(key), Result: r, Target: pb.Compare_CREATE, TargetUnion: &pb.Compare_CreateRevision{CreateRevision: v}}
}

func cmpMod(key string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: b(key), Result: r, Target: pb.Compare_MOD, TargetUnion: &pb.Compare_ModRevision{ModRevision: v}}
}

func cmpLease(key string, r pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: b(key), Result: r, Target: pb.Compare_LEASE, TargetUnion: &pb.Compare_Lease{Lease: v}}
}

// withEnd sets a compare's range_end.
func withEnd(c *pb.Compare, end string) *pb.Compare {
	c.RangeEnd = b(end)
	return c
}

var compareResults = []pb.Compare_CompareResult{pb.Compare_EQUAL, pb.Compare_GREATER, pb.Compare_LESS, pb.Compare_NOT_EQUAL}

var (
	sortOrders  = []pb.RangeRequest_SortOrder{pb.RangeRequest_NONE, pb.RangeRequest_ASCEND, pb.RangeRequest_DESCEND}
	sortTargets = []pb.RangeRequest_SortTarget{pb.RangeRequest_KEY, pb.RangeRequest_VERSION, pb.RangeRequest_CREATE, pb.RangeRequest_MOD, pb.RangeRequest_VALUE}
)

// rev reads the current revision (compared on both servers like any op).
func (c *sc) rev() int64 {
	c.t.Helper()
	resp, err := c.do("Range (read current revision) {key:\"\\x00rev-probe\"}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Range(ctx, &pb.RangeRequest{Key: b("\x00rev-probe")})
	})
	c.ok(resp, err)
	return resp.(*pb.RangeResponse).Header.Revision
}

// mustPut puts through clientv3 and returns the new revision.
func (c *sc) mustPut(k, v string, opts ...opt) int64 {
	c.t.Helper()
	resp, err := c.CPut(k, v, opts...)
	c.ok(resp, err)
	return resp.Header.Revision
}

// mustTxn runs a raw txn that etcd must accept.
func (c *sc) mustTxn(r *pb.TxnRequest) *pb.TxnResponse {
	c.t.Helper()
	resp, err := c.Txn(r)
	c.ok(resp, err)
	return resp
}

// contextT shortens op closures.
type contextT = context.Context
