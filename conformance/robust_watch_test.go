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

// TestRobustWatchProgressOrder: watches created on past revisions (with
// prev_kv, so that the server has work to do per event) while the client
// keeps sending RequestProgress on the same stream. etcd answers a progress
// request only once every watcher of the stream is synced, so each stream
// must read: created, then every event up to the progress revision, then the
// progress notification; never a progress notification at R before an event
// <= R (etcd robustness: "bookmarkable").
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
			iterations := robustEnvInt("SHIMD_ROBUST_PROGRESS_ITERATIONS", 30)
			bad, progress := 0, 0
			for it := 0; it < iterations && bad < 3; it++ {
				from := 1 + rnd.Int64N(final/2)
				resps, err := progressRace(ctx, conn, from, final)
				if err != nil {
					t.Fatalf("iteration %d: %v", it, err)
				}
				_, n, _ := robust.Count(resps)
				progress += n
				v := robust.CheckWatch(resps, log, from, final)
				if !v.Empty() {
					bad++
					t.Errorf("iteration %d, watch from revision %d: %v\nresponses: %s", it, from, v.List(), summarize(resps))
				}
			}
			t.Logf("%d watches from past revisions under a stream of RequestProgress (%d progress notifications); %d broke the order", iterations, progress, bad)
		})
	}
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

// progressRace opens a stream, sends create(from, prev_kv) and then a
// progress request every 2 ms, and reads until the event at final (every
// watch here gets one: the last put), so that whatever a premature progress
// notification overtook is recorded too.
func progressRace(ctx context.Context, conn *grpc.ClientConn, from, final int64) ([]robust.WatchResp, error) {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := pb.NewWatchClient(conn).Watch(sctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key: []byte("po/"), RangeEnd: []byte("po0"), StartRevision: from, PrevKv: true}}}); err != nil {
		return nil, err
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
	var last int64
	for last < final {
		resp, err := stream.Recv()
		if err != nil {
			return out, fmt.Errorf("recv after %d responses: %w", len(out), err)
		}
		wr := robust.WatchResp{Rev: resp.Header.GetRevision(), Created: resp.Created, Canceled: resp.Canceled, CancelReason: resp.CancelReason}
		for _, e := range resp.Events {
			wr.Events = append(wr.Events, robust.FromPBEvent(e))
			last = e.Kv.ModRevision
		}
		wr.Progress = len(resp.Events) == 0 && !resp.Created && !resp.Canceled && resp.CompactRevision == 0
		out = append(out, wr)
	}
	return out, nil
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
