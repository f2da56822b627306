package conformance

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestWatchCrossProcessPeerWake checks that on MySQL/MariaDB, which has no
// LISTEN/NOTIFY, a process wakes the others after its commits (package
// peerwake): with --db-poll-interval at 10 s on both processes, a watcher
// on one must get the other's writes within wakeDeadline, in both
// directions. Only the wake-up can explain that; without it every event
// would wait for a poll.
func TestWatchCrossProcessPeerWake(t *testing.T) {
	requireRealSUT(t)
	for _, bk := range sharedBackends() {
		if bk.Kind != harness.KindMySQL {
			continue // PostgreSQL wakes through NOTIFY
		}
		t.Run(bk.Name, func(t *testing.T) {
			st := newStore(t, bk)
			a := startOn(t, st, "a", "--db-poll-interval", "10s")
			b := startOn(t, st, "b", "--db-poll-interval", "10s")
			for _, p := range []*harness.Process{a, b} {
				if err := waitWakePeers(p.Endpoint, 1, 10*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			ca, cb := dialT(t, a.Endpoint), dialT(t, b.Endpoint)
			for _, dir := range []struct {
				name       string
				put, watch *clientv3.Client
				writes     int
			}{{"a-to-b", ca, cb, 100}, {"b-to-a", cb, ca, 30}} {
				t.Run(dir.name, func(t *testing.T) {
					lat := wakeLatencies(t, dir.put, dir.watch, "wake/"+dir.name+"/", dir.writes)
					slices.Sort(lat)
					t.Logf("put on one process to event on the other, %d writes: p50 %v, p99 %v, max %v",
						len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])
				})
			}
		})
	}
}

// wakeDeadline is far above a wake-up's few milliseconds, even on a loaded
// machine, and far below the 10 s poll interval.
const wakeDeadline = 2 * time.Second

// wakeLatencies puts n keys under prefix through put, one at a time, and
// returns how long each took to reach a watcher on watch, failing t if one
// takes wakeDeadline or arrives at another revision than the put's.
func wakeLatencies(t *testing.T, put, watch *clientv3.Client, prefix string, n int) []time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := watch.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if r := <-wch; !r.Created {
		t.Fatalf("watch: first response is not a creation: %+v (%v)", r, r.Err())
	}
	var lat []time.Duration
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("%s%04d", prefix, i)
		start := time.Now()
		resp, err := put.Put(ctx, key, "v")
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		select {
		case r, ok := <-wch:
			if !ok || r.Err() != nil {
				t.Fatalf("watch ended: %v", r.Err())
			}
			if len(r.Events) != 1 || string(r.Events[0].Kv.Key) != key || r.Events[0].Kv.ModRevision != resp.Header.Revision {
				t.Fatalf("want one event for %s at revision %d, got %+v", key, resp.Header.Revision, r.Events)
			}
		case <-time.After(wakeDeadline):
			t.Fatalf("write %d (%s, revision %d) not seen by the other process's watcher within %v: it was not woken", i, key, resp.Header.Revision, wakeDeadline)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

// waitWakePeers waits until the shimd at endpoint wakes at least n other
// processes after its commits (package peerwake's peer list).
func waitWakePeers(endpoint string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		m, err := scrape(endpoint + "/metrics")
		if err == nil {
			got, ok := m["shimd_peer_wake_peers"]
			if ok && got >= float64(n) {
				return nil
			}
			last = fmt.Sprintf("shimd_peer_wake_peers %v (exported: %v)", got, ok)
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s does not wake %d other process(es) after %v; last: %s", endpoint, n, timeout, last)
}
