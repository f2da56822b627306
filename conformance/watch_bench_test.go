package conformance

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Watch benchmarks. Both servers run as subprocesses on the same machine:
// etcd 3.6.16 through internal/fakeshimd (which, unlike the in-process
// reference of the tests, fsyncs like a real etcd), and the server under
// test. Memory is therefore measured the same way on both, as the growth of
// the process's VmRSS (/proc/<pid>/status). Run them alone:
//
//	go test -run '^$' -bench Watch .
//
// (Each memory iteration adds 10,000 watchers: the default -benchtime makes
// that 10-20 iterations; a count like -benchtime 200x would mean 2,000,000.)
//
// BenchmarkWatchLatency: time from sending a Put to receiving its event on
// every watcher (all watchers watch one prefix; 1,000 watchers are spread
// over 10 streams on one connection; the writer has its own connection).
// Each iteration is one put, sent after the previous one reached every
// watcher. Reported: p50-µs and p99-µs over all (put, watcher) pairs.
//
// BenchmarkWatchMemory: RSS growth per watcher while creating 10,000
// watchers on distinct keys (10 streams of 1,000), on a fresh server; each
// iteration adds 10,000 more. Reported: bytes/watcher.

type benchServer struct {
	name string
	proc *harness.Process
	cli  *clientv3.Client
}

// etcdBinary builds the etcd stand-in into b's temporary directory (the
// self-test has built it already).
func etcdBinary(b *testing.B) string {
	b.Helper()
	if testing.Short() {
		b.Skip("starts servers")
	}
	if sutBuildErr != nil {
		b.Fatalf("cannot build the server under test: %v", sutBuildErr)
	}
	if harness.EnvBool(envSelfTest) {
		return sutBin
	}
	bin, err := harness.Build(".", "./internal/fakeshimd", b.TempDir(), "fakeshimd")
	if err != nil {
		b.Fatal(err)
	}
	return bin
}

// benchServers starts etcd (etcdBin) and the server under test as
// subprocesses, stopped when b ends.
func benchServers(b *testing.B, etcdBin string) []*benchServer {
	b.Helper()
	var out []*benchServer
	for _, s := range []struct{ name, bin string }{{"etcd", etcdBin}, {sutName, sutBin}} {
		p, err := harness.StartProcess(s.bin, b.TempDir(), harness.Backend{Name: "sqlite"}, harness.Options{})
		if err != nil {
			b.Fatalf("start %s: %v", s.name, err)
		}
		b.Cleanup(func() { _ = p.Stop() })
		cli, err := dial(p.Endpoint)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cli.Close() })
		out = append(out, &benchServer{name: s.name, proc: p, cli: cli})
	}
	return out
}

func BenchmarkWatchLatency(b *testing.B) {
	servers := benchServers(b, etcdBinary(b))
	for _, n := range []int{1, 1000} {
		for _, srv := range servers {
			b.Run(fmt.Sprintf("watchers=%d/%s", n, srv.name), func(b *testing.B) { benchLatency(b, srv, n) })
		}
	}
}

func benchLatency(b *testing.B, srv *benchServer, watchers int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wcli, err := dial(srv.proc.Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer wcli.Close()
	prefix := fmt.Sprintf("lat/%d/", time.Now().UnixNano())
	streams := min(10, watchers)

	type recv struct {
		rev int64
		at  time.Time
	}
	var (
		mu       sync.Mutex
		recvs    []recv
		received atomic.Int64
		kick     = make(chan struct{}, 1)
	)
	wc := pb.NewWatchClient(wcli.ActiveConnection())
	created := 0
	for s := 0; s < streams; s++ {
		st, err := wc.Watch(ctx, maxRecv)
		if err != nil {
			b.Fatal(err)
		}
		per := watchers / streams
		for i := 0; i < per; i++ {
			if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: wcreate(prefix, prefixEnd(prefix), 0)}}); err != nil {
				b.Fatal(err)
			}
		}
		for i := 0; i < per; i++ {
			r, err := st.Recv()
			if err != nil || !r.Created || r.Canceled {
				b.Fatalf("%s: create watcher: %v %v", srv.name, respLine(r), err)
			}
		}
		created += per
		go func() {
			for {
				r, err := st.Recv()
				if err != nil {
					return
				}
				now := time.Now()
				mu.Lock()
				for _, e := range r.Events {
					recvs = append(recvs, recv{e.Kv.ModRevision, now})
				}
				mu.Unlock()
				received.Add(int64(len(r.Events)))
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}()
	}
	if created != watchers {
		b.Fatalf("created %d watchers, want %d", created, watchers)
	}
	sent := map[int64]time.Time{}
	var want int64
	put := func(i int) {
		t0 := time.Now()
		resp, err := srv.cli.Put(ctx, prefix+strconv.Itoa(i%100), "v")
		if err != nil {
			b.Fatalf("%s: put: %v", srv.name, err)
		}
		sent[resp.Header.Revision] = t0
		want += int64(watchers)
		deadline := time.After(time.Minute)
		for received.Load() < want {
			select {
			case <-kick:
			case <-deadline:
				b.Fatalf("%s: %d of %d events after a minute", srv.name, received.Load(), want)
			}
		}
	}
	for i := 0; i < 20; i++ { // warm up
		put(i)
	}
	mu.Lock()
	recvs = recvs[:0]
	mu.Unlock()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		put(i)
	}
	b.StopTimer()
	mu.Lock()
	lat := make([]time.Duration, 0, len(recvs))
	for _, r := range recvs {
		if t0, ok := sent[r.rev]; ok {
			lat = append(lat, r.at.Sub(t0))
		}
	}
	mu.Unlock()
	if len(lat) != b.N*watchers {
		b.Fatalf("%s: %d samples, want %d", srv.name, len(lat), b.N*watchers)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(us(lat[len(lat)/2]), "p50-µs")
	b.ReportMetric(us(lat[len(lat)*99/100]), "p99-µs")
}

func BenchmarkWatchMemory(b *testing.B) {
	etcdBin := etcdBinary(b)
	for _, name := range []string{"etcd", sutName} {
		b.Run(name, func(b *testing.B) {
			// A fresh pair per run, so earlier benchmarks do not shape the heap.
			var srv *benchServer
			for _, s := range benchServers(b, etcdBin) {
				if s.name == name {
					srv = s
				} else {
					_ = s.proc.Stop()
				}
			}
			benchMemory(b, srv)
		})
	}
}

func benchMemory(b *testing.B, srv *benchServer) {
	const (
		perIter = 10000
		streams = 10
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wcli, err := dial(srv.proc.Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer wcli.Close()
	wc := pb.NewWatchClient(wcli.ActiveConnection())
	// Warm up: a stream with a few watchers, and the baseline after it.
	warm, err := wc.Watch(ctx, maxRecv)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		_ = warm.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: wcreate(fmt.Sprintf("mem/warm/%d", i), "", 0)}})
		if _, err := warm.Recv(); err != nil {
			b.Fatal(err)
		}
	}
	base := vmRSS(b, srv.proc.Pid())
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		var wg sync.WaitGroup
		errs := make(chan error, streams)
		for s := 0; s < streams; s++ {
			st, err := wc.Watch(ctx, maxRecv)
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perIter/streams; i++ {
					key := fmt.Sprintf("mem/%d/%d/%05d", it, s, i)
					if err := st.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: wcreate(key, "", 0)}}); err != nil {
						errs <- err
						return
					}
				}
				for i := 0; i < perIter/streams; i++ {
					r, err := st.Recv()
					if err != nil {
						errs <- err
						return
					}
					if !r.Created || r.Canceled {
						errs <- fmt.Errorf("create refused: %s", respLine(r))
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatalf("%s: %v", srv.name, err)
		}
	}
	b.StopTimer()
	grown := vmRSS(b, srv.proc.Pid()) - base
	b.ReportMetric(float64(grown)/float64(b.N*perIter), "bytes/watcher")
}

// vmRSS reads a process's resident set size in bytes.
func vmRSS(b *testing.B, pid int) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read VmRSS: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v) // "1234 kB"
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) != 2 || f[1] != "kB" {
				b.Fatalf("parse VmRSS %q", line)
			}
			return n << 10
		}
	}
	b.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
