package txn

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/sqllog"
)

// DeleteRange deletes the keys in the request's range on v, returning them
// first when prev_kv asks.
func DeleteRange(ctx context.Context, v WriteView, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{}}
	end := gteRange(r.RangeEnd)
	if r.PrevKv {
		rr, err := v.Range(ctx, r.Key, end, sqllog.RangeOptions{})
		if err != nil {
			return nil, err
		}
		resp.PrevKvs = rr.KVs
	}
	resp.Deleted, resp.Header.Revision = v.DeleteRange(r.Key, end)
	return resp, nil
}
