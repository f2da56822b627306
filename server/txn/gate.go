package txn

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/shimd/shimd/sqllog"
)

// gate says which alarms refuse a write. It is etcd's corrupt and capped
// appliers (applierV3Corrupt, applierV3Capped) as one check, made when the
// request's turn comes in the log's writer, as etcd makes it at apply time:
// an alarm raised by a request queued before this one counts.
type gate uint8

const (
	// open writes are never refused: the lessor's own revocations of
	// expired leases.
	open gate = iota
	// anyWrite is refused while a CORRUPT alarm is raised.
	anyWrite
	// addsData is refused while a CORRUPT or a NOSPACE alarm is raised.
	addsData
)

// gateOf is etcd's rule per request: a CORRUPT alarm refuses every write;
// NOSPACE refuses those that add data (a put, a lease grant, a txn with a
// put in either branch at any depth: those etcd's quota gives a cost), and
// lets deletes, lease revokes and compactions free space.
func gateOf(req any) gate {
	switch r := req.(type) {
	case *pb.PutRequest, *pb.LeaseGrantRequest:
		return addsData
	case *pb.TxnRequest:
		if hasPut(r) {
			return addsData
		}
		return anyWrite
	case *pb.DeleteRangeRequest, *pb.LeaseRevokeRequest, *pb.CompactionRequest:
		return anyWrite
	}
	return open
}

// admit checks the raised alarms against g.
func (a *Applier) admit(g gate) error {
	if g == open {
		return nil
	}
	alarms := a.log.Alarms()
	if raised(alarms, pb.AlarmType_CORRUPT) {
		return rpctypes.ErrGRPCCorrupt
	}
	if g == addsData && raised(alarms, pb.AlarmType_NOSPACE) {
		return rpctypes.ErrGRPCNoSpace
	}
	return nil
}

func raised(alarms []sqllog.Alarm, t pb.AlarmType) bool {
	for _, a := range alarms {
		if a.Type == int32(t) {
			return true
		}
	}
	return false
}

// write runs apply in the log's writer behind gate g: the one function
// every write passes to sqllog.Log.Write.
func write[R any](ctx context.Context, a *Applier, g gate, apply func(tw *sqllog.TxnWrite) (R, error)) (R, error) {
	var resp R
	err := a.log.Write(ctx, func(tw *sqllog.TxnWrite) error {
		if err := a.admit(g); err != nil {
			return err
		}
		var err error
		resp, err = apply(tw)
		return err
	})
	if err != nil {
		var zero R
		return zero, err
	}
	return resp, nil
}
