package robust

import (
	"fmt"
	"sort"
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
// from start) and the final revision:
//
//   - ordered: event revisions never go down, within a response or across;
//   - unique: no (revision, key) twice;
//   - atomic: a revision's events all arrive in one response;
//   - reliable: the events are exactly the log's from start, nothing
//     missing or extra, and the watcher got up to final;
//   - progress: a progress notification at R comes after every event <= R
//     the stream delivers and before every event > R (per stream);
//   - no cancellation.
//
// log may be nil when only the stream-internal properties are checked.
func CheckWatch(resps []WatchResp, log []Event, start, final int64) *Violations {
	v := &Violations{}
	var maxRev int64
	seen := map[[2]string]bool{}
	var got []Event
	created := map[int]int{}
	for i, r := range resps {
		if r.Created {
			created[r.Session]++
		} else if created[r.Session] == 0 {
			v.add("created-first", "stream %d: response #%d (%s) before the created response", r.Session, i, r.describe())
		}
		if r.Canceled {
			v.add("not-canceled", "response #%d (stream %d): canceled, reason %q, compact revision %d", i, r.Session, r.CancelReason, r.CompactRev)
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
			k := [2]string{fmt.Sprint(e.Mod), e.Key}
			if seen[k] {
				v.add("unique", "revision %d key %q delivered twice", e.Mod, e.Key)
			}
			seen[k] = true
			maxRev = max(maxRev, e.Mod)
		}
		if r.Rev < r.Events[len(r.Events)-1].Mod {
			v.add("header", "response #%d: header revision %d below its events' %d", i, r.Rev, r.Events[len(r.Events)-1].Mod)
		}
		got = append(got, r.Events...)
	}
	for s, n := range created {
		if n != 1 {
			v.add("created", "stream %d got %d created responses", s, n)
		}
	}
	checkProgress(v, resps)
	if log == nil {
		return v
	}
	type rk struct {
		rev int64
		key string
	}
	want := map[rk]Event{}
	var firstMissing []Event
	for _, e := range log {
		if e.Mod >= start {
			want[rk{e.Mod, e.Key}] = e
		}
	}
	for _, e := range got {
		w, ok := want[rk{e.Mod, e.Key}]
		delete(want, rk{e.Mod, e.Key})
		switch {
		case !ok:
			v.add("reliable", "event %v is not in the log (or came twice)", e)
		case eventEqual(e, w):
		case eventEqual(withPrev(e, w.Prev), w):
			v.add("prev_kv", "event is %v, the log has %v", e, w)
		default:
			v.add("reliable", "event is %v, the log has %v", e, w)
		}
	}
	for _, e := range log {
		if _, missing := want[rk{e.Mod, e.Key}]; missing {
			firstMissing = append(firstMissing, e)
		}
	}
	if len(firstMissing) > 0 {
		v.add("reliable", "%d events of the log from revision %d not received, first %v", len(firstMissing), start, firstMissing[0])
	}
	if len(got) > 0 && got[len(got)-1].Mod > final {
		v.add("reliable", "the watch ends at revision %d, beyond the store's %d", got[len(got)-1].Mod, final)
	}
	return v
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
