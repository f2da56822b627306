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
