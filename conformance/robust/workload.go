package robust

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Workload is the linearizability load: clients doing gets, small ranges,
// puts, CAS txns, deletes and lease grants on a few keys.
type Workload struct {
	Keys       []string // sorted
	Clients    int
	Duration   time.Duration
	MaxOps     int           // per client
	OpTimeout  time.Duration // per operation
	Think      time.Duration // at most this pause between operations
	Seed       uint64
	ErrorPause time.Duration // pause after a failed operation
	// PastReads is the percentage of gets and ranges made at a past
	// revision, up to PastWindow below the last header revision the client
	// saw (so that, under compactions near the head, some are refused as
	// compacted and some are answered from history).
	PastReads  int
	PastWindow int64
}

// Stats counts what the clients did.
type Stats struct {
	mu     sync.Mutex
	ByKind map[Kind]int
	Errors map[string]int
	// Past counts the reads at a past revision; PastCompacted those refused
	// as compacted.
	Past, PastCompacted int
}

func (s *Stats) add(k Kind, err string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ByKind == nil {
		s.ByKind, s.Errors = map[Kind]int{}, map[string]int{}
	}
	s.ByKind[k]++
	if err != "" {
		s.Errors[err]++
	}
}

func (s *Stats) addPast(resp Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Past++
	if resp.Compacted {
		s.PastCompacted++
	}
}

// Run drives the clients until the duration ends or each has done MaxOps.
// Client i talks to conns[i % len(conns)]. Values are unique:
// "c<client>-<seq>".
func (w Workload) Run(ctx context.Context, conns []*grpc.ClientConn, h *History, firstClient int) *Stats {
	st := &Stats{}
	deadline := time.Now().Add(w.Duration)
	var wg sync.WaitGroup
	for c := 0; c < w.Clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			conn := conns[c%len(conns)]
			cl := &client{
				id: firstClient + c, w: &w, h: h, st: st,
				kv: pb.NewKVClient(conn), lease: pb.NewLeaseClient(conn),
				rnd:   rand.New(rand.NewPCG(w.Seed, uint64(firstClient+c))),
				known: map[string]int64{},
			}
			fails := 0
			for n := 0; n < w.MaxOps && time.Now().Before(deadline) && ctx.Err() == nil; n++ {
				pause := time.Duration(0)
				if w.Think > 0 {
					pause = time.Duration(cl.rnd.Int64N(int64(w.Think)))
				}
				// Back off while failing, so that a long fault does not
				// fill the history with operations of unknown outcome.
				if cl.step(ctx, n) {
					pause += w.ErrorPause << min(fails, 3)
					fails++
				} else {
					fails = 0
				}
				if pause > 0 {
					select {
					case <-time.After(pause):
					case <-ctx.Done():
					}
				}
			}
		}(c)
	}
	wg.Wait()
	return st
}

type client struct {
	id      int
	w       *Workload
	h       *History
	st      *Stats
	kv      pb.KVClient
	lease   pb.LeaseClient
	rnd     *rand.Rand
	known   map[string]int64 // last mod_revision seen per key (0: absent)
	lastRev int64            // highest header revision seen
}

func (c *client) key() string { return c.w.Keys[c.rnd.IntN(len(c.w.Keys))] }

// rangeBounds picks [Keys[i], Keys[j]) or [Keys[i], past the last key).
func (c *client) rangeBounds() (string, string) {
	n := len(c.w.Keys)
	i := c.rnd.IntN(n)
	j := i + 1 + c.rnd.IntN(n-i)
	if j == n {
		return c.w.Keys[i], c.w.Keys[n-1] + "\x00"
	}
	return c.w.Keys[i], c.w.Keys[j]
}

// step runs one random operation and reports whether it failed.
func (c *client) step(ctx context.Context, n int) bool {
	var req Request
	switch p := c.rnd.IntN(100); {
	case p < 22:
		req = Request{Kind: OpGet, Key: c.key()}
	case p < 32:
		k, e := c.rangeBounds()
		req = Request{Kind: OpRange, Key: k, End: e, Limit: int64(c.rnd.IntN(4))}
	case p < 57:
		req = Request{Kind: OpPut, Key: c.key()}
	case p < 80:
		k := c.key()
		req = Request{Kind: OpCAS, Key: k, ModRev: c.known[k]}
	case p < 93:
		if c.rnd.IntN(3) == 0 {
			k, e := c.rangeBounds()
			req = Request{Kind: OpDelete, Key: k, End: e}
		} else {
			req = Request{Kind: OpDelete, Key: c.key()}
		}
	default:
		req = Request{Kind: OpLeaseGrant, TTL: 120}
	}
	if (req.Kind == OpGet || req.Kind == OpRange) && c.w.PastReads > 0 && c.lastRev > 0 && c.rnd.IntN(100) < c.w.PastReads {
		req.Rev = max(1, c.lastRev-c.rnd.Int64N(c.w.PastWindow+1))
	}
	if req.Kind == OpPut || req.Kind == OpCAS {
		req.Value = fmt.Sprintf("c%d-%d", c.id, n)
	}
	octx, cancel := context.WithTimeout(ctx, c.w.OpTimeout)
	defer cancel()
	call := c.h.Now()
	resp, err := c.do(octx, req)
	if req.Rev != 0 {
		resp, err = refusal(resp, err)
		if err == nil {
			c.st.addPast(resp)
		}
	}
	if err != nil {
		msg := errString(err)
		c.st.add(req.Kind, msg)
		c.h.Record(c.id, req, call, Response{Unknown: true, Err: msg})
		return true
	}
	c.st.add(req.Kind, "")
	c.h.Record(c.id, req, call, resp)
	c.learn(req, resp)
	return false
}

func errString(err error) string {
	s, _ := status.FromError(err)
	msg := s.Code().String() + ": " + s.Message()
	if len(msg) > 100 {
		msg = msg[:100] + "…"
	}
	return msg
}

// refusal turns ErrCompacted and ErrFutureRev, definite answers of a read
// at a past revision or of a compaction, into responses.
func refusal(resp Response, err error) (Response, error) {
	switch rpctypes.Error(err) {
	case rpctypes.ErrCompacted:
		return Response{Compacted: true}, nil
	case rpctypes.ErrFutureRev:
		return Response{FutureRev: true}, nil
	}
	return resp, err
}

// Compact compacts at rev through conn (physically: it returns once the
// compacted rows are gone) and records the operation in h as client's.
func Compact(ctx context.Context, conn *grpc.ClientConn, h *History, client int, rev int64) Response {
	req := Request{Kind: OpCompact, Rev: rev}
	call := h.Now()
	var resp Response
	r, err := pb.NewKVClient(conn).Compact(ctx, &pb.CompactionRequest{Revision: rev, Physical: true}, waitReady)
	if err == nil {
		resp.Rev = r.Header.Revision
	}
	resp, err = refusal(resp, err)
	if err != nil {
		resp = Response{Unknown: true, Err: errString(err)}
	}
	h.Record(client, req, call, resp)
	return resp
}

func (c *client) learn(req Request, resp Response) {
	c.lastRev = max(c.lastRev, resp.Rev)
	if req.Rev != 0 {
		// Not the current state of the keys.
		return
	}
	switch req.Kind {
	case OpGet, OpRange:
		if req.Kind == OpGet && len(resp.KVs) == 0 {
			c.known[req.Key] = 0
		}
		for _, kv := range resp.KVs {
			c.known[kv.Key] = kv.Mod
		}
	case OpPut:
		c.known[req.Key] = resp.Rev
	case OpCAS:
		if resp.Succeeded {
			c.known[req.Key] = resp.Rev
		} else if len(resp.KVs) == 1 {
			c.known[req.Key] = resp.KVs[0].Mod
		} else {
			c.known[req.Key] = 0
		}
	case OpDelete:
		if req.End == "" {
			c.known[req.Key] = 0
		}
	}
}

func (c *client) do(ctx context.Context, req Request) (Response, error) {
	switch req.Kind {
	case OpGet, OpRange:
		r := &pb.RangeRequest{Key: []byte(req.Key), Limit: req.Limit, Revision: req.Rev}
		if req.End != "" {
			r.RangeEnd = []byte(req.End)
		}
		resp, err := c.kv.Range(ctx, r, waitReady)
		if err != nil {
			return Response{}, err
		}
		return Response{Rev: resp.Header.Revision, KVs: FromPB(resp.Kvs), Count: resp.Count, More: resp.More}, nil
	case OpPut:
		resp, err := c.kv.Put(ctx, &pb.PutRequest{Key: []byte(req.Key), Value: []byte(req.Value)}, waitReady)
		if err != nil {
			return Response{}, err
		}
		return Response{Rev: resp.Header.Revision}, nil
	case OpDelete:
		r := &pb.DeleteRangeRequest{Key: []byte(req.Key)}
		if req.End != "" {
			r.RangeEnd = []byte(req.End)
		}
		resp, err := c.kv.DeleteRange(ctx, r, waitReady)
		if err != nil {
			return Response{}, err
		}
		return Response{Rev: resp.Header.Revision, Deleted: resp.Deleted}, nil
	case OpCAS:
		key := []byte(req.Key)
		resp, err := c.kv.Txn(ctx, &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: key, Target: pb.Compare_MOD, Result: pb.Compare_EQUAL,
				TargetUnion: &pb.Compare_ModRevision{ModRevision: req.ModRev}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: []byte(req.Value)}}}},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: key}}}},
		}, waitReady)
		if err != nil {
			return Response{}, err
		}
		out := Response{Rev: resp.Header.Revision, Succeeded: resp.Succeeded}
		if !resp.Succeeded {
			if len(resp.Responses) != 1 || resp.Responses[0].GetResponseRange() == nil {
				return Response{}, fmt.Errorf("failed CAS answered %v, want one range response", resp.Responses)
			}
			out.KVs = FromPB(resp.Responses[0].GetResponseRange().Kvs)
		}
		return out, nil
	case OpLeaseGrant:
		resp, err := c.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: req.TTL}, waitReady)
		if err != nil {
			return Response{}, err
		}
		if resp.Error != "" {
			return Response{}, fmt.Errorf("lease grant: %s", resp.Error)
		}
		return Response{Rev: resp.Header.Revision}, nil
	}
	return Response{}, fmt.Errorf("unknown op %v", req.Kind)
}

// waitReady queues an operation while the connection is down (a killed
// server being restarted) instead of failing it at once: it is sent, or
// times out, once the server is back.
var waitReady = grpc.WaitForReady(true)

// FromPB converts etcd KeyValues.
func FromPB(kvs []*mvccpb.KeyValue) []KV {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]KV, len(kvs))
	for i, kv := range kvs {
		out[i] = KV{Key: string(kv.Key), Value: string(kv.Value), Create: kv.CreateRevision, Mod: kv.ModRevision, Ver: kv.Version, Lease: kv.Lease}
	}
	return out
}
