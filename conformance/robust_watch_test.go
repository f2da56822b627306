package conformance

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// TestRobustWatchProgressOrder: on one stream, a watcher over a long
// history (prev_kv: the server has work to do per event) and then a second
// one from a past revision are created while the client keeps sending
// RequestProgress. etcd answers a progress request only once every watcher
// of the stream is synced, so for each watcher the stream must read: its
// created response, then every event up to a progress notification's
// revision before that notification; never a progress notification at R
// before an event <= R (etcd robustness: "bookmarkable").
func TestRobustWatchProgressOrder(t *testing.T) {
	requireRobust(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			p := robustProc(t, st, "shimd")
			conn := robustDial(t, p)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			final := robustFill(ctx, t, conn, "po/", 1500, 37, 64)
			full, err := robust.Collect(ctx, conn, robust.WatchSpec{Key: "po/", End: "po0", Start: 1, PrevKV: true}, final, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			log := robust.Events(full)
			rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
			iterations := robustEnvInt("SHIMD_ROBUST_PROGRESS_ITERATIONS", 60)
			bad, progress := 0, 0
			for it := 0; it < iterations && bad < 3; it++ {
				specs := []progressWatch{
					{key: "po/", end: "po0", from: 1 + rnd.Int64N(final/4)},
					{key: "po/0", end: "po/1", from: 1 + rnd.Int64N(final)},
				}
				resps, err := progressRace(ctx, conn, specs, final)
				if err != nil {
					t.Fatalf("iteration %d: %v", it, err)
				}
				for i, w := range specs {
					mine := progressView(resps, i)
					_, n, _ := robust.Count(mine)
					progress += n
					var want []robust.Event
					for _, e := range log {
						if e.Key >= w.key && e.Key < w.end {
							want = append(want, e)
						}
					}
					v := robust.CheckWatch(mine, want, w.from, final)
					if !v.Empty() {
						bad++
						t.Errorf("iteration %d, watcher %d [%s, %s) from revision %d: %v\nits view of the stream: %s", it, i, w.key, w.end, w.from, v.List(), summarize(mine))
					}
				}
			}
			t.Logf("%d streams with two watches from past revisions under a stream of RequestProgress (%d progress notifications seen); %d watchers broke the order", iterations, progress, bad)
		})
	}
}

type progressWatch struct {
	key, end string
	from     int64
}

// progressView is watcher i's view of a stream: its own responses and the
// stream-wide progress notifications (watch id -1), in order.
func progressView(resps []robust.WatchResp, i int) []robust.WatchResp {
	var out []robust.WatchResp
	for _, r := range resps {
		if r.WatchID == int64(i) || r.Progress && r.WatchID == -1 {
			out = append(out, r)
		}
	}
	return out
}

// robustFill writes n puts over keys distinct keys under prefix (values of
// size bytes), 8 at a time, and returns the revision after them.
func robustFill(ctx context.Context, t *testing.T, conn *grpc.ClientConn, prefix string, n, keys, size int) int64 {
	t.Helper()
	kv := pb.NewKVClient(conn)
	var mu sync.Mutex
	var final int64
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				v := fmt.Sprintf("v%d-", i)
				v += strings.Repeat("x", max(0, size-len(v)))
				r, err := kv.Put(ctx, &pb.PutRequest{Key: []byte(fmt.Sprintf("%s%03d", prefix, i%keys)), Value: []byte(v)})
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				final = max(final, r.Header.Revision)
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatalf("fill %s: %v", prefix, err)
	}
	return final
}

// progressRace opens a stream, creates the watches (ids 0, 1, ...; prev_kv)
// and then sends a progress request every 2 ms, reading until every watch
// has its event at final (each gets one: the last put is in all ranges),
// so that whatever a premature progress notification overtook is recorded.
func progressRace(ctx context.Context, conn *grpc.ClientConn, watches []progressWatch, final int64) ([]robust.WatchResp, error) {
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	stream, err := pb.NewWatchClient(conn).Watch(sctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	for i, w := range watches {
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key: []byte(w.key), RangeEnd: []byte(w.end), StartRevision: w.from, PrevKv: true, WatchId: int64(i)}}}); err != nil {
			return nil, err
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}) != nil {
				return
			}
		}
	}()
	defer wg.Wait()
	defer close(done)
	var out []robust.WatchResp
	last := make([]int64, len(watches))
	for {
		all := true
		for _, l := range last {
			all = all && l >= final
		}
		if all {
			return out, nil
		}
		resp, err := stream.Recv()
		if err != nil {
			return out, fmt.Errorf("recv after %d responses: %w", len(out), err)
		}
		wr := robust.ToWatchResp(0, resp)
		if id := resp.WatchId; id >= 0 && id < int64(len(last)) {
			for _, e := range resp.Events {
				last[id] = max(last[id], e.Kv.ModRevision)
			}
		}
		out = append(out, wr)
	}
}

func summarize(resps []robust.WatchResp) string {
	s := ""
	for i, r := range resps {
		if i == 12 {
			s += fmt.Sprintf(" …(%d more)", len(resps)-i)
			break
		}
		switch {
		case r.Created:
			s += fmt.Sprintf(" [created rev %d]", r.Rev)
		case r.Progress:
			s += fmt.Sprintf(" [progress %d]", r.Rev)
		case len(r.Events) > 0:
			s += fmt.Sprintf(" [%d events %d..%d]", len(r.Events), r.Events[0].Mod, r.Events[len(r.Events)-1].Mod)
		default:
			s += fmt.Sprintf(" [%+v]", r)
		}
	}
	return s
}
