package txn

import (
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/sqllog"
)

// IsReadOnly reports whether both branches hold only ranges; such a txn
// never takes a revision and need not go through the writer.
func IsReadOnly(r *pb.TxnRequest) bool {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			if op.GetRequestRange() == nil {
				return false
			}
		}
	}
	return true
}

// hasPut reports whether either branch, at any depth, holds a put: whether
// the txn may add data (etcd's quota gives it a non-zero cost).
func hasPut(r *pb.TxnRequest) bool {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			if op.GetRequestPut() != nil {
				return true
			}
			if t := op.GetRequestTxn(); t != nil && hasPut(t) {
				return true
			}
		}
	}
	return false
}

// Txn applies a TxnRequest on v as etcd does: it evaluates the compares,
// checks the chosen ops against the state before any of them run, then runs
// them.
func Txn(ctx context.Context, v WriteView, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	path := comparePath(ctx, v, r)
	if _, err := checkTxnOps(ctx, v, r, path); err != nil {
		return nil, err
	}
	resp, _ := newTxnResp(r, path)
	if _, err := execTxn(ctx, v, r, path, resp); err != nil {
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

// checkTxnOps rejects the txn before it changes anything when an op on the
// chosen path would fail: a range at a compacted or future revision, a put
// whose ignore_* needs a missing key, or a put with an unknown lease.
func checkTxnOps(ctx context.Context, v WriteView, r *pb.TxnRequest, path []bool) (int, error) {
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
			err = checkPutState(ctx, v, o.RequestPut)
		case *pb.RequestOp_RequestTxn:
			var n int
			n, err = checkTxnOps(ctx, v, o.RequestTxn, path[1:])
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
func execTxn(ctx context.Context, v WriteView, r *pb.TxnRequest, path []bool, resp *pb.TxnResponse) (int, error) {
	ops := r.Success
	if !path[0] {
		ops = r.Failure
	}
	nested := 0
	for i, op := range ops {
		out := resp.Responses[i].Response
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := Range(ctx, v, o.RequestRange)
			if err != nil {
				return 0, fmt.Errorf("txn range: %w", err)
			}
			out.(*pb.ResponseOp_ResponseRange).ResponseRange = rr
		case *pb.RequestOp_RequestPut:
			pr, err := put(ctx, v, o.RequestPut)
			if err != nil {
				return 0, fmt.Errorf("txn put: %w", err)
			}
			out.(*pb.ResponseOp_ResponsePut).ResponsePut = pr
		case *pb.RequestOp_RequestDeleteRange:
			dr, err := DeleteRange(ctx, v, o.RequestDeleteRange)
			if err != nil {
				return 0, fmt.Errorf("txn delete: %w", err)
			}
			out.(*pb.ResponseOp_ResponseDeleteRange).ResponseDeleteRange = dr
		case *pb.RequestOp_RequestTxn:
			n, err := execTxn(ctx, v, o.RequestTxn, path[1:], out.(*pb.ResponseOp_ResponseTxn).ResponseTxn)
			if err != nil {
				return 0, err
			}
			nested += n + 1
			path = path[n+1:]
		}
	}
	return nested, nil
}
