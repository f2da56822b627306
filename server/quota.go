package server

import (
	"context"
	"log/slog"
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
// deletes and compaction succeed (the apply layer, package txn, refuses the
// rest), until an operator disarms it.
type quota struct {
	log      quotaLog
	lg       *slog.Logger
	memberID uint64 // the member that raises the alarm
	bytes    int64
	// size is the last measured database size plus the cost of the writes
	// accepted since, so that a burst cannot overshoot between measurements.
	size atomic.Int64
}

// quotaLog is what the quota needs of the log: the database's size, and the
// alarm table.
type quotaLog interface {
	Size(ctx context.Context) (size, inUse int64, err error)
	SetAlarm(ctx context.Context, a sqllog.Alarm, active bool) (bool, error)
}

func newQuota(log quotaLog, lg *slog.Logger, memberID uint64, bytes int64) *quota {
	if bytes <= 0 {
		bytes = DefaultQuotaBytes
	}
	quotaGauge.Set(float64(bytes))
	return &quota{log: log, lg: lg, memberID: memberID, bytes: bytes}
}

// refresh measures the database now.
func (q *quota) refresh(ctx context.Context) {
	size, inUse, err := q.log.Size(ctx)
	if err != nil {
		if ctx.Err() == nil { // not a stop
			q.lg.Warn("measuring the database size failed", "err", err)
		}
		return
	}
	q.size.Store(size)
	dbSizeGauge.Set(float64(size))
	dbSizeInUseGauge.Set(float64(inUse))
}

// measure refreshes the size every sizeInterval until ctx ends.
func (q *quota) measure(ctx context.Context) {
	t := time.NewTicker(sizeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			q.refresh(ctx)
		}
	}
}

// check is etcd's quota check, made before a Put, a Txn or a LeaseGrant is
// looked at: one that would pass the quota raises the NOSPACE alarm.
func (q *quota) check(ctx context.Context, cost int) error {
	if cost == 0 {
		return nil
	}
	if q.size.Load()+int64(cost) < q.bytes {
		q.size.Add(int64(cost))
		return nil
	}
	if _, err := q.log.SetAlarm(ctx, sqllog.Alarm{MemberID: q.memberID, Type: int32(pb.AlarmType_NOSPACE)}, true); err != nil {
		q.lg.Warn("raising the NOSPACE alarm failed", "err", err)
	}
	return rpctypes.ErrGRPCNoSpace
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

// quotaKVServer is etcd's decorator of the same name: the quota check before
// the KV service sees a Put or a Txn.
type quotaKVServer struct {
	pb.KVServer
	q *quota
}

func (s quotaKVServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := s.q.check(ctx, costPut(r)); err != nil {
		return nil, err
	}
	return s.KVServer.Put(ctx, r)
}

func (s quotaKVServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := s.q.check(ctx, costTxn(r)); err != nil {
		return nil, err
	}
	return s.KVServer.Txn(ctx, r)
}

// quotaLeaseServer is etcd's decorator of the same name: the quota check
// before the Lease service sees a LeaseGrant.
type quotaLeaseServer struct {
	pb.LeaseServer
	q *quota
}

func (s quotaLeaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if err := s.q.check(ctx, leaseOverhead); err != nil {
		return nil, err
	}
	return s.LeaseServer.LeaseGrant(ctx, r)
}
