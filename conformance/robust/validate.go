package robust

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Violations collects the guarantee violations of one check, capped so that
// one broken stream does not flood the report.
type Violations struct {
	list  []string
	count map[string]int
}

func (v *Violations) add(guarantee, format string, args ...any) {
	if v.count == nil {
		v.count = map[string]int{}
	}
	v.count[guarantee]++
	if v.count[guarantee] <= 5 {
		v.list = append(v.list, guarantee+": "+fmt.Sprintf(format, args...))
	}
}

// List is the recorded violations (at most 5 per guarantee) with the count
// of each guarantee's.
func (v *Violations) List() []string {
	out := append([]string(nil), v.list...)
	keys := make([]string, 0, len(v.count))
	for k := range v.count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if n := v.count[k]; n > 5 {
			out = append(out, fmt.Sprintf("%s: %d violations in all", k, n))
		}
	}
	return out
}

// Empty reports whether nothing was violated.
func (v *Violations) Empty() bool { return len(v.list) == 0 }

// CheckLog checks a complete log (the events of a watch over the whole key
// space from revision first, up to final): every revision from first to
// final is there (each revision is one write that changed something),
// events of a revision are on distinct keys, and replaying it is
// consistent: versions and create revisions follow, a delete removes a
// live key, and each prev_kv (when withPrev) is the key's state before.
func CheckLog(log []Event, first, final int64, withPrev bool) *Violations {
	v := &Violations{}
	state := map[string]KV{}
	next := first
	seen := map[string]bool{}
	var cur int64 = -1
	for i, e := range log {
		if e.Mod != cur {
			if e.Mod != next {
				v.add("log-gapless", "event #%d at revision %d, expected revision %d next", i, e.Mod, next)
			}
			cur, next = e.Mod, e.Mod+1
			seen = map[string]bool{}
		}
		if seen[e.Key] {
			v.add("log-unique", "key %q changed twice in revision %d", e.Key, e.Mod)
		}
		seen[e.Key] = true
		prev, live := state[e.Key]
		if withPrev {
			switch {
			case live && e.Prev == nil && !(!e.Delete && e.Create == e.Mod):
				v.add("prev_kv", "rev %d %s: no prev_kv, the key was %v", e.Mod, e.Key, prev)
			case !live && e.Prev != nil:
				v.add("prev_kv", "rev %d %s: prev_kv %v for an absent key", e.Mod, e.Key, *e.Prev)
			case live && e.Prev != nil && *e.Prev != prev:
				v.add("prev_kv", "rev %d %s: prev_kv %v, the key was %v", e.Mod, e.Key, *e.Prev, prev)
			}
		}
		if e.Delete {
			if !live {
				v.add("log-replay", "rev %d: delete of absent key %q", e.Mod, e.Key)
			}
			delete(state, e.Key)
			continue
		}
		want := KV{Key: e.Key, Value: e.Value, Create: e.Mod, Mod: e.Mod, Ver: 1, Lease: e.Lease}
		if live {
			want.Create, want.Ver = prev.Create, prev.Ver+1
		}
		got := KV{Key: e.Key, Value: e.Value, Create: e.Create, Mod: e.Mod, Ver: e.Ver, Lease: e.Lease}
		if got != want {
			v.add("log-replay", "rev %d: put %v, replay expects %v", e.Mod, got, want)
		}
		state[e.Key] = got
	}
	if len(log) > 0 && next-1 != final || len(log) == 0 && final >= first {
		v.add("log-gapless", "log ends at revision %d, the store is at %d", next-1, final)
	}
	return v
}

// CheckWatch checks the responses of one watcher (possibly over several
// streams, each resumed after the last event received) against etcd's
// watch guarantees, given the complete log (from revision 1 or at least
// from start) and the final revision; no compaction is expected. See
// CheckWatchWith.
func CheckWatch(resps []WatchResp, log []Event, start, final int64) *Violations {
	return CheckWatchWith(resps, WatchCheck{Log: log, Start: start, Final: final})
}

// Compaction is a compaction requested while watches ran, whatever its
// outcome, and when.
type Compaction struct {
	Rev  int64
	Call time.Time
}

// WatchCheck is what CheckWatchWith checks a watcher's responses against.
type WatchCheck struct {
	// Log is the complete log (from revision 1, or at least from Start) up
	// to Final; nil checks only what a stream shows by itself.
	Log          []Event
	Start, Final int64
	// Compactions allow two things. A cancellation with compact revision
	// C is accepted when a compaction at C was requested before it arrived
	// and the stream still needed a revision below C (its start, or the
	// revision after its last event or progress notification); the events
	// from there to C are then not expected. An event without prev_kv is
	// accepted when a compaction at or above its revision was requested
	// before it arrived (the previous version may be gone, as in etcd).
	Compactions []Compaction
}

// CheckWatchWith checks a watcher's responses against etcd's guarantees:
//
//   - ordered: event revisions never go down, within a response or across;
//   - unique: no (revision, key) twice;
//   - atomic: a revision's events all arrive in one response;
//   - start: no event below its stream's start revision;
//   - reliable: the events are exactly the log's from Start (but for the
//     ranges skipped by accepted compaction cancellations), nothing missing
//     or extra, and the watcher got up to Final;
//   - progress (bookmarkable): a progress notification at R comes after
//     every event <= R the stream delivers and before every event > R (per
//     stream);
//   - created first, once per stream; canceled only by an accepted
//     compaction (resumable: the watcher carries on from there).
func CheckWatchWith(resps []WatchResp, c WatchCheck) *Violations {
	v := &Violations{}
	var maxRev int64
	seen := map[[2]string]bool{}
	type recv struct {
		e  Event
		at time.Time
	}
	var got []recv
	created := map[int]int{}
	next := map[int]int64{} // per stream: the first revision it still needs
	var skips [][2]int64    // [from, to) given up by accepted compaction cancels
	for i, r := range resps {
		if _, ok := next[r.Session]; !ok {
			next[r.Session] = r.Start
		}
		if r.Created {
			created[r.Session]++
		} else if created[r.Session] == 0 {
			v.add("created-first", "stream %d: response #%d (%s) before the created response", r.Session, i, r.describe())
		}
		if r.Progress {
			next[r.Session] = max(next[r.Session], r.Rev+1)
		}
		if r.Canceled {
			n := next[r.Session]
			switch {
			case r.CompactRev == 0:
				v.add("not-canceled", "response #%d (stream %d): canceled, reason %q", i, r.Session, r.CancelReason)
			case !requested(c.Compactions, r.CompactRev, r.At):
				v.add("not-canceled", "response #%d (stream %d): canceled with compact revision %d, which no compaction requested before (reason %q)", i, r.Session, r.CompactRev, r.CancelReason)
			case n >= r.CompactRev:
				v.add("not-canceled", "response #%d (stream %d): canceled as compacted at %d, yet the stream needed only revisions from %d on", i, r.Session, r.CompactRev, n)
			default:
				skips = append(skips, [2]int64{n, r.CompactRev})
			}
		}
		if len(r.Events) == 0 {
			continue
		}
		first := r.Events[0].Mod
		switch {
		case first == maxRev:
			v.add("atomic", "response #%d (stream %d): revision %d continues after an earlier response", i, r.Session, first)
		case first < maxRev:
			v.add("ordered", "response #%d (stream %d): revision %d after revision %d", i, r.Session, first, maxRev)
		}
		for j, e := range r.Events {
			if j > 0 && e.Mod < r.Events[j-1].Mod {
				v.add("ordered", "response #%d: revision %d after %d within the response", i, e.Mod, r.Events[j-1].Mod)
			}
			if e.Mod < r.Start {
				v.add("start", "response #%d: stream %d, watching from revision %d, delivered %v", i, r.Session, r.Start, e)
			}
			k := [2]string{fmt.Sprint(e.Mod), e.Key}
			if seen[k] {
				v.add("unique", "revision %d key %q delivered twice", e.Mod, e.Key)
			}
			seen[k] = true
			maxRev = max(maxRev, e.Mod)
			next[r.Session] = max(next[r.Session], e.Mod+1)
			got = append(got, recv{e, r.At})
		}
		if r.Rev < r.Events[len(r.Events)-1].Mod {
			v.add("header", "response #%d: header revision %d below its events' %d", i, r.Rev, r.Events[len(r.Events)-1].Mod)
		}
	}
	for s, n := range created {
		if n != 1 {
			v.add("created", "stream %d got %d created responses", s, n)
		}
	}
	checkProgress(v, resps)
	if c.Log == nil {
		return v
	}
	skipped := func(rev int64) ([2]int64, bool) {
		for _, s := range skips {
			if rev >= s[0] && rev < s[1] {
				return s, true
			}
		}
		return [2]int64{}, false
	}
	type rk struct {
		rev int64
		key string
	}
	inLog := map[rk]Event{}
	want := map[rk]bool{}
	for _, e := range c.Log {
		if e.Mod >= c.Start {
			inLog[rk{e.Mod, e.Key}] = e
			if _, s := skipped(e.Mod); !s {
				want[rk{e.Mod, e.Key}] = true
			}
		}
	}
	for _, g := range got {
		e := g.e
		w, ok := inLog[rk{e.Mod, e.Key}]
		s, isSkipped := skipped(e.Mod)
		delete(want, rk{e.Mod, e.Key})
		switch {
		case !ok:
			v.add("reliable", "event %v is not in the log", e)
		case isSkipped:
			v.add("reliable", "event %v delivered although the watch was canceled as compacted from %d to %d", e, s[0], s[1])
		case eventEqual(e, w):
		case e.Prev == nil && eventEqual(withPrev(e, w.Prev), w) && compactedBefore(c.Compactions, e.Mod, g.at):
			// The previous version was compacted away before it was sent.
		case eventEqual(withPrev(e, w.Prev), w):
			v.add("prev_kv", "event is %v, the log has %v", e, w)
		default:
			v.add("reliable", "event is %v, the log has %v", e, w)
		}
	}
	var missing []Event
	for _, e := range c.Log {
		if want[rk{e.Mod, e.Key}] {
			missing = append(missing, e)
		}
	}
	if len(missing) > 0 {
		v.add("reliable", "%d events of the log from revision %d not received (revisions %s), first %v", len(missing), c.Start, revRanges(missing), missing[0])
	}
	if len(got) > 0 && got[len(got)-1].e.Mod > c.Final {
		v.add("reliable", "the watch ends at revision %d, beyond the store's %d", got[len(got)-1].e.Mod, c.Final)
	}
	return v
}

// revRanges renders the revisions of events as ranges: "5..9, 12".
func revRanges(evs []Event) string {
	var parts []string
	for i := 0; i < len(evs); {
		j := i
		for j+1 < len(evs) && evs[j+1].Mod <= evs[j].Mod+1 {
			j++
		}
		if evs[j].Mod == evs[i].Mod {
			parts = append(parts, fmt.Sprint(evs[i].Mod))
		} else {
			parts = append(parts, fmt.Sprintf("%d..%d", evs[i].Mod, evs[j].Mod))
		}
		i = j + 1
	}
	if len(parts) > 10 {
		parts = append(parts[:10], fmt.Sprintf("… %d more ranges", len(parts)-10))
	}
	return strings.Join(parts, ", ")
}

// DumpWatch renders a watcher's responses, one a line, for the record of
// a violation.
func DumpWatch(resps []WatchResp) string {
	var b strings.Builder
	for i, r := range resps {
		fmt.Fprintf(&b, "#%d %s stream %d (conn %d, from %d) header %d: ", i, r.At.Format("15:04:05.000"), r.Session, r.Conn, r.Start, r.Rev)
		if r.Created {
			b.WriteString("created ")
		}
		if r.Canceled {
			fmt.Fprintf(&b, "canceled, compact revision %d, reason %q", r.CompactRev, r.CancelReason)
		}
		if r.Progress {
			b.WriteString("progress")
		}
		for _, e := range r.Events {
			fmt.Fprintf(&b, "\n    %v", e)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// requested: a compaction at rev was requested before at (zero: ever).
func requested(cs []Compaction, rev int64, at time.Time) bool {
	for _, c := range cs {
		if c.Rev == rev && (at.IsZero() || c.Call.Before(at)) {
			return true
		}
	}
	return false
}

// compactedBefore: a compaction at rev or above, which removes the version
// before rev, was requested before at (zero: ever).
func compactedBefore(cs []Compaction, rev int64, at time.Time) bool {
	for _, c := range cs {
		if c.Rev >= rev && (at.IsZero() || c.Call.Before(at)) {
			return true
		}
	}
	return false
}

// Replay is the key space after the log's events up to rev: the live keys
// in key order.
func Replay(log []Event, rev int64) []KV {
	state := map[string]KV{}
	for _, e := range log {
		if e.Mod > rev {
			break
		}
		if e.Delete {
			delete(state, e.Key)
		} else {
			state[e.Key] = KV{Key: e.Key, Value: e.Value, Create: e.Create, Mod: e.Mod, Ver: e.Ver, Lease: e.Lease}
		}
	}
	out := make([]KV, 0, len(state))
	for _, kv := range state {
		out = append(out, kv)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (r WatchResp) describe() string {
	switch {
	case r.Progress:
		return fmt.Sprintf("progress at %d", r.Rev)
	case len(r.Events) > 0:
		return fmt.Sprintf("%d events, revisions %d..%d", len(r.Events), r.Events[0].Mod, r.Events[len(r.Events)-1].Mod)
	}
	return fmt.Sprintf("%+v", r)
}

// checkProgress: within a stream, a progress notification at R follows
// every delivered event <= R and precedes only events > R.
func checkProgress(v *Violations, resps []WatchResp) {
	bySession := map[int][]WatchResp{}
	var order []int
	for _, r := range resps {
		if _, ok := bySession[r.Session]; !ok {
			order = append(order, r.Session)
		}
		bySession[r.Session] = append(bySession[r.Session], r)
	}
	for _, s := range order {
		rs := bySession[s]
		var lastEvent int64
		var progress int64 = -1
		for i, r := range rs {
			if r.Progress {
				if r.Rev < lastEvent {
					v.add("progress", "stream %d response #%d: progress at %d after an event at %d", s, i, r.Rev, lastEvent)
				}
				progress = max(progress, r.Rev)
				continue
			}
			for _, e := range r.Events {
				if e.Mod <= progress {
					v.add("progress", "stream %d response #%d: event at revision %d after a progress notification at %d", s, i, e.Mod, progress)
				}
				lastEvent = max(lastEvent, e.Mod)
			}
		}
	}
}

// Count summarises responses: events, progress notifications and streams.
func Count(resps []WatchResp) (events, progress, streams int) {
	ss := map[int]bool{}
	for _, r := range resps {
		events += len(r.Events)
		if r.Progress {
			progress++
		}
		ss[r.Session] = true
	}
	return events, progress, len(ss)
}

func withPrev(e Event, prev *KV) Event {
	e.Prev = prev
	return e
}

// WithoutPrev is log as a watch without prev_kv delivers it.
func WithoutPrev(log []Event) []Event {
	out := make([]Event, len(log))
	for i, e := range log {
		e.Prev = nil
		out[i] = e
	}
	return out
}

// AckedMissing describes the acknowledged writes (from ops: puts, CASes
// that succeeded, deletes that deleted) that are not in the log at the
// revision they were acknowledged with (at most 5), and counts them.
func AckedMissing(ops []Op, log []Event) ([]string, int) {
	at := map[int64][]Event{}
	for _, e := range log {
		at[e.Mod] = append(at[e.Mod], e)
	}
	var out []string
	missing := 0
	for _, op := range ops {
		if op.Resp.Unknown {
			continue
		}
		ok := true
		switch {
		case op.Req.Kind == OpPut || op.Req.Kind == OpCAS && op.Resp.Succeeded:
			ok = false
			for _, e := range at[op.Resp.Rev] {
				ok = ok || !e.Delete && e.Key == op.Req.Key && e.Value == op.Req.Value
			}
		case op.Req.Kind == OpDelete && op.Resp.Deleted > 0:
			n := int64(0)
			for _, e := range at[op.Resp.Rev] {
				if e.Delete {
					n++
				}
			}
			ok = n == op.Resp.Deleted
		}
		if !ok {
			if missing++; missing <= 5 {
				out = append(out, fmt.Sprintf("acknowledged %s is not in the log at its revision (log there: %v)", DescribeOp(op.Req, op.Resp), at[op.Resp.Rev]))
			}
		}
	}
	if missing > 5 {
		out = append(out, fmt.Sprintf("%d acknowledged writes not in the log in all", missing))
	}
	return out, missing
}
