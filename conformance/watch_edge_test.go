package conformance

import (
	"context"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/conformance/harness"
)

// TestWatchEdgeCases: protocol corners of the Watch stream that clientv3
// does not produce but a raw client can, and watch events caused by other
// services (lease revocation).
func TestWatchEdgeCases(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("half-closed-stream", func(c *sc) {
			// etcd keeps a stream whose client has closed its sending side
			// and goes on sending events.
			w := c.openWatch("raw")
			w.create(wcreate("wh/a", "", 0))
			w.created(1)
			for _, s := range []*wstream{w.ref, w.sut} {
				if err := s.closeSend(); err != nil {
					c.t.Fatalf("%s: CloseSend: %v", s.srv.name, err)
				}
			}
			w.sent = append(w.sent, "CloseSend()")
			r := c.mustPut("wh/a", "1")
			w.expect("event after the client half-closed the stream", eventAt(0, r), viewExact)
			r = c.mustPut("wh/a", "2")
			w.expect("another one", eventAt(0, r), viewExact)
		})

		s.run("empty-requests", func(c *sc) {
			// A request without a union member is ignored; an empty cancel
			// request means watch_id 0, an empty progress request is a
			// progress request. (protobuf-go sends a nil create_request as
			// an empty one, a watch of the key "": not this case.)
			w := c.openWatch("raw")
			w.send("WatchRequest {}", &pb.WatchRequest{})
			w.create(wcreate("wy/a", "", 0))
			w.create(wcreate("wy/b", "", 0))
			w.created(2)
			w.send("WatchRequest {cancel_request: {}}", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{}}})
			w.expect("cancel of watch 0", isCanceled(0).n(1), viewExact)
			c.mustPut("wy/a", "1")
			r := c.mustPut("wy/b", "1")
			w.expect("event of watch 1 only", eventAt(1, r), viewExact)
			w.send("WatchRequest {progress_request: {}}", &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
			w.expect("progress", isProgress(-1).n(1), viewExact)
		})

		s.run("unknown-filter", func(c *sc) {
			p := "wu/"
			w := c.openWatch("raw")
			r := wcreate(p, prefixEnd(p), 0)
			r.Filters = []pb.WatchCreateRequest_FilterType{7}
			w.create(r)
			r = wcreate(p, prefixEnd(p), 0)
			r.Filters = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT, 9}
			w.create(r)
			w.created(2)
			c.mustPut(p+"a", "1")
			c.ok(c.CDelete(p + "a"))
			last := c.mustPut(p+"b", "1")
			w.expect("events", eventAt(0, last), viewExact)
			w.settle()
		})

		s.run("negative-watch-id", func(c *sc) {
			// A client-chosen negative id is taken as given (0 means
			// "assign one"; -1 is also what refusals and progress use).
			w := c.openWatch("raw")
			r := wcreate("wv/a", "", 0)
			r.WatchId = -5
			w.create(r)
			w.create(wcreate("wv/a", "", 0))
			w.created(2)
			last := c.mustPut("wv/a", "1")
			w.expect("events", all(eventAt(-5, last), eventAt(0, last)), viewExact)
			w.cancelWatch(-5)
			w.expect("cancel", isCanceled(-5).n(1), viewExact)
			w.settle()
		})

		s.run("lease-revoke-events", func(c *sc) {
			// Revoking a lease deletes its keys in one revision, in key
			// order.
			const lease = 0x7e57_0001
			p := "wl/"
			c.LeaseGrant(lease, 3600)
			w := c.openWatch("raw")
			w.create(wcreate(p, prefixEnd(p), 0))
			pk := wcreate(p, prefixEnd(p), 0)
			pk.PrevKv = true
			w.create(pk)
			w.created(2)
			cw := c.clientWatch(p, withPrefix, withPrevKV, withCreatedNotify)
			cw.created(1)
			c.mustPut(p+"c", "1", withLease(lease))
			c.mustPut(p+"a", "1", withLease(lease))
			c.mustPut(p+"b", "1")
			c.mustPut(p+"d", "1", withLease(lease))
			c.mustPut(p+"a", "2", withIgnoreLease)
			c.mustTxn(&pb.TxnRequest{Success: ops(opPut(&pb.PutRequest{Key: b(p + "d"), IgnoreValue: true}))})
			rr := &pb.LeaseRevokeRequest{ID: lease}
			resp, err := c.do("LeaseRevoke "+oneLine(rr), func(ctx context.Context, s *server) (any, error) { return s.lease.LeaseRevoke(ctx, rr) })
			c.ok(resp, err)
			last := resp.(*pb.LeaseRevokeResponse).Header.Revision
			w.expect("events, the revocation in one response", all(eventAt(0, last), eventAt(1, last)), viewExact)
			cw.expect("events", eventAt(0, last), viewExact)
			w.settle()
		})

		s.run("long-history-replay", func(c *sc) {
			// More than 1,000 revisions: etcd replays them in batches.
			const n = 1200
			p := "wlh/"
			first := c.rev() + 1
			var last, last3 int64 // revisions of the last event, of the last on key 3
			for i := 0; i < n; i++ {
				k := fmt.Sprintf("%s%d", p, i%7)
				if i%5 == 4 {
					d, err := c.CDelete(k)
					c.ok(d, err)
					if d.Deleted == 0 {
						continue
					}
					last = d.Header.Revision
				} else {
					last = c.mustPut(k, fmt.Sprint(i))
				}
				if i%7 == 3 {
					last3 = last
				}
			}
			w := c.openWatch("raw")
			pk := wcreate(p, prefixEnd(p), first)
			pk.PrevKv = true
			w.create(pk)
			w.create(wcreate(p+"3", "", first+1))
			w.expect("replay", all(isControl.n(2), eventAt(0, last), eventAt(1, last3)), viewFlat)
			w.settle()
		})

		s.run("header-ids", func(c *sc) {
			// Watch response headers carry the same cluster_id, member_id
			// and raft_term as the server's KV responses (checked on each
			// server, not compared across them).
			w := c.openWatch("raw")
			w.create(wcreate("wz/a", "", 0))
			w.create(wcreate("wz/b", "wz/a", 0)) // refused
			w.created(2)
			r := c.mustPut("wz/a", "1")
			w.expect("event", eventAt(0, r), viewExact)
			w.settle()
			for _, s := range []*wstream{w.ref, w.sut} {
				kv, err := s.srv.kv.Range(context.Background(), &pb.RangeRequest{Key: b("wz/a")})
				if err != nil {
					c.t.Fatalf("%s: %v", s.srv.name, err)
				}
				h := kv.Header
				got, _, _ := s.log.snapshot()
				for _, x := range got {
					if x.Header == nil || x.Header.ClusterId != h.ClusterId || x.Header.MemberId != h.MemberId || x.Header.RaftTerm != h.RaftTerm {
						c.t.Errorf("%s: watch response header %s, KV header {cluster_id:%d member_id:%d raft_term:%d}: %s",
							s.srv.name, oneLine(x.Header), h.ClusterId, h.MemberId, h.RaftTerm, respLine(x))
					}
				}
			}
		})
	})
}
