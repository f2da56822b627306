package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/auth"
)

// Decorators that check etcd's auth before the Lease, Maintenance and
// Cluster services, in etcd's order: the quota first (it wraps these),
// then the caller's credentials, then the request itself.

type authLeaseServer struct {
	pb.LeaseServer
	s *Server
}

func (a authLeaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if err := a.s.requireUser(ctx); err != nil {
		return nil, err
	}
	return a.LeaseServer.LeaseGrant(ctx, r)
}

func (a authLeaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	var resp *pb.LeaseRevokeResponse
	err := a.s.authorizedWrite(ctx, func(c *auth.Checker) error {
		if err := c.RequireUser(); err != nil {
			return err
		}
		return a.s.leaseKeysWritable(ctx, c, r.ID)
	}, func(ctx context.Context) (err error) {
		resp, err = a.LeaseServer.LeaseRevoke(ctx, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (a authLeaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	c, err := a.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.RequireUser(); err != nil {
		return nil, toGRPC(err)
	}
	if c != nil && r.Keys && c.Admin() != nil {
		if _, keys, err := a.s.log.LookupLease(ctx, r.ID, true); err == nil {
			for _, k := range keys {
				if err := c.Range(k, nil); err != nil {
					return nil, toGRPC(err)
				}
			}
		}
	}
	resp, err := a.LeaseServer.LeaseTimeToLive(ctx, r)
	if err == nil && r.Keys {
		err = a.s.stale(ctx, c, func(*auth.Checker) error { return nil })
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (a authLeaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	c, err := a.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.RequireUser(); err != nil {
		return nil, toGRPC(err)
	}
	resp, err := a.LeaseServer.LeaseLeases(ctx, r)
	if err != nil || c == nil || c.Admin() == nil {
		return resp, err
	}
	for _, l := range resp.Leases {
		if _, keys, err := a.s.log.LookupLease(ctx, l.ID, true); err == nil {
			for _, k := range keys {
				if err := c.Range(k, nil); err != nil {
					return nil, toGRPC(err)
				}
			}
		}
	}
	if err := a.s.stale(ctx, c, func(*auth.Checker) error { return nil }); err != nil {
		return nil, err
	}
	return resp, nil
}

type authMaintenanceServer struct {
	pb.MaintenanceServer
	s *Server
}

func (a authMaintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	check := a.s.admin
	if r.Action == pb.AlarmRequest_GET {
		check = a.s.requireUser
	}
	if err := check(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.Alarm(ctx, r)
}

func (a authMaintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	if err := a.s.requireUser(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.Status(ctx, r)
}

func (a authMaintenanceServer) Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.Defragment(ctx, r)
}

func (a authMaintenanceServer) Hash(ctx context.Context, r *pb.HashRequest) (*pb.HashResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.Hash(ctx, r)
}

func (a authMaintenanceServer) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.HashKV(ctx, r)
}

func (a authMaintenanceServer) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.MoveLeader(ctx, r)
}

func (a authMaintenanceServer) Downgrade(ctx context.Context, r *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.MaintenanceServer.Downgrade(ctx, r)
}

func (a authMaintenanceServer) Snapshot(r *pb.SnapshotRequest, stream pb.Maintenance_SnapshotServer) error {
	if err := a.s.admin(stream.Context()); err != nil {
		return err
	}
	return a.MaintenanceServer.Snapshot(r, stream)
}

// authClusterServer is etcd's checkMembershipOperationPermission: member
// changes are root's; listing needs a user.
type authClusterServer struct {
	pb.ClusterServer
	s *Server
}

func (a authClusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	if err := a.s.requireUser(ctx); err != nil {
		return nil, err
	}
	return a.ClusterServer.MemberList(ctx, r)
}

func (a authClusterServer) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.ClusterServer.MemberAdd(ctx, r)
}

func (a authClusterServer) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.ClusterServer.MemberRemove(ctx, r)
}

func (a authClusterServer) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.ClusterServer.MemberUpdate(ctx, r)
}

func (a authClusterServer) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	if err := a.s.admin(ctx); err != nil {
		return nil, err
	}
	return a.ClusterServer.MemberPromote(ctx, r)
}
