package conformance

import (
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestCompareMachinery checks the comparison itself, without servers: what
// must be ignored is ignored and everything else is reported.
func TestCompareMachinery(t *testing.T) {
	txn := func(outerRev, innerRev, cluster int64, val string) *pb.TxnResponse {
		return &pb.TxnResponse{
			Header:    &pb.ResponseHeader{Revision: outerRev, ClusterId: uint64(cluster), MemberId: uint64(cluster) + 1, RaftTerm: 7},
			Succeeded: true,
			Responses: []*pb.ResponseOp{{Response: &pb.ResponseOp_ResponseRange{ResponseRange: &pb.RangeResponse{
				Header: &pb.ResponseHeader{Revision: innerRev, ClusterId: uint64(cluster)},
				Kvs:    []*mvccpb.KeyValue{{Key: []byte("k\x00"), Value: []byte(val), CreateRevision: 2, ModRevision: 3, Version: 1}},
				Count:  1,
			}}}},
		}
	}
	if d := diffOutcomes(txn(5, 5, 1, "v"), nil, txn(5, 5, 99, "v"), nil); d != "" {
		t.Errorf("cluster_id/member_id/raft_term must be ignored, got diff:\n%s", d)
	}
	if d := diffOutcomes(txn(5, 5, 1, "v"), nil, txn(5, 4, 1, "v"), nil); d == "" {
		t.Error("nested header revision difference not reported")
	}
	if d := diffOutcomes(txn(5, 5, 1, "v"), nil, txn(5, 5, 1, "v\x00"), nil); d == "" {
		t.Error("value difference not reported")
	}
	// clientv3 types are compared as their wire messages.
	get := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 3}, Count: 0}
	if d := diffOutcomes((*clientv3.GetResponse)(get), nil, get, nil); d != "" {
		t.Errorf("clientv3.GetResponse vs RangeResponse: %s", d)
	}
	// nil and empty slices are the same on the wire.
	if d := diffOutcomes(&pb.RangeResponse{Kvs: []*mvccpb.KeyValue{}}, nil, &pb.RangeResponse{}, nil); d != "" {
		t.Errorf("empty vs nil kvs: %s", d)
	}
	if d := diffOutcomes(&pb.RangeResponse{More: true}, nil, &pb.RangeResponse{}, nil); d == "" {
		t.Error("more flag difference not reported")
	}
	// Errors: code and message, whatever the Go type.
	if d := diffOutcomes(nil, rpctypes.ErrCompacted, nil, rpctypes.ErrGRPCCompacted); d != "" {
		t.Errorf("EtcdError vs status error with same code/desc: %s", d)
	}
	if d := diffOutcomes(nil, rpctypes.ErrGRPCCompacted, nil, status.Error(codes.Unknown, rpctypes.ErrorDesc(rpctypes.ErrGRPCCompacted))); d == "" {
		t.Error("code difference not reported")
	}
	if d := diffOutcomes(nil, rpctypes.ErrGRPCCompacted, get, nil); d == "" {
		t.Error("error vs success not reported")
	}
	out := sideBySide("etcd", outcomeLines(txn(5, 5, 1, "v"), nil), "shimd", outcomeLines(nil, rpctypes.ErrGRPCFutureRev))
	if !strings.Contains(out, `key:"k\x00"`) || !strings.Contains(out, "≠") || !strings.Contains(out, "code=OutOfRange") {
		t.Errorf("unexpected rendering:\n%s", out)
	}
}
