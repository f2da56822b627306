package server

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// raftHeaderID stands in for the request id etcd's raft layer adds to every
// write before checking its size; its varint is as long as a real one.
const raftHeaderID = 1<<63 | 1

// checkSize applies --max-request-bytes (limit) to a write the way etcd
// does: to the request as etcd would propose it through raft.
func checkSize(req *pb.InternalRaftRequest, limit int) error {
	req.Header = &pb.RequestHeader{ID: raftHeaderID}
	if proto.Size(req) > limit {
		return errRequestTooLarge
	}
	return nil
}
