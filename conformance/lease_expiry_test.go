package conformance

import (
	"context"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// expiryWait bounds how long a test waits for a 2-4 s lease to expire (etcd
// looks for expired leases every 500 ms).
const expiryWait = 20 * time.Second

// TestLeaseExpiry lets short leases (2-4 s) expire on both servers and
// compares the result: one revision deleting all the lease's keys, delivered
// to a watch in one response. Every wait is for a condition (watch events or
// TimeToLive), with a deadline.
func TestLeaseExpiry(t *testing.T) {
	forEachBackend(t, leaseOpts, func(s *suite) {
		s.run("expiry-deletes-keys-in-one-revision", func(sc *sc) {
			c := leaseScenario(sc)
			const l, other = 0x7101, 0x7102
			c.mustGrant(l, 3)
			c.mustGrant(other, 300)
			for _, k := range []string{"le1/c", "le1/a", "le1/e", "le1/b", "le1/d"} {
				c.mustPutL(k, "v-"+k, l)
			}
			c.mustPutL("le1/plain", "p", 0)
			c.mustPutL("le1/d", "moved", other) // no longer the lease's
			c.ok(c.CDelete("le1/e"))            // deleted ...
			c.mustPutL("le1/e", "unleased", 0)  // ... and re-created without it
			c.wantKeys(l, "le1/a", "le1/b", "le1/c")
			rev0 := c.rev()
			w := c.watch("le1/", rev0+1)
			run := c.collect("lease expiry deletes its keys", w, 3, expiryWait)
			c.check(len(run.Batches) == 1, "etcd: expiry deletes came in %d watch responses", len(run.Batches))
			for _, ev := range run.events() {
				c.check(ev.Type == mvccpb.DELETE && ev.Kv.ModRevision == rev0+1 && ev.PrevKv != nil && ev.PrevKv.Lease == l,
					"etcd: unexpected event %s", oneLine(ev))
			}
			c.check(c.rev() == rev0+1, "etcd: expiry took more than one revision")
			c.check(slices.Equal(rangeKeys(c.prefix("le1/", 0)), []string{"le1/d", "le1/e", "le1/plain"}), "etcd: wrong keys after expiry")
			c.prefix("le1/", rev0) // before the expiry
			afterExpiry(c, l, "le1/x")
			c.ok(c.ttl(other, true))
			c.ok(c.revoke(other))
		})

		s.run("expiry-without-keys", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7103
			resp, err := c.grant(l, 1) // raised to the 2 s minimum
			c.ok(resp, err)
			c.check(resp.TTL == 2, "etcd granted TTL %d", resp.TTL)
			rev0 := c.rev()
			c.waitEach("lease 0x7103 expires", expiryWait, c.leaseGone(l))
			c.check(c.rev() == rev0, "etcd: expiry of a lease without keys moved the revision")
			afterExpiry(c, l, "le2/x")
		})

		s.run("expiry-server-chosen-id", func(sc *sc) {
			c := leaseScenario(sc)
			l := c.mustGrant(0, 2)
			c.mustPutL("le3/a", "1", l)
			c.mustPutL("le3/b", "1", l)
			rev0 := c.rev()
			w := c.watch("le3/", rev0+1)
			c.collect("lease expiry deletes its keys", w, 2, expiryWait)
			c.prefix("le3/", 0)
			c.prefix("le3/", rev0)
			afterExpiry(c, l, "le3/x")
		})

		s.run("keepalive-prevents-expiry", func(sc *sc) {
			c := leaseScenario(sc)
			// kept: TTL 2, kept alive; control: TTL 4, left alone. When the
			// control lease has expired, kept has lived through its TTL twice.
			const kept, control = 0x7110, 0x7111
			c.mustGrant(kept, 2)
			c.mustGrant(control, 4)
			c.mustPutL("le4/kept", "1", kept)
			c.mustPutL("le4/control", "1", control)
			rev0 := c.rev()
			w := c.watch("le4/", rev0+1)
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			kas := map[*server]<-chan *clientv3.LeaseKeepAliveResponse{}
			for _, s := range []*server{c.p.ref, c.p.sut} {
				ch, err := s.cli.KeepAlive(ctx, clientv3.LeaseID(c.id(s, kept)))
				if err != nil {
					c.t.Fatalf("%s: KeepAlive: %v", s.name, err)
				}
				kas[s] = ch
			}
			run := c.collect("the control lease expires", w, 1, expiryWait)
			c.check(len(run.Batches) == 1 && string(run.Batches[0].Events[0].Kv.Key) == "le4/control", "etcd: %s", oneLine(run))
			for s, ch := range kas {
				n := 0
				for len(ch) > 0 {
					r := <-ch
					n++
					if r.TTL != 2 {
						c.t.Fatalf("%s: keep-alive response with TTL %d, want the granted 2", s.name, r.TTL)
					}
				}
				if s == c.p.sut && n == 0 {
					c.t.Logf("%s: no keep-alive response buffered (the channel holds a few)", s.name)
				}
			}
			c.check(slices.Equal(rangeKeys(c.prefix("le4/", 0)), []string{"le4/kept"}), "etcd: kept lease's key is gone")
			c.ok(c.ttl(kept, true))
			stop()
			c.ok(c.revoke(kept))
			c.prefix("le4/", 0)
			c.check(c.rev() == rev0+2, "etcd: unexpected revisions")
		})

		s.run("keepalive-once-extends", func(sc *sc) {
			c := leaseScenario(sc)
			// kept (TTL 2) gets a KeepAliveOnce every 500 ms until control
			// (TTL 4, granted after it) has expired on both servers.
			const kept, control = 0x7120, 0x7121
			c.mustGrant(kept, 2)
			c.mustGrant(control, 4)
			c.mustPutL("le5/kept", "1", kept)
			c.mustPutL("le5/control", "1", control)
			rev0 := c.rev()
			gone := c.leaseGone(control)
			deadline := time.Now().Add(expiryWait)
			for {
				// control's expiry adds a revision at a moment that
				// differs a little between the servers.
				resp, err := c.keepAliveOnce(kept, func(_ *lsc, ref, sut any) { fixExpiryRace(ref, sut) })
				c.ok(resp, err)
				c.check(resp.TTL == 2, "etcd: keep-alive TTL %d", resp.TTL)
				refGone, err1 := gone(context.Background(), c.p.ref)
				sutGone, err2 := gone(context.Background(), c.p.sut)
				if refGone && sutGone {
					break
				}
				if time.Now().After(deadline) {
					c.t.Fatalf("control lease not expired within %v: etcd %v (%v), %s %v (%v)", expiryWait, refGone, err1, c.p.sut.name, sutGone, err2)
				}
				time.Sleep(500 * time.Millisecond) // the keep-alive period
			}
			c.check(c.rev() == rev0+1, "etcd: unexpected revisions")
			c.check(slices.Equal(rangeKeys(c.prefix("le5/", 0)), []string{"le5/kept"}), "etcd: kept lease's key is gone")
			c.ok(c.ttl(kept, true))
			c.ok(c.revoke(kept))
		})

		s.run("expiry-and-txn", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7130
			c.mustGrant(l, 2)
			c.mustPutL("le6/a", "1", l)
			c.mustPutL("le6/b", "1", 0)
			cmpIf := func(lease int64) *pb.TxnRequest {
				return &pb.TxnRequest{
					Compare: cmps(cmpLease("le6/a", pb.Compare_EQUAL, lease)),
					Success: ops(get("le6/a")), Failure: ops(put("le6/b", "failed"), get("le6/b")),
				}
			}
			tr, err := c.txn(cmpIf(l))
			c.ok(tr, err)
			c.check(tr.Succeeded, "etcd: lease compare failed before expiry")
			rev0 := c.rev()
			w := c.watch("le6/a", rev0+1)
			c.collect("lease expiry", w, 1, expiryWait)
			for _, lease := range []int64{l, 0} {
				c.ok(c.txn(cmpIf(lease)))
			}
			c.ok(c.txn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b("le6/"), RangeEnd: b("le60"), Revision: rev0}))}))
			_, err = c.txn(&pb.TxnRequest{Success: ops(put("le6/c", "1"), putLease("le6/a", "again", l))})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.prefix("le6/", 0)
		})
	})
}

// afterExpiry checks that an expired lease is gone everywhere.
func afterExpiry(c *lsc, l int64, key string) {
	c.t.Helper()
	r := c.mustTTL(l, true)
	c.check(r.TTL == -1, "etcd: expired lease has TTL %d", r.TTL)
	c.ok(c.cttl(l, false))
	_, err := c.keepAliveOnce(l)
	c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
	c.keepAliveStream(l)
	_, err = c.putL(key, "1", l)
	c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
	_, err = c.revoke(l)
	c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
	ls, err := c.leases()
	c.ok(ls, err)
	c.check(!slices.Contains(leaseIDs(ls), l), "etcd still lists expired lease %#x", l)
}
