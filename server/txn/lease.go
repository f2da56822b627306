package txn

import (
	"context"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shimd/shimd/sqllog"
)

// LeaseGrant grants lease id with ttl seconds, expiring ttl from now, and
// returns the revision it was granted at.
func LeaseGrant(tw *sqllog.TxnWrite, id, ttl int64) (int64, error) {
	if tw.LeaseExists(id) {
		return 0, rpctypes.ErrGRPCLeaseExist
	}
	tw.GrantLease(sqllog.Lease{ID: id, TTL: ttl, Expiry: time.Now().Add(time.Duration(ttl) * time.Second)})
	return tw.Rev(), nil
}

// LeaseRevoke revokes lease id and deletes its keys, returning the revision
// after.
func LeaseRevoke(tw *sqllog.TxnWrite, id int64) (int64, error) {
	if !tw.LeaseExists(id) {
		return 0, ErrLeaseNotFound
	}
	return revokeLease(tw, id), nil
}

// RevokeExpired revokes lease id if it has expired. The expiry is read
// inside the write transaction, so a keep-alive that reached another
// process first saves the lease, and two processes never revoke one lease
// twice.
func RevokeExpired(ctx context.Context, tw *sqllog.TxnWrite, id int64) error {
	expired, err := tw.LeaseExpired(ctx, id, time.Now())
	if err != nil || !expired {
		return err
	}
	revokeLease(tw, id)
	return nil
}

// revokeLease deletes the keys attached to lease id, in key order and all in
// one revision, then the lease. It returns the revision after.
func revokeLease(tw *sqllog.TxnWrite, id int64) int64 {
	for _, k := range tw.LeaseKeys(id) {
		tw.DeleteRange(k, nil)
	}
	tw.RevokeLease(id)
	if tw.Changes() > 0 {
		return tw.Rev() + 1
	}
	return tw.Rev()
}
