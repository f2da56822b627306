package robust

import (
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The checker must tell a linearizable history from a broken one, or the
// robustness tests prove nothing.

func op(client int, call, ret int64, req Request, resp Response) Op {
	if resp.Unknown {
		ret = Pending
	}
	return Op{Client: client, Req: req, Resp: resp, Call: call, Return: ret}
}

func check(t *testing.T, ops []Op) porcupine.CheckResult {
	t.Helper()
	res := Check(State{Rev: 1}, ops, 10*time.Second, "unit-"+t.Name())
	if res.Result == porcupine.Illegal {
		t.Logf("report:\n%s", res.Report)
	}
	return res.Result
}

func TestModelAcceptsLinearizable(t *testing.T) {
	ops := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(1, 5, 20, Request{Kind: OpGet, Key: "a"}, Response{Rev: 2, Count: 1, KVs: []KV{{Key: "a", Value: "1", Create: 2, Mod: 2, Ver: 1}}}),
		op(0, 21, 30, Request{Kind: OpCAS, Key: "a", ModRev: 2, Value: "2"}, Response{Rev: 3, Succeeded: true}),
		op(1, 22, 31, Request{Kind: OpCAS, Key: "a", ModRev: 2, Value: "3"}, Response{Rev: 3, KVs: []KV{{Key: "a", Value: "2", Create: 2, Mod: 3, Ver: 2}}}),
		op(2, 32, 40, Request{Kind: OpLeaseGrant, TTL: 10}, Response{Rev: 3}),
		op(2, 41, 50, Request{Kind: OpPut, Key: "b", Value: "x"}, Response{Rev: 4}),
		op(0, 51, 60, Request{Kind: OpRange, Key: "a", End: "c", Limit: 1}, Response{Rev: 4, Count: 2, More: true, KVs: []KV{{Key: "a", Value: "2", Create: 2, Mod: 3, Ver: 2}}}),
		op(1, 61, 70, Request{Kind: OpDelete, Key: "a", End: "z"}, Response{Rev: 5, Deleted: 2}),
		op(1, 71, 80, Request{Kind: OpDelete, Key: "a"}, Response{Rev: 5}),
	}
	if r := check(t, ops); r != porcupine.Ok {
		t.Fatalf("a linearizable history checked %s", r)
	}
}

func TestModelRejectsStaleRead(t *testing.T) {
	ops := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpPut, Key: "a", Value: "2"}, Response{Rev: 3}),
		// Starts after the second put returned, yet sees the first.
		op(1, 21, 30, Request{Kind: OpGet, Key: "a"}, Response{Rev: 2, Count: 1, KVs: []KV{{Key: "a", Value: "1", Create: 2, Mod: 2, Ver: 1}}}),
	}
	if r := check(t, ops); r != porcupine.Illegal {
		t.Fatalf("a stale read checked %s", r)
	}
}

func TestModelRejectsWrongRevision(t *testing.T) {
	ops := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpPut, Key: "b", Value: "1"}, Response{Rev: 2}), // a revision used twice
	}
	if r := check(t, ops); r != porcupine.Illegal {
		t.Fatalf("a reused revision checked %s", r)
	}
	ops = []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpLeaseGrant, TTL: 5}, Response{Rev: 3}), // a grant does not bump the revision
	}
	if r := check(t, ops); r != porcupine.Illegal {
		t.Fatalf("a lease grant ahead of the revision checked %s", r)
	}
}

func TestModelLostWrite(t *testing.T) {
	// An acknowledged CAS whose effect a later read does not show.
	ops := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpCAS, Key: "a", ModRev: 2, Value: "2"}, Response{Rev: 3, Succeeded: true}),
		op(1, 21, 30, Request{Kind: OpGet, Key: "a"}, Response{Rev: 3, Count: 1, KVs: []KV{{Key: "a", Value: "1", Create: 2, Mod: 2, Ver: 1}}}),
	}
	if r := check(t, ops); r != porcupine.Illegal {
		t.Fatalf("a lost write checked %s", r)
	}
}

func TestModelPendingOperations(t *testing.T) {
	// A put of unknown outcome may take effect late...
	ops := []Op{
		op(0, 0, 0, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Unknown: true}),
		op(1, 50, 60, Request{Kind: OpGet, Key: "a"}, Response{Rev: 1}),
		op(1, 70, 80, Request{Kind: OpGet, Key: "a"}, Response{Rev: 2, Count: 1, KVs: []KV{{Key: "a", Value: "1", Create: 2, Mod: 2, Ver: 1}}}),
	}
	if r := check(t, ops); r != porcupine.Ok {
		t.Fatalf("a late pending put checked %s", r)
	}
	// ...or never.
	ops = []Op{
		op(0, 0, 0, Request{Kind: OpDelete, Key: "a"}, Response{Unknown: true}),
		op(1, 5, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(1, 70, 80, Request{Kind: OpGet, Key: "a"}, Response{Rev: 2, Count: 1, KVs: []KV{{Key: "a", Value: "1", Create: 2, Mod: 2, Ver: 1}}}),
	}
	if r := check(t, ops); r != porcupine.Ok {
		t.Fatalf("a pending delete that never applied checked %s", r)
	}
	// But not before it was called.
	ops = []Op{
		op(1, 0, 10, Request{Kind: OpGet, Key: "a"}, Response{Rev: 2, Count: 1, KVs: []KV{{Key: "a", Value: "1", Create: 2, Mod: 2, Ver: 1}}}),
		op(0, 20, 0, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Unknown: true}),
	}
	if r := check(t, ops); r != porcupine.Illegal {
		t.Fatalf("a read of a write not yet called checked %s", r)
	}
}

func TestPatch(t *testing.T) {
	ops := []Op{
		op(0, 0, 0, Request{Kind: OpPut, Key: "a", Value: "c0-1"}, Response{Unknown: true}),
		op(0, 0, 0, Request{Kind: OpPut, Key: "a", Value: "c0-2"}, Response{Unknown: true}),
		op(0, 0, 0, Request{Kind: OpGet, Key: "a"}, Response{Unknown: true}),
		op(0, 0, 0, Request{Kind: OpDelete, Key: "a"}, Response{Unknown: true}),
		op(0, 0, 5, Request{Kind: OpGet, Key: "a"}, Response{Rev: 1}),
	}
	out, st := Patch(ops, []Event{{Key: "a", Value: "c0-2", Mod: 7}})
	if len(out) != 3 || st.PersistedWrite != 1 || st.DroppedWrites != 1 || st.DroppedReads != 1 || st.PendingDeletes != 1 {
		t.Fatalf("patched to %d ops, stats %+v", len(out), st)
	}
	if out[0].Resp.Rev != 7 || out[0].Return != Pending {
		t.Fatalf("persisted write patched to %+v", out[0])
	}
}

func resp(session int, rev int64, evs ...Event) WatchResp {
	return WatchResp{Session: session, Rev: rev, Events: evs}
}

func put(key, val string, rev, create, ver int64) Event {
	return Event{Key: key, Value: val, Create: create, Mod: rev, Ver: ver}
}

func TestCheckWatch(t *testing.T) {
	log := []Event{put("a", "1", 2, 2, 1), put("b", "1", 3, 3, 1), put("a", "2", 4, 2, 2), put("c", "1", 4, 4, 1), put("b", "2", 5, 3, 2)}
	if v := CheckLog(log, 2, 5, false); !v.Empty() {
		t.Fatalf("a good log: %v", v.List())
	}
	good := []WatchResp{
		{Session: 0, Created: true, Rev: 1},
		resp(0, 2, log[0]), resp(0, 3, log[1]),
		{Session: 0, Progress: true, Rev: 3},
		// stream broke; resumed from 4
		{Session: 1, Created: true, Rev: 5},
		resp(1, 5, log[2], log[3]), resp(1, 5, log[4]),
	}
	if v := CheckWatch(good, log, 1, 5); !v.Empty() {
		t.Fatalf("a good watch: %v", v.List())
	}
	cases := map[string][]WatchResp{
		"reliable": {resp(0, 2, log[0]), resp(0, 4, log[2], log[3]), resp(0, 5, log[4])},
		"unique":   {resp(0, 2, log[0]), resp(0, 3, log[1]), resp(1, 3, log[1]), resp(1, 5, log[2], log[3], log[4])},
		"atomic":   {resp(0, 2, log[0]), resp(0, 3, log[1]), resp(0, 4, log[2]), resp(0, 5, log[3], log[4])},
		"ordered":  {resp(0, 2, log[0]), resp(0, 4, log[2], log[3]), resp(0, 3, log[1]), resp(0, 5, log[4])},
		"progress": {resp(0, 2, log[0]), {Session: 0, Progress: true, Rev: 3}, resp(0, 3, log[1]), resp(0, 5, log[2], log[3], log[4])},
	}
	for want, resps := range cases {
		v := CheckWatch(resps, log, 1, 5)
		found := false
		for _, s := range v.List() {
			found = found || strings.HasPrefix(s, want+":")
		}
		if !found {
			t.Errorf("%s violation not detected: %v", want, v.List())
		}
	}
	bad := []Event{put("a", "1", 2, 2, 1), put("a", "2", 4, 2, 3)}
	if v := CheckLog(bad, 2, 4, false); v.Empty() {
		t.Errorf("a log with a gap and a wrong version passed")
	}
}

func kv(key, val string, create, mod, ver int64) KV {
	return KV{Key: key, Value: val, Create: create, Mod: mod, Ver: ver}
}

// Compaction: reads at past revisions answer the keys then, or compacted
// below the compact revision, or future above the head; compactions are
// refused at or below the compact revision.
func TestModelCompaction(t *testing.T) {
	get := func(rev int64) Request { return Request{Kind: OpGet, Key: "a", Rev: rev} }
	base := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpPut, Key: "a", Value: "2"}, Response{Rev: 3}),
		op(0, 21, 30, Request{Kind: OpDelete, Key: "a"}, Response{Rev: 4, Deleted: 1}),
		op(0, 31, 40, Request{Kind: OpPut, Key: "b", Value: "1"}, Response{Rev: 5}),
	}
	good := append(append([]Op(nil), base...),
		op(1, 41, 50, get(2), Response{Rev: 5, Count: 1, KVs: []KV{kv("a", "1", 2, 2, 1)}}),
		op(1, 51, 60, Request{Kind: OpRange, Key: "a", End: "c", Rev: 3}, Response{Rev: 5, Count: 1, KVs: []KV{kv("a", "2", 2, 3, 2)}}),
		op(2, 61, 70, Request{Kind: OpCompact, Rev: 3}, Response{Rev: 5}),
		op(1, 71, 80, get(2), Response{Compacted: true}),
		op(1, 81, 90, get(3), Response{Rev: 5, Count: 1, KVs: []KV{kv("a", "2", 2, 3, 2)}}),
		op(1, 91, 100, get(4), Response{Rev: 5}),
		op(1, 101, 110, get(9), Response{FutureRev: true}),
		op(2, 111, 120, Request{Kind: OpCompact, Rev: 3}, Response{Compacted: true}),
		op(2, 121, 130, Request{Kind: OpCompact, Rev: 9}, Response{FutureRev: true}),
		op(2, 131, 140, Request{Kind: OpCompact, Rev: 5}, Response{Rev: 6}), // the header may be filled later
		op(1, 141, 150, Request{Kind: OpRange, Key: "a", End: "c", Rev: 5}, Response{Rev: 5, Count: 1, KVs: []KV{kv("b", "1", 5, 5, 1)}}),
	)
	if r := check(t, good); r != porcupine.Ok {
		t.Fatalf("a linearizable history with compactions checked %s", r)
	}
	bad := map[string][]Op{
		"a read below the compact revision answered": {
			op(2, 41, 50, Request{Kind: OpCompact, Rev: 3}, Response{Rev: 5}),
			op(1, 51, 60, get(2), Response{Rev: 5, Count: 1, KVs: []KV{kv("a", "1", 2, 2, 1)}}),
		},
		"a read at the compact revision refused": {
			op(2, 41, 50, Request{Kind: OpCompact, Rev: 3}, Response{Rev: 5}),
			op(1, 51, 60, get(3), Response{Compacted: true}),
		},
		"a read refused as compacted with no compaction": {
			op(1, 51, 60, get(3), Response{Compacted: true}),
		},
		"a past read answering the current keys": {
			op(1, 41, 50, get(3), Response{Rev: 5}),
		},
		"a past read with the read revision as header": {
			op(1, 41, 50, get(3), Response{Rev: 3, Count: 1, KVs: []KV{kv("a", "2", 2, 3, 2)}}),
		},
		"a read of a past revision refused as future": {
			op(1, 41, 50, get(5), Response{FutureRev: true}),
		},
		"a deleted key resurrected after a compaction": {
			op(2, 41, 50, Request{Kind: OpCompact, Rev: 5}, Response{Rev: 5}),
			op(1, 51, 60, Request{Kind: OpGet, Key: "a"}, Response{Rev: 5, Count: 1, KVs: []KV{kv("a", "2", 2, 3, 2)}}),
		},
		"a compaction at the compact revision accepted": {
			op(2, 41, 50, Request{Kind: OpCompact, Rev: 3}, Response{Rev: 5}),
			op(2, 51, 60, Request{Kind: OpCompact, Rev: 3}, Response{Rev: 5}),
		},
		"a compaction refused as compacted with none before": {
			op(2, 41, 50, Request{Kind: OpCompact, Rev: 3}, Response{Compacted: true}),
		},
		"a compaction whose header is behind": {
			op(2, 41, 50, Request{Kind: OpCompact, Rev: 3}, Response{Rev: 4}),
		},
	}
	for name, tail := range bad {
		if r := check(t, append(append([]Op(nil), base...), tail...)); r != porcupine.Illegal {
			t.Errorf("%s: checked %s", name, r)
		}
	}
}

// A compaction of unknown outcome may take effect at any point after its
// call, or never; not before.
func TestModelPendingCompaction(t *testing.T) {
	base := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpPut, Key: "a", Value: "2"}, Response{Rev: 3}),
		op(2, 21, 0, Request{Kind: OpCompact, Rev: 3}, Response{Unknown: true}),
	}
	for name, tail := range map[string][]Op{
		"applied":       {op(1, 30, 40, Request{Kind: OpGet, Key: "a", Rev: 2}, Response{Compacted: true})},
		"never applied": {op(1, 30, 40, Request{Kind: OpGet, Key: "a", Rev: 2}, Response{Rev: 3, Count: 1, KVs: []KV{kv("a", "1", 2, 2, 1)}})},
		"applied later": {
			op(1, 30, 40, Request{Kind: OpGet, Key: "a", Rev: 2}, Response{Rev: 3, Count: 1, KVs: []KV{kv("a", "1", 2, 2, 1)}}),
			op(1, 50, 60, Request{Kind: OpGet, Key: "a", Rev: 2}, Response{Compacted: true}),
		},
	} {
		if r := check(t, append(append([]Op(nil), base...), tail...)); r != porcupine.Ok {
			t.Errorf("pending compaction %s: checked %s", name, r)
		}
	}
	early := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 11, 20, Request{Kind: OpPut, Key: "a", Value: "2"}, Response{Rev: 3}),
		op(1, 21, 30, Request{Kind: OpGet, Key: "a", Rev: 2}, Response{Compacted: true}),
		op(2, 31, 0, Request{Kind: OpCompact, Rev: 3}, Response{Unknown: true}),
	}
	if r := check(t, early); r != porcupine.Illegal {
		t.Errorf("a read compacted before the compaction was called checked %s", r)
	}
	out, st := Patch([]Op{op(2, 0, 0, Request{Kind: OpCompact, Rev: 3}, Response{Unknown: true})}, nil)
	if len(out) != 1 || st.PendingCompact != 1 || out[0].Return != Pending {
		t.Errorf("an unknown compaction patched to %+v, %+v", out, st)
	}
}

// The model answers past reads from the keys it started with too.
func TestModelPastReadOfInitialKeys(t *testing.T) {
	init := State{Rev: 5, Compact: 5, KVs: []KV{kv("a", "x", 3, 4, 2)}}
	ops := []Op{
		op(0, 0, 10, Request{Kind: OpPut, Key: "a", Value: "y"}, Response{Rev: 6}),
		op(1, 11, 20, Request{Kind: OpGet, Key: "a", Rev: 5}, Response{Rev: 6, Count: 1, KVs: []KV{kv("a", "x", 3, 4, 2)}}),
		op(1, 21, 30, Request{Kind: OpGet, Key: "a", Rev: 4}, Response{Compacted: true}),
	}
	if r := Check(init, ops, 10*time.Second, "unit-"+t.Name()); r.Result != porcupine.Ok {
		t.Fatalf("checked %s\n%s", r.Result, r.Report)
	}
}

func TestCheckWatchCompaction(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	log := []Event{put("a", "1", 2, 2, 1), put("a", "2", 3, 2, 2), put("b", "1", 4, 4, 1), put("a", "3", 5, 2, 3), put("b", "2", 6, 4, 2)}
	for i := range log[1:] {
		p := KV{Key: log[i+1].Key}
		for _, e := range log[:i+1] {
			if e.Key == p.Key {
				p = KV{Key: e.Key, Value: e.Value, Create: e.Create, Mod: e.Mod, Ver: e.Ver}
			}
		}
		if p.Mod != 0 {
			log[i+1].Prev = &p
		}
	}
	comps := []Compaction{{Rev: 4, Call: at(9)}, {Rev: 5, Call: at(10)}}
	r := func(session int, start int64, ms int, evs ...Event) WatchResp {
		return WatchResp{Session: session, Start: start, At: at(ms), Rev: 6, Events: evs}
	}
	created := func(session int, start int64, ms int) WatchResp {
		return WatchResp{Session: session, Start: start, At: at(ms), Created: true}
	}
	cancel := func(session int, start int64, ms int, compact int64) WatchResp {
		return WatchResp{Session: session, Start: start, At: at(ms), Canceled: true, CompactRev: compact}
	}
	// Events 2 and 3, canceled at 5 (4 not yet delivered), resumed from 5.
	good := []WatchResp{
		created(0, 1, 0), r(0, 1, 1, log[0]), r(0, 1, 2, log[1]), cancel(0, 1, 20, 5),
		created(1, 5, 30), r(1, 5, 31, log[3]), r(1, 5, 32, log[4]),
	}
	check := func(resps []WatchResp) *Violations {
		return CheckWatchWith(resps, WatchCheck{Log: log, Start: 1, Final: 6, Compactions: comps})
	}
	if v := check(good); !v.Empty() {
		t.Fatalf("a watch resumed after a compaction: %v", v.List())
	}
	// The previous version of the event at 5 (rev 3) may be gone once
	// compacted at 5; the event at 6's (rev 4) may not.
	noPrev := func(e Event) Event { e.Prev = nil; return e }
	lenient := []WatchResp{
		created(0, 1, 0), r(0, 1, 1, log[0]), r(0, 1, 2, log[1]), r(0, 1, 3, log[2]),
		r(0, 1, 30, noPrev(log[3])), r(0, 1, 31, log[4]),
	}
	if v := check(lenient); !v.Empty() {
		t.Fatalf("prev_kv missing after a compaction: %v", v.List())
	}
	cases := map[string][]WatchResp{
		// The bug of a process catching up behind a compaction: events
		// skipped without a cancel.
		"reliable": {created(0, 1, 0), r(0, 1, 1, log[0]), r(0, 1, 2, log[1]), r(0, 1, 30, log[3]), r(0, 1, 31, log[4])},
		// Canceled at 4 although it needed 5 next.
		"not-canceled": {created(0, 1, 0), r(0, 1, 1, log[0]), r(0, 1, 2, log[1]), r(0, 1, 3, log[2]), cancel(0, 1, 20, 4),
			created(1, 5, 30), r(1, 5, 31, log[3]), r(1, 5, 32, log[4])},
		// The watch of a resumed stream from 5 delivers 4.
		"start": {created(0, 1, 0), r(0, 1, 1, log[0]), r(0, 1, 2, log[1]), cancel(0, 1, 20, 5),
			created(1, 5, 30), r(1, 5, 31, log[2]), r(1, 5, 32, log[3], log[4])},
		"prev_kv": {created(0, 1, 0), r(0, 1, 1, log[0]), r(0, 1, 2, log[1]), r(0, 1, 3, log[2]),
			r(0, 1, 4, noPrev(log[3])), r(0, 1, 31, log[4])}, // before the compaction was requested
	}
	cases["not-canceled (compaction not requested)"] = []WatchResp{created(0, 1, 0), r(0, 1, 1, log[0]), cancel(0, 1, 5, 5)} // requested only at 10 ms
	cases["not-canceled (unknown revision)"] = []WatchResp{created(0, 1, 0), r(0, 1, 1, log[0]), cancel(0, 1, 20, 6)}
	// A progress notification at 5 says the stream needs 6 next.
	cases["not-canceled (after a progress notification)"] = []WatchResp{created(0, 1, 0), r(0, 1, 1, log[0], log[1]), r(0, 1, 2, log[2]), r(0, 1, 3, log[3]),
		{Session: 0, Start: 1, Progress: true, Rev: 5, At: at(4)}, cancel(0, 1, 20, 5), created(1, 5, 30), r(1, 5, 31, log[4])}
	for name, resps := range cases {
		want, _, _ := strings.Cut(name, " ")
		found := false
		for _, s := range check(resps).List() {
			found = found || strings.HasPrefix(s, want+":")
		}
		if !found {
			t.Errorf("%s violation not detected: %v", name, check(resps).List())
		}
	}
}

func TestReplayAndAckedMissing(t *testing.T) {
	log := []Event{put("a", "1", 2, 2, 1), put("b", "1", 3, 3, 1), {Delete: true, Key: "a", Mod: 4}, put("b", "2", 5, 3, 2)}
	if got := Replay(log, 4); len(got) != 1 || got[0] != kv("b", "1", 3, 3, 1) {
		t.Errorf("replay to 4: %v", got)
	}
	if got := Replay(log, 5); len(got) != 1 || got[0] != kv("b", "2", 3, 5, 2) {
		t.Errorf("replay to 5: %v", got)
	}
	acked := []Op{
		op(0, 0, 1, Request{Kind: OpPut, Key: "a", Value: "1"}, Response{Rev: 2}),
		op(0, 0, 1, Request{Kind: OpDelete, Key: "a"}, Response{Rev: 4, Deleted: 1}),
		op(0, 0, 1, Request{Kind: OpPut, Key: "b", Value: "3"}, Response{Rev: 5}), // lost
	}
	if lines, n := AckedMissing(acked, log); n != 1 || len(lines) != 1 || !strings.Contains(lines[0], "put(b, 3)") {
		t.Errorf("acked missing: %d %v", n, lines)
	}
}
