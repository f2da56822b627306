package server

import (
	"bytes"
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/shimd/shimd/sqllog"
)

// txnView is what a txn runs on: a write request in the log, or a read view
// wrapped for read-only txns.
type txnView interface {
	sqllog.ReadView
	Put(key, value []byte, lease int64) int64
	DeleteRange(key, end []byte) (n, rev int64)
	Changes() int
	LeaseExists(id int64) bool
}

// readOnly lets a read-only txn run on a ReadView; it never writes.
type readOnly struct{ sqllog.ReadView }

func (readOnly) Put([]byte, []byte, int64) int64           { panic("write in a read-only txn") }
func (readOnly) DeleteRange([]byte, []byte) (int64, int64) { panic("write in a read-only txn") }
func (readOnly) Changes() int                              { return 0 }
func (readOnly) LeaseExists(int64) bool                    { return false }

// isReadOnly reports whether both branches hold only ranges; such a txn
// never takes a revision and need not go through the writer.
func isReadOnly(r *pb.TxnRequest) bool {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			if op.GetRequestRange() == nil {
				return false
			}
		}
	}
	return true
}

// runTxn evaluates the compares, checks the chosen ops against the state
// before any of them run, then runs them.
func (s *Server) runTxn(ctx context.Context, v txnView, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	path := comparePath(ctx, v, r)
	if _, err := s.checkTxnOps(ctx, v, r, path); err != nil {
		return nil, err
	}
	resp, _ := newTxnResp(r, path)
	if _, err := s.execTxn(ctx, v, r, path, resp); err != nil {
		return nil, err
	}
	rev := v.Rev()
	if v.Changes() != 0 {
		rev++
	}
	resp.Header.Revision = rev
	return resp, nil
}

// comparePath evaluates the compares of r and of every nested txn on the
// branch taken, depth first: the path that checkTxnOps and execTxn follow.
func comparePath(ctx context.Context, v sqllog.ReadView, r *pb.TxnRequest) []bool {
	path := []bool{compareAll(ctx, v, r.Compare)}
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	for _, op := range ops {
		if t := op.GetRequestTxn(); t != nil {
			path = append(path, comparePath(ctx, v, t)...)
		}
	}
	return path
}

func compareAll(ctx context.Context, v sqllog.ReadView, cmps []*pb.Compare) bool {
	for _, c := range cmps {
		if !compare(ctx, v, c) {
			return false
		}
	}
	return true
}

// compare holds when every key in its range satisfies it. With no key in
// range a value compare fails, and the others compare against zero.
func compare(ctx context.Context, v sqllog.ReadView, c *pb.Compare) bool {
	rr, err := v.Range(ctx, c.Key, gteRange(c.RangeEnd), sqllog.RangeOptions{KeysOnly: c.Target != pb.Compare_VALUE})
	if err != nil {
		return false
	}
	if len(rr.KVs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false
		}
		return compareKV(c, &mvccpb.KeyValue{})
	}
	for _, kv := range rr.KVs {
		if !compareKV(c, kv) {
			return false
		}
	}
	return true
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var result int
	switch c.Target {
	case pb.Compare_VALUE:
		result = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		result = cmpInt(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		result = cmpInt(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		result = cmpInt(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		result = cmpInt(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return result == 0
	case pb.Compare_NOT_EQUAL:
		return result != 0
	case pb.Compare_GREATER:
		return result > 0
	case pb.Compare_LESS:
		return result < 0
	}
	return true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// checkTxnOps rejects the txn before it changes anything when an op on the
// chosen path would fail: a range at a compacted or future revision, a put
// whose ignore_* needs a missing key, or a put with an unknown lease.
func (s *Server) checkTxnOps(ctx context.Context, v txnView, r *pb.TxnRequest, path []bool) (int, error) {
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	nested := 0
	for _, op := range ops {
		var err error
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			switch rev := o.RequestRange.Revision; {
			case rev == 0:
			case rev > v.Rev():
				err = sqllog.ErrFutureRev
			case rev < v.FirstRev():
				err = sqllog.ErrCompacted
			}
		case *pb.RequestOp_RequestPut:
			err = s.checkPutState(ctx, v, o.RequestPut)
		case *pb.RequestOp_RequestTxn:
			var n int
			n, err = s.checkTxnOps(ctx, v, o.RequestTxn, path[1:])
			nested += n + 1
			path = path[n+1:]
		}
		if err != nil {
			return 0, err
		}
	}
	return nested, nil
}

// newTxnResp builds the response skeleton for the chosen path, returning how
// many nested txns it covers.
func newTxnResp(r *pb.TxnRequest, path []bool) (*pb.TxnResponse, int) {
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	resp := &pb.TxnResponse{Succeeded: path[0], Header: &pb.ResponseHeader{}, Responses: make([]*pb.ResponseOp, len(ops))}
	nested := 0
	for i, op := range ops {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{}}
		case *pb.RequestOp_RequestPut:
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{}}
		case *pb.RequestOp_RequestDeleteRange:
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{}}
		case *pb.RequestOp_RequestTxn:
			sub, n := newTxnResp(o.RequestTxn, path[1:])
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: sub}}
			path = path[1+n:]
			nested += n + 1
		default:
			resp.Responses[i] = &pb.ResponseOp{}
		}
	}
	return resp, nested
}

// execTxn runs the ops of the chosen path in order; each sees the ones before.
func (s *Server) execTxn(ctx context.Context, v txnView, r *pb.TxnRequest, path []bool, resp *pb.TxnResponse) (int, error) {
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	nested := 0
	for i, op := range ops {
		out := resp.Responses[i].Response
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := doRange(ctx, v, o.RequestRange)
			if err != nil {
				return 0, fmt.Errorf("txn range: %w", err)
			}
			out.(*pb.ResponseOp_ResponseRange).ResponseRange = rr
		case *pb.RequestOp_RequestPut:
			pr, err := doPut(ctx, v, o.RequestPut)
			if err != nil {
				return 0, fmt.Errorf("txn put: %w", err)
			}
			out.(*pb.ResponseOp_ResponsePut).ResponsePut = pr
		case *pb.RequestOp_RequestDeleteRange:
			dr, err := doDelete(ctx, v, o.RequestDeleteRange)
			if err != nil {
				return 0, fmt.Errorf("txn delete: %w", err)
			}
			out.(*pb.ResponseOp_ResponseDeleteRange).ResponseDeleteRange = dr
		case *pb.RequestOp_RequestTxn:
			n, err := s.execTxn(ctx, v, o.RequestTxn, path[1:], out.(*pb.ResponseOp_ResponseTxn).ResponseTxn)
			if err != nil {
				return 0, err
			}
			nested += n + 1
			path = path[n+1:]
		}
	}
	return nested, nil
}
