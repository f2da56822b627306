package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestMaintCompact: compaction as the Maintenance guide uses it: its errors,
// reads and txn reads around the compacted revision, and watches that start
// below or exactly at it. Every scenario compacts at a revision of its own
// history (compactions only move forward, so they compose).
func TestMaintCompact(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("errors", func(c *sc) {
			c.mustPut("mc/e/a", "1")
			cur := c.mustPut("mc/e/a", "2")
			_, err := c.CCompact(cur+1, false)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			_, err = c.CCompact(cur+1, true)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.ok(c.CCompact(cur-1, false))
			_, err = c.CCompact(cur-1, false)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.CCompact(cur-1, true)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.CCompact(cur-2, true)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			c.ok(c.CCompact(cur, true))
			_, err = c.CCompact(cur, false)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.Compact(&pb.CompactionRequest{Revision: cur + 1000})
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.check(c.rev() == cur, "failed compactions moved the revision")
		})

		// A history whose compaction revision is a delete: etcd 3.6 keeps
		// that tombstone, so reads at the compaction revision see the key
		// gone and reads before it fail.
		s.run("reads-around-compaction", func(c *sc) {
			p := "mc/r/"
			c.mustPut(p+"a", "a1")
			c.mustPut(p+"b", "b1")
			rA2 := c.mustPut(p+"a", "a2")
			c.mustPut(p+"c", "c1")
			dr, err := c.CDelete(p + "b")
			c.ok(dr, err)
			rT := dr.Header.Revision
			txn := c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"a", "a3"), del(p+"c", ""), put(p+"d", "d1"))})
			rX := txn.Header.Revision
			c.ok(c.CCompact(rT, true))

			for _, r := range []int64{rT - 1, 1} {
				_, err = c.Get(p+"a", withRev(r))
				c.wantErr(err, rpctypes.ErrGRPCCompacted)
				_, err = c.Get(p, withPrefix, withRev(r), withCountOnly)
				c.wantErr(err, rpctypes.ErrGRPCCompacted)
			}
			g, err := c.Get(p, withPrefix, withRev(rT))
			c.ok(g, err)
			c.check(len(g.Kvs) == 2 && string(g.Kvs[0].Value) == "a2", "read at the compaction revision: %v", g.Kvs)
			c.ok(c.Get(p+"b", withRev(rT)))
			c.ok(c.Get(p, withPrefix, withRev(rT), withKeysOnly))
			c.ok(c.Get(p, withPrefix, withRev(rT), withCountOnly))
			c.ok(c.Get(p, withPrefix, withRev(rT), withMinModRev(rA2)))
			c.ok(c.Get(p, withPrefix, withRev(rT), withMaxCreateRev(rA2), withSort(clientv3.SortByCreateRevision, clientv3.SortDescend)))
			c.ok(c.Get(p, withPrefix, withRev(rX)))
			c.ok(c.Get(p, withPrefix, withRev(0)))
			c.ok(c.Range(&pb.RangeRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), Revision: rT, Limit: 1}))

			// Txn reads at, below and above the compaction revision.
			_, err = c.Txn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b(p + "a"), Revision: rT - 1}))})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(get(p+"a"), opRange(&pb.RangeRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), Revision: 1}))})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpValue(p+"a", pb.Compare_EQUAL, "a3")),
				Success: ops(opTxn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b(p + "b"), Revision: rT - 1}))})),
			})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			// A compacted read in a write txn: nothing may be written.
			_, err = c.Txn(&pb.TxnRequest{Success: ops(put(p+"z", "no"), opRange(&pb.RangeRequest{Key: b(p + "a"), Revision: rT - 1}))})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			c.ok(c.Get(p + "z"))
			c.mustTxn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), Revision: rT}))})
			c.mustTxn(&pb.TxnRequest{
				Compare: cmps(cmpMod(p+"a", pb.Compare_EQUAL, rX)),
				Success: ops(opRange(&pb.RangeRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), Revision: rT, CountOnly: true}), put(p+"e", "e1")),
			})
			c.check(c.rev() == rX+1, "the txn at the compaction revision did not write")
		})

		// Watches starting below the compaction revision are cancelled with
		// compact_revision; one starting exactly at it replays from it,
		// including a delete at that revision.
		s.run("watch-below-compaction", func(c *sc) {
			p := "mc/wb/"
			r1 := c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			d, err := c.CDelete(p + "a")
			c.ok(d, err)
			rT := d.Header.Revision
			c.mustPut(p+"c", "1")
			c.ok(c.CCompact(rT, false))
			for _, start := range []int64{rT - 1, r1, 1} {
				c.compactWatch(fmt.Sprintf("start %d below the compaction %d", start, rT), &pb.WatchCreateRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), StartRevision: start}, func(v maintWatchView) bool {
					for _, r := range v.Control {
						if r.CompactRevision != 0 || r.Canceled {
							return true
						}
					}
					return false
				})
			}
		})

		s.run("watch-at-compaction-tombstone", func(c *sc) {
			p := "mc/wt/"
			c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			c.mustPut(p+"a", "2")
			d, err := c.CDelete(p + "a")
			c.ok(d, err)
			rT := d.Header.Revision
			c.mustPut(p+"c", "1")
			cur := c.mustPut(p+"b", "2")
			c.ok(c.CCompact(rT, true))
			n := int(cur - rT + 1)
			for _, prevKV := range []bool{false, true} {
				c.compactWatch(fmt.Sprintf("start at the compaction revision %d (a delete), prev_kv=%v", rT, prevKV),
					&pb.WatchCreateRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), StartRevision: rT, PrevKv: prevKV},
					func(v maintWatchView) bool { return len(v.Events) >= n })
			}
			c.compactWatch(fmt.Sprintf("start right after the compaction revision %d", rT),
				&pb.WatchCreateRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), StartRevision: rT + 1, PrevKv: true},
				func(v maintWatchView) bool { return len(v.Events) >= n-1 })
			// The single key, exactly at its delete.
			c.compactWatch("single key deleted at the compaction revision",
				&pb.WatchCreateRequest{Key: b(p + "a"), StartRevision: rT},
				func(v maintWatchView) bool { return len(v.Events) >= 1 })
		})

		// The tombstone at the compaction revision stays when the key is put
		// again and a later compaction removes the rest.
		s.run("tombstone-then-recreate", func(c *sc) {
			p := "mc/tr/"
			c.mustPut(p+"k", "1")
			d, err := c.CDelete(p + "k")
			c.ok(d, err)
			rT := d.Header.Revision
			r2 := c.mustPut(p+"k", "2")
			c.ok(c.CCompact(rT, true))
			c.ok(c.Get(p+"k", withRev(rT)))
			c.ok(c.Get(p+"k", withRev(r2)))
			c.compactWatch("recreated key from the compaction revision",
				&pb.WatchCreateRequest{Key: b(p + "k"), StartRevision: rT, PrevKv: true},
				func(v maintWatchView) bool { return len(v.Events) >= 2 })
			c.ok(c.CCompact(r2, true))
			c.ok(c.Get(p+"k", withRev(r2)))
			_, err = c.Get(p+"k", withRev(rT))
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
		})
	})
}

// compactWatch compares a watch on both servers: the control responses exactly
// and the delivered events as one sequence.
func (c *sc) compactWatch(desc string, req *pb.WatchCreateRequest, done func(v maintWatchView) bool) {
	c.t.Helper()
	resp, err := c.do("Watch "+desc+": "+oneLine(req), func(ctx context.Context, s *server) (any, error) {
		return maintCollectWatch(ctx, s, req, done, 10*time.Second, 300*time.Millisecond)
	})
	c.ok(resp, err)
	c.check(done(resp.(maintWatchView)), "etcd's watch did not deliver what the scenario expects: %s", oneLine(resp))
}

// TestMaintHashKV: HashKV is computed as etcd computes it, so the values
// must be equal for the same history: at every revision, before and after
// compactions (physical or not), with a tombstone at the compaction
// revision, and with sub-revisions (txns, multi-key deletes) and leases in
// the history.
//
// etcd 3.6 also remembers the hash each compaction computed while deleting
// (of the history up to the compaction revision, as it was before, with the
// previous compaction revision as compact_revision), for the last ten
// compactions, and answers HashKV at exactly such a revision from that
// memory: even once a later compaction has passed it. The scenario
// "at-compaction-revisions" checks that; the others avoid those revisions.
func TestMaintHashKV(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		// First, on the fresh pair: nothing compacted yet.
		s.run("fresh", func(c *sc) {
			c.ok(c.HashKV(0))
			c.ok(c.HashKV(1))
			_, err := c.HashKV(2)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
		})

		s.run("uncompacted", func(c *sc) {
			first := c.rev()
			maintHashHistory(c, "mu/", 0x6d61696e75)
			maintHashAll(c, first)
		})

		s.run("after-compactions", func(c *sc) {
			p := "mh/"
			first := c.rev()
			rT := maintHashHistory(c, p, 0x6d61696e74)
			c.ok(c.CCompact(rT, true))
			for _, r := range []int64{rT - 1, first, 1} {
				_, err := c.HashKV(r)
				c.wantErr(err, rpctypes.ErrGRPCCompacted)
			}
			maintHashAll(c, rT+1)

			// More history, then a non-physical compaction (etcd may still
			// be deleting when HashKV runs: its hash skips what the
			// compaction will remove).
			c.mustPut(p+"f", "f2")
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"g", "g1"), put(p+"h", "h1"))})
			r2 := c.mustPut(p+"g", "g2")
			c.mustPut(p+"a", "a5")
			c.ok(c.CCompact(r2, false))
			maintHashAll(c, r2+1)

			// Compact to the current revision: only live keys remain.
			// HashKV(0) hashes afresh (only an explicit revision is looked
			// up among the compaction hashes).
			c.mustPut(p+"h", "h2")
			cur := c.mustPut(p+"a", "a6")
			c.ok(c.CCompact(cur, true))
			c.ok(c.HashKV(0))
			_, err := c.HashKV(cur - 1)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.HashKV(cur + 1)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.mustPut(p+"a", "a7")
			maintHashAll(c, cur+1)
		})

		// HashKV at exactly a compaction revision (see above).
		s.run("at-compaction-revisions", func(c *sc) {
			p := "mr/"
			rT := maintHashHistory(c, p, 0x6d61696e76)
			c.ok(c.CCompact(rT, true))
			c.ok(c.HashKV(rT))
			c.mustPut(p+"f", "f2")
			r2 := c.mustPut(p+"g", "g1")
			c.mustPut(p+"a", "a5")
			c.ok(c.CCompact(r2, true))
			c.ok(c.HashKV(r2))
			c.ok(c.HashKV(rT)) // below the compaction, but remembered
			cur := c.mustPut(p+"a", "a6")
			c.ok(c.CCompact(cur, true))
			c.ok(c.HashKV(cur))
			c.ok(c.HashKV(0))
		})

		// A negative revision is neither compacted nor future for etcd: it
		// hashes nothing. (Compacted first: the compact_revision of a
		// never-compacted store is checked by "fresh".)
		s.run("negative-revision", func(c *sc) {
			r := c.mustPut("mn/a", "1")
			c.mustPut("mn/a", "2")
			c.ok(c.CCompact(r, true))
			c.ok(c.HashKV(-1))
			c.ok(c.HashKV(-100))
		})
	})
}

// maintHashHistory writes a history with leases, sub-revisions, a recreated key
// and tombstones under p, and returns the revision of a delete in it (the
// compaction revision of the history scenario).
func maintHashHistory(c *sc, p string, lease int64) int64 {
	c.t.Helper()
	c.LeaseGrant(lease, 3600)
	c.mustPut(p+"a", "a1")
	c.mustPut(p+"b", "b1", withLease(lease))
	c.mustPut(p+"a", "a2")
	c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"c", "c1"), put(p+"d", "d1"), del(p+"a", ""))})
	c.mustPut(p+"c", "c2")
	c.mustPut(p+"e", "")
	c.ok(c.CDelete(p+"c", withRange(p+"e"))) // c, d: two sub-revisions
	c.mustPut(p+"a", "a3", withPrevKV)       // recreated
	d, err := c.CDelete(p + "b")             // a tombstone
	c.ok(d, err)
	c.mustPut(p+"f", "f1")
	c.mustPut(p+"a", "a4")
	return d.Header.Revision
}

// maintHashAll compares HashKV at every revision from from to the current one,
// at 0 (current) and just past the current one (a future revision).
func maintHashAll(c *sc, from int64) {
	c.t.Helper()
	cur := c.rev()
	for r := from; r <= cur; r++ {
		c.ok(c.HashKV(r))
	}
	c.ok(c.HashKV(0))
	_, err := c.HashKV(cur + 1)
	c.wantErr(err, rpctypes.ErrGRPCFutureRev)
}
