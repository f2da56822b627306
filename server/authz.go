package server

import (
	"context"
	"errors"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shimd/shimd/auth"
	"github.com/shimd/shimd/sqllog"
)

// The permission checks of etcd's auth, where etcd makes them: the KV
// requests' in kv.go through the helpers below, the other services'
// in decorators (authzlease.go), as etcd's authMaintenanceServer. With
// auth off, a check is one atomic comparison (auth.Store.Caller returns
// a nil checker, which permits everything).

// caller resolves the credentials of a request.
func (s *Server) caller(ctx context.Context) (*auth.Checker, error) {
	c, err := s.auth.Caller(ctx)
	return c, toGRPC(err)
}

// staleChecks bounds how often a write is checked again because the auth
// store changed between its check and its commit; past that, the client
// gets etcd's ErrAuthOldRevision (clientv3 then refreshes its token).
const staleChecks = 3

// authorizedWrite checks a write with check against the auth store as this
// process knows it, then runs write with that auth generation in its
// context: the log commits it only while the generation is still the
// database's, as etcd checks permissions in its apply loop. So a
// permission revoked, or auth switched on, through another process denies
// the very next write here, at no cost per request: the condition rides on
// the meta row every commit already locks. If the generation moved, the
// write is checked again against the new auth store. A denial is checked
// against the database's generation first (one read, on the denial path
// only): the permission may have been granted, or auth switched off,
// through another process. Errors come back as gRPC errors.
func (s *Server) authorizedWrite(ctx context.Context, check func(*auth.Checker) error, write func(context.Context) error) error {
	for try := 1; ; try++ {
		c, gen, err := s.auth.CallerAt(ctx)
		if err != nil {
			return toGRPC(err)
		}
		if err := check(c); err != nil {
			if try < staleChecks && s.log.Shared() {
				if serr := s.log.SyncAuth(ctx); serr == nil && s.log.AuthGen() != gen {
					continue
				}
			}
			return toGRPC(err)
		}
		err = toGRPC(write(sqllog.CheckedAt(ctx, gen)))
		if !errors.Is(err, rpctypes.ErrGRPCAuthOldRevision) || try == staleChecks {
			return err
		}
	}
}

// stale is etcd's check after a serialized read, c's credentials still
// current. If auth was off for the check but the read's barrier found it
// switched on through another process, the read is checked again.
func (s *Server) stale(ctx context.Context, c *auth.Checker, check func(*auth.Checker) error) error {
	if c == nil {
		now, err := s.auth.Caller(ctx)
		if err != nil || now == nil {
			return toGRPC(err)
		}
		return toGRPC(check(now))
	}
	return toGRPC(s.auth.Stale(ctx, c))
}

// leaseKeysWritable is etcd's checkLeasePuts: a lease's attached keys
// must all be writable by the caller (root may do anything).
func (s *Server) leaseKeysWritable(ctx context.Context, c *auth.Checker, id int64) error {
	if c == nil || id == 0 || c.Admin() == nil {
		return nil
	}
	_, keys, err := s.log.LookupLease(ctx, id, true)
	if err != nil {
		return nil // no such lease: nothing attached
	}
	for _, k := range keys {
		if err := c.Put(k); err != nil {
			return err
		}
	}
	return nil
}

// checkPutAuth is etcd's: write on the key, on the lease's keys, and read
// on the key for prev_kv.
func (s *Server) checkPutAuth(ctx context.Context, c *auth.Checker, r *pb.PutRequest) error {
	if c == nil {
		return nil
	}
	if err := c.Put(r.Key); err != nil {
		return err
	}
	if err := s.leaseKeysWritable(ctx, c, r.Lease); err != nil {
		return err
	}
	if r.PrevKv {
		return c.Range(r.Key, nil)
	}
	return nil
}

func checkDeleteAuth(c *auth.Checker, r *pb.DeleteRangeRequest) error {
	if c == nil {
		return nil
	}
	if err := c.Delete(r.Key, r.RangeEnd); err != nil {
		return err
	}
	if r.PrevKv {
		return c.Range(r.Key, r.RangeEnd)
	}
	return nil
}

// checkTxnAuth is etcd's CheckTxnAuth: every compare's range, then every
// op of both branches, nested txns included.
func (s *Server) checkTxnAuth(ctx context.Context, c *auth.Checker, r *pb.TxnRequest) error {
	if c == nil {
		return nil
	}
	for _, cmp := range r.Compare {
		if err := c.Range(cmp.Key, cmp.RangeEnd); err != nil {
			return err
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var err error
			switch tv := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if tv.RequestRange != nil {
					err = c.Range(tv.RequestRange.Key, tv.RequestRange.RangeEnd)
				}
			case *pb.RequestOp_RequestPut:
				if tv.RequestPut != nil {
					err = s.checkPutAuth(ctx, c, tv.RequestPut)
				}
			case *pb.RequestOp_RequestDeleteRange:
				if d := tv.RequestDeleteRange; d != nil {
					if d.PrevKv {
						err = c.Range(d.Key, d.RangeEnd)
					}
					if err == nil {
						err = c.Delete(d.Key, d.RangeEnd)
					}
				}
			case *pb.RequestOp_RequestTxn:
				if tv.RequestTxn != nil {
					err = s.checkTxnAuth(ctx, c, tv.RequestTxn)
				}
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// admin is etcd's AuthAdmin.isPermitted: the caller holds the root role.
func (s *Server) admin(ctx context.Context) error {
	c, err := s.caller(ctx)
	if err != nil {
		return err
	}
	return toGRPC(c.Admin())
}

// requireUser is etcd's requireAuthInfo: with auth on, credentials given.
func (s *Server) requireUser(ctx context.Context) error {
	c, err := s.caller(ctx)
	if err != nil {
		return err
	}
	return toGRPC(c.RequireUser())
}

// watchDenied is etcd's isWatchPermitted, as the cancel reason of a
// refused create ("" when permitted).
func (s *Server) watchDenied(ctx context.Context, r *pb.WatchCreateRequest) string {
	c, err := s.auth.Caller(ctx)
	if err == nil {
		err = c.Range(r.Key, r.RangeEnd)
	}
	switch {
	case err == nil:
		return ""
	case errors.Is(err, auth.ErrInvalidAuthToken):
		return rpctypes.ErrGRPCInvalidAuthToken.Error()
	case errors.Is(err, auth.ErrAuthOldRevision):
		return rpctypes.ErrGRPCAuthOldRevision.Error()
	case errors.Is(err, auth.ErrUserEmpty):
		return rpctypes.ErrGRPCUserEmpty.Error()
	}
	return rpctypes.ErrGRPCPermissionDenied.Error()
}

// authRenew is etcd's checkLeaseRenew, for each keep-alive.
func (s *Server) authRenew(ctx context.Context, id int64) error {
	c, err := s.caller(ctx)
	if err != nil || c == nil {
		return err
	}
	if err := c.RequireUser(); err != nil {
		return toGRPC(err)
	}
	if err := s.leaseKeysWritable(ctx, c, id); err != nil {
		return toGRPC(err)
	}
	return s.stale(ctx, c, func(*auth.Checker) error { return nil })
}
