// Package txn applies etcd's KV and lease requests to the revision log, as
// etcd's server/etcdserver/txn and apply packages do: one file per verb,
// each a function over a view of the log (sqllog.ReadView, or a WriteView
// such as the *sqllog.TxnWrite of one request in the log's writer), and the
// Applier, which runs them on a log with every write behind the alarm gate
// (gate.go). Requests arrive validated: that is the server's job.
package txn

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/sqllog"
)

// Log is what the apply layer needs of the revision log (a *sqllog.Log).
type Log interface {
	// View is a linearizable read view, SerializableView a local one.
	View(ctx context.Context) (sqllog.ReadView, error)
	SerializableView() sqllog.ReadView
	// Write runs fn in the log's writer and returns once it is durable.
	Write(ctx context.Context, fn func(tw *sqllog.TxnWrite) error) error
	Compact(ctx context.Context, rev int64) (<-chan struct{}, error)
	Alarms() []sqllog.Alarm
}

// Applier applies requests to a log: reads on a view of it, writes as
// functions run by its writer, each behind the alarm gate. Errors are the
// log's, this package's, or etcd's gRPC errors; the caller translates.
type Applier struct{ log Log }

// NewApplier returns an Applier for log.
func NewApplier(log Log) *Applier { return &Applier{log: log} }

// Range reads at the current revision, linearizably unless r asks for a
// serializable read.
func (a *Applier) Range(ctx context.Context, r *pb.RangeRequest) (_ *pb.RangeResponse, err error) {
	defer observeRead("Range", time.Now(), &err)
	v, err := a.view(ctx, r.Serializable)
	if err != nil {
		return nil, err
	}
	return Range(ctx, v, r)
}

// RangeStream answers r in chunks of about chunkBytes on one view, read as
// Range reads; see RangeStream.
func (a *Applier) RangeStream(ctx context.Context, r *pb.RangeRequest, chunkBytes int, send func(*pb.RangeResponse) error) error {
	v, err := a.view(ctx, r.Serializable)
	if err != nil {
		return err
	}
	return RangeStream(ctx, v, r, chunkBytes, send)
}

// view is a linearizable read view, or a serializable one.
func (a *Applier) view(ctx context.Context, serializable bool) (sqllog.ReadView, error) {
	if serializable {
		return a.log.SerializableView(), nil
	}
	return a.log.View(ctx)
}

// Put applies r in the writer; see Put.
func (a *Applier) Put(ctx context.Context, r *pb.PutRequest) (_ *pb.PutResponse, err error) {
	defer ObserveWrite("Put", time.Now(), &err)
	return write(ctx, a, gateOf(r), func(tw *sqllog.TxnWrite) (*pb.PutResponse, error) { return Put(ctx, tw, r) })
}

// DeleteRange applies r in the writer; see DeleteRange.
func (a *Applier) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (_ *pb.DeleteRangeResponse, err error) {
	defer ObserveWrite("DeleteRange", time.Now(), &err)
	return write(ctx, a, gateOf(r), func(tw *sqllog.TxnWrite) (*pb.DeleteRangeResponse, error) { return DeleteRange(ctx, tw, r) })
}

// Txn runs a read-only txn on a view, never through the writer (and so
// never refused by an alarm), and any other in the writer.
func (a *Applier) Txn(ctx context.Context, r *pb.TxnRequest) (_ *pb.TxnResponse, err error) {
	if IsReadOnly(r) {
		defer observeRead("ReadonlyTxn", time.Now(), &err)
		v, err := a.log.View(ctx)
		if err != nil {
			return nil, err
		}
		return Txn(ctx, ReadOnly(v), r)
	}
	defer ObserveWrite("Txn", time.Now(), &err)
	return write(ctx, a, gateOf(r), func(tw *sqllog.TxnWrite) (*pb.TxnResponse, error) { return Txn(ctx, tw, r) })
}

// Compact compacts the log at r.Revision and, when r is physical, waits for
// the rows to be gone.
func (a *Applier) Compact(ctx context.Context, r *pb.CompactionRequest) (_ *pb.CompactionResponse, err error) {
	defer ObserveWrite("Compaction", time.Now(), &err)
	if err := a.admit(gateOf(r)); err != nil {
		return nil, err
	}
	done, err := a.log.Compact(ctx, r.Revision)
	if err != nil {
		return nil, err
	}
	if r.Physical {
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &pb.CompactionResponse{Header: &pb.ResponseHeader{}}, nil
}

// LeaseGrant grants r.ID (not 0) with r.TTL, already within etcd's bounds.
func (a *Applier) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (_ *pb.LeaseGrantResponse, err error) {
	defer ObserveWrite("LeaseGrant", time.Now(), &err)
	rev, err := write(ctx, a, gateOf(r), func(tw *sqllog.TxnWrite) (int64, error) { return LeaseGrant(tw, r.ID, r.TTL) })
	if err != nil {
		return nil, err
	}
	return &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: rev}, ID: r.ID, TTL: r.TTL}, nil
}

// LeaseRevoke revokes lease r.ID and deletes its keys.
func (a *Applier) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (_ *pb.LeaseRevokeResponse, err error) {
	defer ObserveWrite("LeaseRevoke", time.Now(), &err)
	rev, err := write(ctx, a, gateOf(r), func(tw *sqllog.TxnWrite) (int64, error) { return LeaseRevoke(tw, r.ID) })
	if err != nil {
		return nil, err
	}
	return &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: rev}}, nil
}

// RevokeExpired revokes lease id if it has expired: the lessor's own
// revocation, which no alarm refuses.
func (a *Applier) RevokeExpired(ctx context.Context, id int64) (err error) {
	defer ObserveWrite("LeaseRevoke", time.Now(), &err)
	_, err = write(ctx, a, open, func(tw *sqllog.TxnWrite) (struct{}, error) { return struct{}{}, RevokeExpired(ctx, tw, id) })
	return err
}
