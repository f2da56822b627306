package conformance

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

func TestTxn(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("compare-value", func(c *sc) {
			c.mustPut("t1/k", "b")
			for _, r := range compareResults {
				for _, v := range []string{"a", "b", "c", "", "b\x00"} {
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpValue("t1/k", r, v)), Success: ops(get("t1/k")), Failure: ops(get("t1/none"))}))
				}
			}
			c.mustPut("t1/empty", "")
			c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpValue("t1/empty", pb.Compare_EQUAL, "")), Success: ops(put("t1/w", "yes")), Failure: ops(put("t1/w", "no"))}))
			c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpValue("t1/empty", pb.Compare_GREATER, "")), Success: ops(put("t1/w", "yes")), Failure: ops(put("t1/w", "no"))}))
		})
		s.run("compare-version-create-mod", func(c *sc) {
			c.mustPut("t2/k", "1")
			c.mustPut("t2/filler", "1")
			c.mustPut("t2/k", "2")
			g, err := c.Get("t2/k")
			c.ok(g, err)
			kv := g.Kvs[0]
			for _, r := range compareResults {
				for _, d := range []int64{-1, 0, 1} {
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpVersion("t2/k", r, kv.Version+d)), Success: ops(get("t2/k"))}))
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpCreate("t2/k", r, kv.CreateRevision+d)), Failure: ops(get("t2/k"))}))
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpMod("t2/k", r, kv.ModRevision+d)), Success: ops(get("t2/filler")), Failure: ops(get("t2/k"))}))
				}
			}
		})
		s.run("compare-lease-unleased-key", func(c *sc) {
			c.mustPut("t3/plain", "1")
			for _, r := range compareResults {
				for _, l := range []int64{-1, 0, 1, 0x5301} {
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpLease("t3/plain", r, l)), Success: ops(get("t3/plain"))}))
				}
			}
		})
		s.run("compare-lease", func(c *sc) {
			const lease = 0x5301
			c.LeaseGrant(lease, 3600)
			c.mustPut("t3l/leased", "1", withLease(lease))
			for _, r := range compareResults {
				for _, l := range []int64{0, lease - 1, lease, lease + 1} {
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpLease("t3l/leased", r, l)), Success: ops(get("t3l/leased"))}))
				}
			}
			c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(withEnd(cmpLease("t3l/", pb.Compare_EQUAL, lease), "t3l0")), Success: ops(put("t3l/x", "1"))}))
		})
		s.run("compare-absent-key", func(c *sc) {
			// VALUE on a missing key always fails; other targets compare
			// against zero.
			for _, r := range compareResults {
				for _, cm := range []*pb.Compare{
					cmpValue("t4/absent", r, ""), cmpValue("t4/absent", r, "x"),
					cmpVersion("t4/absent", r, 0), cmpVersion("t4/absent", r, 1),
					cmpCreate("t4/absent", r, 0), cmpCreate("t4/absent", r, 1),
					cmpMod("t4/absent", r, 0), cmpMod("t4/absent", r, -1),
					cmpLease("t4/absent", r, 0), cmpLease("t4/absent", r, 5),
				} {
					c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cm), Success: ops(get("t4/absent"))}))
				}
			}
		})
		s.run("compare-with-range", func(c *sc) {
			c.mustPut("t5/a", "1")
			c.mustPut("t5/b", "1")
			c.mustPut("t5/c", "2")
			c.mustPut("t5/c", "2")
			for _, cm := range []*pb.Compare{
				withEnd(cmpValue("t5/a", pb.Compare_EQUAL, "1"), "t5/c"),
				withEnd(cmpValue("t5/a", pb.Compare_EQUAL, "1"), "t5/d"),
				withEnd(cmpValue("t5/a", pb.Compare_LESS, "3"), "t5/\xff"),
				withEnd(cmpValue("t5/a", pb.Compare_NOT_EQUAL, "2"), "t5/\xff"),
				withEnd(cmpValue("t5/x", pb.Compare_NOT_EQUAL, "2"), "t5/z"),
				withEnd(cmpVersion("t5/a", pb.Compare_EQUAL, 1), "t5/c"),
				withEnd(cmpVersion("t5/a", pb.Compare_EQUAL, 1), "t5/d"),
				withEnd(cmpVersion("t5/a", pb.Compare_LESS, 3), "\x00"),
				withEnd(cmpVersion("t5/x", pb.Compare_EQUAL, 0), "t5/z"),
				withEnd(cmpCreate("t5/a", pb.Compare_GREATER, 0), "t5/\xff"),
				withEnd(cmpMod("t5/a", pb.Compare_LESS, 1<<40), "t5/\xff"),
				withEnd(cmpLease("t5/a", pb.Compare_EQUAL, 0), "t5/\xff"),
				withEnd(cmpValue("t5/c", pb.Compare_EQUAL, "2"), "t5/a"), // end before key: no keys
			} {
				c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cm), Success: ops(put("t5/result", "then")), Failure: ops(put("t5/result", "else"))}))
			}
			c.ok(c.CTxn("If(Value(t5/ prefix) = 1)", []clientv3.Cmp{clientv3.Compare(clientv3.Value("t5/"), "=", "1").WithPrefix()}, nil, []clientv3.Op{clientv3.OpGet("t5/", clientv3.WithPrefix())}))
		})
		s.run("multiple-compares", func(c *sc) {
			c.mustPut("t6/a", "1")
			c.mustPut("t6/b", "2")
			c.ok(c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpValue("t6/a", pb.Compare_EQUAL, "1"), cmpValue("t6/b", pb.Compare_EQUAL, "2"), cmpVersion("t6/c", pb.Compare_EQUAL, 0)),
				Success: ops(put("t6/c", "3"), get("t6/c")),
				Failure: ops(del("t6/a", "")),
			}))
			c.ok(c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpValue("t6/a", pb.Compare_EQUAL, "1"), cmpVersion("t6/c", pb.Compare_EQUAL, 0)),
				Success: ops(put("t6/d", "x")),
				Failure: ops(del("t6/a", ""), opRange(&pb.RangeRequest{Key: b("t6/"), RangeEnd: b("t6/\xff")})),
			}))
		})
		s.run("branches-with-writes", func(c *sc) {
			c.mustPut("t7/a", "1")
			for _, v := range []string{"1", "2"} {
				c.ok(c.Txn(&pb.TxnRequest{
					Compare: cmps(cmpValue("t7/a", pb.Compare_EQUAL, v)),
					Success: ops(
						opPut(&pb.PutRequest{Key: b("t7/a"), Value: b("2"), PrevKv: true}),
						opPut(&pb.PutRequest{Key: b("t7/s"), Value: b("x")}),
						opDel(&pb.DeleteRangeRequest{Key: b("t7/f"), PrevKv: true}),
					),
					Failure: ops(
						opPut(&pb.PutRequest{Key: b("t7/f"), Value: b("y"), PrevKv: true}),
						opDel(&pb.DeleteRangeRequest{Key: b("t7/s"), RangeEnd: b("t7/t"), PrevKv: true}),
					),
				}))
			}
			c.ok(c.Get("t7/", withPrefix))
		})
		s.run("reads-after-writes", func(c *sc) {
			c.mustPut("t8/b", "old")
			c.mustPut("t8/d", "old")
			old := c.mustPut("t8/c", "old")
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(
				get("t8/a"),
				put("t8/a", "1"),
				get("t8/a"),
				del("t8/b", ""),
				get("t8/b"),
				opPut(&pb.PutRequest{Key: b("t8/c"), Value: b("new"), PrevKv: true}),
				opRange(&pb.RangeRequest{Key: b("t8/"), RangeEnd: b("t8/\xff")}),
				opRange(&pb.RangeRequest{Key: b("t8/"), RangeEnd: b("t8/\xff"), CountOnly: true}),
				opRange(&pb.RangeRequest{Key: b("t8/"), RangeEnd: b("t8/\xff"), Revision: old}),
				opRange(&pb.RangeRequest{Key: b("t8/"), RangeEnd: b("t8/\xff"), SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD, Limit: 2}),
				opDel(&pb.DeleteRangeRequest{Key: b("t8/d"), PrevKv: true}),
				get("t8/d"),
				get("t8/c"),
			)}))
			c.ok(c.Get("t8/", withPrefix))
		})
		s.run("nested", func(c *sc) {
			c.mustPut("t9/a", "1")
			inner := &pb.TxnRequest{
				Compare: cmps(cmpValue("t9/a", pb.Compare_EQUAL, "1")),
				Success: ops(put("t9/inner", "then"), get("t9/outer")),
				Failure: ops(put("t9/inner", "else")),
			}
			c.ok(c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpVersion("t9/a", pb.Compare_GREATER, 0)),
				Success: ops(put("t9/outer", "x"), opTxn(inner), get("t9/inner")),
				Failure: ops(get("t9/a")),
			}))
			// Three levels, with a failing middle compare.
			level3 := &pb.TxnRequest{
				Compare: cmps(cmpValue("t9/inner", pb.Compare_EQUAL, "then")),
				Success: ops(put("t9/l3", "deep"), get("t9/l2")),
				Failure: ops(get("t9/l3")),
			}
			level2 := &pb.TxnRequest{
				Compare: cmps(cmpValue("t9/a", pb.Compare_EQUAL, "nope")),
				Success: ops(put("t9/l2", "then")),
				Failure: ops(put("t9/l2", "else"), opTxn(level3), del("t9/outer", "")),
			}
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(opTxn(level2), get("t9/l3"), opTxn(&pb.TxnRequest{}))}))
			// Read-only nested txn.
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Success: ops(get("t9/a"), get("t9/l3"))}))}))
			// Through clientv3's OpTxn.
			c.ok(c.CTxn("Then(OpTxn(If(Value(t9/a)=1) Then(Put t9/cv) Else(Get t9/a)), Get t9/cv)", nil, []clientv3.Op{
				clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value("t9/a"), "=", "1")}, []clientv3.Op{clientv3.OpPut("t9/cv", "1", clientv3.WithPrevKV())}, []clientv3.Op{clientv3.OpGet("t9/a")}),
				clientv3.OpGet("t9/cv"),
			}, nil))
			c.ok(c.Get("t9/", withPrefix))
		})
		s.run("read-only-no-revision-bump", func(c *sc) {
			c.mustPut("t10/a", "1")
			before := c.rev()
			r, err := c.Txn(&pb.TxnRequest{Compare: cmps(cmpValue("t10/a", pb.Compare_EQUAL, "1")), Success: ops(get("t10/a"), get("t10/b")), Failure: ops(put("t10/a", "2"))})
			c.ok(r, err)
			c.check(r.Header.Revision == before, "read-only txn bumped the revision")
			c.ok(c.Txn(&pb.TxnRequest{Compare: cmps(cmpValue("t10/a", pb.Compare_EQUAL, "2"))}))
			c.ok(c.Txn(&pb.TxnRequest{}))
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(del("t10/none", ""))})) // deletes nothing
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Success: ops(del("t10/none", "t10/nonf"))}))}))
			c.check(c.rev() == before, "revision moved")
		})
		s.run("duplicate-key", func(c *sc) {
			c.mustPut("t11/a", "1")
			for _, r := range []*pb.TxnRequest{
				{Success: ops(put("t11/a", "1"), put("t11/a", "2"))},
				{Failure: ops(put("t11/a", "1"), put("t11/a", "2")), Compare: cmps(cmpValue("t11/a", pb.Compare_EQUAL, "1"))},
				{Success: ops(put("t11/b", "1"), del("t11/a", "t11/c"))},
				{Success: ops(del("t11/", "t11/\xff"), put("t11/zz", "1"))},
				{Success: ops(del("t11/a", ""), put("t11/a", "1"))},
				{Success: ops(put("t11/x", "1"), opTxn(&pb.TxnRequest{Success: ops(put("t11/x", "2"))}))},
				{Success: ops(put("t11/x", "1"), opTxn(&pb.TxnRequest{Failure: ops(put("t11/x", "2"))}))},
				{Success: ops(del("t11/w", "t11/y"), opTxn(&pb.TxnRequest{Success: ops(put("t11/x", "2"))}))},
				{Success: ops(put("t11/x", "1"), opTxn(&pb.TxnRequest{Success: ops(del("t11/", "t11/\xff"))}))},
				{Success: ops(opTxn(&pb.TxnRequest{Success: ops(put("t11/x", "1"))}), opTxn(&pb.TxnRequest{Success: ops(put("t11/x", "2"))}))},
				{Success: ops(opTxn(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Success: ops(put("t11/deep", "1"))}))}), put("t11/deep", "2"))},
			} {
				_, err := c.Txn(r)
				c.wantErr(err, rpctypes.ErrGRPCDuplicateKey)
			}
			// Allowed: then/else of one txn, overlapping deletes, reads.
			for _, r := range []*pb.TxnRequest{
				{Success: ops(put("t11/a", "then")), Failure: ops(put("t11/a", "else"))},
				{Success: ops(opTxn(&pb.TxnRequest{Compare: cmps(cmpValue("t11/a", pb.Compare_EQUAL, "then")), Success: ops(put("t11/n", "then")), Failure: ops(put("t11/n", "else"))}))},
				{Success: ops(del("t11/a", "t11/c"), del("t11/b", "t11/d"))},
				{Success: ops(get("t11/a"), put("t11/a", "r"), get("t11/a"))},
				{Success: ops(put("t11/a", "1"), del("t11/b", ""))},
				{Success: ops(put("t11/a", "1"), opTxn(&pb.TxnRequest{Success: ops(put("t11/b", "1"))}))},
			} {
				c.ok(c.Txn(r))
			}
			c.ok(c.Get("t11/", withPrefix))
			// etcd quirk: the duplicate check reads a "\x00" range end
			// literally (an empty interval), so from-key deletes never
			// conflict; the ops then run in order.
			for _, r := range []*pb.TxnRequest{
				{Success: ops(put("\xfd/t11/x", "1"), del("\xfd/t11/", "\x00"), get("\xfd/t11/x"))},
				{Success: ops(del("\xfd/t11/", "\x00"), put("\xfd/t11/x", "2"))},
				{Success: ops(del("\xfd/t11/", "\x00"), opTxn(&pb.TxnRequest{Success: ops(put("\xfd/t11/y", "1"))}))},
			} {
				c.ok(c.Txn(r))
			}
			c.ok(c.Get("\xfd/t11/", withPrefix))
		})
		s.run("too-many-ops", func(c *sc) {
			var many, limit []*pb.RequestOp
			var manyCmps []*pb.Compare
			for i := 0; i < 129; i++ {
				many = append(many, put(fmt.Sprintf("t12/%03d", i), "v"))
				manyCmps = append(manyCmps, cmpVersion(fmt.Sprintf("t12/%03d", i), pb.Compare_EQUAL, 0))
			}
			limit = many[:128]
			_, err := c.Txn(&pb.TxnRequest{Success: many})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			_, err = c.Txn(&pb.TxnRequest{Failure: many})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			_, err = c.Txn(&pb.TxnRequest{Compare: manyCmps})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			c.ok(c.Txn(&pb.TxnRequest{Compare: manyCmps[:128], Success: limit}))
			// A nested txn gets the budget left by its parent's widest list.
			outer := append([]*pb.RequestOp{}, many[:99]...)
			nested := func(n int) *pb.RequestOp {
				var o []*pb.RequestOp
				for i := 0; i < n; i++ {
					o = append(o, get(fmt.Sprintf("t12/%03d", i)))
				}
				return opTxn(&pb.TxnRequest{Success: o})
			}
			_, err = c.Txn(&pb.TxnRequest{Success: append(outer, nested(29))})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			c.ok(c.Txn(&pb.TxnRequest{Success: append(outer, nested(28))}))
		})
		s.run("empty-compare-key", func(c *sc) {
			_, err := c.Txn(&pb.TxnRequest{Compare: cmps(cmpValue("", pb.Compare_EQUAL, "x")), Success: ops(put("t13/a", "1"))})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Compare: cmps(cmpVersion("", pb.Compare_EQUAL, 0))}))})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			c.ok(c.Get("t13/a"))
		})
		s.run("empty-key-in-ops", func(c *sc) {
			for _, o := range []*pb.RequestOp{put("", "x"), get(""), del("", "")} {
				_, err := c.Txn(&pb.TxnRequest{Success: ops(put("t14/a", "1"), o)})
				c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
				// Requests are validated before compares pick a branch.
				_, err = c.Txn(&pb.TxnRequest{Compare: cmps(cmpVersion("t14/a", pb.Compare_EQUAL, 0)), Failure: ops(o)})
				c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			}
			c.ok(c.Get("t14/a"))
		})
		s.run("empty-request-op", func(c *sc) {
			_, err := c.Txn(&pb.TxnRequest{Success: ops(put("t15/a", "1"), &pb.RequestOp{})})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			_, err = c.Txn(&pb.TxnRequest{Failure: ops(&pb.RequestOp{})})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Success: ops(&pb.RequestOp{})}))})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			c.ok(c.Get("t15/a"))
		})
		s.run("invalid-requests-in-ops", func(c *sc) {
			c.mustPut("t16/a", "1")
			for _, tc := range []struct {
				op   *pb.RequestOp
				want error
			}{
				{opPut(&pb.PutRequest{Key: b("t16/a"), Value: b("x"), IgnoreValue: true}), rpctypes.ErrGRPCValueProvided},
				{opPut(&pb.PutRequest{Key: b("t16/a"), Lease: 1, IgnoreLease: true}), rpctypes.ErrGRPCLeaseProvided},
				{opRange(&pb.RangeRequest{Key: b("t16/a"), SortOrder: 7}), rpctypes.ErrGRPCInvalidSortOption},
				{opRange(&pb.RangeRequest{Key: b("t16/a"), SortTarget: 7}), rpctypes.ErrGRPCInvalidSortOption},
			} {
				_, err := c.Txn(&pb.TxnRequest{Success: ops(put("t16/b", "1"), tc.op)})
				c.wantErr(err, tc.want)
				_, err = c.Txn(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Failure: ops(tc.op)}))})
				c.wantErr(err, tc.want)
			}
			c.ok(c.Get("t16/", withPrefix))
		})
		s.run("ignore-value-absent-rejects-txn", func(c *sc) {
			c.mustPut("t17/exists", "1")
			before := c.rev()
			_, err := c.Txn(&pb.TxnRequest{Success: ops(
				put("t17/a", "1"),
				opPut(&pb.PutRequest{Key: b("t17/absent"), IgnoreValue: true}),
			)})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(
				put("t17/a", "1"),
				opTxn(&pb.TxnRequest{Success: ops(opPut(&pb.PutRequest{Key: b("t17/absent"), Value: b("x"), IgnoreLease: true}))}),
			)})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			c.check(c.rev() == before, "rejected txn moved the revision")
			c.ok(c.Get("t17/", withPrefix))
			// Only the taken branch is checked.
			c.ok(c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpValue("t17/exists", pb.Compare_EQUAL, "1")),
				Success: ops(opPut(&pb.PutRequest{Key: b("t17/exists"), IgnoreValue: true})),
				Failure: ops(opPut(&pb.PutRequest{Key: b("t17/absent"), IgnoreValue: true})),
			}))
			c.ok(c.Get("t17/", withPrefix))
		})
		s.run("lease-not-found-in-txn", func(c *sc) {
			_, err := c.Txn(&pb.TxnRequest{Success: ops(put("t18/a", "1"), opPut(&pb.PutRequest{Key: b("t18/b"), Value: b("1"), Lease: 0x7fff0002}))})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.ok(c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpVersion("t18/a", pb.Compare_EQUAL, 0)),
				Success: ops(put("t18/a", "1")),
				Failure: ops(opPut(&pb.PutRequest{Key: b("t18/b"), Value: b("1"), Lease: 0x7fff0002})),
			}))
			c.ok(c.Get("t18/", withPrefix))
			// etcd 3.7 checks the lease before ignore_value's key (3.6 did
			// the opposite).
			_, err = c.Txn(&pb.TxnRequest{Success: ops(opPut(&pb.PutRequest{Key: b("t18/absent"), IgnoreValue: true, Lease: 0x7fff0002}))})
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
		})
		s.run("future-revision-in-txn", func(c *sc) {
			cur := c.mustPut("t19/a", "1")
			_, err := c.Txn(&pb.TxnRequest{Success: ops(put("t19/b", "1"), opRange(&pb.RangeRequest{Key: b("t19/a"), Revision: cur + 1}))})
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b("t19/a"), Revision: cur + 5}))})
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(put("t19/b", "1"), opRange(&pb.RangeRequest{Key: b("t19/a"), Revision: cur}))}))
			c.ok(c.Get("t19/", withPrefix))
		})
		s.run("clientv3-builder", func(c *sc) {
			c.mustPut("t20/a", "1")
			c.ok(c.CTxn("If(Value(t20/a)=1, Version(t20/a)>0, CreateRevision(t20/b)=0) Then(Put t20/b, Get t20/ prefix, Delete t20/a prevKV) Else(Get t20/a)",
				[]clientv3.Cmp{
					clientv3.Compare(clientv3.Value("t20/a"), "=", "1"),
					clientv3.Compare(clientv3.Version("t20/a"), ">", 0),
					clientv3.Compare(clientv3.CreateRevision("t20/b"), "=", 0),
				},
				[]clientv3.Op{clientv3.OpPut("t20/b", "2"), clientv3.OpGet("t20/", clientv3.WithPrefix()), clientv3.OpDelete("t20/a", clientv3.WithPrevKV())},
				[]clientv3.Op{clientv3.OpGet("t20/a")}))
			c.ok(c.CTxn("If(ModRevision(t20/b)<1) Then(Put t20/c) Else(Get t20/ prefix sorted by mod desc, Put t20/b)",
				[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision("t20/b"), "<", 1)},
				[]clientv3.Op{clientv3.OpPut("t20/c", "x")},
				[]clientv3.Op{clientv3.OpGet("t20/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend)), clientv3.OpPut("t20/b", "3", clientv3.WithPrevKV())}))
			c.ok(c.CTxn("If(Value(t20/b)!=3) Then(Put t20/d) Else(Delete t20/ prefix)",
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value("t20/b"), "!=", "3")},
				[]clientv3.Op{clientv3.OpPut("t20/d", "x")},
				[]clientv3.Op{clientv3.OpDelete("t20/", clientv3.WithPrefix(), clientv3.WithPrevKV())}))
		})
	})
}

// TestTxnMaxOps runs both servers with --max-txn-ops 4.
func TestTxnMaxOps(t *testing.T) {
	forEachBackend(t, harness.Options{MaxTxnOps: 4}, func(s *suite) {
		s.run("max-txn-ops-4", func(c *sc) {
			four := ops(put("m/1", "1"), put("m/2", "1"), put("m/3", "1"), put("m/4", "1"))
			five := append(append([]*pb.RequestOp{}, four...), put("m/5", "1"))
			c.ok(c.Txn(&pb.TxnRequest{Success: four}))
			_, err := c.Txn(&pb.TxnRequest{Success: five})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			_, err = c.Txn(&pb.TxnRequest{Failure: five})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			cm := cmps(cmpVersion("m/1", pb.Compare_GREATER, 0), cmpVersion("m/2", pb.Compare_GREATER, 0), cmpVersion("m/3", pb.Compare_GREATER, 0), cmpVersion("m/4", pb.Compare_GREATER, 0))
			c.ok(c.Txn(&pb.TxnRequest{Compare: cm, Success: ops(get("m/1"))}))
			_, err = c.Txn(&pb.TxnRequest{Compare: append(cm, cmpVersion("m/5", pb.Compare_EQUAL, 0))})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			// Nested budget: 4 - 2 = 2 ops for the inner txn.
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(get("m/1"), opTxn(&pb.TxnRequest{Success: ops(get("m/2"), get("m/3"))}))}))
			_, err = c.Txn(&pb.TxnRequest{Success: ops(get("m/1"), opTxn(&pb.TxnRequest{Success: ops(get("m/2"), get("m/3"), get("m/4"))}))})
			c.wantErr(err, rpctypes.ErrGRPCTooManyOps)
			c.ok(c.Get("m/", withPrefix))
		})
	})
}
