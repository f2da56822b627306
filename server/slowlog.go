package server

import (
	"context"
	"log/slog"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
)

// DefaultWarningApplyDuration is etcd's --warning-apply-duration.
const DefaultWarningApplyDuration = 100 * time.Millisecond

// slowLog is an interceptor that warns of requests slower than expected,
// with the request kind and its key range; never values, which may be
// secrets.
func slowLog(lg *slog.Logger, expected time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		if took := time.Since(start); took > expected {
			slowRequests.Inc()
			key, end := keyRange(req)
			lg.Warn("request took too long", "method", info.FullMethod, "key", key, "range_end", end,
				"took", took, "expected-duration", expected, "err", err)
		}
		return resp, err
	}
}

// keyRange names the keys a request touches, quoted so binary keys print.
func keyRange(req any) (key, end string) {
	q := func(b []byte) string {
		if len(b) == 0 {
			return ""
		}
		if len(b) > 256 {
			b = b[:256]
		}
		return string(b)
	}
	switch r := req.(type) {
	case *pb.RangeRequest:
		return q(r.Key), q(r.RangeEnd)
	case *pb.PutRequest:
		return q(r.Key), ""
	case *pb.DeleteRangeRequest:
		return q(r.Key), q(r.RangeEnd)
	case *pb.TxnRequest:
		for _, c := range r.Compare {
			return q(c.Key), q(c.RangeEnd)
		}
		for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
			for _, op := range branch {
				switch o := op.Request.(type) {
				case *pb.RequestOp_RequestRange:
					return q(o.RequestRange.Key), q(o.RequestRange.RangeEnd)
				case *pb.RequestOp_RequestPut:
					return q(o.RequestPut.Key), ""
				case *pb.RequestOp_RequestDeleteRange:
					return q(o.RequestDeleteRange.Key), q(o.RequestDeleteRange.RangeEnd)
				}
			}
		}
	}
	return "", ""
}
