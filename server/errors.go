package server

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/server/txn"
	"github.com/shimd/shimd/sqllog"
)

// errRequestTooLarge is checkSize's error, before translation to gRPC.
var errRequestTooLarge = errors.New("etcdserver: request is too large")

// toGRPC turns an error of sqllog, of the apply layer (package txn) or of
// checkSize into the gRPC status etcd sends for it, so that clientv3 maps it
// back to its rpctypes error.
func toGRPC(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, sqllog.ErrCompacted):
		return rpctypes.ErrGRPCCompacted
	case errors.Is(err, sqllog.ErrFutureRev):
		return rpctypes.ErrGRPCFutureRev
	case errors.Is(err, txn.ErrKeyNotFound):
		return rpctypes.ErrGRPCKeyNotFound
	case errors.Is(err, txn.ErrLeaseNotFound):
		return rpctypes.ErrGRPCLeaseNotFound
	case errors.Is(err, errRequestTooLarge):
		return rpctypes.ErrGRPCRequestTooLarge
	case errors.Is(err, sqllog.ErrClosed):
		return rpctypes.ErrGRPCStopped
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}
