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
)

func (k Kind) String() string {
	return [...]string{"get", "range", "put", "delete", "cas", "lease-grant"}[k]
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
	// Err describes the error of an Unknown operation (for reports).
	Err string
}

// State is etcd's key space as the model sees it: the live keys in key
// order and the current revision. States are never modified in place.
type State struct {
	Rev int64
	KVs []KV
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
	return State{Rev: rev, KVs: kvs}
}

func (s State) del(key, end string) (State, int64) {
	gone := s.inRange(key, end)
	if len(gone) == 0 {
		return s, 0
	}
	kvs := make([]KV, 0, len(s.KVs))
	for _, kv := range s.KVs {
		if end == "" && kv.Key == key || end != "" && kv.Key >= key && kv.Key < end {
			continue
		}
		kvs = append(kvs, kv)
	}
	return State{Rev: s.Rev + 1, KVs: kvs}, int64(len(gone))
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
// nothing and a lease grant leave it alone and report it.
func Step(s State, req Request, resp Response) (bool, State) {
	switch req.Kind {
	case OpGet, OpRange:
		if resp.Unknown {
			return true, s
		}
		kvs := s.inRange(req.Key, req.End)
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
	}
	return false, s
}

// Model is the porcupine model of etcd's KV store, starting at init.
func Model(init State) porcupine.Model {
	return porcupine.Model{
		Init: func() interface{} { return init },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			return Step(state.(State), input.(Request), output.(Response))
		},
		Equal: func(a, b interface{}) bool {
			x, y := a.(State), b.(State)
			return x.Rev == y.Rev && kvsEqual(x.KVs, y.KVs)
		},
		Hash: func(state interface{}) uint64 {
			s := state.(State)
			h := fnv.New64a()
			fmt.Fprint(h, s.Rev)
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
			fmt.Fprintf(&b, "rev %d {", s.Rev)
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
	switch req.Kind {
	case OpGet:
		in = fmt.Sprintf("get(%s)", req.Key)
	case OpRange:
		in = fmt.Sprintf("range(%s..%s, limit %d)", req.Key, req.End, req.Limit)
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
	}
	if resp.Unknown {
		if resp.Rev != 0 {
			return fmt.Sprintf("%s -> unknown (%s), in the log at rev %d", in, resp.Err, resp.Rev)
		}
		return fmt.Sprintf("%s -> unknown (%s)", in, resp.Err)
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
