package txn

import (
	"bytes"
	"context"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/shimd/shimd/sqllog"
)

// RangeStream answers r in chunks, as etcd 3.7's KV.RangeStream: every
// chunk is a range of the view at one revision (the view's, or r's), read
// with a limit that starts at 10 and doubles or halves to bring each chunk
// near chunkBytes (etcd's --max-request-bytes). Only the last chunk carries
// the header (its revision: the view's), more and count, which is the
// whole range's as for Range. count_only is one message. Memory is two
// chunks' (the next is read while one is sent), whatever the size of the
// range, and two value buffers serve every chunk in turn: a chunk's is
// reused once send has returned, by when gRPC has encoded it. r is not
// modified.
func RangeStream(ctx context.Context, v sqllog.ReadView, r *pb.RangeRequest, chunkBytes int, send func(*pb.RangeResponse) error) error {
	r = proto.Clone(r).(*pb.RangeRequest)
	if r.CountOnly {
		resp, err := Range(ctx, v, r)
		if err != nil {
			return err
		}
		return send(&pb.RangeResponse{Header: &pb.ResponseHeader{Revision: resp.Header.Revision}, Count: resp.Count})
	}
	total := r.Limit
	if total == 0 {
		total = math.MaxInt64
	}
	// A negative limit is no limit to Range: one chunk, as etcd's.
	r.Limit = min(initialChunkLimit, total)
	var count, headerRev int64
	var bufs [2][]byte // the chunk being sent's values, and the next one's
	resp, err := rangeKVs(ctx, v, r, &bufs[0])
	for {
		if err != nil {
			return err
		}
		if headerRev == 0 {
			headerRev = resp.Header.Revision
			if r.Revision == 0 {
				r.Revision = headerRev // later chunks read what the first did
			}
		}
		count += int64(len(resp.Kvs))
		out := &pb.RangeResponse{Kvs: resp.Kvs}
		if done := !resp.More || count == total; done {
			out.Header = &pb.ResponseHeader{Revision: headerRev}
			out.More = resp.More
			out.Count = count
			if resp.More {
				rest, err := Range(ctx, v, &pb.RangeRequest{Key: nextKey(resp), RangeEnd: r.RangeEnd, Revision: r.Revision, CountOnly: true})
				if err != nil {
					return err
				}
				out.Count += rest.Count
			}
			return send(out)
		}
		// The next chunk is read while this one is sent.
		r.Key = nextKey(resp)
		r.Limit = min(nextChunkLimit(r.Limit, proto.Size(resp), chunkBytes), total-count)
		next := make(chan struct{})
		var nresp *pb.RangeResponse
		var nerr error
		go func() {
			defer close(next)
			nresp, nerr = rangeKVs(ctx, v, r, &bufs[1])
		}()
		serr := send(out)
		<-next
		if serr != nil {
			return serr
		}
		resp, err = nresp, nerr
		bufs[0], bufs[1] = bufs[1], bufs[0]
	}
}

// nextKey is where the chunk after resp starts.
func nextKey(resp *pb.RangeResponse) []byte {
	return append(bytes.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0)
}

// initialChunkLimit is the first chunk's limit, as etcd's.
const initialChunkLimit = 10

// nextChunkLimit doubles the limit after a chunk under half of target bytes
// and halves it after one over twice target, never below 1 (a limit of 0
// would be none), as etcd does.
func nextChunkLimit(limit int64, size, target int) int64 {
	switch {
	case size < target/2:
		limit *= 2
	case size > target*2:
		limit /= 2
	}
	return max(limit, 1)
}
