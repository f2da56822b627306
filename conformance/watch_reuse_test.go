package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestWatchIDReuse: a client may cancel a watch and create another with the
// same watch_id on the same stream (etcd allows it). Events of the canceled
// watcher that were still on their way must not reach the new one: after
// the second created response, the first event is at or above the new start
// revision and the events run in order to the head. Each iteration cancels a
// watcher in the middle of catching up with 200 revisions of history and
// reuses its id at once. (Before the fix, the new watcher's first events
// could go out ahead of its created response, under the old watcher's
// state, and be lost; or the old watcher's, after it.)
func TestWatchIDReuse(t *testing.T) {
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			p := startOn(t, st, "shimd")
			cli := dialT(t, p.Endpoint)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var first, last int64
			for i := 0; i < 200; i++ {
				r, err := cli.Put(ctx, fmt.Sprintf("reuse/%03d", i%20), fmt.Sprintf("%0100d", i))
				if err != nil {
					t.Fatal(err)
				}
				if first == 0 {
					first = r.Header.Revision
				}
				last = r.Header.Revision
			}
			for it := 0; it < 30; it++ {
				watchReuseOnce(ctx, t, cli, first, first+150, last, int64(it+1))
			}
		})
	}
}

func watchReuseOnce(ctx context.Context, t *testing.T, cli *clientv3.Client, from, from2, head, id int64) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	stream, err := pb.NewWatchClient(cli.ActiveConnection()).Watch(sctx)
	if err != nil {
		t.Fatal(err)
	}
	create := func(start int64) error {
		return stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key: []byte("reuse/"), RangeEnd: []byte("reuse0"), StartRevision: start, WatchId: id, PrevKv: true}}})
	}
	if err := create(from); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}); err != nil {
		t.Fatal(err)
	}
	if err := create(from2); err != nil {
		t.Fatal(err)
	}
	created, next := 0, from2
	for next <= head {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch %d: %v (created %d times, next event wanted %d)", id, err, created, next)
		}
		if resp.WatchId != id {
			continue
		}
		if resp.Created {
			created++
			continue
		}
		if created < 2 {
			continue // the first watcher's, before its cancel
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision != next {
				t.Fatalf("watch %d reused from %d: event at %d, want %d (the canceled watcher started at %d)", id, from2, ev.Kv.ModRevision, next, from)
			}
			if ev.PrevKv == nil {
				t.Fatalf("watch %d reused from %d: event at %d without prev_kv", id, from2, ev.Kv.ModRevision)
			}
			next++
		}
	}
}
