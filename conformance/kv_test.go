package conformance

import (
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Scenarios for Range, Put, DeleteRange and Compact. Each scenario creates
// its own keys (under its own prefix) and derives revisions from responses,
// so it also works on a freshly started pair.

func TestRange(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("single-key", func(c *sc) {
			c.mustPut("r1/a", "1")
			c.mustPut("r1/b", "2")
			c.mustPut("r1/a", "3")
			c.ok(c.Get("r1/a"))
			c.ok(c.Get("r1/missing"))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r1/b")}))
		})
		s.run("key-range", func(c *sc) {
			for _, k := range []string{"r2/a", "r2/b", "r2/c", "r2/d", "r2/e"} {
				c.mustPut(k, "v-"+k)
			}
			c.ok(c.Get("r2/b", withRange("r2/d")))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r2/a"), RangeEnd: b("r2/e")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r2/a"), RangeEnd: b("r2/a\x00")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r2/0"), RangeEnd: b("r2/zz")}))
		})
		s.run("from-key-range-end-nul", func(c *sc) {
			c.mustPut("r3/a", "1")
			c.mustPut("r3/b", "2")
			c.ok(c.Range(&pb.RangeRequest{Key: b("r3/b"), RangeEnd: b("\x00")}))
			c.ok(c.Get("r3/a", withFromKey))
			c.ok(c.Get("r3/a", withFromKey, withCountOnly))
		})
		s.run("all-keys", func(c *sc) {
			c.mustPut("\x00", "nul key")
			c.mustPut("\xff\xff", "top key")
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00")}))
			c.ok(c.Get("", withPrefix))
			c.ok(c.Get("", withFromKey, withKeysOnly))
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00"), CountOnly: true}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00")})) // just the key "\x00"
		})
		s.run("prefix", func(c *sc) {
			for _, k := range []string{"r5", "r5/", "r5/a", "r5/a/b", "r5/b", "r5a", "r6", "r5/\xff", "r5/\xff\xff", "r5/\xffa", "r5/\xff\x00"} {
				c.mustPut(k, "v")
			}
			c.ok(c.Get("r5/", withPrefix))
			c.ok(c.Get("r5", withPrefix))
			c.ok(c.Get("r5/a", withPrefix))
			c.ok(c.Get("r5/\xff", withPrefix))
			c.ok(c.Get("r5/\xff\xff", withPrefix))
			c.ok(c.Get("r5/zzz", withPrefix))
		})
		s.run("range-end-not-after-key", func(c *sc) {
			c.mustPut("r7/a", "1")
			c.mustPut("r7/b", "2")
			c.ok(c.Range(&pb.RangeRequest{Key: b("r7/b"), RangeEnd: b("r7/a")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r7/b"), RangeEnd: b("r7/b")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r7/b"), RangeEnd: b("r7/a"), CountOnly: true}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r7/b"), RangeEnd: b("r7/a"), Limit: 1, SortOrder: pb.RangeRequest_DESCEND}))
		})
		s.run("limit-more-count", func(c *sc) {
			for i := 0; i < 5; i++ {
				c.mustPut(fmt.Sprintf("r8/%d", i), fmt.Sprint(i))
			}
			for _, lim := range []int64{1, 2, 4, 5, 6, 100} {
				c.ok(c.Get("r8/", withPrefix, withLimit(lim)))
			}
			c.ok(c.Range(&pb.RangeRequest{Key: b("r8/1"), RangeEnd: b("r8/4"), Limit: 2}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r8/1"), RangeEnd: b("r8/4"), Limit: 3}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r8/"), RangeEnd: b("r8/\xff"), Limit: -1}))
		})
		s.run("count-only-keys-only", func(c *sc) {
			for i := 0; i < 4; i++ {
				c.mustPut(fmt.Sprintf("r9/%d", i), fmt.Sprint("value-", i))
			}
			c.ok(c.Get("r9/", withPrefix, withCountOnly))
			c.ok(c.Get("r9/", withPrefix, withCountOnly, withLimit(2)))
			c.ok(c.Get("r9/", withPrefix, withKeysOnly))
			c.ok(c.Get("r9/", withPrefix, withKeysOnly, withLimit(2)))
			c.ok(c.Get("r9/nothing", withPrefix, withCountOnly))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r9/"), RangeEnd: b("r9/\xff"), CountOnly: true, KeysOnly: true}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r9/"), RangeEnd: b("r9/\xff"), CountOnly: true, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_VALUE}))
		})
		s.run("sort-matrix", func(c *sc) {
			setupSortKeys(c, "sort/")
			for _, lim := range []int64{0, 7} {
				for _, o := range sortOrders {
					for _, tg := range sortTargets {
						c.ok(c.Range(&pb.RangeRequest{Key: b("sort/"), RangeEnd: b("sort0"), SortOrder: o, SortTarget: tg, Limit: lim}))
					}
				}
			}
			// keys_only drops values after sorting by value.
			c.ok(c.Range(&pb.RangeRequest{Key: b("sort/"), RangeEnd: b("sort0"), SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_VALUE, KeysOnly: true}))
			// Through clientv3 (which maps KEY+ASCEND to NONE).
			c.ok(c.Get("sort/", withPrefix, withSort(clientv3.SortByKey, clientv3.SortAscend), withLimit(5)))
			c.ok(c.Get("sort/", withPrefix, withSort(clientv3.SortByKey, clientv3.SortDescend), withLimit(5)))
			c.ok(c.Get("sort/", withPrefix, withSort(clientv3.SortByModRevision, clientv3.SortDescend)))
			c.ok(c.Get("sort/", withPrefix, withSort(clientv3.SortByVersion, clientv3.SortNone)))
		})
		s.run("sort-limit-filters", func(c *sc) {
			first := setupSortKeys(c, "sortf/")
			for _, tg := range sortTargets {
				for _, o := range sortOrders {
					c.ok(c.Range(&pb.RangeRequest{Key: b("sortf/"), RangeEnd: b("sortf0"), SortOrder: o, SortTarget: tg, Limit: 5, MinModRevision: first + 12}))
					c.ok(c.Range(&pb.RangeRequest{Key: b("sortf/"), RangeEnd: b("sortf0"), SortOrder: o, SortTarget: tg, Limit: 3, MaxCreateRevision: first + 1, MinCreateRevision: first + 1}))
				}
			}
		})
		s.run("revision-filters", func(c *sc) {
			var revs []int64
			for i := 0; i < 6; i++ {
				revs = append(revs, c.mustPut(fmt.Sprintf("r10/%d", i), "v"))
			}
			c.mustPut("r10/1", "v2")
			c.mustPut("r10/3", "v2")
			cur := c.rev()
			mid := revs[3]
			for _, lim := range []int64{0, 1, 2} {
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMinModRev(mid)))
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMaxModRev(mid)))
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMinCreateRev(mid)))
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMaxCreateRev(mid)))
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMinModRev(revs[1]), withMaxModRev(revs[4])))
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMinCreateRev(revs[1]), withMaxCreateRev(revs[4]), withMinModRev(cur-1)))
				c.ok(c.Get("r10/", withPrefix, withLimit(lim), withMinModRev(cur+10)))
			}
			c.ok(c.Get("r10/", withPrefix, withCountOnly, withMinModRev(mid)))
			c.ok(c.Get("r10/", withPrefix, withKeysOnly, withMaxCreateRev(mid)))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r10/"), RangeEnd: b("r10/\xff"), MinModRevision: -5, MaxModRevision: -1}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r10/"), RangeEnd: b("r10/\xff"), MinModRevision: mid, Revision: mid + 1}))
		})
		s.run("binary-keys", func(c *sc) {
			keys := []string{"bin", "bin/", "bin/\x00", "bin/\x00\x00", "bin/\x01", "bin/a\x00b", "bin/\xfe", "bin/\xff", "bin/\xff\x00", "bin/\xff\xff"}
			for i, k := range keys {
				c.mustPut(k, fmt.Sprintf("\x00val\xff%d", i))
			}
			c.ok(c.Get("bin/", withPrefix))
			c.ok(c.Get("bin/\x00"))
			c.ok(c.Range(&pb.RangeRequest{Key: b("bin/\x00"), RangeEnd: b("bin/\xff")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("bin/\x00"), RangeEnd: b("bin/\x00\x00")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("bin/\xff"), RangeEnd: b("\x00"), Limit: 3}))
			c.ok(c.Get("bin/\xff", withPrefix))
			c.ok(c.Range(&pb.RangeRequest{Key: b("bin/"), RangeEnd: b("bin0"), SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_VALUE}))
		})
		// Keys compare as raw bytes: SQL collations (case folding, PAD
		// SPACE, locale order, UTF-8 validation) must not leak through.
		s.run("key-byte-ordering", func(c *sc) {
			keys := []string{"o/A", "o/B", "o/a", "o/b", "o/Z", "o/a ", "o/a  ", "o/a\t", "o/\u00e9", "o/e\u0301", "o/\x7f", "o/\x80", "o/\xc3", "o/\xc3(", "o/ ", "o/", "o/\xed\xa0\x80", "o/\U0001F600", "o/ß", "o/ss"}
			for i, k := range keys {
				c.mustPut(k, fmt.Sprintf("%d", i))
			}
			c.ok(c.Get("o/", withPrefix))
			c.ok(c.Get("o/", withPrefix, withSort(clientv3.SortByKey, clientv3.SortDescend)))
			for _, k := range []string{"o/a", "o/a ", "o/A", "o/ss", "o/ß", "o/\xc3"} {
				c.ok(c.Get(k))
			}
			c.ok(c.Range(&pb.RangeRequest{Key: b("o/a"), RangeEnd: b("o/b")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("o/B"), RangeEnd: b("o/a")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("o/\x7f"), RangeEnd: b("o/\xc4")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("o/"), RangeEnd: b("o0"), SortOrder: pb.RangeRequest_ASCEND, SortTarget: pb.RangeRequest_VALUE}))
			c.ok(c.CDelete("o/a "))
			c.ok(c.Get("o/a", withPrefix))
		})
		s.run("range-end-two-nuls", func(c *sc) {
			// Only a single "\x00" means "to the end of the keyspace".
			c.mustPut("\x00", "nul")
			c.mustPut("\x00\x00", "nul nul")
			c.mustPut("\x00\x01", "nul one")
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00\x00")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00\x01")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r15"), RangeEnd: b("\x00\x00")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00\x00"), RangeEnd: b("\x01")}))
		})
		s.run("sort-values-binary", func(c *sc) {
			vals := []string{"", "\x00", "\x00\x00", "a", "a\x00", "a\x00b", "a\x01", "A", "\xff", "\xff\x00", "\x7f", "\x80", " ", "a "}
			for i, v := range vals {
				c.mustPut(fmt.Sprintf("sv/%02d", i), v)
				c.mustPut(fmt.Sprintf("sv/%02dd", i), v) // ties
			}
			for _, o := range []pb.RangeRequest_SortOrder{pb.RangeRequest_ASCEND, pb.RangeRequest_DESCEND} {
				c.ok(c.Range(&pb.RangeRequest{Key: b("sv/"), RangeEnd: b("sv0"), SortOrder: o, SortTarget: pb.RangeRequest_VALUE}))
				c.ok(c.Range(&pb.RangeRequest{Key: b("sv/"), RangeEnd: b("sv0"), SortOrder: o, SortTarget: pb.RangeRequest_VALUE, Limit: 5}))
			}
		})
		s.run("sort-many-keys", func(c *sc) {
			// 300 keys: enough for every branch of Go's pdqsort (ninther
			// pivots, partial insertion sort), with heavy ties.
			for batch := 0; batch < 3; batch++ {
				var o []*pb.RequestOp
				for i := 0; i < 100; i++ {
					n := batch*100 + i
					o = append(o, put(fmt.Sprintf("sm/%03d", (n*7)%300), fmt.Sprintf("v%d", n%5)))
				}
				c.mustTxn(&pb.TxnRequest{Success: o})
			}
			for i := 0; i < 300; i += 11 {
				c.mustPut(fmt.Sprintf("sm/%03d", i), "v9")
			}
			for _, tg := range sortTargets {
				for _, o := range sortOrders {
					c.ok(c.Range(&pb.RangeRequest{Key: b("sm/"), RangeEnd: b("sm0"), SortOrder: o, SortTarget: tg, KeysOnly: true}))
				}
				c.ok(c.Range(&pb.RangeRequest{Key: b("sm/"), RangeEnd: b("sm0"), SortOrder: pb.RangeRequest_DESCEND, SortTarget: tg, Limit: 25}))
			}
		})
		s.run("serializable", func(c *sc) {
			c.mustPut("r11/a", "1")
			rev := c.mustPut("r11/b", "2")
			c.mustPut("r11/a", "3")
			c.ok(c.Get("r11/a", withSerializable))
			c.ok(c.Get("r11/", withPrefix, withSerializable, withLimit(1)))
			c.ok(c.Get("r11/", withPrefix, withSerializable, withRev(rev)))
			c.ok(c.Range(&pb.RangeRequest{Key: b("r11/"), RangeEnd: b("r11/\xff"), Serializable: true, SortOrder: pb.RangeRequest_DESCEND, SortTarget: pb.RangeRequest_MOD}))
		})
		s.run("read-at-revision", func(c *sc) {
			r1 := c.mustPut("r12/k", "v1")
			c.mustPut("r12/other", "x")
			r2 := c.mustPut("r12/k", "v2")
			dr, err := c.CDelete("r12/k")
			c.ok(dr, err)
			r3 := dr.Header.Revision
			r4 := c.mustPut("r12/k", "v3")
			for _, rev := range []int64{r1 - 1, r1, r2, r3, r4, 0} {
				c.ok(c.Get("r12/k", withRev(rev)))
				c.ok(c.Get("r12/", withPrefix, withRev(rev)))
				c.ok(c.Get("r12/", withPrefix, withRev(rev), withCountOnly))
			}
			cur := c.rev()
			c.ok(c.Get("r12/k", withRev(cur)))
			c.ok(c.Get("r12/k", withRev(cur), withSerializable))
			_, err = c.Get("r12/k", withRev(cur+1))
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			_, err = c.Range(&pb.RangeRequest{Key: b("r12/k"), Revision: cur + 1000})
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			_, err = c.Get("r12/k", withRev(cur+1), withSerializable)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.ok(c.Range(&pb.RangeRequest{Key: b("r12/k"), Revision: -1}))
		})
		s.run("invalid-sort-options", func(c *sc) {
			c.mustPut("r13/a", "1")
			for _, r := range []*pb.RangeRequest{
				{Key: b("r13/a"), SortOrder: 3},
				{Key: b("r13/a"), SortOrder: -1},
				{Key: b("r13/a"), SortTarget: 5},
				{Key: b("r13/a"), SortTarget: 99, SortOrder: pb.RangeRequest_ASCEND},
			} {
				_, err := c.Range(r)
				c.wantErr(err, rpctypes.ErrGRPCInvalidSortOption)
			}
		})
		s.run("empty-key", func(c *sc) {
			_, err := c.Range(&pb.RangeRequest{})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.Range(&pb.RangeRequest{RangeEnd: b("z")})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.Get("")
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
		})
		// Last: compaction makes old revisions unreadable for later scenarios.
		s.run("compacted-revision", func(c *sc) {
			r1 := c.mustPut("r14/k", "v1")
			r2 := c.mustPut("r14/k", "v2")
			r3 := c.mustPut("r14/k", "v3")
			c.ok(c.CCompact(r2, false))
			for _, rev := range []int64{1, r1, r2 - 1} {
				_, err := c.Get("r14/k", withRev(rev))
				c.wantErr(err, rpctypes.ErrGRPCCompacted)
			}
			_, err := c.Get("r14/k", withRev(r1), withSerializable)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			c.ok(c.Get("r14/k", withRev(r2)))
			c.ok(c.Get("r14/k", withRev(r3)))
			c.ok(c.Get("r14/", withPrefix, withRev(r2), withCountOnly))
			_, err = c.Get("r14/k", withRev(r3+10))
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
		})
	})
}

// setupSortKeys writes 40 keys under prefix with many equal values,
// versions, create and mod revisions (keys written by one txn share their
// revision), so sort ties are plentiful. It returns the first revision used.
func setupSortKeys(c *sc, prefix string) int64 {
	c.t.Helper()
	key := func(i int) string { return fmt.Sprintf("%sk%02d", prefix, (i*17)%40) }
	var first int64
	for batch := 0; batch < 4; batch++ {
		var o []*pb.RequestOp
		for i := batch * 10; i < batch*10+10; i++ {
			o = append(o, put(key(i), fmt.Sprintf("v%d", i%4)))
		}
		r := c.mustTxn(&pb.TxnRequest{Success: o})
		if first == 0 {
			first = r.Header.Revision
		}
	}
	var o []*pb.RequestOp
	for i := 0; i < 40; i += 3 {
		o = append(o, put(key(i), fmt.Sprintf("v%d", i%3)))
	}
	c.mustTxn(&pb.TxnRequest{Success: o})
	o = nil
	for i := 0; i < 40; i += 5 {
		o = append(o, put(key(i), "v1"))
	}
	c.mustTxn(&pb.TxnRequest{Success: o})
	for i := 0; i < 40; i += 7 {
		c.mustPut(key(i), "")
	}
	return first
}

func TestPut(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("prev-kv", func(c *sc) {
			c.ok(c.CPut("p1/a", "1", withPrevKV))
			c.ok(c.CPut("p1/a", "2", withPrevKV))
			c.ok(c.Put(&pb.PutRequest{Key: b("p1/a"), Value: b("3"), PrevKv: true}))
			c.ok(c.Put(&pb.PutRequest{Key: b("p1/b"), Value: b("1"), PrevKv: true}))
			c.ok(c.Get("p1/", withPrefix))
		})
		s.run("ignore-value", func(c *sc) {
			c.mustPut("p2/a", "keep-me")
			c.ok(c.Put(&pb.PutRequest{Key: b("p2/a"), IgnoreValue: true}))
			c.ok(c.Put(&pb.PutRequest{Key: b("p2/a"), IgnoreValue: true, PrevKv: true}))
			c.ok(c.CPut("p2/a", "", withIgnoreValue, withPrevKV))
			c.ok(c.Get("p2/a"))
			before := c.rev()
			_, err := c.Put(&pb.PutRequest{Key: b("p2/absent"), IgnoreValue: true})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			_, err = c.CPut("p2/absent", "", withIgnoreValue)
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			c.check(c.rev() == before, "failed put must not bump the revision")
			c.ok(c.Get("p2/absent"))
		})
		s.run("ignore-lease-without-lease", func(c *sc) {
			c.mustPut("p3/plain", "v1")
			c.ok(c.CPut("p3/plain", "v2", withIgnoreLease, withPrevKV))
			c.ok(c.Put(&pb.PutRequest{Key: b("p3/plain"), IgnoreLease: true, IgnoreValue: true}))
			_, err := c.Put(&pb.PutRequest{Key: b("p3/absent"), Value: b("x"), IgnoreLease: true})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			_, err = c.Put(&pb.PutRequest{Key: b("p3/absent"), IgnoreLease: true, IgnoreValue: true})
			c.wantErr(err, rpctypes.ErrGRPCKeyNotFound)
			c.ok(c.Get("p3/", withPrefix))
		})
		s.run("ignore-lease-keeps-lease", func(c *sc) {
			const lease = 0x5101
			c.LeaseGrant(lease, 3600)
			c.mustPut("p3l/leased", "v1", withLease(lease))
			c.ok(c.Put(&pb.PutRequest{Key: b("p3l/leased"), Value: b("v2"), IgnoreLease: true, PrevKv: true}))
			c.ok(c.Put(&pb.PutRequest{Key: b("p3l/leased"), IgnoreLease: true, IgnoreValue: true}))
			c.ok(c.Get("p3l/", withPrefix))
		})
		s.run("ignore-value-with-value", func(c *sc) {
			c.mustPut("p4/a", "1")
			_, err := c.Put(&pb.PutRequest{Key: b("p4/a"), Value: b("x"), IgnoreValue: true})
			c.wantErr(err, rpctypes.ErrGRPCValueProvided)
			_, err = c.Put(&pb.PutRequest{Key: b("p4/absent"), Value: b("x"), IgnoreValue: true})
			c.wantErr(err, rpctypes.ErrGRPCValueProvided)
			c.ok(c.Get("p4/a"))
		})
		s.run("ignore-lease-with-lease", func(c *sc) {
			// Rejected before the lease is looked up, so it need not exist.
			c.mustPut("p5/a", "1")
			_, err := c.Put(&pb.PutRequest{Key: b("p5/a"), Value: b("x"), Lease: 0x5102, IgnoreLease: true})
			c.wantErr(err, rpctypes.ErrGRPCLeaseProvided)
			_, err = c.Put(&pb.PutRequest{Key: b("p5/a"), Value: b("x"), Lease: 0x7fff1234, IgnoreLease: true})
			c.wantErr(err, rpctypes.ErrGRPCLeaseProvided)
			c.ok(c.Get("p5/a"))
		})
		s.run("lease-not-found", func(c *sc) {
			c.mustPut("p6/a", "1")
			_, err := c.CPut("p6/a", "2", withLease(0x7fff0001))
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			_, err = c.CPut("p6/new", "2", withLease(0x7fff0001))
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
			c.ok(c.Get("p6/", withPrefix))
		})
		s.run("lease-attach-detach", func(c *sc) {
			const l1, l2 = 0x5103, 0x5104
			c.LeaseGrant(l1, 3600)
			c.LeaseGrant(l2, 3600)
			c.mustPut("p7/a", "1", withLease(l1))
			c.ok(c.Get("p7/a"))
			c.ok(c.Put(&pb.PutRequest{Key: b("p7/a"), IgnoreValue: true, Lease: l2, PrevKv: true}))
			c.ok(c.Get("p7/a"))
			c.ok(c.CPut("p7/a", "2", withPrevKV))
			c.ok(c.Get("p7/a"))
		})
		s.run("lease-revoke-deletes-keys", func(c *sc) {
			const lease = 0x5105
			c.LeaseGrant(lease, 3600)
			c.mustPut("p8/a", "1", withLease(lease))
			c.mustPut("p8/b", "2", withLease(lease))
			c.mustPut("p8/c", "3")
			before := c.rev()
			c.ok(c.do(fmt.Sprintf("LeaseRevoke {ID:%#x}", lease), func(ctx contextT, s *server) (any, error) {
				return s.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lease})
			}))
			c.ok(c.Get("p8/", withPrefix))
			c.ok(c.Get("p8/", withPrefix, withRev(before)))
			_, err := c.CPut("p8/d", "x", withLease(lease))
			c.wantErr(err, rpctypes.ErrGRPCLeaseNotFound)
		})
		s.run("empty-key", func(c *sc) {
			_, err := c.Put(&pb.PutRequest{Value: b("x")})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.CPut("", "x")
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.Put(&pb.PutRequest{IgnoreValue: true})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
		})
		s.run("empty-value", func(c *sc) {
			c.ok(c.CPut("p9/a", "", withPrevKV))
			c.ok(c.Get("p9/a"))
			c.ok(c.CPut("p9/a", "", withPrevKV))
			c.ok(c.CPut("p9/a", "x", withPrevKV))
			c.ok(c.CPut("p9/a", "", withPrevKV))
			c.ok(c.Get("p9/a"))
		})
		s.run("binary-keys-values", func(c *sc) {
			all := make([]byte, 256)
			for i := range all {
				all[i] = byte(i)
			}
			c.ok(c.CPut("p10/\x00", "\x00"))
			c.ok(c.CPut("p10/\xff", "\xff", withPrevKV))
			c.ok(c.CPut("p10/\xff\x00\xff", string(all)))
			c.ok(c.CPut("\xff/p10", "\x00\x00"))
			c.ok(c.Put(&pb.PutRequest{Key: b("p10/\x00"), Value: b("\xff\x00"), PrevKv: true}))
			c.ok(c.Get("p10/", withPrefix))
			c.ok(c.Get("\xff/p10"))
		})
		s.run("large-key-and-value", func(c *sc) {
			bigKey := "p12/" + string(bytesOf(100*1024, 'k'))
			c.ok(c.CPut(bigKey, string(bytesOf(1024*1024, 'v')), withPrevKV))
			c.ok(c.CPut(bigKey, "small", withPrevKV))
			c.ok(c.Get("p12/", withPrefix))
			c.ok(c.Get("p12/", withPrefix, withRev(c.rev()-1)))
			c.ok(c.CDelete("p12/", withPrefix, withPrevKV))
		})
		s.run("versions-and-recreate", func(c *sc) {
			for i := 0; i < 5; i++ {
				c.mustPut("p11/a", fmt.Sprint(i))
			}
			c.ok(c.Get("p11/a"))
			c.ok(c.CDelete("p11/a"))
			c.ok(c.CPut("p11/a", "again", withPrevKV))
			c.ok(c.Get("p11/a"))
		})
	})
}

func TestDeleteRange(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("single-key", func(c *sc) {
			c.mustPut("d1/a", "1")
			c.mustPut("d1/b", "2")
			c.ok(c.CDelete("d1/a"))
			c.ok(c.Get("d1/", withPrefix))
		})
		s.run("absent-key-no-revision-bump", func(c *sc) {
			c.mustPut("d2/a", "1")
			before := c.rev()
			r, err := c.CDelete("d2/absent")
			c.ok(r, err)
			c.check(r.Deleted == 0 && r.Header.Revision == before, "etcd bumped revision for a no-op delete: %v", r)
			r, err = c.CDelete("d2/absent", withPrefix, withPrevKV)
			c.ok(r, err)
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("d2/b"), RangeEnd: b("d2/a")}))
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("d2/a"), RangeEnd: b("d2/a")}))
			c.check(c.rev() == before, "revision moved")
		})
		s.run("range", func(c *sc) {
			for _, k := range []string{"d3/a", "d3/b", "d3/c", "d3/d", "d3/e"} {
				c.mustPut(k, "v-"+k)
			}
			c.ok(c.CDelete("d3/b", withRange("d3/d"), withPrevKV))
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("d3/a"), RangeEnd: b("d3/z")}))
			c.ok(c.Get("d3/", withPrefix))
		})
		s.run("prefix", func(c *sc) {
			for _, k := range []string{"d4", "d4/", "d4/a", "d4/a/b", "d4a", "d4/\xff"} {
				c.mustPut(k, "v")
			}
			c.ok(c.CDelete("d4/a", withPrefix, withPrevKV))
			c.ok(c.Get("d4", withPrefix))
			c.ok(c.CDelete("d4/", withPrefix))
			c.ok(c.Get("d4", withPrefix))
		})
		s.run("prev-kv", func(c *sc) {
			c.mustPut("d5/a", "1")
			c.mustPut("d5/a", "2")
			c.mustPut("d5/b", "")
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("d5/a"), RangeEnd: b("d5/c"), PrevKv: true}))
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("d5/a"), RangeEnd: b("d5/c"), PrevKv: true}))
		})
		s.run("prev-kv-with-lease", func(c *sc) {
			const lease = 0x5201
			c.LeaseGrant(lease, 3600)
			c.mustPut("d5l/a", "1", withLease(lease))
			c.mustPut("d5l/a", "2", withIgnoreLease)
			c.ok(c.CDelete("d5l/", withPrefix, withPrevKV))
		})
		s.run("delete-and-recreate", func(c *sc) {
			r1 := c.mustPut("d6/a", "1")
			c.mustPut("d6/a", "2")
			dr, err := c.CDelete("d6/a")
			c.ok(dr, err)
			c.mustPut("d6/a", "3")
			c.ok(c.Get("d6/a"))
			c.ok(c.Get("d6/a", withRev(r1)))
			c.ok(c.Get("d6/a", withRev(dr.Header.Revision)))
		})
		s.run("binary-keys", func(c *sc) {
			for _, k := range []string{"d7/\x00", "d7/\x00\x00", "d7/\xff", "d7/\xff\xff"} {
				c.mustPut(k, "v")
			}
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("d7/\x00"), RangeEnd: b("d7/\x01"), PrevKv: true}))
			c.ok(c.CDelete("d7/\xff", withPrefix, withPrevKV))
			c.ok(c.Get("d7/", withPrefix))
		})
		s.run("empty-key", func(c *sc) {
			_, err := c.Delete(&pb.DeleteRangeRequest{})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.Delete(&pb.DeleteRangeRequest{RangeEnd: b("\x00")})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			_, err = c.CDelete("")
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
		})
		// The two scenarios below delete everything after a key: keep last.
		s.run("from-key-range-end-nul", func(c *sc) {
			for _, k := range []string{"\xfe/a", "\xfe/b", "\xff", "\xff\xff"} {
				c.mustPut(k, "v")
			}
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("\xfe/b"), RangeEnd: b("\x00"), PrevKv: true}))
			c.ok(c.Get("\xfe", withFromKey))
			c.ok(c.CDelete("\xfe/", withFromKey))
			c.ok(c.Get("\xfe", withFromKey))
		})
		s.run("all-keys", func(c *sc) {
			c.mustPut("d8/a", "1")
			c.mustPut("\x00", "nul")
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("\x00"), RangeEnd: b("\x00"), PrevKv: true}))
			c.ok(c.Get("", withPrefix))
			c.ok(c.Delete(&pb.DeleteRangeRequest{Key: b("\x00"), RangeEnd: b("\x00")}))
		})
	})
}

func TestCompact(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("old-revision", func(c *sc) {
			r1 := c.mustPut("c1/a", "1")
			c.mustPut("c1/b", "1")
			c.mustPut("c1/a", "2")
			dr, err := c.CDelete("c1/b")
			c.ok(dr, err)
			c.mustPut("c1/gone", "x")
			mid := c.mustPut("c1/a", "3")
			c.ok(c.CDelete("c1/gone"))
			c.mustPut("c1/a", "4")
			c.mustPut("c1/c", "1")
			c.ok(c.CCompact(mid, false))
			for _, rev := range []int64{1, r1, dr.Header.Revision, mid - 1} {
				_, err := c.Get("c1/", withPrefix, withRev(rev))
				c.wantErr(err, rpctypes.ErrGRPCCompacted)
			}
			c.ok(c.Get("c1/", withPrefix, withRev(mid)))
			c.ok(c.Get("c1/", withPrefix, withRev(mid+1)))
			c.ok(c.Get("c1/", withPrefix, withRev(mid), withCountOnly))
			c.ok(c.Get("c1/", withPrefix))
			_, err = c.Txn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b("c1/a"), Revision: mid - 1}))})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			c.ok(c.Txn(&pb.TxnRequest{Success: ops(opRange(&pb.RangeRequest{Key: b("c1/a"), Revision: mid}))}))
		})
		s.run("already-compacted", func(c *sc) {
			c.mustPut("c2/a", "1")
			r := c.mustPut("c2/a", "2")
			c.mustPut("c2/a", "3")
			c.ok(c.CCompact(r, false))
			_, err := c.CCompact(r, false)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.CCompact(r-1, true)
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.Compact(&pb.CompactionRequest{Revision: 0})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			_, err = c.Compact(&pb.CompactionRequest{Revision: -3})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
		})
		s.run("future-revision", func(c *sc) {
			cur := c.rev()
			_, err := c.CCompact(cur+1, false)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			_, err = c.CCompact(cur+100, true)
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.check(c.rev() == cur, "failed compaction moved the revision")
		})
		s.run("current-revision-physical", func(c *sc) {
			c.mustPut("c4/live", "1")
			c.mustPut("c4/live", "2")
			c.mustPut("c4/dead", "1")
			c.ok(c.CDelete("c4/dead"))
			c.mustPut("c4/other", "x")
			cur := c.rev()
			c.ok(c.CCompact(cur, true))
			c.ok(c.Get("c4/", withPrefix))
			c.ok(c.Get("c4/", withPrefix, withRev(cur)))
			c.ok(c.Get("c4/dead"))
			_, err := c.Get("c4/", withPrefix, withRev(cur-1))
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			// Every live key keeps its latest version after compaction.
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00")}))
			c.ok(c.Range(&pb.RangeRequest{Key: b("\x00"), RangeEnd: b("\x00"), Revision: cur}))
		})
		s.run("physical-false-then-true", func(c *sc) {
			r1 := c.mustPut("c5/a", "1")
			r2 := c.mustPut("c5/a", "2")
			r3 := c.mustPut("c5/a", "3")
			c.ok(c.CCompact(r1, false))
			c.ok(c.CCompact(r2, true))
			_, err := c.Get("c5/a", withRev(r1))
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			c.ok(c.Get("c5/a", withRev(r2)))
			c.ok(c.Get("c5/a", withRev(r3)))
		})
		s.run("writes-after-compaction", func(c *sc) {
			c.mustPut("c6/a", "1")
			c.mustPut("c6/a", "2")
			c.mustPut("c6/b", "1")
			c.ok(c.CDelete("c6/b"))
			cur := c.rev()
			c.ok(c.CCompact(cur, true))
			c.ok(c.CPut("c6/a", "3", withPrevKV))
			c.ok(c.CPut("c6/b", "2", withPrevKV))
			c.ok(c.Get("c6/", withPrefix))
			c.ok(c.Get("c6/", withPrefix, withRev(cur)))
			c.ok(c.Get("c6/", withPrefix, withSort(clientv3.SortByCreateRevision, clientv3.SortDescend)))
		})
		s.run("compaction-during-txn-reads", func(c *sc) {
			c.mustPut("c7/a", "1")
			r := c.mustPut("c7/a", "2")
			c.ok(c.CCompact(r, false))
			_, err := c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpValue("c7/a", pb.Compare_EQUAL, "nope")),
				Success: ops(put("c7/x", "1")),
				Failure: ops(put("c7/y", "1"), opRange(&pb.RangeRequest{Key: b("c7/a"), Revision: r - 1})),
			})
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			// Not-taken branch: the compacted read is never checked.
			c.ok(c.Txn(&pb.TxnRequest{
				Compare: cmps(cmpValue("c7/a", pb.Compare_EQUAL, "2")),
				Success: ops(put("c7/x", "1")),
				Failure: ops(opRange(&pb.RangeRequest{Key: b("c7/a"), Revision: r - 1})),
			}))
			c.ok(c.Get("c7/", withPrefix))
		})
	})
}

// Size limits. etcd rejects a request whose raft entry exceeds
// max-request-bytes with ErrRequestTooLarge, and gRPC itself rejects messages
// above max-request-bytes + 512 KiB.
func TestLimitsDefault(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("max-request-bytes-1.5MiB", func(c *sc) {
			const limit = 1536 * 1024
			c.ok(c.CPut("l1/under", string(make([]byte, limit-512))))
			_, err := c.CPut("l1/over", string(make([]byte, limit+1)))
			c.wantErr(err, rpctypes.ErrGRPCRequestTooLarge)
			c.ok(c.Get("l1/", withPrefix, withKeysOnly))
			c.ok(c.Get("l1/under"))
		})
	})
}

func TestLimitsSmall(t *testing.T) {
	const limit = 64 * 1024
	forEachBackend(t, harness.Options{MaxRequestBytes: limit}, func(s *suite) {
		s.run("max-request-bytes-64KiB", func(c *sc) {
			c.ok(c.CPut("l2/under", string(make([]byte, limit-512))))
			_, err := c.CPut("l2/over", string(make([]byte, limit+1)))
			c.wantErr(err, rpctypes.ErrGRPCRequestTooLarge)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(put("l2/t1", string(make([]byte, limit/2))), put("l2/t2", string(make([]byte, limit/2))))})
			c.wantErr(err, rpctypes.ErrGRPCRequestTooLarge)
			c.ok(c.Get("l2/", withPrefix, withKeysOnly))
		})
		s.run("beyond-grpc-limit", func(c *sc) {
			_, err := c.CPut("l2/huge", string(make([]byte, limit+600*1024)))
			c.check(err != nil, "etcd accepted a put beyond its gRPC limit")
			c.ok(c.Get("l2/", withPrefix, withKeysOnly))
		})
	})
}

// TestResponseHeader checks header fields that are not compared across
// servers: each server's cluster_id and member_id must be non-zero and stable.
func TestResponseHeader(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("ids-stable", func(c *sc) {
			headers := map[string][]*pb.ResponseHeader{}
			rec := func(desc string, fn func(ctx contextT, s *server) (*pb.ResponseHeader, any, error)) {
				c.t.Helper()
				c.ok(c.do(desc, func(ctx contextT, s *server) (any, error) {
					h, resp, err := fn(ctx, s)
					if err == nil {
						headers[s.name] = append(headers[s.name], h)
					}
					return resp, err
				}))
			}
			rec("Put h/a", func(ctx contextT, s *server) (*pb.ResponseHeader, any, error) {
				r, err := s.cli.Put(ctx, "h/a", "1")
				return hdr(r, err, func() *pb.ResponseHeader { return r.Header }), r, err
			})
			rec("Get h/a", func(ctx contextT, s *server) (*pb.ResponseHeader, any, error) {
				r, err := s.cli.Get(ctx, "h/a")
				return hdr(r, err, func() *pb.ResponseHeader { return r.Header }), r, err
			})
			rec("Txn put h/b", func(ctx contextT, s *server) (*pb.ResponseHeader, any, error) {
				r, err := s.kv.Txn(ctx, &pb.TxnRequest{Success: ops(put("h/b", "1"), get("h/a"))})
				return hdr(r, err, func() *pb.ResponseHeader { return r.Header }), r, err
			})
			rec("Delete h/b", func(ctx contextT, s *server) (*pb.ResponseHeader, any, error) {
				r, err := s.cli.Delete(ctx, "h/b")
				return hdr(r, err, func() *pb.ResponseHeader { return r.Header }), r, err
			})
			rec("Compact current", func(ctx contextT, s *server) (*pb.ResponseHeader, any, error) {
				g, err := s.cli.Get(ctx, "h/a")
				if err != nil {
					return nil, nil, err
				}
				r, err := s.cli.Compact(ctx, g.Header.Revision)
				return hdr(r, err, func() *pb.ResponseHeader { return r.Header }), r, err
			})
			rec("Get h/a serializable", func(ctx contextT, s *server) (*pb.ResponseHeader, any, error) {
				r, err := s.cli.Get(ctx, "h/a", clientv3.WithSerializable())
				return hdr(r, err, func() *pb.ResponseHeader { return r.Header }), r, err
			})
			for _, name := range []string{c.p.ref.name, c.p.sut.name} {
				hs := headers[name]
				if len(hs) == 0 {
					c.t.Fatalf("%s: no headers recorded", name)
				}
				for i, h := range hs {
					if h == nil {
						c.t.Fatalf("%s: response %d has no header", name, i)
					}
					if h.ClusterId == 0 || h.MemberId == 0 {
						c.t.Errorf("%s: response %d: cluster_id=%d member_id=%d, want non-zero", name, i, h.ClusterId, h.MemberId)
					}
					if h.ClusterId != hs[0].ClusterId || h.MemberId != hs[0].MemberId {
						c.t.Errorf("%s: response %d: cluster_id/member_id %d/%d differ from first response's %d/%d", name, i, h.ClusterId, h.MemberId, hs[0].ClusterId, hs[0].MemberId)
					}
					if h.Revision <= 0 {
						c.t.Errorf("%s: response %d: revision %d", name, i, h.Revision)
					}
				}
			}
		})
	})
}

func hdr(resp any, err error, f func() *pb.ResponseHeader) *pb.ResponseHeader {
	if err != nil || resp == nil {
		return nil
	}
	return f()
}

// bytesOf returns n bytes cycling through a few values starting at first.
func bytesOf(n int, first byte) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = first + byte(i%7)
	}
	return out
}
