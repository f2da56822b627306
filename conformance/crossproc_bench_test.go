package conformance

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// BenchmarkCrossProcessLatency measures, on each shared backend, the time
// from sending a put to shimd process A until a watcher on process B (same
// store) receives the event: A's commit plus B's discovery of it (PostgreSQL:
// LISTEN/NOTIFY; MariaDB: A's wake-up datagram, package peerwake; polling
// every --db-poll-interval, default 100 ms, is the fallback of both).
// One put at a time; reports p50/p99/max in µs (ns/op is the mean).
//
// The loop is closed (the next put is sent as soon as the event arrived, that
// is right after B's poll found it), so with polling the figure is close to
// the full poll interval, the worst case, rather than half of it on average.
// SHIMD_BENCH_DB_POLL_INTERVAL=10ms passes --db-poll-interval to both
// processes. With the default -benchtime a polled backend gets only ~10
// iterations; use a count:
//
//	go test -run '^$' -bench Latency -benchtime 200x
func BenchmarkCrossProcessLatency(b *testing.B) {
	requireRealSUT(b)
	for _, bk := range sharedBackends() {
		latencyBench(b, bk, true)
	}
}

// BenchmarkSameProcessLatency is the same with the watcher on process A
// itself, on every backend, for reference.
func BenchmarkSameProcessLatency(b *testing.B) {
	requireSUT(b)
	for _, bk := range harness.Backends() {
		latencyBench(b, bk, false)
	}
}

// latEnv is one benchmark's servers, set up once for all of the sub-benchmark's
// runs (the testing package calls it again for every b.N it tries).
type latEnv struct {
	put   *clientv3.Client
	watch clientv3.WatchChan
	err   error
	n     int
}

func latencyBench(b *testing.B, bk harness.Backend, cross bool) {
	var env *latEnv
	parent := b
	b.Run(bk.Name, func(b *testing.B) {
		needBackend(b, bk)
		if env == nil {
			env = setupLatency(parent, bk, cross)
		}
		if env.err != nil {
			b.Fatal(env.err)
		}
		lat := make([]time.Duration, 0, b.N)
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			env.n++
			key := fmt.Sprintf("lat/%09d", env.n)
			start := time.Now()
			if _, err := env.put.Put(ctx, key, "x"); err != nil {
				b.Fatalf("put: %v", err)
			}
			if err := waitKey(env.watch, key, 10*time.Second); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		slices.Sort(lat)
		pct := func(p float64) float64 {
			return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) / 1e3
		}
		b.ReportMetric(pct(0.50), "p50-µs")
		b.ReportMetric(pct(0.99), "p99-µs")
		b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds())/1e3, "max-µs")
	})
}

// setupLatency starts the server(s) on a fresh store, cleaned up when parent
// ends, and opens the watch.
func setupLatency(parent *testing.B, bk harness.Backend, cross bool) *latEnv {
	env := &latEnv{}
	st, err := harness.NewStore(bk)
	if err != nil {
		env.err = err
		return env
	}
	parent.Cleanup(func() { _ = st.Drop() })
	start := func(name string) *harness.Process {
		p := &harness.Process{Bin: sutBin, DataDir: tempDir(parent, name), Backend: st.Backend}
		if v := os.Getenv("SHIMD_BENCH_DB_POLL_INTERVAL"); v != "" && bk.IsShared() {
			p.ExtraArgs = []string{"--db-poll-interval", v}
		}
		if err := p.Start(); err != nil && env.err == nil {
			env.err = err
		}
		parent.Cleanup(func() { _ = p.Stop() })
		return p
	}
	a := start("a")
	w := a
	if cross {
		w = start("b")
	}
	if env.err == nil && cross && bk.Kind == harness.KindMySQL {
		// Measure the wake-ups, not the moment before A has listed B.
		env.err = waitWakePeers(a.Endpoint, 1, 10*time.Second)
	}
	if env.err != nil {
		return env
	}
	if env.put, err = dial(a.Endpoint); err != nil {
		env.err = err
		return env
	}
	parent.Cleanup(func() { env.put.Close() })
	wcli, err := dial(w.Endpoint)
	if err != nil {
		env.err = err
		return env
	}
	ctx, cancel := context.WithCancel(context.Background())
	parent.Cleanup(func() { cancel(); wcli.Close() })
	env.watch = wcli.Watch(ctx, "lat/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	select {
	case r := <-env.watch:
		if !r.Created {
			env.err = fmt.Errorf("watch: first response is not a creation: %+v", r)
		}
	case <-time.After(10 * time.Second):
		env.err = fmt.Errorf("watch not created within 10s")
	}
	// Warm up connections and the follower.
	for i := 0; i < 5 && env.err == nil; i++ {
		env.n++
		key := fmt.Sprintf("lat/%09d", env.n)
		if _, err := env.put.Put(ctx, key, "x"); err != nil {
			env.err = err
		} else {
			env.err = waitKey(env.watch, key, 10*time.Second)
		}
	}
	return env
}

// waitKey reads the watch until an event for key arrives.
func waitKey(ch clientv3.WatchChan, key string, timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return fmt.Errorf("watch closed")
			}
			if err := r.Err(); err != nil {
				return err
			}
			for _, e := range r.Events {
				if string(e.Kv.Key) == key {
					return nil
				}
			}
		case <-deadline:
			return fmt.Errorf("no event for %s within %v", key, timeout)
		}
	}
}
