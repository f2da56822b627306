package server

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/metadata"
)

// authOn enables auth with a user "app" allowed to read and write
// /registry/, and returns a context carrying app's token.
func authOn(tb testing.TB, a pb.AuthClient) context.Context {
	tb.Helper()
	ctx := context.Background()
	steps := []func() error{
		func() error {
			_, err := a.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "root", Password: "r"})
			return err
		},
		func() error {
			_, err := a.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"})
			return err
		},
		func() error { _, err := a.RoleAdd(ctx, &pb.AuthRoleAddRequest{Name: "app"}); return err },
		func() error {
			_, err := a.RoleGrantPermission(ctx, &pb.AuthRoleGrantPermissionRequest{Name: "app",
				Perm: &authpb.Permission{PermType: authpb.Permission_READWRITE, Key: []byte("/registry/"), RangeEnd: []byte("/registry0")}})
			return err
		},
		func() error { _, err := a.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "app", Password: "p"}); return err },
		func() error {
			_, err := a.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "app", Role: "app"})
			return err
		},
		func() error { _, err := a.AuthEnable(ctx, &pb.AuthEnableRequest{}); return err },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			tb.Fatal(err)
		}
	}
	resp, err := a.Authenticate(ctx, &pb.AuthenticateRequest{Name: "app", Password: "p"})
	if err != nil {
		tb.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(ctx, "token", resp.Token)
}

// BenchmarkAuth compares puts and gets with auth off and on (a user with
// a prefix permission, a simple token): the goal is on ≥ 0.9 × off.
func BenchmarkAuth(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run("put/auth="+name, func(b *testing.B) {
			conn := startConn(b)
			kv, ctx := pb.NewKVClient(conn), context.Background()
			if on {
				ctx = authOn(b, pb.NewAuthClient(conn))
			}
			b.SetParallelism(8)
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
		})
		b.Run("get/auth="+name, func(b *testing.B) {
			conn := startConn(b)
			kv, ctx := pb.NewKVClient(conn), context.Background()
			fill(b, kv, 1000)
			if on {
				ctx = authOn(b, pb.NewAuthClient(conn))
			}
			b.ResetTimer()
			parallelGets(b, kv, ctx)
		})
	}
}

// BenchmarkAuthRatio measures puts and gets on two servers at once, one
// with auth off and one with auth on, taking turns in short slices so that
// both see the same machine load, and reports on/off throughput ratios
// (put-on/off, get-on/off). The work is fixed (it ignores b.N).
func BenchmarkAuthRatio(b *testing.B) {
	offConn, onConn := startConn(b), startConn(b)
	off, on := pb.NewKVClient(offConn), pb.NewKVClient(onConn)
	fill(b, off, 1000)
	fill(b, on, 1000)
	onCtx := authOn(b, pb.NewAuthClient(onConn))
	const clients, perSlice, slices = 8, 400, 10
	turn := func(kv pb.KVClient, ctx context.Context, put bool, slice int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perSlice/clients; i++ {
					var err error
					if put {
						key := []byte(fmt.Sprintf("/registry/ratio/%d-%d-%d", slice, c, i))
						_, err = kv.Put(ctx, &pb.PutRequest{Key: key, Value: benchValue})
					} else {
						_, err = kv.Range(ctx, &pb.RangeRequest{Key: []byte(fmt.Sprintf("/registry/pods/p%05d", (c*perSlice+i)%1000))})
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	b.ResetTimer()
	for _, put := range []bool{true, false} {
		var tOff, tOn time.Duration
		for s := 0; s < slices; s++ {
			if s%2 == 0 {
				tOff += turn(off, context.Background(), put, s)
				tOn += turn(on, onCtx, put, s)
			} else {
				tOn += turn(on, onCtx, put, s)
				tOff += turn(off, context.Background(), put, s)
			}
		}
		name := "get"
		if put {
			name = "put"
		}
		b.ReportMetric(float64(tOff)/float64(tOn), name+"-on/off")
		b.ReportMetric(float64(perSlice*slices)/tOff.Seconds(), name+"-off-ops/s")
		b.ReportMetric(float64(perSlice*slices)/tOn.Seconds(), name+"-on-ops/s")
	}
}
