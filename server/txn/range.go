package txn

import (
	"bytes"
	"context"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/shimd/shimd/sqllog"
)

// gteRange turns the "\x00" range end (every key >= key) into the empty,
// non-nil end that sqllog understands.
func gteRange(end []byte) []byte {
	if len(end) == 1 && end[0] == 0 {
		return []byte{}
	}
	return end
}

// Range answers a RangeRequest from v with etcd's semantics: the revision
// filters apply after the read, the count is of every key in range, sorting
// is Go's sort.Sort over the key-ordered result (so ties come out exactly as
// etcd's do), and the limit applies last.
func Range(ctx context.Context, v sqllog.ReadView, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	return rangeKVs(ctx, v, r, nil)
}

// rangeKVs is Range; with chunk set, it is one chunk of a RangeStream:
// Count is only what the limit lets through (plus the one that tells there
// are more), as etcd's, so that a chunk costs what it returns, the values
// read stay out of the value cache, and they are read into chunk's buffer.
func rangeKVs(ctx context.Context, v sqllog.ReadView, r *pb.RangeRequest, chunk *[]byte) (*pb.RangeResponse, error) {
	filtered := r.SortOrder != pb.RangeRequest_NONE ||
		r.MinModRevision != 0 || r.MaxModRevision != 0 ||
		r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
	limit := r.Limit
	if filtered {
		limit = 0
	}
	if limit > 0 {
		limit++ // one more tells whether there are more
	}
	rr, err := v.Range(ctx, r.Key, gteRange(r.RangeEnd), sqllog.RangeOptions{
		Limit:    limit,
		Rev:      r.Revision,
		Count:    r.CountOnly,
		KeysOnly: r.KeysOnly && r.SortTarget != pb.RangeRequest_VALUE,
		NoTotal:  chunk != nil,
		NoCache:  chunk != nil,
		Buf:      deref(chunk),
	})
	if err != nil {
		return nil, err
	}
	if chunk != nil {
		*chunk = rr.Buf
	}
	kvs := rr.KVs
	prune := func(drop func(kv *mvccpb.KeyValue) bool) {
		j := 0
		for _, kv := range kvs {
			if !drop(kv) {
				kvs[j] = kv
				j++
			}
		}
		kvs = kvs[:j]
	}
	if r.MaxModRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.ModRevision > r.MaxModRevision })
	}
	if r.MinModRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.ModRevision < r.MinModRevision })
	}
	if r.MaxCreateRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision > r.MaxCreateRevision })
	}
	if r.MinCreateRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision < r.MinCreateRevision })
	}
	sortKVs(kvs, r.SortOrder, r.SortTarget)

	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rr.Rev}, Count: rr.Count}
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs = kvs[:r.Limit]
		resp.More = true
	}
	if r.KeysOnly {
		// As etcd 3.7, which answers keys_only from its index: no value,
		// and no lease unless the values were read to sort by them.
		for _, kv := range kvs {
			kv.Value = nil
			if r.SortTarget != pb.RangeRequest_VALUE {
				kv.Lease = 0
			}
		}
	}
	resp.Kvs = kvs
	if resp.Kvs == nil && !r.CountOnly {
		resp.Kvs = []*mvccpb.KeyValue{}
	}
	return resp, nil
}

func deref(b *[]byte) []byte {
	if b == nil {
		return nil
	}
	return *b
}

// sortKVs sorts the key-ordered kvs as etcd does. The results are already in
// ascending key order, so that needs no sort; any other target sorts
// ascending when no order is given.
func sortKVs(kvs []*mvccpb.KeyValue, order pb.RangeRequest_SortOrder, target pb.RangeRequest_SortTarget) {
	if target != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	} else if target == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND {
		order = pb.RangeRequest_NONE
	}
	if order == pb.RangeRequest_NONE {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch target {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		return
	}
	var s sort.Interface = kvSorter{kvs, less}
	if order == pb.RangeRequest_DESCEND {
		s = sort.Reverse(s)
	}
	// sort.Sort, not a stable sort: etcd's tie order is sort.Sort's.
	sort.Sort(s)
}

type kvSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (s kvSorter) Len() int           { return len(s.kvs) }
func (s kvSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s kvSorter) Less(i, j int) bool { return s.less(s.kvs[i], s.kvs[j]) }
