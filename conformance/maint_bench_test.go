package conformance

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Maintenance benchmarks. Each measures one expensive operation once per
// iteration, on a store built for it, and reports its own metrics (ns/op is
// the measured operation alone). The timer runs through the setup, so that
// the go tool does not repeat a multi-second iteration to fill -benchtime;
// run them one iteration at a time anyway:
//
//	go test -run '^$' -bench 'Maint' -benchtime 1x .
//
// Sizes (environment):
//
//	MAINT_BENCH_ROWS         history rows compacted on SQLite (default 1,000,000)
//	MAINT_BENCH_SERVER_ROWS  the same on PostgreSQL and MariaDB (default 200,000; 0 skips them)
//	MAINT_BENCH_DEFRAG_MB    superseded data defragmented on SQLite, MiB (default 256)

func maintBenchEnv(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		b.Fatalf("%s=%q: want a non-negative integer", name, v)
	}
	return n
}

// maintLatencies is a set of request durations.
type maintLatencies []time.Duration

func (l maintLatencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := append(maintLatencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

func (l maintLatencies) max() time.Duration { return l.pct(100) }

func maintMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// maintSeqPuts puts sequentially until stop is closed (or n puts, if n > 0) and
// returns each put's latency.
func maintSeqPuts(b *testing.B, cli *clientv3.Client, prefix string, n int, stop <-chan struct{}) maintLatencies {
	var out maintLatencies
	for i := 0; n == 0 || i < n; i++ {
		select {
		case <-stop:
			return out
		default:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := cli.Put(ctx, fmt.Sprintf("%s%04d", prefix, i%1000), "v")
		cancel()
		if err != nil {
			b.Errorf("put during the benchmark: %v", err)
			return out
		}
		out = append(out, time.Since(start))
	}
	return out
}

// maintBuildHistory writes rows revisions of keys short values in txns of
// perTxn puts, from 4 clients, and returns the current revision. Every key
// is overwritten rows/keys times, so compacting at the end deletes all but
// keys of the rows.
func maintBuildHistory(b *testing.B, cli *clientv3.Client, rows, keys, perTxn int) int64 {
	b.Helper()
	txns := (rows + perTxn - 1) / perTxn
	const workers = 4
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := w; t < txns; t += workers {
				ops := make([]clientv3.Op, 0, perTxn)
				for i := 0; i < perTxn && t*perTxn+i < rows; i++ {
					row := t*perTxn + i
					ops = append(ops, clientv3.OpPut(fmt.Sprintf("hist/%06d", row%keys), fmt.Sprintf("value-%09d-%s", row, "0123456789abcdef")))
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				_, err := cli.Txn(ctx).Then(ops...).Commit()
				cancel()
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatalf("building the history: %v", err)
	}
	g, err := cli.Get(context.Background(), "hist/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	if g.Count != int64(min(keys, rows)) {
		b.Fatalf("%d keys after building the history, want %d", g.Count, min(keys, rows))
	}
	return g.Header.Revision
}

// BenchmarkMaintCompaction: a physical compaction of a large history
// (every key overwritten 100 times: 99 % of the rows go) while a writer
// does sequential puts. Reported: the compaction time (ns/op and
// compact-s), the rows compacted, and the put latency of the writer during
// the compaction (p99, worst) against its p99 before.
func BenchmarkMaintCompaction(b *testing.B) {
	requireSUT(b)
	rows := maintBenchEnv(b, "MAINT_BENCH_ROWS", 1_000_000)
	serverRows := maintBenchEnv(b, "MAINT_BENCH_SERVER_ROWS", 200_000)
	for _, bk := range harness.Backends() {
		n := rows
		if bk.IsShared() {
			n = serverRows
		}
		if n == 0 {
			continue
		}
		b.Run(fmt.Sprintf("%s/rows=%d", bk.Name, n), func(b *testing.B) {
			needBackend(b, bk)
			var compactTotal time.Duration
			for i := 0; i < b.N; i++ {
				compactTotal += maintCompactionOnce(b, bk, n)
			}
			b.ReportMetric(float64(compactTotal.Nanoseconds())/float64(b.N), "ns/op")
		})
	}
}

func maintCompactionOnce(b *testing.B, bk harness.Backend, rows int) time.Duration {
	const perTxn = 1000
	keys := max(rows/100, 1)
	srv := startShimd(b, bk, harness.Options{MaxTxnOps: perTxn})
	cli := srv.cli
	start := time.Now()
	rev := maintBuildHistory(b, cli, rows, keys, perTxn)
	b.Logf("%s: %d rows (%d keys × %d) written in %v; revision %d", bk.Name, rows, keys, rows/keys, time.Since(start).Round(time.Millisecond), rev)

	before := maintSeqPuts(b, cli, "lat/before/", 500, nil)

	stop := make(chan struct{})
	var during maintLatencies
	done := make(chan struct{})
	go func() {
		during = maintSeqPuts(b, cli, "lat/during/", 0, stop)
		close(done)
	}()
	time.Sleep(100 * time.Millisecond) // the writer is running
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	t0 := time.Now()
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		b.Fatalf("compact: %v%s", err, srv.crashInfo())
	}
	took := time.Since(t0)
	close(stop)
	<-done

	st, err := maint(srv).Status(context.Background(), &pb.StatusRequest{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(took.Seconds(), "compact-s")
	b.ReportMetric(float64(rows), "rows")
	b.ReportMetric(maintMs(before.pct(99)), "put-p99-before-ms")
	b.ReportMetric(maintMs(during.pct(99)), "put-p99-during-ms")
	b.ReportMetric(maintMs(during.max()), "put-max-during-ms")
	b.ReportMetric(float64(len(during)), "puts-during")
	b.Logf("%s: compaction of %d rows took %v; puts before: p50 %v p99 %v max %v (%d); during: p50 %v p99 %v max %v (%d); dbSize %d, in use %d",
		bk.Name, rows, took.Round(time.Millisecond),
		before.pct(50), before.pct(99), before.max(), len(before),
		during.pct(50), during.pct(99), during.max(), len(during), st.DbSize, st.DbSizeInUse)
	return took
}

// BenchmarkMaintDefrag: the time a defragmentation (SQLite VACUUM) takes,
// per GB of database file. Scaled down: MAINT_BENCH_DEFRAG_MB (default
// 256 MiB) of superseded 64 KiB values, plus 4 MiB live, compacted away
// before the measured defragmentation; s/GB is the defragmentation time
// divided by the file size before it. A VACUUM copies the live data and
// skips the free pages, so the figure also depends on the live share.
func BenchmarkMaintDefrag(b *testing.B) {
	requireSUT(b)
	mb := maintBenchEnv(b, "MAINT_BENCH_DEFRAG_MB", 256)
	for _, bk := range harness.Backends() {
		if bk.Kind != harness.KindSQLite {
			continue
		}
		b.Run(fmt.Sprintf("%s/superseded=%dMiB", bk.Name, mb), func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				total += maintDefragOnce(b, bk, mb)
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
		})
	}
}

func maintDefragOnce(b *testing.B, bk harness.Backend, mb int) time.Duration {
	const (
		valLen = 64 << 10
		keys   = 64 // 4 MiB live
		perTxn = 16 // 1 MiB per txn
	)
	srv := startShimd(b, bk, harness.Options{})
	cli := srv.cli
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	r := newRand(13)
	puts := (mb<<20)/valLen + keys
	start := time.Now()
	for i := 0; i < puts; i += perTxn {
		var ops []clientv3.Op
		for j := i; j < i+perTxn && j < puts; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("defrag/%03d", j%keys), maintRandValue(r, valLen)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			b.Fatalf("write: %v", err)
		}
	}
	g, err := cli.Get(ctx, "defrag/000")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cli.Compact(ctx, g.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		b.Fatal(err)
	}
	m := maint(srv)
	st, err := m.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d MiB written and compacted in %v: dbSize %d, in use %d", puts*valLen>>20, time.Since(start).Round(time.Millisecond), st.DbSize, st.DbSizeInUse)

	t0 := time.Now()
	if _, err := cli.Defragment(ctx, srv.proc.Endpoint); err != nil {
		b.Fatalf("defragment: %v", err)
	}
	took := time.Since(t0)
	st2, err := m.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		b.Fatal(err)
	}
	gb := float64(st.DbSize) / (1 << 30)
	b.ReportMetric(took.Seconds(), "defrag-s")
	b.ReportMetric(took.Seconds()/gb, "s/GB")
	b.ReportMetric(float64(st.DbSize)/(1<<20), "db-MiB-before")
	b.ReportMetric(float64(st2.DbSize)/(1<<20), "db-MiB-after")
	b.Logf("defragment took %v: dbSize %d → %d (%.2f s/GB of file)", took.Round(time.Millisecond), st.DbSize, st2.DbSize, took.Seconds()/gb)
	return took
}
