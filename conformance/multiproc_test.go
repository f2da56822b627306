package conformance

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestMultiProcess runs three shimd processes on one store with concurrent
// writers on all of them (3 clients per process, ~3 s): puts of distinct
// keys, overwrites and deletes of a client's own keys, puts and deletes of
// a few keys shared by all clients, and compare-and-swap increments
// (Txn If mod_revision == R Then Put n+1) of three hot counters. One watcher
// per process, from revision 1 with prev_kv over the whole keyspace, records
// everything. Then:
//
//   - every watcher received the same event stream, event by event;
//   - the stream's revisions are 2..final with no gap, each revision's events
//     together and no (revision, key) twice;
//   - the stream is self-consistent: each event's prev_kv, version and
//     create_revision follow from the events before it;
//   - every acknowledged write is in the stream at its revision, and (no
//     request failed) every event is an acknowledged write;
//   - a linearizable read of the keyspace on each process equals the state
//     replayed from the stream and the model of the acknowledged writes (the
//     last one by revision wins);
//   - each counter equals its number of successful CAS txns.
func TestMultiProcess(t *testing.T) {
	requireRealSUT(t)
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			var procs []*mpProc
			for i := 0; i < mpProcs; i++ {
				p := startOn(t, st, fmt.Sprintf("shimd%d", i))
				procs = append(procs, &mpProc{i: i, endpoint: p.Endpoint, cli: dialT(t, p.Endpoint)})
			}
			multiProcess(t, procs)
		})
	}
}

const (
	mpProcs      = 3
	mpClients    = 3 // per process
	mpHot        = 3 // CAS counters
	mpShared     = 8 // keys every client puts and deletes
	mpLoadPeriod = 3 * time.Second
	mpOpTimeout  = 15 * time.Second
)

type mpProc struct {
	i        int
	endpoint string
	cli      *clientv3.Client
	w        *mpWatcher
}

// mpWrite is an acknowledged write: a put (value) or a delete that removed
// the key, at revision rev.
type mpWrite struct {
	key, val string
	del      bool
	rev      int64
	who      string
}

// mpResult is what the clients observed.
type mpResult struct {
	mu        sync.Mutex
	writes    []mpWrite
	casOK     [mpHot]int
	casFailed int
	errs      []string
	nerr      int
	uncertain map[string]bool // keys with a failed (maybe applied) write
	ops       map[string]int
}

func (r *mpResult) ack(w mpWrite) {
	r.mu.Lock()
	r.writes = append(r.writes, w)
	r.mu.Unlock()
}

func (r *mpResult) fail(who, op, key string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nerr++
	r.uncertain[key] = true
	if len(r.errs) < 10 {
		r.errs = append(r.errs, fmt.Sprintf("%s: %s %q: %v", who, op, key, err))
	}
}

func (r *mpResult) count(op string) {
	r.mu.Lock()
	r.ops[op]++
	r.mu.Unlock()
}

func hotKey(i int) string    { return fmt.Sprintf("mp/hot/%d", i) }
func sharedKey(i int) string { return fmt.Sprintf("mp/shared/%02d", i) }

func multiProcess(t *testing.T, procs []*mpProc) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := &mpResult{uncertain: map[string]bool{}, ops: map[string]int{}}

	for _, p := range procs {
		p.w = startMPWatcher(ctx, p.cli)
	}
	// The counters start at "0", written through process 0.
	for i := 0; i < mpHot; i++ {
		octx, ocancel := context.WithTimeout(ctx, mpOpTimeout)
		r, err := procs[0].cli.Put(octx, hotKey(i), "0")
		ocancel()
		if err != nil {
			t.Fatalf("initial put %s: %v", hotKey(i), err)
		}
		res.ack(mpWrite{key: hotKey(i), val: "0", rev: r.Header.Revision, who: "init"})
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	deadline := time.Now().Add(mpLoadPeriod)
	var wg sync.WaitGroup
	for _, p := range procs {
		for c := 0; c < mpClients; c++ {
			cli, err := dial(p.endpoint) // one connection per client
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			wg.Add(1)
			go func(p *mpProc, c int, cli *clientv3.Client) {
				defer wg.Done()
				mpClient(ctx, cli, fmt.Sprintf("p%d-c%d", p.i, c), rand.New(rand.NewPCG(seed, uint64(p.i*100+c))), deadline, res)
			}(p, c, cli)
		}
	}
	wg.Wait()
	t.Logf("ops: %v; CAS successes per counter %v, CAS conflicts %d; %d acknowledged writes", res.ops, res.casOK, res.casFailed, len(res.writes))
	if res.nerr > 0 {
		t.Errorf("%d requests failed under concurrent load (no faults were injected), e.g.:\n  %s", res.nerr, strings.Join(res.errs, "\n  "))
	}

	// The final revision: the highest any process reports (a linearizable
	// read must see every acknowledged write).
	var final int64
	for _, w := range res.writes {
		final = max(final, w.rev)
	}
	reads := make([]*clientv3.GetResponse, len(procs))
	for i, p := range procs {
		octx, ocancel := context.WithTimeout(ctx, mpOpTimeout)
		g, err := p.cli.Get(octx, "mp/", clientv3.WithPrefix())
		ocancel()
		if err != nil {
			t.Fatalf("process %d: final read: %v", i, err)
		}
		if g.Header.Revision < final {
			t.Errorf("process %d: linearizable read after all writes returned revision %d, below the highest acknowledged revision %d (stale read)", i, g.Header.Revision, final)
		}
		reads[i] = g
	}
	for _, g := range reads {
		final = max(final, g.Header.Revision)
	}

	// Wait for every watcher to reach the final revision, then a little
	// longer to catch anything beyond it.
	for i, p := range procs {
		if err := p.w.waitRev(final, 30*time.Second); err != nil {
			t.Errorf("watcher on process %d: %v", i, err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	streams := make([][]*mvccpb.Event, len(procs))
	for i, p := range procs {
		streams[i] = p.w.stop()
	}
	if t.Failed() {
		for i, s := range streams {
			t.Logf("watcher %d: %d events, last revision %d", i, len(s), lastRev(s))
		}
	}

	// 1. Every watcher saw the same stream.
	for i := 1; i < len(streams); i++ {
		if d := diffStreams(streams[0], streams[i]); d != "" {
			t.Errorf("watcher on process %d differs from watcher on process 0: %s", i, d)
		}
	}
	for i, s := range streams {
		// 2. Gapless, grouped, duplicate-free.
		if err := checkRevisions(s, 2, final); err != nil {
			t.Errorf("watcher on process %d: %v", i, err)
		}
		// 3. Self-consistent.
		if err := checkReplay(s); err != nil {
			t.Errorf("watcher on process %d: %v", i, err)
		}
	}
	stream := streams[0]
	replayed, _ := replay(stream)

	// 4. Acknowledged writes against the stream.
	type rk struct {
		rev int64
		key string
	}
	byRevKey := map[rk]*mvccpb.Event{}
	for _, e := range stream {
		byRevKey[rk{e.Kv.ModRevision, string(e.Kv.Key)}] = e
	}
	ackedAt := map[rk]bool{}
	bad := 0
	for _, w := range res.writes {
		ackedAt[rk{w.rev, w.key}] = true
		e := byRevKey[rk{w.rev, w.key}]
		var why string
		switch {
		case e == nil:
			why = "no event for it in the stream"
		case w.del && e.Type != mvccpb.DELETE:
			why = fmt.Sprintf("the stream has a %v", e.Type)
		case !w.del && (e.Type != mvccpb.PUT || string(e.Kv.Value) != w.val):
			why = fmt.Sprintf("the stream has %v value %q", e.Type, e.Kv.Value)
		}
		if why != "" {
			if bad++; bad <= 10 {
				t.Errorf("acknowledged %s: %s", w, why)
			}
		}
	}
	if res.nerr == 0 {
		for _, e := range stream {
			if !ackedAt[rk{e.Kv.ModRevision, string(e.Kv.Key)}] {
				if bad++; bad <= 10 {
					t.Errorf("stream has %v %q at revision %d, which no client wrote (or was acknowledged at another revision)", e.Type, e.Kv.Key, e.Kv.ModRevision)
				}
			}
		}
	}

	// 5. Final state: each process's read = replayed stream = model.
	model := map[string]mpWrite{}
	for _, w := range res.writes {
		if cur, ok := model[w.key]; !ok || w.rev > cur.rev {
			model[w.key] = w
		}
	}
	for i, g := range reads {
		got := map[string]*mvccpb.KeyValue{}
		for _, kv := range g.Kvs {
			got[string(kv.Key)] = kv
		}
		for _, k := range sortedKeys(got) {
			kv := got[k]
			if want, ok := replayed[k]; !ok || !kvEqual(kv, want) {
				t.Errorf("process %d: final read has %s; the replayed stream has %s", i, kvString(kv), kvString(want))
			}
		}
		for _, k := range sortedKeys(replayed) {
			if want := replayed[k]; got[k] == nil {
				t.Errorf("process %d: final read lacks %s, present in the replayed stream", i, kvString(want))
			}
		}
		for _, k := range sortedKeys(model) {
			w := model[k]
			if res.uncertain[k] {
				continue
			}
			kv := got[k]
			switch {
			case w.del && kv != nil:
				t.Errorf("process %d: %q is present (%s) but was last deleted by acknowledged %s", i, k, kvString(kv), w)
			case !w.del && kv == nil:
				t.Errorf("process %d: %q is absent; last acknowledged write: %s", i, k, w)
			case !w.del && (string(kv.Value) != w.val || kv.ModRevision != w.rev):
				t.Errorf("process %d: %q is %s; last acknowledged write: %s", i, k, kvString(kv), w)
			}
		}
		// 6. CAS counters.
		for h := 0; h < mpHot; h++ {
			kv := got[hotKey(h)]
			want := strconv.Itoa(res.casOK[h])
			if kv == nil || string(kv.Value) != want {
				t.Errorf("process %d: counter %s = %s, want %s (successful CAS txns); lost or duplicated increments", i, hotKey(h), kvString(kv), want)
			}
		}
	}
	t.Logf("final revision %d; %d events per watcher", final, len(stream))
}

func (w mpWrite) String() string {
	if w.del {
		return fmt.Sprintf("delete %q at revision %d by %s", w.key, w.rev, w.who)
	}
	return fmt.Sprintf("put %q=%q at revision %d by %s", w.key, w.val, w.rev, w.who)
}

// mpClient issues random writes until deadline.
func mpClient(ctx context.Context, cli *clientv3.Client, who string, r *rand.Rand, deadline time.Time, res *mpResult) {
	var live []string // this client's keys that exist
	n := 0
	op := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, mpOpTimeout) }
	for time.Now().Before(deadline) {
		n++
		val := fmt.Sprintf("%s/%d", who, n)
		x := r.IntN(100)
		switch {
		case x < 35 || (x < 60 && len(live) == 0): // new key
			key := fmt.Sprintf("mp/own/%s/%05d", who, n)
			c, cancel := op()
			resp, err := cli.Put(c, key, val)
			cancel()
			res.count("put-new")
			if err != nil {
				res.fail(who, "put", key, err)
				continue
			}
			live = append(live, key)
			res.ack(mpWrite{key: key, val: val, rev: resp.Header.Revision, who: who})
		case x < 50: // overwrite an own key
			key := live[r.IntN(len(live))]
			c, cancel := op()
			resp, err := cli.Put(c, key, val)
			cancel()
			res.count("put-overwrite")
			if err != nil {
				res.fail(who, "put", key, err)
				continue
			}
			res.ack(mpWrite{key: key, val: val, rev: resp.Header.Revision, who: who})
		case x < 60: // delete an own key
			i := r.IntN(len(live))
			key := live[i]
			c, cancel := op()
			resp, err := cli.Delete(c, key)
			cancel()
			res.count("delete-own")
			if err != nil {
				res.fail(who, "delete", key, err)
				continue
			}
			live = append(live[:i], live[i+1:]...)
			if resp.Deleted != 1 {
				res.fail(who, "delete", key, fmt.Errorf("deleted %d keys, want 1 (the key was put by this client and not deleted since)", resp.Deleted))
				continue
			}
			res.ack(mpWrite{key: key, del: true, rev: resp.Header.Revision, who: who})
		case x < 75: // a shared key: put or delete
			key := sharedKey(r.IntN(mpShared))
			c, cancel := op()
			if r.IntN(2) == 0 {
				resp, err := cli.Put(c, key, val)
				cancel()
				res.count("put-shared")
				if err != nil {
					res.fail(who, "put", key, err)
					continue
				}
				res.ack(mpWrite{key: key, val: val, rev: resp.Header.Revision, who: who})
			} else {
				resp, err := cli.Delete(c, key)
				cancel()
				res.count("delete-shared")
				if err != nil {
					res.fail(who, "delete", key, err)
					continue
				}
				if resp.Deleted > 0 {
					res.ack(mpWrite{key: key, del: true, rev: resp.Header.Revision, who: who})
				}
			}
		default: // CAS increment of a counter
			h := r.IntN(mpHot)
			key := hotKey(h)
			c, cancel := op()
			g, err := cli.Get(c, key)
			if err != nil || len(g.Kvs) != 1 {
				cancel()
				res.fail(who, "get", key, fmt.Errorf("%v (kvs %v)", err, g))
				continue
			}
			cur, err := strconv.Atoi(string(g.Kvs[0].Value))
			if err != nil {
				cancel()
				res.fail(who, "get", key, fmt.Errorf("counter is not a number: %v", err))
				continue
			}
			next := strconv.Itoa(cur + 1)
			tr, err := cli.Txn(c).If(clientv3.Compare(clientv3.ModRevision(key), "=", g.Kvs[0].ModRevision)).
				Then(clientv3.OpPut(key, next)).Commit()
			cancel()
			res.count("cas")
			if err != nil {
				res.fail(who, "cas txn", key, err)
				continue
			}
			if !tr.Succeeded {
				res.mu.Lock()
				res.casFailed++
				res.mu.Unlock()
				continue
			}
			res.mu.Lock()
			res.casOK[h]++
			res.mu.Unlock()
			res.ack(mpWrite{key: key, val: next, rev: tr.Header.Revision, who: who + " (cas)"})
		}
	}
}

// mpWatcher records one watch over the whole keyspace from revision 1.
type mpWatcher struct {
	mu      sync.Mutex
	events  []*mvccpb.Event
	last    int64 // highest event revision
	err     error
	changed chan struct{}
	done    chan struct{}
	cancel  context.CancelFunc
}

func startMPWatcher(ctx context.Context, cli *clientv3.Client) *mpWatcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &mpWatcher{changed: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
	ch := cli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithPrevKV())
	go func() {
		defer close(w.done)
		for resp := range ch {
			w.mu.Lock()
			if err := resp.Err(); err != nil && w.err == nil {
				w.err = err
			}
			if resp.Canceled && w.err == nil {
				w.err = fmt.Errorf("watch canceled by the server")
			}
			for _, e := range resp.Events {
				w.events = append(w.events, (*mvccpb.Event)(e))
				w.last = max(w.last, e.Kv.ModRevision)
			}
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
		if ctx.Err() == nil {
			w.mu.Lock()
			if w.err == nil {
				w.err = fmt.Errorf("watch channel closed")
			}
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	return w
}

// waitRev waits until an event at revision rev or later arrived.
func (w *mpWatcher) waitRev(rev int64, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		last, err, ch := w.last, w.err, w.changed
		w.mu.Unlock()
		if last >= rev {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watch ended at revision %d before reaching %d: %v", last, rev, err)
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("no event at revision %d within %v (last event at %d)", rev, timeout, last)
		}
	}
}

// stop ends the watch and returns the events.
func (w *mpWatcher) stop() []*mvccpb.Event {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events
}

func lastRev(s []*mvccpb.Event) int64 {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1].Kv.ModRevision
}

// diffStreams returns "" if a and b are equal event by event.
func diffStreams(a, b []*mvccpb.Event) string {
	for i := 0; i < min(len(a), len(b)); i++ {
		if !evEqual(a[i], b[i]) {
			return fmt.Sprintf("event #%d: %s vs %s", i, evString(a[i]), evString(b[i]))
		}
	}
	if len(a) != len(b) {
		return fmt.Sprintf("%d events vs %d (last revisions %d and %d)", len(a), len(b), lastRev(a), lastRev(b))
	}
	return ""
}

// checkRevisions requires the events' revisions to be exactly first..last,
// non-decreasing (so each revision's events are together), with no
// (revision, key) twice.
func checkRevisions(s []*mvccpb.Event, first, last int64) error {
	var errs []string
	add := func(format string, a ...any) {
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, a...))
		}
	}
	seen := map[string]bool{}
	next := first // the lowest revision not seen yet
	var prev int64
	for i, e := range s {
		rev := e.Kv.ModRevision
		switch {
		case rev < prev:
			add("event #%d (%s) goes back from revision %d", i, evString(e), prev)
		case rev == prev:
		case rev == next:
			next++
		case rev > next:
			add("revisions %d..%d missing before event #%d (%s)", next, rev-1, i, evString(e))
			next = rev + 1
		}
		prev = max(prev, rev)
		k := fmt.Sprintf("%d/%q", rev, e.Kv.Key)
		if seen[k] {
			add("event #%d duplicates key %q at revision %d", i, e.Kv.Key, rev)
		}
		seen[k] = true
	}
	if next <= last {
		add("revisions %d..%d never arrived", next, last)
	}
	if prev > last {
		add("events beyond the final revision %d (up to %d)", last, prev)
	}
	if len(errs) > 0 {
		return fmt.Errorf("revision sequence broken:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// replay applies the events to an empty store, returning the final state and
// the first inconsistency: a prev_kv that is not the key's previous state, or
// a version/create_revision that does not follow from it.
func replay(s []*mvccpb.Event) (map[string]*mvccpb.KeyValue, error) {
	state := map[string]*mvccpb.KeyValue{}
	var errs []string
	for i, e := range s {
		k := string(e.Kv.Key)
		prev := state[k]
		if !kvEqual(prev, e.PrevKv) {
			if len(errs) < 10 {
				errs = append(errs, fmt.Sprintf("event #%d %s: prev_kv should be %s", i, evString(e), kvString(prev)))
			}
		}
		switch e.Type {
		case mvccpb.PUT:
			wantVer, wantCreate := int64(1), e.Kv.ModRevision
			if prev != nil {
				wantVer, wantCreate = prev.Version+1, prev.CreateRevision
			}
			if e.Kv.Version != wantVer || e.Kv.CreateRevision != wantCreate {
				if len(errs) < 10 {
					errs = append(errs, fmt.Sprintf("event #%d %s: want version %d create_revision %d", i, evString(e), wantVer, wantCreate))
				}
			}
			state[k] = e.Kv
		case mvccpb.DELETE:
			if prev == nil && len(errs) < 10 {
				errs = append(errs, fmt.Sprintf("event #%d deletes absent key %q", i, k))
			}
			delete(state, k)
		}
	}
	if len(errs) > 0 {
		return state, fmt.Errorf("stream inconsistent with itself:\n  %s", strings.Join(errs, "\n  "))
	}
	return state, nil
}

func checkReplay(s []*mvccpb.Event) error {
	_, err := replay(s)
	return err
}

func kvString(kv *mvccpb.KeyValue) string {
	if kv == nil {
		return "<absent>"
	}
	return fmt.Sprintf("{%q=%q create:%d mod:%d ver:%d lease:%d}", kv.Key, trunc(kv.Value), kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease)
}

func evString(e *mvccpb.Event) string {
	s := fmt.Sprintf("%v %s", e.Type, kvString(e.Kv))
	if e.PrevKv != nil {
		s += " prev " + kvString(e.PrevKv)
	}
	return s
}

func trunc(b []byte) []byte {
	if len(b) > 64 {
		return append(bytes.Clone(b[:61]), "..."...)
	}
	return b
}

// sortedKeys is for stable failure output.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// kvEqual compares every field of two key-values (nil equals only nil).
func kvEqual(a, b *mvccpb.KeyValue) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Version == b.Version && a.Lease == b.Lease
}

func evEqual(a, b *mvccpb.Event) bool {
	return a.Type == b.Type && kvEqual(a.Kv, b.Kv) && kvEqual(a.PrevKv, b.PrevKv)
}

// TestStreamChecks checks the stream checks themselves (no servers).
func TestStreamChecks(t *testing.T) {
	put := func(rev int64, key, val string, prev *mvccpb.KeyValue) *mvccpb.Event {
		kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val), ModRevision: rev, CreateRevision: rev, Version: 1}
		if prev != nil {
			kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
		}
		return &mvccpb.Event{Type: mvccpb.PUT, Kv: kv, PrevKv: prev}
	}
	del := func(rev int64, prev *mvccpb.KeyValue) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: prev.Key, ModRevision: rev}, PrevKv: prev}
	}
	a2 := put(2, "a", "1", nil)
	b3 := put(3, "b", "1", nil)
	a4 := put(4, "a", "2", a2.Kv)
	good := []*mvccpb.Event{a2, b3, a4, del(5, b3.Kv)}
	if err := checkRevisions(good, 2, 5); err != nil {
		t.Errorf("good stream: %v", err)
	}
	if err := checkReplay(good); err != nil {
		t.Errorf("good stream: %v", err)
	}
	for name, c := range map[string]struct {
		s           []*mvccpb.Event
		revs, repl  bool
		first, last int64
	}{
		"gap":          {[]*mvccpb.Event{a2, a4}, true, false, 2, 4},
		"duplicate":    {[]*mvccpb.Event{a2, b3, b3}, true, true, 2, 3},
		"backwards":    {[]*mvccpb.Event{a2, b3, a2}, true, true, 2, 3},
		"short":        {[]*mvccpb.Event{a2, b3}, true, false, 2, 4},
		"beyond":       {[]*mvccpb.Event{a2, b3}, true, false, 2, 2},
		"stale prev":   {[]*mvccpb.Event{a2, b3, put(4, "a", "2", nil)}, false, true, 2, 4},
		"delete twice": {[]*mvccpb.Event{a2, b3, del(4, b3.Kv), del(5, b3.Kv)}, false, true, 2, 5},
	} {
		if err := checkRevisions(c.s, c.first, c.last); (err != nil) != c.revs {
			t.Errorf("%s: checkRevisions = %v, want error %v", name, err, c.revs)
		}
		if err := checkReplay(c.s); (err != nil) != c.repl {
			t.Errorf("%s: checkReplay = %v, want error %v", name, err, c.repl)
		}
	}
	if d := diffStreams(good, good[:3]); d == "" {
		t.Error("diffStreams misses a missing event")
	}
	if d := diffStreams(good, []*mvccpb.Event{a2, b3, put(4, "a", "3", a2.Kv), good[3]}); d == "" {
		t.Error("diffStreams misses a changed value")
	}
}
