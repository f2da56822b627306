package conformance

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// BenchmarkCompactionStall measures whether a compaction stalls writes
// (issue 20: p99 write latency during a compaction of 200,000 revisions
// within 2× of the p99 without it). Per backend, on a fresh shimd: 200,000
// revisions are written (SHIMD_BENCH_STALL_REVS; 2,000 keys of 256 B, each
// updated 100 times), then 8 clients put in a closed loop for a baseline
// window of 3 s, then go on while a physical Compact at the head runs (its
// superseded rows, all but the 2,000 live ones, deleted in the background
// until the call returns). Reports the p99 of each window, their ratio and
// the compaction's time. The work is fixed (it ignores b.N).
//
//	go test -run '^$' -bench CompactionStall -benchtime 1x .
func BenchmarkCompactionStall(b *testing.B) {
	requireSUT(b)
	revs := 200_000
	if v, err := strconv.Atoi(os.Getenv("SHIMD_BENCH_STALL_REVS")); err == nil && v > 0 {
		revs = v
	}
	for _, bk := range harness.Backends() {
		b.Run(bk.Name, func(b *testing.B) {
			needBackend(b, bk)
			compactionStall(b, bk, revs)
		})
	}
}

func compactionStall(b *testing.B, bk harness.Backend, revs int) {
	st, err := harness.NewStore(bk)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Drop() })
	p := &harness.Process{Bin: sutBin, DataDir: tempDir(b, "shimd"), Backend: st.Backend}
	if err := p.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Stop() })
	cli, err := dial(p.Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	value := string(make([]byte, 256))
	const keys = 2000

	// History: revs puts over keys keys, 64 at a time.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(revs) {
					return
				}
				if _, err := cli.Put(ctx, fmt.Sprintf("stall/%05d", i%keys), value); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatalf("writing the history: %v", err)
	default:
	}

	// window runs 8 writers until stop is closed and returns their
	// latencies.
	window := func(stop <-chan struct{}) []time.Duration {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		for c := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for i := 0; ; i++ {
					select {
					case <-stop:
						mu.Lock()
						lat = append(lat, mine...)
						mu.Unlock()
						return
					default:
					}
					start := time.Now()
					if _, err := cli.Put(ctx, fmt.Sprintf("stall/%05d", (c*keys/8+i)%keys), value); err != nil {
						b.Errorf("put: %v", err)
						return
					}
					mine = append(mine, time.Since(start))
				}
			}()
		}
		wg.Wait()
		slices.Sort(lat)
		return lat
	}
	p99 := func(lat []time.Duration) float64 {
		if len(lat) == 0 {
			b.Fatal("no writes measured")
		}
		return float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()) / 1e3
	}

	b.ResetTimer()
	stop := make(chan struct{})
	time.AfterFunc(3*time.Second, func() { close(stop) })
	base := window(stop)

	head, err := cli.Get(ctx, "stall/00000")
	if err != nil {
		b.Fatal(err)
	}
	stop = make(chan struct{})
	during := make(chan []time.Duration)
	go func() { during <- window(stop) }()
	start := time.Now()
	_, err = cli.Compact(ctx, head.Header.Revision, clientv3.WithCompactPhysical())
	took := time.Since(start)
	close(stop)
	lat := <-during
	if err != nil {
		b.Fatalf("compact: %v", err)
	}
	b.StopTimer()
	b.ReportMetric(p99(base), "p99-base-ms")
	b.ReportMetric(p99(lat), "p99-compacting-ms")
	b.ReportMetric(p99(lat)/p99(base), "p99-ratio")
	b.ReportMetric(float64(took.Milliseconds()), "compact-ms")
	b.ReportMetric(float64(len(lat)), "writes-compacting")
}
