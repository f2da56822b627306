package conformance

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// TestLease covers the Lease service (grant, revoke, keep-alive, time-to-live,
// listing) and how leases attach to keys, compared with etcd. Expiry is in
// TestLeaseExpiry, restarts in TestLeaseRestart.
//
// Lease IDs 0x7xxx are client-chosen; scenarios revoke what they grant when
// later scenarios list leases.
func TestLease(t *testing.T) {
	forEachBackend(t, leaseOpts, func(s *suite) {
		s.run("grant-server-chosen-id", func(sc *sc) {
			c := leaseScenario(sc)
			l1 := c.mustGrant(0, 60)
			l2 := c.mustGrant(0, 60)
			c.check(l1 != l2, "etcd granted %#x twice", l1)
			l3resp, err := c.cgrant(45)
			c.ok(l3resp, err)
			l3 := l3resp.ID
			c.mustPutL("lg1/a", "1", l1)
			c.mustPutL("lg1/b", "2", l2)
			c.mustPutL("lg1/c", "3", l3)
			c.mustPutL("lg1/a", "4", l3) // moves a from l1 to l3
			c.prefix("lg1/", 0)
			c.wantKeys(l1)
			c.wantKeys(l3, "lg1/a", "lg1/c")
			c.ok(c.ttl(l2, false))
			c.ok(c.keepAliveOnce(l2))
			c.keepAliveStream(l1, l2, l3)
			for _, l := range []int64{l1, l3} {
				c.ok(c.doFix(fmt.Sprintf("Txn: if lease(lg1/a) == %#x (each server's ID) then get lg1/a else get lg1/b", l), func(ctx contextT, s *server) (any, error) {
					return s.kv.Txn(ctx, &pb.TxnRequest{
						Compare: cmps(cmpLease("lg1/a", pb.Compare_EQUAL, c.id(s, l))),
						Success: ops(get("lg1/a")), Failure: ops(get("lg1/b")),
					})
				}))
			}
			c.ok(c.revoke(l1))
			c.ok(c.revoke(l2))
			c.ok(c.crevoke(l3))
			c.prefix("lg1/", 0)
			c.ok(c.ttl(l3, true))
		})

		s.run("grant-client-chosen-id", func(sc *sc) {
			c := leaseScenario(sc)
			ids := []int64{0x7001, 1, math.MaxInt64, -0x7002, math.MinInt64}
			for _, id := range ids {
				got := c.mustGrant(id, 60)
				c.check(got == id, "etcd granted %#x for requested ID %#x", got, id)
			}
			for i, id := range ids {
				c.mustPutL("lg2/"+string(rune('a'+i)), "v", id)
			}
			c.prefix("lg2/", 0)
			for _, id := range ids {
				c.ok(c.ttl(id, true))
				c.ok(c.keepAliveOnce(id))
			}
			c.keepAliveStream(ids...)
			for _, id := range ids {
				c.ok(c.revoke(id))
			}
			c.prefix("lg2/", 0)
		})

		s.run("grant-existing-id", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7003
			c.mustGrant(l, 60)
			c.mustPutL("lg3/a", "1", l)
			_, err := c.grant(l, 60)
			c.wantErr(err, rpctypes.ErrGRPCLeaseExist)
			_, err = c.grant(l, 5)
			c.wantErr(err, rpctypes.ErrGRPCLeaseExist)
			// The TTL limit is checked before the ID.
			_, err = c.grant(l, etcdMaxLeaseTTL+1)
			c.wantErr(err, rpctypes.ErrGRPCLeaseTTLTooLarge)
			c.ok(c.ttl(l, true)) // the first grant is untouched
			c.prefix("lg3/", 0)
			c.ok(c.revoke(l))
			// A revoked ID can be granted again, with no keys.
			c.mustGrant(l, 30)
			c.ok(c.ttl(l, true))
			c.prefix("lg3/", 0)
			c.ok(c.revoke(l))
		})

		s.run("grant-ttl-minimum", func(sc *sc) {
			c := leaseScenario(sc)
			// etcd raises TTLs below its minimum (2 s with default timing);
			// each lease is revoked at once so that none expires mid-scenario.
			for i, ttl := range []int64{1, 0, -1, -3600, math.MinInt64, 2, 3} {
				id := int64(0x7010 + i)
				resp, err := c.grant(id, ttl)
				c.ok(resp, err)
				if ttl <= 2 {
					c.check(resp.TTL == 2, "etcd granted TTL %d for %d, expected its minimum 2", resp.TTL, ttl)
				}
				c.ok(c.ttl(id, false))
				c.ok(c.keepAliveOnce(id))
				c.ok(c.revoke(id))
			}
			// Server-chosen ID with a TTL below the minimum.
			id := c.mustGrant(0, 1)
			c.ok(c.keepAliveOnce(id))
			c.ok(c.revoke(id))
		})

		s.run("grant-ttl-maximum", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7020
			resp, err := c.grant(l, etcdMaxLeaseTTL)
			c.ok(resp, err)
			c.ok(c.ttl(l, false))
			c.ok(c.keepAliveOnce(l))
			c.ok(c.revoke(l))
			for _, ttl := range []int64{etcdMaxLeaseTTL + 1, math.MaxInt64} {
				_, err = c.grant(l, ttl)
				c.wantErr(err, rpctypes.ErrGRPCLeaseTTLTooLarge)
				_, err = c.grant(0, ttl)
				c.wantErr(err, rpctypes.ErrGRPCLeaseTTLTooLarge)
				_, err = c.cgrant(ttl)
				c.wantErr(err, rpctypes.ErrGRPCLeaseTTLTooLarge)
			}
			c.ok(c.ttl(l, false)) // the rejected grants created nothing
		})

		s.run("revoke-deletes-keys-in-one-revision", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7030
			c.mustGrant(l, 300)
			for _, k := range []string{"lr1/c", "lr1/a", "lr1/d", "lr1/b\x00", "lr1/b"} {
				c.mustPutL(k, "v-"+k, l)
			}
			c.mustPutL("lr1/plain", "p", 0)
			c.mustPutL("lr1/a", "v2", l) // a second version, same lease
			rev0 := c.rev()
			w := c.watch("lr1/", rev0+1)
			resp, err := c.revoke(l)
			c.ok(resp, err)
			c.check(resp.Header.Revision == rev0+1, "etcd: revoke header revision %d, expected %d", resp.Header.Revision, rev0+1)
			run := c.collect("revoke deletes", w, 5, 10*time.Second)
			c.check(len(run.Batches) == 1, "etcd: deletes came in %d watch responses", len(run.Batches))
			for _, ev := range run.events() {
				c.check(ev.Type == mvccpb.DELETE && ev.Kv.ModRevision == rev0+1, "etcd: unexpected event %s", oneLine(ev))
			}
			c.check(c.rev() == rev0+1, "etcd: revision moved after the revoke")
			c.check(slices.Equal(rangeKeys(c.prefix("lr1/", 0)), []string{"lr1/plain"}), "etcd: leased keys left after revoke")
			c.prefix("lr1/", rev0) // still visible before the revoke
			_, err = c.rng(&pb.RangeRequest{Key: b("lr1/a"), Revision: rev0 - 1})
			c.ok(nil, err)
			// Again: the lease is gone.
			_, err = c.revoke(l)
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			_, err = c.crevoke(l)
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.ok(c.ttl(l, true))
			_, err = c.putL("lr1/a", "again", l)
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			_, err = c.keepAliveOnce(l)
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.check(c.rev() == rev0+1, "etcd: failed ops moved the revision")
		})

		s.run("revoke-many-keys", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7032
			c.mustGrant(l, 300)
			var keys []string
			for i := 0; i < 150; i++ {
				// Not in key order, and some keys sort by raw bytes.
				k := fmt.Sprintf("lr2/%03d", (i*37)%150)
				if i%10 == 0 {
					k += "\xff\x00"
				}
				keys = append(keys, k)
			}
			c.ok(c.txn(&pb.TxnRequest{Success: ops(putLease(keys[0], "v", l), putLease(keys[1], "v", l))}))
			for _, k := range keys[2:] {
				c.mustPutL(k, "v", l)
			}
			rev0 := c.rev()
			w := c.watch("lr2/", rev0+1)
			c.ok(c.revoke(l))
			run := c.collect("revoke deletes", w, len(keys), 10*time.Second)
			c.check(len(run.Batches) == 1, "etcd: deletes came in %d watch responses", len(run.Batches))
			c.check(c.rev() == rev0+1, "etcd: revoke took more than one revision")
			r := c.prefix("lr2/", rev0)
			c.check(len(r.Kvs) == len(keys), "etcd: %d keys before the revoke", len(r.Kvs))
			c.ok(c.rng(&pb.RangeRequest{Key: b("lr2/"), RangeEnd: b("lr20"), Revision: rev0, KeysOnly: true, Limit: 3}))
			c.ok(c.rng(&pb.RangeRequest{Key: b("lr2/"), RangeEnd: b("lr20"), Revision: rev0, CountOnly: true}))
		})

		s.run("revoke-unknown", func(sc *sc) {
			c := leaseScenario(sc)
			for _, id := range []int64{0x7fff7001, 0, -1, math.MaxInt64} {
				_, err := c.revoke(id)
				c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			}
			_, err := c.crevoke(0x7fff7002)
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
		})

		s.run("revoke-without-keys", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7031
			rev0 := c.rev()
			c.mustGrant(l, 60)
			resp, err := c.revoke(l)
			c.ok(resp, err)
			c.check(resp.Header.Revision == rev0, "etcd: revoking a lease without keys moved the revision")
		})

		s.run("put-unknown-lease", func(sc *sc) {
			c := leaseScenario(sc)
			c.mustPutL("lp1/a", "1", 0)
			rev0 := c.rev()
			for _, k := range []string{"lp1/a", "lp1/new"} {
				_, err := c.putL(k, "x", 0x7fff7003)
				c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
				_, err = c.putL(k, "x", -5)
				c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			}
			_, err := c.put(&pb.PutRequest{Key: b("lp1/a"), IgnoreValue: true, Lease: 0x7fff7003})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			// In a txn the whole request is rejected, including the ops before.
			_, err = c.txn(&pb.TxnRequest{Success: ops(put("lp1/b", "1"), putLease("lp1/c", "1", 0x7fff7003), get("lp1/"))})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			_, err = c.txn(&pb.TxnRequest{
				Compare: cmps(cmpVersion("lp1/a", pb.Compare_EQUAL, 1)),
				Success: ops(put("lp1/b", "1"), opTxn(&pb.TxnRequest{Success: ops(putLease("lp1/c", "1", 0x7fff7003))})),
			})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.check(c.rev() == rev0, "etcd: rejected puts moved the revision")
			c.prefix("lp1/", 0)
			// Only the branch taken is checked.
			c.ok(c.txn(&pb.TxnRequest{
				Compare: cmps(cmpVersion("lp1/a", pb.Compare_EQUAL, 1)),
				Success: ops(put("lp1/b", "1")), Failure: ops(putLease("lp1/c", "1", 0x7fff7003)),
			}))
			c.ok(c.txn(&pb.TxnRequest{
				Success: ops(opTxn(&pb.TxnRequest{
					Compare: cmps(cmpVersion("lp1/a", pb.Compare_EQUAL, 7)),
					Success: ops(putLease("lp1/c", "1", 0x7fff7003)), Failure: ops(put("lp1/d", "1")),
				})),
			}))
			c.prefix("lp1/", 0)
		})

		s.run("put-moves-key-between-leases", func(sc *sc) {
			c := leaseScenario(sc)
			const l1, l2 = 0x7040, 0x7041
			c.mustGrant(l1, 60)
			c.mustGrant(l2, 60)
			c.mustPutL("lm1/k", "1", l1)
			c.mustPutL("lm1/other", "1", l1)
			c.wantKeys(l1, "lm1/k", "lm1/other")
			c.wantKeys(l2)
			c.mustPutL("lm1/k", "2", l2)
			c.wantKeys(l1, "lm1/other")
			c.wantKeys(l2, "lm1/k")
			c.prefix("lm1/", 0)
			// Revoking the old lease leaves the moved key alone.
			c.ok(c.revoke(l1))
			c.prefix("lm1/", 0)
			rev := c.rev()
			resp, err := c.revoke(l2)
			c.ok(resp, err)
			c.check(resp.Header.Revision == rev+1, "etcd: revoke of l2 did not delete lm1/k")
			c.prefix("lm1/", 0)
		})

		s.run("ignore-lease-keeps-it", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7042
			c.mustGrant(l, 60)
			c.mustPutL("lm2/k", "1", l)
			c.ok(c.put(&pb.PutRequest{Key: b("lm2/k"), Value: b("2"), IgnoreLease: true, PrevKv: true}))
			c.ok(c.put(&pb.PutRequest{Key: b("lm2/k"), IgnoreValue: true, IgnoreLease: true, PrevKv: true}))
			c.ok(c.txn(&pb.TxnRequest{Success: ops(opPut(&pb.PutRequest{Key: b("lm2/k"), Value: b("3"), IgnoreLease: true}))}))
			c.prefix("lm2/", 0)
			c.wantKeys(l, "lm2/k")
			c.ok(c.revoke(l))
			c.prefix("lm2/", 0)
		})

		s.run("put-without-lease-detaches", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7043
			c.mustGrant(l, 60)
			c.mustPutL("lm3/k", "1", l)
			c.mustPutL("lm3/t", "1", l)
			c.mustPutL("lm3/k", "2", 0)
			c.ok(c.txn(&pb.TxnRequest{Success: ops(put("lm3/t", "2"))}))
			c.wantKeys(l)
			c.prefix("lm3/", 0)
			rev := c.rev()
			resp, err := c.revoke(l)
			c.ok(resp, err)
			c.check(resp.Header.Revision == rev, "etcd: revoke deleted detached keys")
			c.prefix("lm3/", 0)
		})

		s.run("delete-detaches", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7044
			c.mustGrant(l, 60)
			for _, k := range []string{"lm4/a", "lm4/b", "lm4/c", "lm4/d"} {
				c.mustPutL(k, "1", l)
			}
			c.ok(c.CDelete("lm4/a"))
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("lm4/b"), RangeEnd: b("lm4/c"), PrevKv: true}))
			c.ok(c.txn(&pb.TxnRequest{Success: ops(del("lm4/c", ""))}))
			c.wantKeys(l, "lm4/d")
			// Re-created without a lease: not the lease's any more.
			c.mustPutL("lm4/a", "2", 0)
			c.wantKeys(l, "lm4/d")
			rev := c.rev()
			resp, err := c.revoke(l)
			c.ok(resp, err)
			c.check(resp.Header.Revision == rev+1, "etcd: revoke did not delete lm4/d")
			c.check(slices.Equal(rangeKeys(c.prefix("lm4/", 0)), []string{"lm4/a"}), "etcd: wrong keys after revoke")
		})

		s.run("txn-with-leases", func(sc *sc) {
			c := leaseScenario(sc)
			const l1, l2 = 0x7050, 0x7051
			c.mustGrant(l1, 60)
			c.mustGrant(l2, 60)
			c.ok(c.txn(&pb.TxnRequest{Success: ops(putLease("lt1/a", "1", l1), putLease("lt1/b", "1", l1), putLease("lt1/c", "1", l2), put("lt1/d", "1"))}))
			c.wantKeys(l1, "lt1/a", "lt1/b")
			c.wantKeys(l2, "lt1/c")
			for _, r := range compareResults {
				for _, l := range []int64{0, l1, l2} {
					c.ok(c.txn(&pb.TxnRequest{Compare: cmps(cmpLease("lt1/a", r, l)), Success: ops(get("lt1/a")), Failure: ops(get("lt1/d"))}))
				}
			}
			c.ok(c.txn(&pb.TxnRequest{Compare: cmps(withEnd(cmpLease("lt1/", pb.Compare_EQUAL, l1), "lt10")), Success: ops(put("lt1/e", "1"))}))
			c.ok(c.txn(&pb.TxnRequest{Compare: cmps(withEnd(cmpLease("lt1/a", pb.Compare_EQUAL, l1), "lt1/c")), Success: ops(put("lt1/e", "2"))}))
			before := c.rev()
			c.ok(c.revoke(l1))
			// After the revoke the keys are missing: a missing key compares
			// as lease 0.
			for _, l := range []int64{0, l1} {
				c.ok(c.txn(&pb.TxnRequest{Compare: cmps(cmpLease("lt1/a", pb.Compare_EQUAL, l)), Success: ops(get("lt1/")), Failure: ops(put("lt1/f", "1"))}))
			}
			c.ok(c.txn(&pb.TxnRequest{Compare: cmps(withEnd(cmpLease("lt1/", pb.Compare_NOT_EQUAL, l1), "lt10")), Success: ops(get("lt1/a"))}))
			// Range at a revision before the revoke still sees them.
			c.ok(c.txn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b("lt1/"), RangeEnd: b("lt10"), Revision: before}))}))
			c.prefix("lt1/", before)
			_, err := c.txn(&pb.TxnRequest{Success: ops(putLease("lt1/g", "1", l1))})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.ok(c.revoke(l2))
			c.prefix("lt1/", 0)
		})

		s.run("keepalive", func(sc *sc) {
			c := leaseScenario(sc)
			const l1, l2 = 0x7060, 0x7061
			c.mustGrant(l1, 20)
			c.mustGrant(l2, 10)
			c.mustPutL("lk1/a", "1", l1)
			resp, err := c.keepAliveOnce(l1)
			c.ok(resp, err)
			c.check(resp.ID == l1 && resp.TTL == 20, "etcd: keep-alive answered %s", oneLine(resp))
			c.ok(c.keepAliveOnce(l2))
			c.ok(c.ttl(l1, true))
			for _, id := range []int64{0x7fff7004, 0, -1} {
				_, err = c.keepAliveOnce(id)
				c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			}
			// On the raw stream an unknown lease is TTL 0, not an error, and
			// the stream goes on.
			run := c.keepAliveStream(l1, 0x7fff7004, 0, l2, l1, -1, l1)
			c.check(run.Err == "" && run.End == "EOF" && len(run.Responses) == 7 && run.Responses[1].TTL == 0, "etcd: raw keep-alive stream: %s", oneLine(run))
			c.keepAliveStream()
			c.keepAlivePipelined(l1, 0x7fff7004, l2, l1, 0, l2)
			c.keepAliveChan(l1)
			c.keepAliveChan(0x7fff7004)
			c.ok(c.revoke(l2))
			c.keepAliveStream(l2, l1)
			_, err = c.keepAliveOnce(l2)
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.ok(c.revoke(l1))
			c.keepAliveStream(l1)
		})

		s.run("timetolive", func(sc *sc) {
			c := leaseScenario(sc)
			const l = 0x7070
			c.mustGrant(l, 30)
			c.ok(c.ttl(l, false))
			c.ok(c.ttl(l, true)) // no keys yet
			c.ok(c.cttl(l, true))
			keys := []string{"ltt/m", "ltt/a", "ltt/z", "ltt/b\x00", "ltt/b", "ltt/\xff", "ltt/0"}
			for _, k := range keys {
				c.mustPutL(k, "1", l)
			}
			c.ok(c.ttl(l, false))
			c.ok(c.cttl(l, false))
			r := c.mustTTL(l, true)
			c.check(len(r.Keys) == len(keys) && r.GrantedTTL == 30 && r.TTL >= 28 && r.TTL <= 30, "etcd: %s", oneLine(r))
			c.ok(c.cttl(l, true))
			c.ok(c.keepAliveOnce(l))
			c.ok(c.ttl(l, true))
			for _, id := range []int64{0x7fff7005, 0, -1} {
				resp, err := c.ttl(id, true)
				c.ok(resp, err)
				c.check(resp.TTL == -1 && resp.GrantedTTL == 0 && len(resp.Keys) == 0, "etcd: unknown lease: %s", oneLine(resp))
				c.ok(c.cttl(id, false))
			}
			c.ok(c.revoke(l))
			c.ok(c.ttl(l, true))
		})

		s.run("leases", func(sc *sc) {
			c := leaseScenario(sc)
			ls0, err := c.leases()
			c.ok(ls0, err)
			ids := []int64{0x7080, 0x7081, 0x7082}
			for i, id := range ids {
				c.mustGrant(id, int64(60*(3-i))) // the last expires first
			}
			ls, err := c.leases()
			c.ok(ls, err)
			c.check(len(ls.Leases) == len(ls0.Leases)+3, "etcd: %d leases listed", len(ls.Leases))
			c.ok(c.cleases())
			chosen := c.mustGrant(0, 60)
			c.ok(c.leases())
			c.ok(c.revoke(ids[1]))
			c.ok(c.revoke(chosen))
			ls, err = c.leases()
			c.ok(ls, err)
			c.check(!slices.Contains(leaseIDs(ls), ids[1]), "etcd lists a revoked lease")
			c.ok(c.revoke(ids[0]))
			c.ok(c.revoke(ids[2]))
			c.ok(c.cleases())
		})
	})
}
