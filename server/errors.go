package server

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/auth"
	"github.com/shimd/shimd/server/txn"
	"github.com/shimd/shimd/sqllog"
)

// errRequestTooLarge is checkSize's error, before translation to gRPC.
var errRequestTooLarge = errors.New("etcdserver: request is too large")

// authErrors are the auth store's errors etcd sends as its own gRPC
// errors; the others (a no-password user's password, bcrypt's) go out as
// etcd's togRPCError sends them: code Unknown, the error's text.
var authErrors = map[error]error{
	auth.ErrRootUserNotExist:     rpctypes.ErrGRPCRootUserNotExist,
	auth.ErrRootRoleNotExist:     rpctypes.ErrGRPCRootRoleNotExist,
	auth.ErrUserAlreadyExist:     rpctypes.ErrGRPCUserAlreadyExist,
	auth.ErrUserEmpty:            rpctypes.ErrGRPCUserEmpty,
	auth.ErrUserNotFound:         rpctypes.ErrGRPCUserNotFound,
	auth.ErrRoleAlreadyExist:     rpctypes.ErrGRPCRoleAlreadyExist,
	auth.ErrRoleNotFound:         rpctypes.ErrGRPCRoleNotFound,
	auth.ErrRoleEmpty:            rpctypes.ErrGRPCRoleEmpty,
	auth.ErrAuthFailed:           rpctypes.ErrGRPCAuthFailed,
	auth.ErrPermissionNotGiven:   rpctypes.ErrGRPCPermissionNotGiven,
	auth.ErrPermissionDenied:     rpctypes.ErrGRPCPermissionDenied,
	auth.ErrRoleNotGranted:       rpctypes.ErrGRPCRoleNotGranted,
	auth.ErrPermissionNotGranted: rpctypes.ErrGRPCPermissionNotGranted,
	auth.ErrAuthNotEnabled:       rpctypes.ErrGRPCAuthNotEnabled,
	auth.ErrInvalidAuthToken:     rpctypes.ErrGRPCInvalidAuthToken,
	auth.ErrInvalidAuthMgmt:      rpctypes.ErrGRPCInvalidAuthMgmt,
	auth.ErrAuthOldRevision:      rpctypes.ErrGRPCAuthOldRevision,
}

// toGRPC turns an error of sqllog, of the apply layer (package txn) or of
// checkSize into the gRPC status etcd sends for it, so that clientv3 maps it
// back to its rpctypes error.
func toGRPC(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sqllog.ErrDBTimeout):
		// etcd's answer to a proposal that did not commit in time; clientv3
		// would take DeadlineExceeded for its own call's and retry.
		return rpctypes.ErrGRPCTimeout
	case errors.Is(err, sqllog.ErrDBBehind):
		// Nothing was written; as after etcd's leader changed, the client
		// may retry once this member has caught up with the database.
		return rpctypes.ErrGRPCLeaderChanged
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
	case errors.Is(err, sqllog.ErrAuthStale):
		// etcd's answer when the auth store moved between check and apply.
		return rpctypes.ErrGRPCAuthOldRevision
	case errors.Is(err, auth.ErrNoPasswordUser), errors.Is(err, bcrypt.ErrPasswordTooLong), errors.Is(err, auth.ErrVerifyOnly):
		return status.Error(codes.Unknown, err.Error())
	}
	if g, ok := authErrors[err]; ok {
		return g
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}
