package txn

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/sqllog"
)

// Put applies a PutRequest on v as etcd does: the lease must exist (checked
// first), then the put itself.
func Put(ctx context.Context, v WriteView, p *pb.PutRequest) (*pb.PutResponse, error) {
	if p.Lease != 0 && !v.LeaseExists(p.Lease) {
		return nil, ErrLeaseNotFound
	}
	return put(ctx, v, p)
}

// checkPutState checks a put against the state before it, in etcd 3.7's
// order: a lease must exist, then ignore_value and ignore_lease need the key
// to exist.
func checkPutState(ctx context.Context, v WriteView, p *pb.PutRequest) error {
	if p.Lease != 0 && !v.LeaseExists(p.Lease) {
		return ErrLeaseNotFound
	}
	if p.IgnoreValue || p.IgnoreLease {
		rr, err := v.Range(ctx, p.Key, nil, sqllog.RangeOptions{KeysOnly: true})
		if err != nil {
			return err
		}
		if len(rr.KVs) == 0 {
			return ErrKeyNotFound
		}
	}
	return nil
}

// put applies a put on v, honouring prev_kv and ignore_value/ignore_lease.
func put(ctx context.Context, v WriteView, p *pb.PutRequest) (*pb.PutResponse, error) {
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{}}
	value, lease := p.Value, p.Lease
	if p.IgnoreValue || p.IgnoreLease || p.PrevKv {
		rr, err := v.Range(ctx, p.Key, nil, sqllog.RangeOptions{KeysOnly: !p.IgnoreValue && !p.PrevKv})
		if err != nil {
			return nil, err
		}
		if len(rr.KVs) == 0 {
			if p.IgnoreValue || p.IgnoreLease {
				return nil, ErrKeyNotFound
			}
		} else {
			if p.IgnoreValue {
				value = rr.KVs[0].Value
			}
			if p.IgnoreLease {
				lease = rr.KVs[0].Lease
			}
			if p.PrevKv {
				resp.PrevKv = rr.KVs[0]
			}
		}
	}
	resp.Header.Revision = v.Put(p.Key, value, lease)
	return resp, nil
}
