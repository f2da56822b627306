package txn

import "errors"

// Errors of the apply layer, before translation to gRPC (the server's
// toGRPC maps them to etcd's rpctypes errors).
var (
	ErrKeyNotFound   = errors.New("etcdserver: key not found")
	ErrLeaseNotFound = errors.New("lease not found")
)
