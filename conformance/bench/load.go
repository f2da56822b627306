package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	prefix   = "/registry/bench/"
	pageSize = 500
)

func key(i int) string { return fmt.Sprintf("%sk%07d", prefix, i) }

func keyIndex(k []byte) (int, bool) {
	if len(k) != len(prefix)+8 || string(k[:len(prefix)]) != prefix || k[len(prefix)] != 'k' {
		return 0, false
	}
	n, err := strconv.Atoi(string(k[len(prefix)+1:]))
	return n, err == nil
}

// values hands out random values of the configured sizes: windows of one
// random buffer (incompressible, like the protobuf and JSON objects of a
// real cluster are not, but without favouring a store that compresses).
type values struct {
	buf        []byte
	vmin, vmax int
}

func newValues(cfg *config) *values {
	r := rand.New(rand.NewPCG(uint64(cfg.seed), 0x5eed))
	v := &values{buf: make([]byte, 4<<20+cfg.vmax), vmin: cfg.vmin, vmax: cfg.vmax}
	for i := range v.buf {
		v.buf[i] = byte(r.Uint32())
	}
	return v
}

func (v *values) pick(r *rand.Rand) string {
	n := v.vmin
	if v.vmax > v.vmin {
		n += r.IntN(v.vmax - v.vmin + 1)
	}
	off := r.IntN(len(v.buf) - v.vmax)
	return string(v.buf[off : off+n])
}

// load runs the phases against one server.
type load struct {
	cfg      *config
	clis     []*clientv3.Client
	wcli     *clientv3.Client
	endpoint string
	pid      int
	vals     *values
	m        map[string]float64
	prof     *profiler
	dataDir  string
	kind     string // "etcd", "sqlite" or "server" (PostgreSQL, MariaDB)
	name     string
	// kine: kine 0.16.4 serves only kube-apiserver's exact request shapes,
	// so the delete carries its Else Get and the watch phase writes with
	// the update Txn (see there); etcd and shimd get the load unchanged.
	kine bool

	rev  []int64 // each key's mod revision, as the last write returned it
	accs map[string]*acc
}

// step is one phase of the load. A sliced phase is run in parts (the
// keys, or the repetitions, split evenly), so that the targets can take
// turns at it; its results are recorded after the last part.
type step struct {
	name   string
	sliced bool
	fn     func(l *load, ctx context.Context, name string, part, parts int) error
}

// steps lists the phases in order, the history rounds included.
func (cfg *config) steps() []step {
	steps := []step{{"create", true, (*load).create}}
	for h := 1; h < cfg.history; h++ {
		steps = append(steps, step{fmt.Sprintf("history%d", h), false, (*load).update})
	}
	return append(steps, []step{
		{"update", true, (*load).update},
		{"get", true, (*load).get},
		{"list", true, (*load).list},
		{"stream", true, (*load).stream},
		{"count", true, (*load).count},
		{"watch", false, (*load).watch},
		{"delete", true, (*load).delete},
		{"recreate", false, (*load).create},
		{"compact", false, (*load).compact},
	}...)
}

// acc accumulates a phase's parts.
type acc struct {
	lat       []time.Duration
	n         int
	wall      time.Duration // of the parts, summed
	cpu, self time.Duration
	metrics   map[string]float64 // /metrics deltas
}

func (l *load) acc(name string) *acc {
	if l.accs == nil {
		l.accs = map[string]*acc{}
	}
	a := l.accs[name]
	if a == nil {
		a = &acc{}
		l.accs[name] = a
	}
	return a
}

// span is part's share of [0, n).
func span(n, part, parts int) (int, int) { return part * n / parts, (part + 1) * n / parts }

// step runs one part of a phase, bounded by the phase timeout, and records
// the server's and the benchmark's CPU time during it.
func (l *load) step(ctx context.Context, s step, part, parts int) error {
	cfg := l.cfg
	measured := isMeasured(s.name)
	pctx, cancel := context.WithTimeout(ctx, cfg.phaseTimeout)
	defer cancel()
	var before map[string]float64
	if measured {
		before = scrape(l.endpoint) // outside the measured CPU and time
		name := s.name
		if parts > 1 {
			name = fmt.Sprintf("%s-%d", s.name, part+1)
		}
		l.prof.start(name)
	}
	cpu0, self0 := cpuTime(l.pid), cpuTime(os.Getpid())
	t0 := time.Now()
	err := s.fn(l, pctx, s.name, part, parts)
	wall := time.Since(t0)
	cpu, self := cpuTime(l.pid)-cpu0, cpuTime(os.Getpid())-self0
	timedOut := pctx.Err() != nil && ctx.Err() == nil
	a := l.acc(s.name)
	if measured {
		l.prof.stop()
		if after := scrape(l.endpoint); before != nil && after != nil {
			if a.metrics == nil {
				a.metrics = map[string]float64{}
			}
			diff(a.metrics, before, after)
		}
	}
	if err != nil {
		if timedOut {
			err = fmt.Errorf("%w (phase timeout %v)", err, cfg.phaseTimeout)
		}
		return fmt.Errorf("%s: %w", s.name, err)
	}
	a.cpu += cpu
	a.self += self
	a.wall += wall
	if part < parts-1 {
		return nil
	}
	if measured {
		metricFigures(l.m, s.name, a.metrics)
		l.m[s.name+".cpu"] = a.cpu.Seconds()
		l.m[s.name+".clientcpu"] = a.self.Seconds()
		l.m[s.name+".wall"] = a.wall.Seconds()
	}
	logf("  %-8s %-9s %6.2fs  CPU server %5.2fs bench %5.2fs  %s", l.name, s.name, a.wall.Seconds(), a.cpu.Seconds(), a.self.Seconds(), l.summary(s.name))
	// The memory after each phase, so that the phase where RSS peaks shows.
	logf("  %-8s %-9s %s", l.name, s.name, memory(l.pid, l.endpoint))
	return nil
}

// isMeasured tells the phases in the table from the preparation steps.
func isMeasured(phase string) bool {
	return phase != "recreate" && !strings.HasPrefix(phase, "history")
}

func (l *load) summary(phase string) string {
	m := l.m
	switch phase {
	case "create", "update", "get", "delete":
		s := fmt.Sprintf("%.0f ops/s, p50 %.2f ms, p99 %.2f ms", m[phase+".ops"], m[phase+".p50"], m[phase+".p99"])
		if b, ok := m[phase+".batch"]; ok {
			s += fmt.Sprintf(", batch %.1f", b)
		}
		if c, ok := m[phase+".commitms"]; ok {
			s += fmt.Sprintf(", commit %.2f ms ×%.0f", c, m[phase+".commits"])
		}
		if f, ok := m[phase+".fsyncms"]; ok {
			s += fmt.Sprintf(", wal fsync %.2f ms ×%.0f", f, m[phase+".fsyncs"])
		}
		return s
	case "list", "count", "watch":
		return fmt.Sprintf("p50 %.2f ms, p99 %.2f ms", m[phase+".p50"], m[phase+".p99"])
	case "stream":
		return fmt.Sprintf("p50 %.2f ms, p99 %.2f ms, RSS growth %.1f MiB", m["stream.p50"], m["stream.p99"], m["stream.rss"]/(1<<20))
	case "compact":
		return fmt.Sprintf("compact %.0f ms, defrag %.0f ms, DbSize %.0f → %.0f B/key, files %.0f B/key", m["compact.ms"], m["defrag.ms"], m["disk.before"], m["disk.after"], m["files.after"])
	}
	return ""
}

type opFunc func(ctx context.Context, cli *clientv3.Client, r *rand.Rand, i int) error

// parallel calls op(i) for the part's share of the keys from cfg.clients
// goroutines, each request bounded by the request timeout. After the last
// part it records, under name, the throughput (keys over the parts' summed
// time) and the latency percentiles.
func (l *load) parallel(ctx context.Context, name string, part, parts int, op opFunc) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lo, hi := span(l.cfg.keys, part, parts)
	var next atomic.Int64
	next.Store(int64(lo))
	var wg sync.WaitGroup
	lats := make([][]time.Duration, l.cfg.clients)
	errs := make([]error, l.cfg.clients)
	t0 := time.Now()
	for w := 0; w < l.cfg.clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cli := l.clis[w%len(l.clis)]
			r := rand.New(rand.NewPCG(uint64(l.cfg.seed), uint64(part<<16|w)))
			for {
				i := int(next.Add(1) - 1)
				if i >= hi || ctx.Err() != nil {
					return
				}
				octx, ocancel := context.WithTimeout(ctx, l.cfg.opTimeout)
				s := time.Now()
				err := op(octx, cli, r, i)
				d := time.Since(s)
				ocancel()
				if err != nil {
					errs[w] = fmt.Errorf("%s: %w", key(i), err)
					cancel()
					return
				}
				lats[w] = append(lats[w], d)
			}
		}(w)
	}
	wg.Wait()
	wall := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		for _, e := range errs { // the first real error, not the cancellations it caused
			if e != nil && !errors.Is(e, context.Canceled) {
				return e
			}
		}
		return err
	}
	if !isMeasured(name) {
		return nil
	}
	a := l.acc(name + ".ops")
	for _, ls := range lats {
		a.lat = append(a.lat, ls...)
	}
	a.n += hi - lo
	a.wall += wall
	if part == parts-1 {
		l.m[name+".ops"] = float64(a.n) / a.wall.Seconds()
		l.record(name, a.lat)
	}
	return nil
}

// record stores the p50 and p99 of lat, in milliseconds.
func (l *load) record(name string, lat []time.Duration) {
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	l.m[name+".p50"] = ms(pct(lat, 0.50))
	l.m[name+".p99"] = ms(pct(lat, 0.99))
}

func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// create: Txn If mod_revision(key)==0 Then Put (kube-apiserver's create).
func (l *load) create(ctx context.Context, name string, part, parts int) error {
	return l.parallel(ctx, name, part, parts, func(ctx context.Context, cli *clientv3.Client, r *rand.Rand, i int) error {
		k := key(i)
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, l.vals.pick(r))).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return errors.New("create: the key exists")
		}
		l.rev[i] = resp.Header.Revision
		return nil
	})
}

// update: Txn If mod_revision==R Then Put Else Get (kube-apiserver's
// GuaranteedUpdate).
func (l *load) update(ctx context.Context, name string, part, parts int) error {
	return l.parallel(ctx, name, part, parts, func(ctx context.Context, cli *clientv3.Client, r *rand.Rand, i int) error {
		k := key(i)
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", l.rev[i])).
			Then(clientv3.OpPut(k, l.vals.pick(r))).Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return fmt.Errorf("update: unexpected conflict (expected mod_revision %d)", l.rev[i])
		}
		l.rev[i] = resp.Header.Revision
		return nil
	})
}

// get: a single-key linearizable Range.
func (l *load) get(ctx context.Context, name string, part, parts int) error {
	return l.parallel(ctx, name, part, parts, func(ctx context.Context, cli *clientv3.Client, r *rand.Rand, i int) error {
		resp, err := cli.Get(ctx, key(i))
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 || resp.Kvs[0].ModRevision != l.rev[i] {
			return fmt.Errorf("get: %d kvs", len(resp.Kvs))
		}
		return nil
	})
}

// delete: Txn If mod_revision==R Then DeleteRange (on kine, Else Get as
// kube-apiserver sends it: kine rejects the Txn without it as unsupported;
// the Else branch costs nothing when the compare holds).
func (l *load) delete(ctx context.Context, name string, part, parts int) error {
	return l.parallel(ctx, name, part, parts, func(ctx context.Context, cli *clientv3.Client, r *rand.Rand, i int) error {
		k := key(i)
		txn := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", l.rev[i])).Then(clientv3.OpDelete(k))
		if l.kine {
			txn = txn.Else(clientv3.OpGet(k))
		}
		resp, err := txn.Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded || resp.Responses[0].GetResponseDeleteRange().Deleted != 1 {
			return fmt.Errorf("delete: not deleted (succeeded=%v)", resp.Succeeded)
		}
		return nil
	})
}

// list: kube-apiserver's paginated LIST, --list-reps times, one after the
// other; the time of each full list.
func (l *load) list(ctx context.Context, name string, part, parts int) error {
	end := clientv3.GetPrefixRangeEnd(prefix)
	cli := l.clis[0]
	var lat []time.Duration
	lo, hi := span(l.cfg.listReps, part, parts)
	for rep := lo; rep < hi; rep++ {
		t0 := time.Now()
		k, rev, total := prefix, int64(0), 0
		for {
			octx, cancel := context.WithTimeout(ctx, l.cfg.opTimeout)
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := cli.Get(octx, k, opts...)
			cancel()
			if err != nil {
				return err
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			total += len(resp.Kvs)
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			k = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		lat = append(lat, time.Since(t0))
		if total != l.cfg.keys {
			return fmt.Errorf("list returned %d keys, want %d", total, l.cfg.keys)
		}
	}
	l.recordParts(name, lat, part, parts)
	return nil
}

// stream: the full list as one RangeStream (etcd 3.7), --list-reps times;
// the time of each, and the server's largest RSS growth above what it had
// before the list, sampled every 5 ms. kine has no RangeStream.
func (l *load) stream(ctx context.Context, name string, part, parts int) error {
	if l.kine {
		return fmt.Errorf("kine has no RangeStream")
	}
	cli := l.clis[0]
	var lat []time.Duration
	lo, hi := span(l.cfg.listReps, part, parts)
	for rep := lo; rep < hi; rep++ {
		before := rssKiB(l.pid)
		stop := sampleRSS(l.pid)
		t0 := time.Now()
		octx, cancel := context.WithTimeout(ctx, l.cfg.opTimeout)
		ch, err := cli.GetStream(octx, prefix, clientv3.WithPrefix())
		total := 0
		if err == nil {
			for resp := range ch {
				if err = resp.Err(); err != nil {
					break
				}
				total += len(resp.Kvs)
			}
		}
		cancel()
		lat = append(lat, time.Since(t0))
		growth := float64(stop()-before) * 1024 // bytes
		if err != nil {
			return err
		}
		if total != l.cfg.keys {
			return fmt.Errorf("RangeStream returned %d keys, want %d", total, l.cfg.keys)
		}
		l.m["stream.rss"] = max(l.m["stream.rss"], growth)
	}
	l.recordParts(name, lat, part, parts)
	return nil
}

// recordParts records the percentiles of a repeated phase after its last
// part.
func (l *load) recordParts(name string, lat []time.Duration, part, parts int) {
	a := l.acc(name + ".lat")
	a.lat = append(a.lat, lat...)
	if part == parts-1 {
		l.record(name, a.lat)
	}
}

// count: count_only over the prefix, --count-reps times.
func (l *load) count(ctx context.Context, name string, part, parts int) error {
	cli := l.clis[0]
	var lat []time.Duration
	lo, hi := span(l.cfg.countReps, part, parts)
	for rep := lo; rep < hi; rep++ {
		octx, cancel := context.WithTimeout(ctx, l.cfg.opTimeout)
		t0 := time.Now()
		resp, err := cli.Get(octx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		lat = append(lat, time.Since(t0))
		cancel()
		if err != nil {
			return err
		}
		if resp.Count != int64(l.cfg.keys) {
			return fmt.Errorf("count %d, want %d", resp.Count, l.cfg.keys)
		}
	}
	l.recordParts(name, lat, part, parts)
	return nil
}

// watch: one watcher on the prefix (its own connection), then --watch-puts
// puts to existing keys at --watch-rate per second from one client; the
// latency from sending a put to receiving its event. On kine the writes are
// the update Txn instead: kine 0.16.4's Put of an existing key calls its
// update with the store's revision where the key's mod revision belongs, so
// it writes nothing (and returns no error) unless the key was the last one
// written.
func (l *load) watch(ctx context.Context, name string, _, _ int) error {
	cfg := l.cfg
	octx, cancel := context.WithTimeout(ctx, cfg.opTimeout)
	resp, err := l.clis[0].Get(octx, "bench-watch-start")
	cancel()
	if err != nil {
		return err
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	wch := l.wcli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1), clientv3.WithCreatedNotify())
	select {
	case wr, ok := <-wch:
		if !ok || !wr.Created {
			return fmt.Errorf("watch not created: %v", wr.Err())
		}
	case <-time.After(cfg.opTimeout):
		return errors.New("watch not created in time")
	}

	n := min(cfg.watchPuts, cfg.keys)
	sentAt := make([]atomic.Int64, cfg.keys)
	lat := make([]time.Duration, 0, n)
	var got atomic.Int64
	done := make(chan error, 1)
	go func() {
		for wr := range wch {
			if err := wr.Err(); err != nil {
				done <- err
				return
			}
			now := time.Now().UnixNano()
			for _, ev := range wr.Events {
				i, ok := keyIndex(ev.Kv.Key)
				if !ok || ev.Type != clientv3.EventTypePut {
					continue
				}
				if t := sentAt[i].Load(); t != 0 {
					lat = append(lat, time.Duration(now-t))
					got.Add(1)
				}
			}
			if len(lat) >= n {
				done <- nil
				return
			}
		}
		done <- errors.New("watch channel closed")
	}()

	r := rand.New(rand.NewPCG(uint64(cfg.seed), 0xa7c4))
	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.watchRate))
	defer tick.Stop()
	for j := 0; j < n; j++ {
		select {
		case <-tick.C:
		case err := <-done:
			return fmt.Errorf("watch ended early: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		}
		i := j * (cfg.keys / n)
		k := key(i)
		octx, cancel := context.WithTimeout(ctx, cfg.opTimeout)
		sentAt[i].Store(time.Now().UnixNano())
		var rev int64
		if l.kine {
			resp, err := l.clis[0].Txn(octx).If(clientv3.Compare(clientv3.ModRevision(k), "=", l.rev[i])).
				Then(clientv3.OpPut(k, l.vals.pick(r))).Else(clientv3.OpGet(k)).Commit()
			if err == nil && !resp.Succeeded {
				err = fmt.Errorf("update: unexpected conflict (expected mod_revision %d)", l.rev[i])
			}
			if err != nil {
				cancel()
				return err
			}
			rev = resp.Header.Revision
		} else {
			resp, err := l.clis[0].Put(octx, k, l.vals.pick(r))
			if err != nil {
				cancel()
				return err
			}
			rev = resp.Header.Revision
		}
		cancel()
		l.rev[i] = rev
	}
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-time.After(cfg.opTimeout):
		return fmt.Errorf("watch: %d of %d events after %v", got.Load(), n, cfg.opTimeout)
	}
	l.record(name, lat)
	return nil
}

// compact: (after the recreate step) DbSize, then Compact at the current
// revision (physical) and Defragment, both timed, then DbSize and the
// database files' size, per key.
func (l *load) compact(ctx context.Context, name string, _, _ int) error {
	cli := l.clis[0]
	n := float64(l.cfg.keys)
	octx, cancel := context.WithTimeout(ctx, l.cfg.opTimeout)
	st, err := cli.Status(octx, l.endpoint)
	cancel()
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	l.m["disk.before"] = float64(st.DbSize) / n
	rev := st.Header.Revision
	if rev == 0 { // kine's Status has an empty header: ask a Range
		octx, cancel := context.WithTimeout(ctx, l.cfg.opTimeout)
		resp, err := cli.Get(octx, "bench-compact-revision")
		cancel()
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		rev = resp.Header.Revision
	}

	t0 := time.Now()
	cctx, cancel := context.WithTimeout(ctx, l.cfg.phaseTimeout)
	_, err = cli.Compact(cctx, rev, clientv3.WithCompactPhysical())
	cancel()
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	l.m["compact.ms"] = ms(time.Since(t0))

	t0 = time.Now()
	dctx, cancel := context.WithTimeout(ctx, l.cfg.phaseTimeout)
	_, err = cli.Defragment(dctx, l.endpoint)
	cancel()
	if err != nil {
		return fmt.Errorf("defragment: %w", err)
	}
	l.m["defrag.ms"] = ms(time.Since(t0))

	octx, cancel = context.WithTimeout(ctx, l.cfg.opTimeout)
	st, err = cli.Status(octx, l.endpoint)
	cancel()
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	l.m["disk.after"] = float64(st.DbSize) / n
	if files := l.dbFiles(); files > 0 {
		l.m["files.after"] = float64(files) / n
	}
	return nil
}

// dbFiles is the size of the database files in the data dir: etcd's bbolt
// file (member/snap/db; its WAL is not counted), or all of SQLite's files
// (database, -wal, -shm). 0 for a server database.
func (l *load) dbFiles() int64 {
	switch l.kind {
	case "server":
		return 0
	case "etcd":
		fi, err := os.Stat(filepath.Join(l.dataDir, "member", "snap", "db"))
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	var total int64
	filepath.Walk(l.dataDir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
		return nil
	})
	return total
}
