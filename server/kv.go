package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shimd/shimd/sqllog"
)

// kvServer is etcd's KV service: validate, then delegate to the log.
type kvServer struct {
	pb.UnimplementedKVServer
	s *Server
}

func (k *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(r); err != nil {
		return nil, err
	}
	var v sqllog.ReadView
	if r.Serializable {
		v = k.s.log.SerializableView()
	} else {
		var err error
		if v, err = k.s.log.View(ctx); err != nil {
			return nil, toGRPC(err)
		}
	}
	resp, err := doRange(ctx, v, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := k.s.checkQuota(ctx, costPut(r)); err != nil {
		return nil, err
	}
	if err := checkPut(r); err != nil {
		return nil, err
	}
	if err := k.s.checkSize(&pb.InternalRaftRequest{Put: r}); err != nil {
		return nil, toGRPC(err)
	}
	var resp *pb.PutResponse
	err := k.s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
		if err := k.s.checkCorrupt(); err != nil {
			return err
		}
		if k.s.capped() {
			return rpctypes.ErrGRPCNoSpace
		}
		if r.Lease != 0 && !tw.LeaseExists(r.Lease) {
			return errLeaseNotFound
		}
		var err error
		resp, err = doPut(ctx, tw, r)
		return err
	})
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDelete(r); err != nil {
		return nil, err
	}
	if err := k.s.checkSize(&pb.InternalRaftRequest{DeleteRange: r}); err != nil {
		return nil, toGRPC(err)
	}
	var resp *pb.DeleteRangeResponse
	err := k.s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
		if err := k.s.checkCorrupt(); err != nil {
			return err
		}
		var err error
		resp, err = doDelete(ctx, tw, r)
		return err
	})
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	cost := costTxn(r)
	if err := k.s.checkQuota(ctx, cost); err != nil {
		return nil, err
	}
	if err := checkTxn(r, k.s.cfg.MaxTxnOps); err != nil {
		return nil, err
	}
	// Overlaps are checked after the op count, which bounds their cost.
	if _, _, err := checkIntervals(r.Success); err != nil {
		return nil, err
	}
	if _, _, err := checkIntervals(r.Failure); err != nil {
		return nil, err
	}
	var resp *pb.TxnResponse
	var err error
	if isReadOnly(r) {
		var v sqllog.ReadView
		if v, err = k.s.log.View(ctx); err == nil {
			resp, err = k.s.runTxn(ctx, readOnly{v}, r)
		}
	} else {
		if err := k.s.checkSize(&pb.InternalRaftRequest{Txn: r}); err != nil {
			return nil, toGRPC(err)
		}
		err = k.s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
			if err := k.s.checkCorrupt(); err != nil {
				return err
			}
			if cost > 0 && k.s.capped() {
				return rpctypes.ErrGRPCNoSpace
			}
			var err error
			resp, err = k.s.runTxn(ctx, tw, r)
			return err
		})
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if err := k.s.checkSize(&pb.InternalRaftRequest{Compaction: r}); err != nil {
		return nil, toGRPC(err)
	}
	if err := k.s.checkCorrupt(); err != nil {
		return nil, err
	}
	done, err := k.s.log.Compact(ctx, r.Revision)
	if err != nil {
		return nil, toGRPC(err)
	}
	if r.Physical {
		select {
		case <-done:
		case <-ctx.Done():
			return nil, toGRPC(ctx.Err())
		}
	}
	resp := &pb.CompactionResponse{Header: &pb.ResponseHeader{}}
	k.s.fill(resp.Header)
	return resp, nil
}

// raftHeaderID stands in for the request id etcd's raft layer adds to every
// write before checking its size; its varint is as long as a real one.
const raftHeaderID = 1<<63 | 1

// checkSize applies --max-request-bytes to a write the way etcd does: to the
// request as etcd would propose it through raft.
func (s *Server) checkSize(req *pb.InternalRaftRequest) error {
	req.Header = &pb.RequestHeader{ID: raftHeaderID}
	if req.Size() > s.cfg.MaxRequestBytes {
		return errRequestTooLarge
	}
	return nil
}
