package server

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shimd/shimd/sqllog"
)

const (
	// minLeaseTTL is etcd's minimum with its default timing: 1.5 election
	// timeouts of 1 s, rounded up. A shorter TTL is raised to it.
	minLeaseTTL = 2
	// maxLeaseTTL is etcd's maximum; a longer TTL is refused.
	maxLeaseTTL = 9000000000
	// leaseCheckInterval is how often expired leases are looked for, as
	// etcd's lessor does.
	leaseCheckInterval = 500 * time.Millisecond
)

// leaseServer is etcd's Lease service. Leases live in the database with
// their absolute expiry, so a restart honours the time that was left.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
}

func (ls *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if err := ls.s.checkQuota(ctx, leaseOverhead); err != nil {
		return nil, err
	}
	id := r.ID
	for id == 0 {
		id = rand.Int64() // positive, as etcd's generated ids are
	}
	if err := ls.s.checkSize(&pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: id, TTL: r.TTL}}); err != nil {
		return nil, toGRPC(err)
	}
	if r.TTL > maxLeaseTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	ttl := max(r.TTL, minLeaseTTL)
	var rev int64
	err := ls.s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
		if err := ls.s.checkCorrupt(); err != nil {
			return err
		}
		if ls.s.capped() {
			return rpctypes.ErrGRPCNoSpace
		}
		if tw.LeaseExists(id) {
			return rpctypes.ErrGRPCLeaseExist
		}
		tw.GrantLease(sqllog.Lease{ID: id, TTL: ttl, Expiry: time.Now().Add(time.Duration(ttl) * time.Second)})
		rev = tw.Rev()
		return nil
	})
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.LeaseGrantResponse{Header: ls.s.header(rev), ID: id, TTL: ttl}, nil
}

func (ls *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	if err := ls.s.checkSize(&pb.InternalRaftRequest{LeaseRevoke: r}); err != nil {
		return nil, toGRPC(err)
	}
	var rev int64
	err := ls.s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
		if err := ls.s.checkCorrupt(); err != nil {
			return err
		}
		if !tw.LeaseExists(r.ID) {
			return errLeaseNotFound
		}
		rev = revokeLease(tw, r.ID)
		return nil
	})
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.LeaseRevokeResponse{Header: ls.s.header(rev)}, nil
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

func (ls *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	lease, keys, err := ls.s.log.LookupLease(ctx, r.ID, r.Keys)
	resp := &pb.LeaseTimeToLiveResponse{Header: &pb.ResponseHeader{}, ID: r.ID}
	switch {
	case errors.Is(err, sqllog.ErrLeaseNotFound):
		resp.TTL = -1
	case err != nil:
		return nil, toGRPC(err)
	default:
		resp.TTL = int64(lease.Remaining(time.Now()).Seconds())
		resp.GrantedTTL = lease.TTL
		if r.Keys {
			resp.Keys = keys
		}
	}
	ls.s.fill(resp.Header)
	return resp, nil
}

func (ls *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	all := ls.s.log.Leases()
	resp := &pb.LeaseLeasesResponse{Header: &pb.ResponseHeader{}, Leases: make([]*pb.LeaseStatus, len(all))}
	for i, l := range all {
		resp.Leases[i] = &pb.LeaseStatus{ID: l.ID}
	}
	ls.s.fill(resp.Header)
	return resp, nil
}

// LeaseKeepAlive renews each lease asked for and answers with its TTL, or
// TTL 0 when the lease is unknown or already expired.
func (ls *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := &pb.LeaseKeepAliveResponse{ID: req.ID, Header: &pb.ResponseHeader{}}
		ls.s.fill(resp.Header)
		ttl, err := ls.s.log.RenewLease(stream.Context(), req.ID, time.Now())
		switch {
		case errors.Is(err, sqllog.ErrLeaseNotFound):
			ttl = 0
		case err != nil:
			return toGRPC(err)
		}
		resp.TTL = ttl
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// expireLeases revokes expired leases until ctx ends. Each revocation
// re-reads the lease's expiry inside its write transaction, so a keep-alive
// that reached another process first saves the lease, and two processes
// never revoke one lease twice.
func (s *Server) expireLeases(ctx context.Context) {
	t := time.NewTicker(leaseCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, id := range s.log.ExpiredLeases(time.Now()) {
			err := s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
				expired, err := tw.LeaseExpired(ctx, id, time.Now())
				if err != nil || !expired {
					return err
				}
				revokeLease(tw, id)
				return nil
			})
			if err != nil && ctx.Err() == nil {
				s.lg.Warn("revoking an expired lease failed; will retry", "lease", id, "err", err)
			}
		}
	}
}
