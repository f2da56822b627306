package robust

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Kind is an operation of the linearizability workload.
type Kind uint8

const (
	OpGet        Kind = iota // Range of one key
	OpRange                  // Range [Key, End) with a limit
	OpPut                    // Put
	OpDelete                 // DeleteRange [Key, End), or the single Key
	OpCAS                    // Txn If mod_revision(Key) == ModRev Then Put Else Get
	OpLeaseGrant             // LeaseGrant (touches no key; its header revision is checked)
	OpCompact                // Compact at Rev
)

func (k Kind) String() string {
	return [...]string{"get", "range", "put", "delete", "cas", "lease-grant", "compact"}[k]
}

// Request is an operation's input.
type Request struct {
	Kind   Kind
	Key    string
	End    string // OpRange, OpDelete: range end; "" is the single key
	Value  string // OpPut, OpCAS
	ModRev int64  // OpCAS: expected mod_revision (0: the key is absent)
	Limit  int64  // OpRange
	TTL    int64  // OpLeaseGrant
	// Rev is the revision of an OpGet or OpRange at a past revision (0:
	// the current one) and the revision of an OpCompact.
	Rev int64
}

// KV is a key as a response or the model shows it.
type KV struct {
	Key, Value              string
	Create, Mod, Ver, Lease int64
}

// Response is an operation's output.
type Response struct {
	// Unknown: the client never learned the outcome (timeout, connection
	// lost, server killed). Such an operation stays pending forever: the
	// model lets it take effect at any point after its call, or never.
	Unknown bool
	// Rev is the header revision. For an Unknown write found in the watch
	// log it is the revision the write got (0: not known).
	Rev       int64
	KVs       []KV // OpGet, OpRange; OpCAS when it failed (the Else Get)
	Count     int64
	More      bool
	Deleted   int64
	Succeeded bool // OpCAS
	// Compacted and FutureRev are definite refusals (ErrCompacted,
	// ErrFutureRev) of a read at a past revision or of a compaction.
	Compacted, FutureRev bool
	// Err describes the error of an Unknown operation (for reports).
	Err string
}

// State is etcd's key space as the model sees it: the live keys in key
// order, the current revision, the compact revision (reads below it are
// refused) and the changes since the model started, so that reads at past
// revisions can be answered. States are never modified in place.
//
// The model knows the past only from its initial state on: keys it does
// not see change read as in the initial state at every earlier revision,
// so a history that reads below the initial revision should start with
// Compact == Rev, or with no keys in the ranges read.
type State struct {
	Rev     int64
	Compact int64
	KVs     []KV
	hist    *change
}

// change is one key's change (newest first): its state after it, or its
// deletion. The list is shared by the states that descend from it and is
// never modified, so a state's past costs one pointer.
type change struct {
	kv   KV // kv.Mod is the change's revision
	del  bool
	prev *change
	n    int    // length of the list from here
	hash uint64 // of the list from here
}

func (c *change) push(kv KV, del bool) *change {
	h := fnv.New64a()
	fmt.Fprint(h, c.sum(), "|", kv.Key, "=", kv.Value, "@", kv.Mod, del)
	return &change{kv: kv, del: del, prev: c, n: c.len() + 1, hash: h.Sum64()}
}

func (c *change) len() int {
	if c == nil {
		return 0
	}
	return c.n
}

func (c *change) sum() uint64 {
	if c == nil {
		return 0
	}
	return c.hash
}

func histEqual(a, b *change) bool {
	if a.len() != b.len() || a.sum() != b.sum() {
		return false
	}
	for ; a != b; a, b = a.prev, b.prev {
		if a.kv != b.kv || a.del != b.del {
			return false
		}
	}
	return true
}

// seeded records the initial keys as the model's oldest changes.
func (s State) seeded() State {
	if s.hist != nil || len(s.KVs) == 0 {
		return s
	}
	kvs := append([]KV(nil), s.KVs...)
	sort.SliceStable(kvs, func(i, j int) bool { return kvs[i].Mod < kvs[j].Mod })
	for _, kv := range kvs {
		s.hist = s.hist.push(kv, false)
	}
	return s
}

// inRangeAt lists the keys live at revision rev (Compact <= rev <= Rev) in
// [key, end), from the changes.
func (s State) inRangeAt(rev int64, key, end string) []KV {
	if rev == s.Rev {
		return s.inRange(key, end)
	}
	seen := map[string]bool{}
	var out []KV
	for c := s.hist; c != nil; c = c.prev {
		if c.kv.Mod > rev || seen[c.kv.Key] {
			continue
		}
		seen[c.kv.Key] = true
		if !c.del && (end == "" && c.kv.Key == key || end != "" && c.kv.Key >= key && c.kv.Key < end) {
			out = append(out, c.kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (s State) find(key string) (int, bool) {
	i := sort.Search(len(s.KVs), func(i int) bool { return s.KVs[i].Key >= key })
	return i, i < len(s.KVs) && s.KVs[i].Key == key
}

// inRange lists the live keys in etcd's range [key, end) (end "": key only).
func (s State) inRange(key, end string) []KV {
	if end == "" {
		if i, ok := s.find(key); ok {
			return s.KVs[i : i+1]
		}
		return nil
	}
	var out []KV
	for _, kv := range s.KVs {
		if kv.Key >= key && kv.Key < end {
			out = append(out, kv)
		}
	}
	return out
}

func (s State) put(key, value string) State {
	rev := s.Rev + 1
	kv := KV{Key: key, Value: value, Create: rev, Mod: rev, Ver: 1}
	i, ok := s.find(key)
	kvs := make([]KV, 0, len(s.KVs)+1)
	kvs = append(kvs, s.KVs[:i]...)
	if ok {
		kv.Create = s.KVs[i].Create
		kv.Ver = s.KVs[i].Ver + 1
		kvs = append(kvs, kv)
		kvs = append(kvs, s.KVs[i+1:]...)
	} else {
		kvs = append(kvs, kv)
		kvs = append(kvs, s.KVs[i:]...)
	}
	return State{Rev: rev, Compact: s.Compact, KVs: kvs, hist: s.hist.push(kv, false)}
}

func (s State) del(key, end string) (State, int64) {
	gone := s.inRange(key, end)
	if len(gone) == 0 {
		return s, 0
	}
	rev := s.Rev + 1
	hist := s.hist
	kvs := make([]KV, 0, len(s.KVs))
	for _, kv := range s.KVs {
		if end == "" && kv.Key == key || end != "" && kv.Key >= key && kv.Key < end {
			hist = hist.push(KV{Key: kv.Key, Mod: rev}, true)
			continue
		}
		kvs = append(kvs, kv)
	}
	return State{Rev: rev, Compact: s.Compact, KVs: kvs, hist: hist}, int64(len(gone))
}

func kvsEqual(a, b []KV) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Step is the sequential specification: etcd's KV store with revisions.
// Every change bumps the revision by one; a read, a failed CAS, a delete of
// nothing and a lease grant leave it alone and report it. A read at a past
// revision answers the keys then, with the current revision in its header,
// or is refused: compacted below the compact revision, future above the
// current one. A compaction moves the compact revision forward; it is
// refused at or below the compact revision and above the current one.
func Step(s State, req Request, resp Response) (bool, State) {
	if req.Kind != OpGet && req.Kind != OpRange && req.Kind != OpCompact && (resp.Compacted || resp.FutureRev) {
		return false, s
	}
	switch req.Kind {
	case OpGet, OpRange:
		if resp.Unknown {
			return true, s
		}
		var kvs []KV
		switch {
		case req.Rev == 0:
			if resp.Compacted || resp.FutureRev {
				return false, s
			}
			kvs = s.inRange(req.Key, req.End)
		case req.Rev > s.Rev:
			return resp.FutureRev, s
		case req.Rev < s.Compact:
			return resp.Compacted, s
		case resp.Compacted || resp.FutureRev:
			return false, s
		default:
			kvs = s.inRangeAt(req.Rev, req.Key, req.End)
		}
		count := int64(len(kvs))
		more := false
		if req.Limit > 0 && int64(len(kvs)) > req.Limit {
			kvs, more = kvs[:req.Limit], true
		}
		return resp.Rev == s.Rev && resp.Count == count && resp.More == more && kvsEqual(resp.KVs, kvs), s
	case OpPut:
		ns := s.put(req.Key, req.Value)
		if resp.Unknown {
			return resp.Rev == 0 || resp.Rev == ns.Rev, ns
		}
		return resp.Rev == ns.Rev, ns
	case OpDelete:
		ns, n := s.del(req.Key, req.End)
		if resp.Unknown {
			return resp.Rev == 0 || resp.Rev == ns.Rev, ns
		}
		return resp.Rev == ns.Rev && resp.Deleted == n, ns
	case OpCAS:
		cur := s.inRange(req.Key, "")
		var mod int64
		if len(cur) == 1 {
			mod = cur[0].Mod
		}
		if mod == req.ModRev {
			ns := s.put(req.Key, req.Value)
			if resp.Unknown {
				return resp.Rev == 0 || resp.Rev == ns.Rev, ns
			}
			return resp.Succeeded && resp.Rev == ns.Rev, ns
		}
		if resp.Unknown {
			// A CAS known to have written (Rev set) cannot fail here.
			return resp.Rev == 0, s
		}
		return !resp.Succeeded && resp.Rev == s.Rev && kvsEqual(resp.KVs, cur), s
	case OpLeaseGrant:
		return resp.Unknown || resp.Rev == s.Rev, s
	case OpCompact:
		can := req.Rev > s.Compact && req.Rev <= s.Rev
		ns := s
		if can {
			ns.Compact = req.Rev
		}
		switch {
		case resp.Unknown:
			// Applied here if it can be (at the end of the history is
			// never), or refused.
			return true, ns
		case resp.Compacted:
			return req.Rev <= s.Compact, s
		case resp.FutureRev:
			return req.Rev > s.Rev, s
		}
		// etcd fills the header after applying (after the physical
		// deletion, even), so it may be ahead of the compaction's point.
		return can && resp.Rev >= s.Rev, ns
	}
	return false, s
}

// Model is the porcupine model of etcd's KV store, starting at init.
func Model(init State) porcupine.Model {
	init = init.seeded()
	return porcupine.Model{
		Init: func() interface{} { return init },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			return Step(state.(State), input.(Request), output.(Response))
		},
		Equal: func(a, b interface{}) bool {
			x, y := a.(State), b.(State)
			return x.Rev == y.Rev && x.Compact == y.Compact && kvsEqual(x.KVs, y.KVs) && histEqual(x.hist, y.hist)
		},
		Hash: func(state interface{}) uint64 {
			s := state.(State)
			h := fnv.New64a()
			fmt.Fprint(h, s.Rev, "/", s.Compact, "/", s.hist.sum())
			for _, kv := range s.KVs {
				fmt.Fprint(h, "|", kv.Key, "=", kv.Value, "@", kv.Mod)
			}
			return h.Sum64()
		},
		DescribeOperation: func(input, output interface{}) string {
			return DescribeOp(input.(Request), output.(Response))
		},
		DescribeState: func(state interface{}) string {
			s := state.(State)
			var b strings.Builder
			fmt.Fprintf(&b, "rev %d compact %d {", s.Rev, s.Compact)
			for i, kv := range s.KVs {
				if i > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "%s=%s c%d m%d v%d", kv.Key, kv.Value, kv.Create, kv.Mod, kv.Ver)
			}
			b.WriteString("}")
			return b.String()
		},
	}
}

// DescribeOp renders an operation for reports.
func DescribeOp(req Request, resp Response) string {
	var in string
	at := ""
	if req.Rev != 0 {
		at = fmt.Sprintf(" @%d", req.Rev)
	}
	switch req.Kind {
	case OpGet:
		in = fmt.Sprintf("get(%s%s)", req.Key, at)
	case OpRange:
		in = fmt.Sprintf("range(%s..%s, limit %d%s)", req.Key, req.End, req.Limit, at)
	case OpPut:
		in = fmt.Sprintf("put(%s, %s)", req.Key, req.Value)
	case OpDelete:
		if req.End == "" {
			in = fmt.Sprintf("delete(%s)", req.Key)
		} else {
			in = fmt.Sprintf("delete(%s..%s)", req.Key, req.End)
		}
	case OpCAS:
		in = fmt.Sprintf("cas(%s mod==%d, %s)", req.Key, req.ModRev, req.Value)
	case OpLeaseGrant:
		in = fmt.Sprintf("lease-grant(ttl %d)", req.TTL)
	case OpCompact:
		in = fmt.Sprintf("compact(%d)", req.Rev)
	}
	if resp.Unknown {
		if resp.Rev != 0 {
			return fmt.Sprintf("%s -> unknown (%s), in the log at rev %d", in, resp.Err, resp.Rev)
		}
		return fmt.Sprintf("%s -> unknown (%s)", in, resp.Err)
	}
	switch {
	case resp.Compacted:
		return in + " -> compacted"
	case resp.FutureRev:
		return in + " -> future revision"
	}
	switch req.Kind {
	case OpGet, OpRange:
		var kvs []string
		for _, kv := range resp.KVs {
			kvs = append(kvs, fmt.Sprintf("%s=%s c%d m%d v%d", kv.Key, kv.Value, kv.Create, kv.Mod, kv.Ver))
		}
		return fmt.Sprintf("%s -> rev %d count %d more %v [%s]", in, resp.Rev, resp.Count, resp.More, strings.Join(kvs, ", "))
	case OpDelete:
		return fmt.Sprintf("%s -> rev %d deleted %d", in, resp.Rev, resp.Deleted)
	case OpCAS:
		if resp.Succeeded {
			return fmt.Sprintf("%s -> rev %d succeeded", in, resp.Rev)
		}
		return fmt.Sprintf("%s -> rev %d failed, key %v", in, resp.Rev, resp.KVs)
	}
	return fmt.Sprintf("%s -> rev %d", in, resp.Rev)
}
