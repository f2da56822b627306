package server

import (
	"context"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shimd/shimd/sqllog"
)

const (
	// DefaultQuotaBytes is etcd's default --quota-backend-bytes (2 GiB).
	DefaultQuotaBytes = 2 << 30
	// kvOverhead and leaseOverhead are etcd's cost estimates beyond the bytes
	// a request carries.
	kvOverhead    = 256
	leaseOverhead = 64
	// sizeInterval is how often the database size is measured.
	sizeInterval = time.Second
)

// quota is etcd's space quota: a write that would take the database past it
// raises the NOSPACE alarm and fails; while the alarm is raised only reads,
// deletes and compaction succeed, until an operator disarms it.
type quota struct {
	bytes int64
	// size is the last measured database size plus the cost of the writes
	// accepted since, so that a burst cannot overshoot between measurements.
	size atomic.Int64
}

// refreshSize measures the database now.
func (s *Server) refreshSize(ctx context.Context) {
	size, inUse, err := s.log.Size(ctx)
	if err != nil {
		s.lg.Warn("measuring the database size failed", "err", err)
		return
	}
	s.quota.size.Store(size)
	dbSizeGauge.Set(float64(size))
	dbSizeInUseGauge.Set(float64(inUse))
}

func (s *Server) measureSize(ctx context.Context) {
	t := time.NewTicker(sizeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.refreshSize(ctx)
		}
	}
}

// checkQuota is etcd's quota check, made before a Put, a Txn or a
// LeaseGrant is looked at.
func (s *Server) checkQuota(ctx context.Context, cost int) error {
	if cost == 0 {
		return nil
	}
	if s.quota.size.Load()+int64(cost) < s.quota.bytes {
		s.quota.size.Add(int64(cost))
		return nil
	}
	if _, err := s.log.SetAlarm(ctx, sqllog.Alarm{MemberID: s.memberID, Type: int32(pb.AlarmType_NOSPACE)}, true); err != nil {
		s.lg.Warn("raising the NOSPACE alarm failed", "err", err)
	}
	return rpctypes.ErrGRPCNoSpace
}

// capped reports whether writes that add data are refused: the NOSPACE
// alarm is raised on some member.
func (s *Server) capped() bool { return s.alarmed(pb.AlarmType_NOSPACE) }

// checkCorrupt refuses every write while a CORRUPT alarm is raised, as
// etcd does; reads go on.
func (s *Server) checkCorrupt() error {
	if s.alarmed(pb.AlarmType_CORRUPT) {
		return rpctypes.ErrGRPCCorrupt
	}
	return nil
}

func (s *Server) alarmed(t pb.AlarmType) bool {
	for _, a := range s.log.Alarms() {
		if a.Type == int32(t) {
			return true
		}
	}
	return false
}

func costPut(r *pb.PutRequest) int { return kvOverhead + len(r.Key) + len(r.Value) }

// costTxn is the larger of the two branches' put costs.
func costTxn(r *pb.TxnRequest) int {
	branch := func(ops []*pb.RequestOp) int {
		n := 0
		for _, op := range ops {
			if p := op.GetRequestPut(); p != nil {
				n += costPut(p)
			} else if t := op.GetRequestTxn(); t != nil {
				n += costTxn(t)
			}
		}
		return n
	}
	return max(branch(r.Success), branch(r.Failure))
}
