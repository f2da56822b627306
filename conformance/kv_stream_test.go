package conformance

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"

	"github.com/shimd/shimd/conformance/harness"
)

// putMany writes keys prefix0000..prefixNNNN (n of them) with values of
// size(i) bytes, up to 100 keys and about 1 MiB per txn.
func (c *sc) putMany(prefix string, n int, size func(i int) int) {
	c.t.Helper()
	for i := 0; i < n; {
		var ops []*pb.RequestOp
		for bytes := 0; i < n && len(ops) < 100 && (len(ops) == 0 || bytes+size(i) < 1<<20); i++ {
			bytes += size(i)
			ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
				Key: b(fmt.Sprintf("%s%04d", prefix, i)), Value: b(strings.Repeat(string(rune('a'+i%26)), size(i)))}}})
		}
		c.mustTxn(&pb.TxnRequest{Success: ops})
	}
}

// TestRangeStream compares etcd 3.7's KV.RangeStream chunk by chunk: which
// keys each chunk holds (the limit starts at 10 and doubles or halves with
// the chunk's size), the header, more and count on the last one, and the
// request checks and errors.
func TestRangeStream(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("chunks", func(c *sc) {
			c.putMany("rs1/", 350, func(i int) int { return i % 50 })
			rev := c.mustPut("rs1/0007", "rewritten")
			c.mustPut("rs1/9999", "after")
			all := func(r *pb.RangeRequest) *pb.RangeRequest {
				r.Key, r.RangeEnd = b("rs1/"), b("rs10")
				return r
			}
			chunks, err := c.RangeStream(all(&pb.RangeRequest{}))
			c.ok(chunks, err)
			// 10, 20, 40, 80, 160 keys, then the rest.
			c.check(len(chunks) == 6 && len(chunks[0].Kvs) == 10 && chunks[len(chunks)-1].Header != nil && chunks[0].Header == nil,
				"etcd sent %d chunks", len(chunks))
			for _, lim := range []int64{1, 9, 10, 11, 30, 31, 349, 350, 351, 352, 1000, -1} {
				c.ok(c.RangeStream(all(&pb.RangeRequest{Limit: lim})))
			}
			c.ok(c.RangeStream(all(&pb.RangeRequest{KeysOnly: true})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{KeysOnly: true, Limit: 45})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{CountOnly: true})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{CountOnly: true, Limit: 3})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{Revision: rev - 1})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{Revision: rev, Limit: 100})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{Serializable: true})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{SortOrder: pb.RangeRequest_ASCEND})))
			c.ok(c.RangeStream(all(&pb.RangeRequest{SortTarget: pb.RangeRequest_KEY, SortOrder: pb.RangeRequest_ASCEND})))
			// Accepted by etcd: each chunk sorted by itself (its quirk).
			c.ok(c.RangeStream(all(&pb.RangeRequest{SortTarget: pb.RangeRequest_MOD})))
			c.ok(c.RangeStream(&pb.RangeRequest{Key: b("rs1/0100")}))
			c.ok(c.RangeStream(&pb.RangeRequest{Key: b("rs1/missing")}))
			c.ok(c.RangeStream(&pb.RangeRequest{Key: b("rs1/0340"), RangeEnd: b("\x00")}))
			c.ok(c.RangeStream(&pb.RangeRequest{Key: b("rs1/zz"), RangeEnd: b("rs1/a")}))
		})
		s.run("large-values", func(c *sc) {
			// 400 KiB values: ten of them are over twice --max-request-bytes,
			// so the next chunk's limit halves.
			c.putMany("rs2/", 40, func(i int) int { return 400<<10 + i })
			c.putMany("rs2/x", 60, func(i int) int { return 100 })
			chunks, err := c.RangeStream(&pb.RangeRequest{Key: b("rs2/"), RangeEnd: b("rs20")})
			c.ok(chunks, err)
			c.check(len(chunks) > 1 && len(chunks[1].Kvs) == 5, "etcd sent %d chunks, the second with %d keys", len(chunks), len(chunks[1].Kvs))
			c.ok(c.RangeStream(&pb.RangeRequest{Key: b("rs2/"), RangeEnd: b("rs20"), KeysOnly: true}))
		})
		s.run("checks-and-errors", func(c *sc) {
			rev := c.mustPut("rs3/a", "1")
			c.mustPut("rs3/b", "2")
			c.mustPut("rs3/a", "3")
			r := func(mod func(r *pb.RangeRequest)) *pb.RangeRequest {
				req := &pb.RangeRequest{Key: b("rs3/"), RangeEnd: b("rs30")}
				mod(req)
				return req
			}
			_, err := c.RangeStream(&pb.RangeRequest{})
			c.wantErr(err, rpctypes.ErrGRPCEmptyKey)
			for _, bad := range []func(r *pb.RangeRequest){
				func(r *pb.RangeRequest) { r.SortOrder = 7 },
				func(r *pb.RangeRequest) { r.SortTarget = 9 },
			} {
				_, err := c.RangeStream(r(bad))
				c.wantErr(err, rpctypes.ErrGRPCInvalidSortOption)
			}
			for _, unsupported := range []func(r *pb.RangeRequest){
				func(r *pb.RangeRequest) { r.SortOrder = pb.RangeRequest_DESCEND },
				func(r *pb.RangeRequest) { r.SortOrder, r.SortTarget = pb.RangeRequest_ASCEND, pb.RangeRequest_VALUE },
				func(r *pb.RangeRequest) { r.MinModRevision = 1 },
				func(r *pb.RangeRequest) { r.MaxCreateRevision = 5 },
			} {
				_, err := c.RangeStream(r(unsupported))
				c.check(errCode(err) == codes.Unimplemented, "expected Unimplemented, etcd said %v", err)
			}
			_, err = c.RangeStream(r(func(r *pb.RangeRequest) { r.Revision = 1 << 40 }))
			c.wantErr(err, rpctypes.ErrGRPCFutureRev)
			c.ok(c.CCompact(rev, true))
			_, err = c.RangeStream(r(func(r *pb.RangeRequest) { r.Revision = rev - 1 }))
			c.wantErr(err, rpctypes.ErrGRPCCompacted)
			c.ok(c.RangeStream(r(func(r *pb.RangeRequest) { r.Revision = rev })))
		})
	})
}

// TestRangeStreamEtcdctl runs etcdctl 3.7's get --stream over 10,000 keys:
// on shimd it prints what get without --stream prints, with every option
// that streams, and etcd prints the same; with --sort-by it answers as etcd
// does (an error, or etcd's chunk-by-chunk order).
func TestRangeStreamEtcdctl(t *testing.T) {
	bin := etcdctl(t)
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("get-stream", func(c *sc) {
			c.putMany("rsctl/", 10000, func(i int) int { return 20 + i%100 })
			rev := c.mustPut("rsctl/0042", "changed")
			ref, sut := c.p.ref.cli.Endpoints()[0], c.p.sut.cli.Endpoints()[0]
			// The header's ids differ between servers; the rest must not.
			ids := regexp.MustCompile(`(?m)^"(ClusterID|MemberID|RaftTerm)" : .*\n`)
			get := func(endpoint string, args ...string) string {
				out, err := runCtl(c.t, bin, endpoint, "", append([]string{"get"}, args...)...)
				if err != nil {
					out += "\nERROR: " + err.Error()
				}
				return ids.ReplaceAllString(out, "")
			}
			for _, args := range [][]string{
				{"rsctl/", "--prefix"},
				{"rsctl/", "--prefix", "--limit=1234"},
				{"rsctl/", "--prefix", fmt.Sprintf("--rev=%d", rev-1)},
				{"rsctl/", "--prefix", "--keys-only"},
				{"rsctl/", "--prefix", "--count-only", "-w", "fields"},
				{"rsctl/", "--prefix", "--limit=10", "-w", "fields"},
				{"rsctl/5000", "--from-key", "--limit=3000"},
			} {
				plain := get(sut, args...)
				if !strings.Contains(plain, "rsctl/") && !strings.Contains(plain, `"Count" : 10000`) {
					c.t.Fatalf("get %v printed nothing useful:\n%s", args, truncate(plain, 500))
				}
				stream := get(sut, append(args, "--stream")...)
				if stream != plain {
					c.t.Fatalf("shimd: get %v --stream differs from get %v:\n%s", args, args, sideBySide("get", strings.Split(truncate(plain, 3000), "\n"), "--stream", strings.Split(truncate(stream, 3000), "\n")))
				}
				if etcd := get(ref, append(args, "--stream")...); etcd != stream {
					c.t.Fatalf("get %v --stream: shimd and etcd differ:\n%s", args, sideBySide("etcd", strings.Split(truncate(etcd, 3000), "\n"), "shimd", strings.Split(truncate(stream, 3000), "\n")))
				}
			}
			for _, args := range [][]string{
				{"rsctl/", "--prefix", "--sort-by=MODIFY", "--keys-only"},
				{"rsctl/", "--prefix", "--sort-by=VALUE", "--order=ASCEND"},
				{"rsctl/", "--prefix", "--order=DESCEND"},
				{"rsctl/", "--prefix", "--sort-by=KEY", "--keys-only", "--limit=50"},
			} {
				args = append(args, "--stream")
				if etcd, shimd := get(ref, args...), get(sut, args...); etcd != shimd {
					c.t.Fatalf("get %v: shimd and etcd differ:\n%s", args, sideBySide("etcd", strings.Split(truncate(etcd, 3000), "\n"), "shimd", strings.Split(truncate(shimd, 3000), "\n")))
				}
			}
		})
	})
}
