package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shimd/shimd/drivers/sqlite"
	"github.com/shimd/shimd/sqllog"
)

// startKV serves a fresh SQLite-backed shimd on loopback and returns a client.
func startKV(tb testing.TB) pb.KVClient { return pb.NewKVClient(startConn(tb)) }

// startConn serves a fresh SQLite-backed shimd on loopback and returns a
// connection to it.
func startConn(tb testing.TB) *grpc.ClientConn {
	tb.Helper()
	be, err := sqlite.Open(filepath.Join(tb.TempDir(), "shimd.db"))
	if err != nil {
		tb.Fatal(err)
	}
	log, err := sqllog.Open(context.Background(), be, sqllog.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	srv := New(log, Config{Logger: slog.New(slog.DiscardHandler)})
	g := grpc.NewServer(srv.GRPCOptions()...)
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go g.Serve(ln)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		conn.Close()
		g.Stop()
		srv.Close()
		log.Close()
	})
	return conn
}

var benchValue = make([]byte, 1024)

func BenchmarkPut(b *testing.B) {
	kv := startKV(b)
	ctx := context.Background()
	b.SetParallelism(8) // concurrent clients, as a kube-apiserver has
	b.ResetTimer()
	var n int64
	b.RunParallel(func(pb_ *testing.PB) {
		for i := 0; pb_.Next(); i++ {
			key := []byte(fmt.Sprintf("/registry/bench/%p-%d", &n, i))
			if _, err := kv.Put(ctx, &pb.PutRequest{Key: key, Value: benchValue}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func fill(b *testing.B, kv pb.KVClient, n int) {
	b.Helper()
	for i := 0; i < n; i++ {
		if _, err := kv.Put(context.Background(), &pb.PutRequest{Key: []byte(fmt.Sprintf("/registry/pods/p%05d", i)), Value: benchValue}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	kv := startKV(b)
	fill(b, kv, 1000)
	ctx := context.Background()
	b.ResetTimer()
	parallelGets(b, kv, ctx)
}

// parallelGets gets the keys fill wrote, one at a time, from parallel
// goroutines, until b.N.
func parallelGets(b *testing.B, kv pb.KVClient, ctx context.Context) {
	b.RunParallel(func(pb_ *testing.PB) {
		for i := 0; pb_.Next(); i++ {
			if _, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte(fmt.Sprintf("/registry/pods/p%05d", i%1000))}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkListPrefix pages through 1,000 keys 500 at a time, as
// kube-apiserver lists.
func BenchmarkListPrefix(b *testing.B) {
	kv := startKV(b)
	fill(b, kv, 1000)
	ctx := context.Background()
	prefix, end := []byte("/registry/pods/"), []byte("/registry/pods0")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		key, rev := prefix, int64(0)
		for {
			resp, err := kv.Range(ctx, &pb.RangeRequest{Key: key, RangeEnd: end, Limit: 500, Revision: rev})
			if err != nil {
				b.Fatal(err)
			}
			rev = resp.Header.Revision
			if !resp.More {
				break
			}
			key = append(resp.Kvs[len(resp.Kvs)-1].Key, 0)
		}
	}
}

// BenchmarkListHistory shows that a paginated list costs the same whatever
// history lies behind the keys: the index finds each key's visible revision
// without reading the superseded rows.
func BenchmarkListHistory(b *testing.B) {
	for _, depth := range []int{1, 10} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			kv := startKV(b)
			for d := 0; d < depth; d++ {
				fill(b, kv, 1000)
			}
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("/registry/pods/"), RangeEnd: []byte("/registry/pods0"), Limit: 500})
				if err != nil || len(resp.Kvs) != 500 {
					b.Fatal(err, len(resp.Kvs))
				}
			}
		})
	}
}

func BenchmarkCount(b *testing.B) {
	kv := startKV(b)
	fill(b, kv, 1000)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte("/registry/pods/"), RangeEnd: []byte("/registry/pods0"), CountOnly: true}); err != nil {
			b.Fatal(err)
		}
	}
}
