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
	all, err := ls.s.log.Leases(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &pb.LeaseLeasesResponse{Header: &pb.ResponseHeader{}, Leases: make([]*pb.LeaseStatus, len(all))}
	for i, l := range all {
		resp.Leases[i] = &pb.LeaseStatus{ID: l.ID}
	}
	ls.s.fill(resp.Header)
	return resp, nil
}

// LeaseKeepAlive renews each lease asked for and answers with its TTL, or
// TTL 0 when the lease is unknown or expired.
func (ls *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		ttl, err := ls.s.renewLease(stream.Context(), req.ID)
		if err != nil {
			return toGRPC(err)
		}
		// After the renewal, as etcd: the header's revision includes the
		// revocation of an expired lease.
		resp := &pb.LeaseKeepAliveResponse{ID: req.ID, TTL: ttl, Header: &pb.ResponseHeader{}}
		ls.s.fill(resp.Header)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// renewLease renews lease id and returns its TTL, or 0 if there is no such
// lease. As etcd's renew waits for an expired lease's revocation, it revokes
// an expired lease before answering, so that a client told the lease is gone
// finds its keys gone too. If another process renewed the lease meanwhile,
// the revocation finds it alive and the second renewal succeeds.
func (s *Server) renewLease(ctx context.Context, id int64) (int64, error) {
	for range 2 {
		ttl, err := s.log.RenewLease(ctx, id, time.Now())
		switch {
		case err == nil:
			return ttl, nil
		case errors.Is(err, sqllog.ErrLeaseNotFound):
			return 0, nil
		case !errors.Is(err, sqllog.ErrLeaseExpired):
			return 0, err
		}
		if err := s.revokeExpired(ctx, id); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

// revokeExpired revokes lease id if it has expired. The expiry is re-read
// inside the write transaction, so a keep-alive that reached another
// process first saves the lease, and two processes never revoke one lease
// twice.
func (s *Server) revokeExpired(ctx context.Context, id int64) error {
	return s.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
		expired, err := tw.LeaseExpired(ctx, id, time.Now())
		if err != nil || !expired {
			return err
		}
		revokeLease(tw, id)
		return nil
	})
}

// expireLeases revokes expired leases until ctx ends.
func (s *Server) expireLeases(ctx context.Context) {
	t := time.NewTicker(leaseCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := s.log.ExpiredLeases(ctx, time.Now())
		if err != nil && ctx.Err() == nil {
			s.lg.Warn("looking for expired leases failed; will retry", "err", err)
		}
		for _, id := range ids {
			if err := s.revokeExpired(ctx, id); err != nil && ctx.Err() == nil {
				s.lg.Warn("revoking an expired lease failed; will retry", "lease", id, "err", err)
			}
		}
	}
}
