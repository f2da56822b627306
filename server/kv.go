package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/auth"
	"github.com/shimd/shimd/server/txn"
)

// kvServer is etcd's KV service: validate, then delegate to the apply layer
// (package txn). The quota check comes before, from quotaKVServer.
type kvServer struct {
	pb.UnimplementedKVServer
	s *Server
}

func (k *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(r); err != nil {
		return nil, err
	}
	c, err := k.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Range(r.Key, r.RangeEnd); err != nil {
		return nil, toGRPC(err)
	}
	resp, err := k.s.apply.Range(ctx, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := k.s.stale(ctx, c, func(c *auth.Checker) error { return c.Range(r.Key, r.RangeEnd) }); err != nil {
		return nil, err
	}
	k.s.fill(resp.Header)
	return resp, nil
}

// RangeStream is etcd 3.7's range in chunks (see txn.RangeStream), sized
// by --max-request-bytes; the last chunk carries the header.
func (k *kvServer) RangeStream(r *pb.RangeRequest, rs pb.KV_RangeStreamServer) error {
	if err := checkRangeStream(r); err != nil {
		return err
	}
	c, err := k.s.caller(rs.Context())
	if err != nil {
		return err
	}
	if err := c.Range(r.Key, r.RangeEnd); err != nil {
		return toGRPC(err)
	}
	k.s.streams.begin()
	defer k.s.streams.end()
	err = k.s.apply.RangeStream(rs.Context(), r, int(k.s.cfg.MaxRequestBytes), func(resp *pb.RangeResponse) error {
		if resp.Header != nil {
			k.s.fill(resp.Header)
		}
		err := rs.Send(&pb.RangeStreamResponse{RangeResponse: resp})
		k.s.streams.chunk()
		return err
	})
	return toGRPC(err)
}

func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(r); err != nil {
		return nil, err
	}
	var resp *pb.PutResponse
	err := k.s.authorizedWrite(ctx, func(c *auth.Checker) error {
		if err := checkSize(&pb.InternalRaftRequest{Put: r}, k.s.cfg.MaxRequestBytes); err != nil {
			return err
		}
		return k.s.checkPutAuth(ctx, c, r)
	}, func(ctx context.Context) (err error) {
		resp, err = k.s.apply.Put(ctx, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDelete(r); err != nil {
		return nil, err
	}
	var resp *pb.DeleteRangeResponse
	err := k.s.authorizedWrite(ctx, func(c *auth.Checker) error {
		if err := checkSize(&pb.InternalRaftRequest{DeleteRange: r}, k.s.cfg.MaxRequestBytes); err != nil {
			return err
		}
		return checkDeleteAuth(c, r)
	}, func(ctx context.Context) (err error) {
		resp, err = k.s.apply.DeleteRange(ctx, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	k.s.fill(resp.Header)
	return resp, nil
}

func (k *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
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
	if txn.IsReadOnly(r) {
		resp, err = k.readOnlyTxn(ctx, r)
	} else {
		err = k.s.authorizedWrite(ctx, func(c *auth.Checker) error {
			if err := checkSize(&pb.InternalRaftRequest{Txn: r}, k.s.cfg.MaxRequestBytes); err != nil {
				return err
			}
			return k.s.checkTxnAuth(ctx, c, r)
		}, func(ctx context.Context) (err error) {
			resp, err = k.s.apply.Txn(ctx, r)
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	k.s.fill(resp.Header)
	return resp, nil
}

// readOnlyTxn is no proposal in etcd: no size limit; its permissions are
// checked as a read's, with the staleness check after.
func (k *kvServer) readOnlyTxn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	c, err := k.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := k.s.checkTxnAuth(ctx, c, r); err != nil {
		return nil, toGRPC(err)
	}
	resp, err := k.s.apply.Txn(ctx, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	if err := k.s.stale(ctx, c, func(c *auth.Checker) error { return k.s.checkTxnAuth(ctx, c, r) }); err != nil {
		return nil, err
	}
	return resp, nil
}

func (k *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if err := k.s.admin(ctx); err != nil {
		return nil, err
	}
	if err := checkSize(&pb.InternalRaftRequest{Compaction: r}, k.s.cfg.MaxRequestBytes); err != nil {
		return nil, toGRPC(err)
	}
	resp, err := k.s.apply.Compact(ctx, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	k.s.fill(resp.Header)
	return resp, nil
}
