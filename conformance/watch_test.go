package conformance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Watch scenarios. Writes go through the lockstep comparison like every
// other op; watch streams are recorded per side and compared as described
// in watch_harness_test.go. Watch ids in the conditions are etcd's
// (predictable: a stream assigns 0, 1, 2, ... skipping ids in use).

var (
	withCreatedNotify  = opt{"WithCreatedNotify()", clientv3.WithCreatedNotify()}
	withProgressNotify = opt{"WithProgressNotify()", clientv3.WithProgressNotify()}
	withFragment       = opt{"WithFragment()", clientv3.WithFragment()}
	withFilterPut      = opt{"WithFilterPut()", clientv3.WithFilterPut()}
	withFilterDelete   = opt{"WithFilterDelete()", clientv3.WithFilterDelete()}
)

const (
	reasonEmptyRange = "mvcc: watcher range is empty"
	reasonDuplicate  = "mvcc: duplicate watch ID provided on the WatchStream"
	reasonCompacted  = "mvcc: required revision has been compacted"
)

func prefixEnd(k string) string { return clientv3.GetPrefixRangeEnd(k) }

// isCompacted matches the cancel of a watcher whose start was compacted.
func isCompacted(id int64) matcher {
	return func(r *pb.WatchResponse) bool { return r.WatchId == id && r.CompactRevision != 0 }
}

// isCreateError matches a refused create (created and canceled, id -1).
var isCreateError = matcher(func(r *pb.WatchResponse) bool { return r.Created && r.Canceled })

var isControl = matcher(func(r *pb.WatchResponse) bool { return r.Created || r.Canceled })

// created waits for and compares n created responses.
func (w *wpair) created(n int) []*pb.WatchResponse {
	w.c.t.Helper()
	return w.expect(fmt.Sprintf("%d created responses", n), matcher(func(r *pb.WatchResponse) bool { return r.Created }).n(n), viewExact)
}

func TestWatch(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		// Key, range, prefix, from-key and everything: a raw stream and a
		// clientv3 Watch over the same interval see the same writes.
		for _, sp := range []struct {
			name   string
			p      string // the scenario's keys
			key    string // raw watch interval
			end    string
			ckey   string // clientv3 key (with copts) for the same interval
			copts  []opt
			marker string // a key in the interval, written last
		}{
			{"key", "wr1/", "wr1/b", "", "wr1/b", nil, "wr1/b"},
			{"range", "wr2/", "wr2/b", "wr2/d", "wr2/b", []opt{withRange("wr2/d")}, "wr2/c/d"},
			{"prefix", "wr3/", "wr3/c", prefixEnd("wr3/c"), "wr3/c", []opt{withPrefix}, "wr3/c"},
			{"prefix-ff", "wr4/", "wr4/\xff", prefixEnd("wr4/\xff"), "wr4/\xff", []opt{withPrefix}, "wr4/\xff"},
			{"from-key", "wr5/", "wr5/c", "\x00", "wr5/c", []opt{withFromKey}, "wr5/d"},
			{"all-keys-nul-nul", "wr6/", "\x00", "\x00", "", []opt{withPrefix}, "wr6/a"},
			{"all-keys-empty-key", "wr7/", "", "\x00", "", []opt{withFromKey}, "wr7/a"},
			{"empty-key-is-nul", "wr8/", "", "", "", nil, "\x00"}, // an empty key means "\x00"
		} {
			s.run(sp.name, func(c *sc) {
				p := sp.p
				w := c.openWatch("raw")
				w.create(wcreate(sp.key, sp.end, 0))
				w.created(1)
				cw := c.clientWatch(sp.ckey, append(sp.copts, withCreatedNotify)...)
				cw.expect("created", matcher(func(r *pb.WatchResponse) bool { return r.Created }).n(1), viewExact)
				for _, k := range []string{p + "a", p + "b", p + "b\x00", p + "c", p + "c/d", p + "d", p + "\xff", p + "\xff\xff", strings.TrimSuffix(p, "/"), "\x00", "\xff\xff"} {
					c.mustPut(k, "v1-"+k)
				}
				c.mustPut(p+"b", "v2")
				c.ok(c.CDelete(p + "c"))
				c.ok(c.CDelete(p+"d", withRange(p+"e")))
				c.ok(c.CTxn("put a, put c, delete b", nil, []clientv3.Op{
					clientv3.OpPut(p+"a", "v3"), clientv3.OpPut(p+"c", "v3"), clientv3.OpDelete(p + "b"),
				}, nil))
				c.ok(c.CDelete(p+"\xff", withPrefix))
				c.ok(c.CDelete("\x00"))
				last := c.mustPut(sp.marker, "last")
				w.expect("events up to the marker", eventAt(0, last), viewExact)
				cw.expect("events up to the marker", eventAt(0, last), viewExact)
				w.settle()
				w.leftover()
				cw.leftover()
			})
		}

		s.run("start-revision", func(c *sc) {
			p := "ws1/"
			c.mustPut(p+"a", "1")
			r2 := c.mustPut(p+"b", "1")
			c.ok(c.CDelete(p + "a"))
			c.mustPut("ws1", "outside")
			cur := c.mustPut(p+"a", "2")
			w := c.openWatch("raw")
			w.create(wcreate(p, prefixEnd(p), r2))    // 0: past: replay from r2
			w.create(wcreate(p, prefixEnd(p), cur))   // 1: current revision: its event
			w.create(wcreate(p, prefixEnd(p), 0))     // 2: from now
			w.create(wcreate(p, prefixEnd(p), cur+2)) // 3: future
			w.create(wcreate(p+"a", "", r2-1))        // 4: a single key, history
			cw := c.clientWatch(p, withPrefix, withRev(r2), withCreatedNotify)
			cf := c.clientWatch(p, withPrefix, withRev(cur+2), withCreatedNotify)
			w.expect("created and history replays", all(isControl.n(5), events(0, 3), events(1, 1), events(4, 3)), viewFlat)
			cw.expect("created and history replay", all(isControl.n(1), events(0, 3)), viewFlat)
			cf.expect("created", isControl.n(1), viewExact)
			r5 := c.mustPut(p+"c", "1") // cur+1: before the future start
			r6 := c.mustPut(p+"d", "1") // cur+2
			r7 := c.mustPut(p+"a", "3")
			c.check(r5 == cur+1 && r6 == cur+2 && r7 == cur+3, "revisions %d %d %d after %d", r5, r6, r7, cur)
			w.expect("live events", all(eventAt(0, r7), eventAt(1, r7), eventAt(2, r7), eventAt(3, r7), eventAt(4, r7)), viewExact)
			cw.expect("live events", eventAt(0, r7), viewExact)
			cf.expect("events from the future start", eventAt(0, r7), viewExact)
			w.settle()
		})

		s.run("negative-start-revision", func(c *sc) {
			c.mustPut("wn/a", "1")
			w := c.openWatch("raw")
			w.create(wcreate("wn/a", "", -1))
			w.create(wcreate("wn/", prefixEnd("wn/"), -100))
			w.expect("two refusals", isCreateError.n(2), viewExact)
			w.create(wcreate("wn/a", "", 0)) // ids are not consumed by refusals
			w.created(1)
			r := c.mustPut("wn/a", "2")
			w.expect("event", eventAt(0, r), viewExact)
			w.settle()
		})

		s.run("range-end-not-after-key", func(c *sc) {
			w := c.openWatch("raw")
			w.create(wcreate("we/b", "we/a", 0))
			w.create(wcreate("we/b", "we/b", 0))
			w.create(wcreate("\x01", "\x00\x01", 0))
			w.create(wcreate("we/b", "we/b\x00", 0)) // valid: just we/b
			w.expect("three refusals and one watch", isControl.n(4), viewExact)
			cw := c.clientWatch("we/b", withRange("we/a"), withCreatedNotify)
			cw.expect("refusal and close", ended(), viewExact)
			r := c.mustPut("we/b", "1")
			w.expect("event", eventAt(0, r), viewExact)
			w.settle()
		})

		s.run("prev-kv", func(c *sc) {
			p := "wp/"
			c.mustPut(p+"a", "1")
			w := c.openWatch("raw")
			pk := wcreate(p, prefixEnd(p), 0)
			pk.PrevKv = true
			w.create(pk)                          // 0
			w.create(wcreate(p, prefixEnd(p), 0)) // 1: without prev_kv
			w.created(2)
			cw := c.clientWatch(p, withPrefix, withPrevKV, withCreatedNotify)
			cw.created(1)
			c.mustPut(p+"a", "2")                  // overwrite: prev a=1
			c.mustPut(p+"b", "1")                  // create: no prev
			c.ok(c.CDelete(p + "a"))               // delete: prev a=2
			c.mustPut(p+"a", "3")                  // re-create: no prev
			c.mustPut(p+"a", "4", withIgnoreLease) // overwrite keeping lease
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"b", "2"), put(p+"c", "1"), del(p+"a", ""))})
			last := c.mustPut(p+"z", "1")
			w.expect("events", all(eventAt(0, last), eventAt(1, last)), viewExact)
			cw.expect("events", eventAt(0, last), viewExact)
			w.settle()
		})

		s.run("filters", func(c *sc) {
			p := "wf/"
			c.mustPut(p+"x", "0")
			w := c.openWatch("raw")
			for _, f := range [][]pb.WatchCreateRequest_FilterType{
				{pb.WatchCreateRequest_NOPUT},
				{pb.WatchCreateRequest_NODELETE},
				{pb.WatchCreateRequest_NOPUT, pb.WatchCreateRequest_NODELETE},
				{pb.WatchCreateRequest_NODELETE, pb.WatchCreateRequest_NODELETE},
			} {
				r := wcreate(p, prefixEnd(p), 0)
				r.Filters = f
				w.create(r)
			}
			r := wcreate(p, prefixEnd(p), 0) // NOPUT with prev_kv
			r.Filters, r.PrevKv = []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}, true
			w.create(r)
			w.created(5)
			cp := c.clientWatch(p, withPrefix, withFilterPut, withCreatedNotify)
			cd := c.clientWatch(p, withPrefix, withFilterDelete, withCreatedNotify)
			cp.created(1)
			cd.created(1)
			c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			c.ok(c.CDelete(p + "a"))
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"c", "1"), del(p+"b", ""))}) // mixed: half filtered
			c.mustTxn(&pb.TxnRequest{Success: ops(del(p+"c", ""), del(p+"x", ""))})  // only deletes
			c.mustPut(p+"a", "2")
			// Some watchers see nothing: the progress response is the barrier.
			w.settle()
			rp := c.mustPut(p+"zz", "put") // last put
			cd.expect("puts", eventAt(0, rp), viewExact)
			rd, err := c.CDelete(p+"zz", withPrevKV) // last delete
			c.ok(rd, err)
			cp.expect("deletes", eventAt(0, rd.Header.Revision), viewExact)
			w.settle()
		})

		s.run("watch-ids", func(c *sc) {
			k := "wi/a"
			w := c.openWatch("raw")
			mk := func(id int64) *pb.WatchCreateRequest {
				r := wcreate(k, "", 0)
				r.WatchId = id
				return r
			}
			w.create(mk(7)) // client-chosen
			w.create(mk(0)) // 0 = server-assigned: 0
			w.create(mk(0)) // 1
			w.create(mk(3)) // client-chosen
			w.create(mk(0)) // 2
			w.create(mk(0)) // 4: 3 is taken
			w.create(mk(7)) // duplicate: refused
			w.create(mk(3)) // duplicate: refused
			w.expect("8 control responses", isControl.n(8), viewExact)
			w.cancelWatch(1)
			w.expect("cancel of 1", isCanceled(1).n(1), viewExact)
			w.create(mk(1)) // free again
			w.create(mk(0)) // 5: assignment does not go back
			w.expect("2 created", isControl.n(2), viewExact)
			r := c.mustPut(k, "1")
			var conds []cond
			for _, id := range []int64{0, 1, 2, 3, 4, 5, 7} {
				conds = append(conds, eventAt(id, r))
			}
			w.expect("one event per watch", all(conds...), viewExact)
			w.settle()
		})

		s.run("several-watches-one-stream", func(c *sc) {
			p := "wm/"
			w := c.openWatch("raw")
			w.create(wcreate(p+"a", "", 0))
			w.create(wcreate(p, prefixEnd(p), 0))
			w.create(wcreate(p+"b", "\x00", 0))
			w.create(wcreate("\x00", "\x00", 0))
			w.create(wcreate(p+"b", p+"c", 0))
			w.created(5)
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"a", "1"), put(p+"b", "1"), put(p+"c", "1"), put("wm", "1"))})
			c.mustPut(p+"a", "2")
			c.mustPut(p+"b/x", "2")
			last := c.mustPut("wn~", "3")
			w.expect("events", all(eventAt(2, last), eventAt(3, last)), viewExact)
			w.settle()
		})

		s.run("cancel", func(c *sc) {
			w := c.openWatch("raw")
			w.create(wcreate("wc/a", "", 0))
			w.create(wcreate("wc/b", "", 0))
			w.created(2)
			ra := c.mustPut("wc/a", "1")
			w.expect("event", eventAt(0, ra), viewExact)
			w.cancelWatch(0)
			w.expect("canceled", isCanceled(0).n(1), viewExact)
			c.mustPut("wc/a", "2") // nobody watches wc/a any more
			rb := c.mustPut("wc/b", "1")
			w.expect("only the other watch's event", eventAt(1, rb), viewExact)
			w.cancelWatch(0)  // already canceled: no response
			w.cancelWatch(99) // never existed: no response
			w.cancelWatch(-1)
			w.create(wcreate("wc/c", "", 0))
			w.expect("only the created response", isCreated(2).n(1), viewExact)
			w.settle()
			cw := c.clientWatch("wc/d", withCreatedNotify)
			cw.created(1)
			rd := c.mustPut("wc/d", "1")
			cw.expect("event", eventAt(0, rd), viewExact)
			cw.ref.cancel()
			cw.sut.cancel()
			cw.expect("close after cancel", ended(), viewExact)
		})

		s.run("delete-and-recreate", func(c *sc) {
			k := "wd/k"
			w := c.openWatch("raw")
			w.create(wcreate(k, "", 0))
			pk := wcreate(k, "", 0)
			pk.PrevKv = true
			w.create(pk)
			w.created(2)
			first := c.mustPut(k, "1")
			c.mustPut(k, "2")
			c.ok(c.CDelete(k))
			c.ok(c.CDelete(k)) // nothing to delete: no event
			c.mustPut(k, "3")
			c.ok(c.CDelete("wd/", withPrefix))
			c.mustTxn(&pb.TxnRequest{Success: ops(put(k, "4"))})
			c.mustTxn(&pb.TxnRequest{Success: ops(del(k, ""), put("wd/other", "x"))})
			last := c.mustPut(k, "5")
			w.expect("events", all(eventAt(0, last), eventAt(1, last)), viewExact)
			// A new watch replaying that history sees the same.
			h := wcreate(k, "", first)
			h.PrevKv = true
			w.create(h)
			w.expect("replay", all(isCreated(2).n(1), eventAt(2, last)), viewFlat)
			w.settle()
		})

		s.run("txn-events", func(c *sc) {
			p := "wt/"
			c.mustPut(p+"a", "0")
			w := c.openWatch("raw")
			w.create(wcreate(p, prefixEnd(p), 0))
			pk := wcreate(p, prefixEnd(p), 0)
			pk.PrevKv = true
			w.create(pk)
			w.created(2)
			cw := c.clientWatch(p, withPrefix, withPrevKV, withCreatedNotify)
			cw.created(1)
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"a", "1"), put(p+"b", "1"), put(p+"c", "1"), del(p+"x", ""), get(p+"a"))})
			c.mustTxn(&pb.TxnRequest{Success: ops(del(p+"b", p+"d"), put(p+"a", "2"))})
			c.mustTxn(&pb.TxnRequest{
				Compare: cmps(cmpValue(p+"a", pb.Compare_EQUAL, "nope")),
				Success: ops(put(p+"s", "1")),
				Failure: ops(put(p+"f", "1"), opTxn(&pb.TxnRequest{Success: ops(put(p+"n", "nested"), del(p+"a", ""))})),
			})
			last := c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"z", "1"))}).Header.Revision
			w.expect("one response per revision", all(eventAt(0, last), eventAt(1, last)), viewExact)
			cw.expect("one response per revision", eventAt(0, last), viewExact)
			w.settle()
		})

		s.run("txn-put-then-from-key-delete", func(c *sc) {
			// A txn that puts k and deletes [k, "\x00"): two events at one
			// revision. The delete reaches every key from k on, so k sorts
			// after everything the other scenarios write.
			k := "\xfe/wx/k"
			w := c.openWatch("raw")
			w.create(wcreate("\xfe/wx/", prefixEnd("\xfe/wx/"), 0))
			pk := wcreate("\xfe/wx/", prefixEnd("\xfe/wx/"), 0)
			pk.PrevKv = true
			w.create(pk)
			w.created(2)
			c.mustTxn(&pb.TxnRequest{Success: ops(put(k, "new"), del(k, "\x00"))}) // k did not exist
			c.mustPut(k, "old")
			c.mustPut(k+"2", "old2")
			c.mustTxn(&pb.TxnRequest{Success: ops(put(k, "new"), del(k, "\x00"))}) // k existed
			last := c.mustPut("\xfe/wx/z", "end")
			w.expect("events", all(eventAt(0, last), eventAt(1, last)), viewExact)
			w.settle()
		})

		s.run("progress-request", func(c *sc) {
			p := "wg/"
			w := c.openWatch("raw")
			w.create(wcreate(p+"a", "", 0))
			w.create(wcreate(p, prefixEnd(p), 0))
			w.created(2)
			c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"a", "2"), put(p+"c", "2"))})
			c.mustPut("wh", "not watched") // progress reports the store's revision
			w.requestProgress()
			for i, s := range []*wstream{w.ref, w.sut} {
				k, seg, _ := s.log.waitFor(w.mark[i], isProgress(-1).n(1), watchWait)
				if k > 0 {
					if err := progressAfterEvents(seg[:k]); err != nil {
						if i == 0 {
							c.t.Fatalf("scenario bug: etcd: %v", err)
						}
						c.t.Errorf("%s: %v", s.srv.name, err)
					}
				}
			}
			w.expect("events, then progress at the current revision", isProgress(-1).n(1), viewExact)
			w.requestProgress()
			w.requestProgress()
			w.expect("two more progress responses", isProgress(-1).n(2), viewExact)
			cw := c.clientWatch(p, withPrefix, withCreatedNotify)
			cw.created(1)
			r := c.mustPut(p+"d", "1")
			cw.expect("event", eventAt(0, r), viewExact)
			for _, s := range []*server{c.p.ref, c.p.sut} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := s.cli.RequestProgress(ctx); err != nil {
					c.t.Errorf("%s: clientv3 RequestProgress: %v", s.name, err)
				}
				cancel()
			}
			cw.expect("clientv3 progress notify", isProgress(0).n(1), viewExact)
		})

		s.run("progress-request-not-synced", func(c *sc) {
			// A watcher whose start revision is ahead of the store holds
			// RequestProgress back: etcd answers nothing at all.
			w := c.openWatch("raw")
			cur := c.rev()
			w.create(wcreate("wq/a", "", 0))
			w.create(wcreate("wq/b", "", cur+5))
			w.created(2)
			w.requestProgress() // not answered
			w.cancelWatch(1)
			w.expect("canceled", isCanceled(1).n(1), viewExact)
			r := c.mustPut("wq/a", "1")
			w.expect("event", eventAt(0, r), viewExact)
			w.requestProgress() // answered at r: a reply to the first one would have come first
			w.expect("one progress response", isProgress(-1).n(1), viewExact)
		})

		s.run("progress-request-no-watchers", func(c *sc) {
			w := c.openWatch("raw")
			w.requestProgress() // a stream with no watcher: no answer
			w.create(wcreate("wo/a", "", 0))
			w.created(1)
			r := c.mustPut("wo/a", "1")
			w.expect("event", eventAt(0, r), viewExact)
			w.requestProgress()
			w.expect("one progress response", isProgress(-1).n(1), viewExact)
		})
	})
}

// TestWatchCompaction: start revisions at or below a compaction. The store
// is compacted, so these scenarios have their own server pair.
func TestWatchCompaction(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("compacted-start", func(c *sc) {
			p := "wc/"
			r1 := c.mustPut(p+"a", "1")
			r2 := c.mustPut(p+"a", "2")
			c.mustPut(p+"b", "1")
			c.ok(c.CCompact(r2, true))
			w := c.openWatch("raw")
			w.create(wcreate(p, prefixEnd(p), r1)) // 0: compacted
			w.expect("created, then canceled with compact_revision", all(isCreated(0).n(1), isCompacted(0).n(1)), viewExact)
			w.create(wcreate(p, prefixEnd(p), 1)) // 1: compacted
			w.expect("created, then canceled with compact_revision", all(isCreated(1).n(1), isCompacted(1).n(1)), viewExact)
			// clientv3 cancels a watch the server canceled; so can we, and
			// etcd confirms (the watcher is still registered on the stream).
			w.cancelWatch(0)
			w.expect("cancel of the compacted watch", isCanceled(0).n(1), viewExact)
			w.cancelWatch(1)
			w.expect("cancel of the compacted watch", isCanceled(1).n(1), viewExact)
			cw := c.clientWatch(p, withPrefix, withRev(r1), withCreatedNotify)
			cw.expect("compacted, then closed", ended(), viewExact)
			w.create(wcreate(p, prefixEnd(p), r2)) // 2: at the compaction: fine
			w.expect("replay from the compaction revision", all(isCreated(2).n(1), events(2, 2)), viewFlat)
			r := c.mustPut(p+"c", "1")
			w.expect("live", eventAt(2, r), viewExact)
			w.settle()
		})

		s.run("start-at-compaction-with-tombstone", func(c *sc) {
			p := "wt/"
			c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			rt := c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"c", "1"), del(p+"a", ""), put(p+"b", "2"))}).Header.Revision
			c.ok(c.CCompact(rt, true))
			last := c.mustPut(p+"d", "1")
			w := c.openWatch("raw")
			w.create(wcreate(p, prefixEnd(p), rt))
			w.expect("replay", all(isCreated(0).n(1), eventAt(0, last)), viewFlat)
			w.settle()
		})

		s.run("prev-kv-compacted", func(c *sc) {
			p := "wk/"
			c.mustPut(p+"a", "1")
			c.mustPut(p+"a", "2")
			c.mustPut(p+"b", "1")
			r4 := c.mustPut(p+"b", "2")
			c.ok(c.CDelete(p + "b"))
			c.ok(c.CCompact(r4, true))
			c.mustPut(p+"a", "3") // prev is a@r2: below the compaction, still readable at r4
			w := c.openWatch("raw")
			for _, start := range []int64{r4, 0} {
				pk := wcreate(p, prefixEnd(p), start)
				pk.PrevKv = true
				w.create(pk)
			}
			cur := c.rev()
			w.expect("replay with prev_kv", all(isControl.n(2), eventAt(0, cur)), viewFlat)
			c.mustPut(p+"a", "4")
			c.mustPut(p+"b", "3")
			last := c.mustPut(p+"b", "4")
			w.expect("live with prev_kv", all(eventAt(0, last), eventAt(1, last)), viewExact)
			w.settle()
		})
	})
}

// TestWatchFragment: with --max-request-bytes 64 KiB, etcd splits a watch
// response into fragments once it exceeds max-request-bytes + 512 KiB (its
// gRPC overhead allowance), so a single revision has to carry more than
// 576 KiB: a delete of 42 keys with 20 KiB values, watched with prev_kv.
func TestWatchFragment(t *testing.T) {
	const (
		limit  = 64 << 10
		valLen = 20 << 10
		nKeys  = 42
	)
	val := func(i, round int) string {
		return strings.Repeat(fmt.Sprintf("%02d.%d/", i, round), valLen/5)[:valLen]
	}
	forEachBackend(t, harness.Options{MaxRequestBytes: limit}, func(s *suite) {
		s.run("fragments", func(c *sc) {
			p := "wf/"
			first := c.rev() + 1
			w := c.openWatch("raw")
			mk := func(prev, frag bool) *pb.WatchCreateRequest {
				r := wcreate(p, prefixEnd(p), 0)
				r.PrevKv, r.Fragment = prev, frag
				return r
			}
			w.create(mk(true, true))   // 0: big responses, fragmented
			w.create(mk(true, false))  // 1: big responses, whole
			w.create(mk(false, true))  // 2: small responses
			w.create(mk(false, false)) // 3
			w.created(4)
			cw := c.clientWatch(p, withPrefix, withPrevKV, withFragment, withCreatedNotify)
			cw.created(1)
			for i := 0; i < nKeys; i += 3 { // 3 puts of 20 KiB per txn
				var o []*pb.RequestOp
				for j := i; j < min(i+3, nKeys); j++ {
					o = append(o, put(fmt.Sprintf("%s%02d", p, j), val(j, 1)))
				}
				c.mustTxn(&pb.TxnRequest{Success: o})
			}
			c.mustTxn(&pb.TxnRequest{Success: ops(put(p+"00", val(0, 2)), put(p+"01", val(1, 2)), put(p+"02", val(2, 2)))})
			dr, err := c.Delete(&pb.DeleteRangeRequest{Key: b(p), RangeEnd: b(prefixEnd(p))})
			c.ok(dr, err)
			last := dr.Header.Revision
			c.check(dr.Deleted == nKeys, "deleted %d", dr.Deleted)
			w.expect("events, the last revision in fragments", all(eventAt(0, last), eventAt(1, last), eventAt(2, last), eventAt(3, last)), viewExact)
			cw.expect("events, reassembled", eventAt(0, last), viewExact)
			// History replay of all that, fragmented.
			h := wcreate(p, prefixEnd(p), first)
			h.PrevKv, h.Fragment = true, true
			w.create(h)
			seg := w.expect("replay", all(isCreated(4).n(1), eventAt(4, last)), viewFlat)
			frags := 0
			for _, r := range seg {
				if r.Fragment {
					frags++
				}
			}
			c.check(frags > 0, "etcd sent no fragment in the replay")
			w.settle()
		})
	})
}

// TestWatchProgressNotify: periodic progress notifications with
// --watch-progress-notify-interval 500ms on both servers. How many arrive
// depends on timing, so runs of identical ones are collapsed.
func TestWatchProgressNotify(t *testing.T) {
	forEachBackend(t, harness.Options{WatchProgressNotifyInterval: 500 * time.Millisecond}, func(s *suite) {
		s.run("idle-watcher", func(c *sc) {
			w := c.openWatch("raw")
			pn := wcreate("wpn/a", "", 0)
			pn.ProgressNotify = true
			w.create(pn)                      // 0: notified
			w.create(wcreate("wpn/b", "", 0)) // 1: not
			w.created(2)
			cur := c.rev()
			atRev := func(id, rev int64) matcher {
				return func(r *pb.WatchResponse) bool {
					return isProgress(id)(r) && r.Header != nil && r.Header.Revision == rev
				}
			}
			w.wait("two progress notifications", atRev(0, cur).n(2))
			r := c.mustPut("wpn/a", "1")
			w.wait("event, then progress at its revision", all(eventAt(0, r), atRev(0, r).n(2)))
			rb := c.mustPut("wpn/b", "1") // watch 0 now reports rb
			w.expect("all of it", all(eventAt(1, rb), atRev(0, rb).n(2)), viewCollapsed)
		})

		s.run("future-watcher", func(c *sc) {
			// A watcher whose start revision is ahead gets no notification
			// until the store reaches it.
			w := c.openWatch("raw")
			cur := c.rev()
			f := wcreate("wpf/a", "", cur+1)
			f.ProgressNotify = true
			w.create(f) // 0
			n := wcreate("wpf/b", "", 0)
			n.ProgressNotify = true
			w.create(n) // 1
			w.created(2)
			w.wait("three notifications of the other watcher", isProgress(1).n(3))
			r := c.mustPut("wpf/a", "1")
			atRev := func(id, rev int64) matcher {
				return func(r *pb.WatchResponse) bool {
					return isProgress(id)(r) && r.Header != nil && r.Header.Revision == rev
				}
			}
			w.expect("all of it", all(eventAt(0, r), atRev(0, r).n(1), atRev(1, r).n(1)), viewCollapsed)
		})

		s.run("clientv3", func(c *sc) {
			cw := c.clientWatch("wpc/a", withProgressNotify, withCreatedNotify)
			cw.created(1)
			cw.wait("two notifications", isProgress(0).n(2))
			r := c.mustPut("wpc/a", "1")
			atRev := matcher(func(x *pb.WatchResponse) bool {
				return isProgressResp(x) && x.Header != nil && x.Header.Revision == r
			})
			cw.expect("all of it", all(eventAt(0, r), atRev.n(1)), viewCollapsed)
		})
	})
}

// wait waits until c holds on both sides without comparing or consuming
// anything (for conditions whose prefix is compared later as a whole).
func (w *wpair) wait(what string, c cond) {
	w.c.t.Helper()
	for i := 0; i < 2; i++ {
		k, seg, end := w.side(i).log.waitFor(w.mark[i], w.filtered(c), watchWait)
		if k >= 0 {
			continue
		}
		if i == 0 {
			w.c.t.Fatalf("scenario bug: etcd did not deliver %q on %s within %v; it sent:\n%s", what, w.name, watchWait, strings.Join(w.render(viewExact, seg, end), "\n"))
		}
		got, _, _ := w.ref.log.snapshot()
		why := fmt.Sprintf("timed out after %v", watchWait)
		if end != nil {
			why = "stream ended"
		}
		w.fail(what, why, w.render(viewExact, got[w.mark[0]:], nil), w.render(viewExact, seg, end))
	}
}
