package server

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/server/txn"
	"github.com/shimd/shimd/sqllog"
)

// Version is the etcd version shimd reports: the one whose API it
// implements, so that clients (kube-apiserver's feature detection among
// them) enable what shimd supports.
const Version = "3.7.3"

// storageVersion is etcd's storage version for that release.
const storageVersion = "3.7.0"

// maintenanceServer is etcd's Maintenance service.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

func (m *maintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	size, inUse, err := m.s.log.Size(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	hdr := &pb.ResponseHeader{}
	m.s.fill(hdr)
	resp := &pb.StatusResponse{
		Header:  hdr,
		Version: Version,
		// Every shimd is leader of itself: there is no election, the
		// database orders writes.
		Leader: m.s.memberID,
		// The log position stands in for raft's index: it only grows, and
		// processes on one database agree on it.
		RaftIndex:        uint64(hdr.Revision),
		RaftAppliedIndex: uint64(hdr.Revision),
		RaftTerm:         hdr.RaftTerm,
		DbSize:           size,
		DbSizeInUse:      inUse,
		DbSizeQuota:      m.s.quota.bytes,
		StorageVersion:   storageVersion,
		DowngradeInfo:    &pb.DowngradeInfo{},
	}
	for _, a := range m.s.log.Alarms() {
		resp.Errors = append(resp.Errors, alarmMember(a).String())
	}
	return resp, nil
}

func alarmMember(a sqllog.Alarm) *pb.AlarmMember {
	return &pb.AlarmMember{MemberID: a.MemberID, Alarm: pb.AlarmType(a.Type)}
}

func (m *maintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (_ *pb.AlarmResponse, err error) {
	defer txn.ObserveWrite("Alarm", time.Now(), &err) // all of etcd's go through raft
	resp := &pb.AlarmResponse{Header: &pb.ResponseHeader{}}
	switch r.Action {
	case pb.AlarmRequest_GET:
		for _, a := range m.s.log.Alarms() {
			if r.Alarm == pb.AlarmType_NONE || pb.AlarmType(a.Type) == r.Alarm {
				resp.Alarms = append(resp.Alarms, alarmMember(a))
			}
		}
	case pb.AlarmRequest_ACTIVATE, pb.AlarmRequest_DEACTIVATE:
		if r.Action == pb.AlarmRequest_ACTIVATE && r.Alarm == pb.AlarmType_NONE {
			break
		}
		a := sqllog.Alarm{MemberID: r.MemberID, Type: int32(r.Alarm)}
		changed, err := m.s.log.SetAlarm(ctx, a, r.Action == pb.AlarmRequest_ACTIVATE)
		if err != nil {
			return nil, toGRPC(err)
		}
		// Activating an active alarm answers it, as etcd's alarm store does.
		if changed || r.Action == pb.AlarmRequest_ACTIVATE {
			resp.Alarms = append(resp.Alarms, alarmMember(a))
		}
	}
	m.s.fill(resp.Header)
	return resp, nil
}

// Defragment reclaims the space of compacted rows in the database's own way
// (SQLite VACUUM, PostgreSQL VACUUM, MySQL OPTIMIZE TABLE).
func (m *maintenanceServer) Defragment(ctx context.Context, r *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	if err := m.s.log.Defragment(ctx); err != nil {
		return nil, toGRPC(err)
	}
	m.s.quota.refresh(ctx)
	return &pb.DefragmentResponse{Header: m.s.header(0)}, nil
}

func (m *maintenanceServer) Hash(ctx context.Context, r *pb.HashRequest) (*pb.HashResponse, error) {
	h, rev, err := m.s.log.Hash(ctx)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.HashResponse{Header: m.s.header(rev), Hash: h}, nil
}

func (m *maintenanceServer) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	h, rev, err := m.s.log.HashKV(ctx, r.Revision)
	if err != nil {
		return nil, toGRPC(err)
	}
	return &pb.HashKVResponse{Header: m.s.header(rev), Hash: h.Hash, CompactRevision: h.CompactRevision, HashRevision: h.Revision}, nil
}

// MoveLeader succeeds only as a no-op move to this member: every shimd
// leads itself.
func (m *maintenanceServer) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	if r.TargetID != m.s.memberID {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	return &pb.MoveLeaderResponse{Header: m.s.header(0)}, nil
}

func (m *maintenanceServer) Downgrade(ctx context.Context, r *pb.DowngradeRequest) (*pb.DowngradeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "shimd: cluster downgrade does not apply: shimd's storage is a SQL database")
}

// snapshotChunk is the blob size of one snapshot message, as etcd's.
const snapshotChunk = 32 << 10

// Snapshot streams a consistent snapshot as an etcd v3 backend file (a
// bbolt database that etcdutl restores and etcd serves), followed by its
// SHA-256, as etcd's does. The file is written to a temporary directory
// first: its size is sent with every message.
func (m *maintenanceServer) Snapshot(r *pb.SnapshotRequest, stream pb.Maintenance_SnapshotServer) error {
	dir, err := os.MkdirTemp("", "shimd-snapshot-*")
	if err != nil {
		return toGRPC(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "db")
	if _, err := m.s.log.WriteSnapshotDB(stream.Context(), path); err != nil {
		return toGRPC(err)
	}
	f, err := os.Open(path)
	if err != nil {
		return toGRPC(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return toGRPC(err)
	}
	h := sha256.New()
	total := st.Size() + sha256.Size
	for sent := int64(0); sent < total; {
		var buf []byte
		if n := st.Size() - sent; n > 0 {
			buf = make([]byte, min(snapshotChunk, n))
			if _, err := io.ReadFull(f, buf); err != nil {
				return toGRPC(err)
			}
			h.Write(buf)
		} else {
			buf = h.Sum(nil)
		}
		sent += int64(len(buf))
		if err := stream.Send(&pb.SnapshotResponse{Header: m.s.header(0), RemainingBytes: uint64(total - sent), Blob: buf, Version: storageVersion}); err != nil {
			return err
		}
	}
	return nil
}
