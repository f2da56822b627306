package conformance

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
)

// TestWatchSlowConsumer checks, on etcd and on the server under test
// separately (nothing is diffed), that a watch stream whose client stops
// reading does not hold anyone else up:
//
//   - a "slow" raw stream watches a prefix and is not read after its created
//     response; its connection has fixed 64 KiB HTTP/2 stream windows (no
//     BDP growth), so after a few responses the server cannot send on it;
//   - 2,000 puts of 10 KiB values (20 MB, far beyond the flow-control window
//     and any reasonable per-stream buffer) go to the prefix from a third
//     connection; each must be acknowledged (writes are not blocked);
//   - two fast watchers, one on another connection and one on the slow
//     stream's own connection, must receive all 2,000 events, in order,
//     while the slow stream is still stalled;
//   - then the slow stream is read again and must deliver all 2,000 events,
//     in order and without gaps.
//
// There is no timing threshold besides slowTimeout; durations are logged.
func TestWatchSlowConsumer(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("stalled-stream", func(c *sc) {
			for _, srv := range []*server{c.p.ref, c.p.sut} {
				if !c.t.Run(srv.name, func(t *testing.T) { slowConsumer(t, srv) }) {
					c.t.Errorf("%s failed%s", srv.name, srv.crashInfo())
				}
			}
		})
	})
}

const (
	slowPuts    = 2000
	slowValLen  = 10 << 10
	slowTimeout = 3 * time.Minute
)

func slowVal(i int) string {
	return fmt.Sprintf("%05d:", i) + strings.Repeat(string(rune('a'+i%26)), slowValLen-6)
}

// dialFixedWindow connects with fixed HTTP/2 windows (64 KiB per stream,
// 1 MiB per connection); setting them turns off gRPC's BDP-based growth.
func dialFixedWindow(endpoint string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(1 << 20)},
	})
}

func slowConsumer(t *testing.T, srv *server) {
	ctx, cancel := context.WithTimeout(context.Background(), slowTimeout)
	defer cancel()
	endpoint := srv.cli.Endpoints()[0]
	var clis []*clientv3.Client
	for i := 0; i < 3; i++ {
		cli, err := dialFixedWindow(endpoint)
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		clis = append(clis, cli)
	}
	slowCli, fastCli, writer := clis[0], clis[1], clis[2]
	prefix := fmt.Sprintf("slow/%d/", time.Now().UnixNano())
	req := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: wcreate(prefix, prefixEnd(prefix), 0)}}

	// The slow stream: created, then not read until release.
	slow, err := pb.NewWatchClient(slowCli.ActiveConnection()).Watch(ctx, maxRecv)
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Send(req); err != nil {
		t.Fatal(err)
	}
	cr, err := slow.Recv()
	if err != nil || !cr.Created || cr.Canceled {
		t.Fatalf("slow stream: created response: %v %v", oneLine(cr), err)
	}
	slowLog := newWlog()
	release := make(chan struct{})
	go func() {
		select {
		case <-release:
		case <-ctx.Done():
			return
		}
		for {
			r, err := slow.Recv()
			if err != nil {
				slowLog.finish(err)
				return
			}
			slowLog.add(r)
		}
	}()

	// Fast watchers on another connection and on the slow one's.
	var fast []*wstream
	for _, cli := range []*clientv3.Client{fastCli, slowCli} {
		ws, err := openRawWatch(ctx, pb.NewWatchClient(cli.ActiveConnection()), srv.name)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.cancel()
		if err := ws.send(req); err != nil {
			t.Fatal(err)
		}
		if k, _, end := ws.log.waitFor(0, matcher(func(r *pb.WatchResponse) bool { return r.Created }).n(1), watchWait); k < 0 {
			t.Fatalf("fast watcher not created: %v", end)
		}
		fast = append(fast, ws)
	}

	start := time.Now()
	lat := make([]time.Duration, 0, slowPuts)
	var first int64
	for i := 0; i < slowPuts; i++ {
		t0 := time.Now()
		resp, err := writer.Put(ctx, fmt.Sprintf("%s%05d", prefix, i), slowVal(i))
		if err != nil {
			t.Fatalf("put %d while a watcher is stalled: %v%s", i, err, srv.crashInfo())
		}
		lat = append(lat, time.Since(t0))
		if i == 0 {
			first = resp.Header.Revision
		}
	}
	putsDone := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	for i, ws := range fast {
		k, seg, end := ws.log.waitFor(0, events(0, slowPuts), slowTimeout)
		if k < 0 {
			t.Fatalf("fast watcher %d received %d of %d events while the slow stream was stalled (%v)%s", i, countEvents(seg), slowPuts, end, srv.crashInfo())
		}
		if err := checkSlowEvents(seg[:k], prefix, first); err != nil {
			t.Fatalf("fast watcher %d: %v", i, err)
		}
	}
	fastDone := time.Since(start)

	close(release)
	k, seg, end := slowLog.waitFor(0, events(0, slowPuts), slowTimeout)
	if k < 0 {
		t.Fatalf("slow watcher received %d of %d events after resuming (%v)%s", countEvents(seg), slowPuts, end, srv.crashInfo())
	}
	if err := checkSlowEvents(seg[:k], prefix, first); err != nil {
		t.Fatalf("slow watcher: %v", err)
	}
	t.Logf("%s: %d puts of %d bytes in %v (put latency p50 %v, p99 %v, max %v); fast watchers done after %v; slow watcher caught up %v later in %d responses",
		srv.name, slowPuts, slowValLen, putsDone.Round(time.Millisecond), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1],
		fastDone.Round(time.Millisecond), (time.Since(start) - fastDone).Round(time.Millisecond), k)
}

func countEvents(seg []*pb.WatchResponse) int {
	n := 0
	for _, r := range seg {
		n += len(r.Events)
	}
	return n
}

// checkSlowEvents: the i-th event is the put of key i at revision first+i.
func checkSlowEvents(seg []*pb.WatchResponse, prefix string, first int64) error {
	i := 0
	for _, r := range seg {
		if r.WatchId != 0 || r.Canceled || r.CompactRevision != 0 {
			return fmt.Errorf("unexpected response %s", respLine(r))
		}
		for _, e := range r.Events {
			key := fmt.Sprintf("%s%05d", prefix, i)
			if e.Type != 0 || e.Kv == nil || string(e.Kv.Key) != key || e.Kv.ModRevision != first+int64(i) || string(e.Kv.Value) != slowVal(i) {
				return fmt.Errorf("event %d: want PUT %q at revision %d, got %s", i, key, first+int64(i), truncate(eventLine(e), 300))
			}
			i++
		}
	}
	if i != slowPuts {
		return fmt.Errorf("%d events, want %d", i, slowPuts)
	}
	return nil
}
