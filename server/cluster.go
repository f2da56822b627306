package server

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/sqllog"
)

const (
	// HeartbeatInterval is how often a member records that it is alive.
	HeartbeatInterval = 2 * time.Second
	// memberTimeout is how long a member stays listed after its last heartbeat.
	memberTimeout = 5 * HeartbeatInterval
)

// clusterServer is etcd's Cluster service. Members are the shimd processes
// serving the database; they join by connecting to it, not by MemberAdd.
type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (s *Server) self() sqllog.Member {
	return sqllog.Member{ID: s.memberID, Name: s.cfg.Name, ClientURLs: s.cfg.ClientURLs, WakeAddr: s.cfg.WakeAddr}
}

func (s *Server) heartbeat(ctx context.Context) {
	t := time.NewTicker(HeartbeatInterval)
	defer t.Stop()
	for {
		if err := s.log.Heartbeat(ctx, s.self(), time.Now()); err != nil && ctx.Err() == nil {
			s.lg.Warn("member heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// members lists the live members, always including this one.
func (s *Server) members(ctx context.Context) ([]*pb.Member, error) {
	list := []sqllog.Member{s.self()}
	if s.log.Shared() {
		var err error
		if list, err = s.log.Members(ctx, time.Now().Add(-memberTimeout)); err != nil {
			return nil, err
		}
		found := false
		for _, m := range list {
			found = found || m.ID == s.memberID
		}
		if !found {
			list = append(list, s.self())
		}
	}
	out := make([]*pb.Member, len(list))
	for i, m := range list {
		out[i] = &pb.Member{ID: m.ID, Name: m.Name, ClientURLs: m.ClientURLs}
	}
	return out, nil
}

// WakeAddrs lists the wake addresses of the live members, this one's
// included, for package peerwake.
func (s *Server) WakeAddrs(ctx context.Context) ([]string, error) {
	list, err := s.log.Members(ctx, time.Now().Add(-memberTimeout))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range list {
		if m.WakeAddr != "" {
			out = append(out, m.WakeAddr)
		}
	}
	return out, nil
}

// CompactionLeader reports whether this member should run automatic
// compaction: on a shared database only the live member with the lowest id
// does, so that compactions do not race.
func (s *Server) CompactionLeader() bool {
	if !s.log.Shared() {
		return true
	}
	ms, err := s.members(context.Background())
	if err != nil || len(ms) == 0 {
		return false
	}
	return ms[0].ID == s.memberID
}

func (c *clusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	ms, err := c.s.members(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.MemberListResponse{Header: c.s.header(0), Members: ms}, nil
}

var errJoinByDatabase = status.Error(codes.Unimplemented, "shimd: members are the shimd processes connected to the database; start or stop a process instead")

func (c *clusterServer) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, errJoinByDatabase
}

// requireMember answers etcd's not-found error for an unknown id.
func (c *clusterServer) requireMember(ctx context.Context, id uint64) error {
	ms, err := c.s.members(ctx)
	if err != nil {
		return toGRPC(err)
	}
	for _, m := range ms {
		if m.ID == id {
			return nil
		}
	}
	return rpctypes.ErrGRPCMemberNotFound
}

func (c *clusterServer) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	if err := c.requireMember(ctx, r.ID); err != nil {
		return nil, err
	}
	return nil, errJoinByDatabase
}

func (c *clusterServer) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	if err := c.requireMember(ctx, r.ID); err != nil {
		return nil, err
	}
	return nil, errJoinByDatabase
}

func (c *clusterServer) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	if err := c.requireMember(ctx, r.ID); err != nil {
		return nil, err
	}
	return nil, rpctypes.ErrGRPCMemberNotLearner
}
