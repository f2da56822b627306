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
// their absolute expiry, so a restart honours the time that was left. The
// quota check of a grant comes before, from quotaLeaseServer.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
}

func (ls *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	id := r.ID
	for id == 0 {
		id = rand.Int64() // positive, as etcd's generated ids are
	}
	if err := checkSize(&pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: id, TTL: r.TTL}}, ls.s.cfg.MaxRequestBytes); err != nil {
		return nil, toGRPC(err)
	}
	if r.TTL > maxLeaseTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	resp, err := ls.s.apply.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: max(r.TTL, minLeaseTTL)})
	if err != nil {
		return nil, toGRPC(err)
	}
	ls.s.fill(resp.Header)
	return resp, nil
}

func (ls *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	if err := checkSize(&pb.InternalRaftRequest{LeaseRevoke: r}, ls.s.cfg.MaxRequestBytes); err != nil {
		return nil, toGRPC(err)
	}
	resp, err := ls.s.apply.LeaseRevoke(ctx, r)
	if err != nil {
		return nil, toGRPC(err)
	}
	ls.s.fill(resp.Header)
	return resp, nil
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
		if err := ls.s.authRenew(stream.Context(), req.ID); err != nil {
			return err
		}
		ttl, err := ls.renewLease(stream.Context(), req.ID)
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
func (ls *leaseServer) renewLease(ctx context.Context, id int64) (int64, error) {
	for range 2 {
		ttl, err := ls.s.log.RenewLease(ctx, id, time.Now())
		switch {
		case err == nil:
			return ttl, nil
		case errors.Is(err, sqllog.ErrLeaseNotFound):
			return 0, nil
		case !errors.Is(err, sqllog.ErrLeaseExpired):
			return 0, err
		}
		if err := ls.s.apply.RevokeExpired(ctx, id); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

// expireLeases revokes expired leases until ctx ends.
func (ls *leaseServer) expireLeases(ctx context.Context) {
	t := time.NewTicker(leaseCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := ls.s.log.ExpiredLeases(ctx, time.Now())
		if err != nil && ctx.Err() == nil {
			ls.s.lg.Warn("looking for expired leases failed; will retry", "err", err)
		}
		for _, id := range ids {
			if err := ls.s.apply.RevokeExpired(ctx, id); err != nil && ctx.Err() == nil {
				ls.s.lg.Warn("revoking an expired lease failed; will retry", "lease", id, "err", err)
			}
		}
	}
}
