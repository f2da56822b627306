package txn

import (
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// TestGateOf pins etcd's per-request alarm rules: CORRUPT refuses every
// write, NOSPACE those that add data.
func TestGateOf(t *testing.T) {
	put := &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k")}}}
	del := &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("k")}}}
	rng := &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k")}}}
	nested := func(r *pb.TxnRequest) *pb.RequestOp {
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
	}
	for _, c := range []struct {
		name string
		req  any
		want gate
	}{
		{"put", &pb.PutRequest{}, addsData},
		{"lease grant", &pb.LeaseGrantRequest{}, addsData},
		{"delete", &pb.DeleteRangeRequest{}, anyWrite},
		{"lease revoke", &pb.LeaseRevokeRequest{}, anyWrite},
		{"compaction", &pb.CompactionRequest{}, anyWrite},
		{"txn with a put", &pb.TxnRequest{Success: []*pb.RequestOp{rng, put}}, addsData},
		{"txn with a put in the else branch", &pb.TxnRequest{Success: []*pb.RequestOp{del}, Failure: []*pb.RequestOp{put}}, addsData},
		{"txn with a nested put", &pb.TxnRequest{Success: []*pb.RequestOp{nested(&pb.TxnRequest{Failure: []*pb.RequestOp{nested(&pb.TxnRequest{Success: []*pb.RequestOp{put}})}})}}, addsData},
		{"txn of deletes", &pb.TxnRequest{Success: []*pb.RequestOp{del, nested(&pb.TxnRequest{Failure: []*pb.RequestOp{del, rng}})}}, anyWrite},
		{"empty txn", &pb.TxnRequest{}, anyWrite},
		{"anything else", nil, open},
	} {
		if got := gateOf(c.req); got != c.want {
			t.Errorf("%s: gate %d, want %d", c.name, got, c.want)
		}
	}
}
