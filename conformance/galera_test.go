package conformance

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestGalera runs one shimd on each node of a three-node MariaDB Galera
// cluster (multi-primary: every shimd writes through its own node) and
// loads all three, then kills one node's database (SIGKILL) under load.
// Checks:
//   - no revision is handed out twice, and clients of the surviving nodes
//     see no error: Galera's certification failures (a concurrent commit on
//     another node) are retried inside shimd;
//   - no acknowledged write is lost: each is read back, at its revision,
//     through both surviving nodes;
//   - a linearizable read on another node right after a write's
//     acknowledgement sees it (the DSN sets wsrep_sync_wait=1);
//   - the watchers on the surviving nodes see every revision, in order,
//     without gaps, and the one on the killed node a gapless prefix;
//   - the killed node's shimd reports /health false.
func TestGalera(t *testing.T) {
	requireRealSUT(t)
	c := startGalera(t, 3)
	t0 := time.Now()

	admin, err := sql.Open("mysql", c.nodes[0].dsn(""))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec("CREATE DATABASE shimd"); err != nil {
		t.Fatal(err)
	}
	var procs []*harness.Process
	var clis []*clientv3.Client
	for _, nd := range c.nodes {
		// Causal reads: a read on this node waits until it has applied
		// what the cluster committed before it (a linearizable read must
		// see a write acknowledged through another node).
		ep := "mysql://" + nd.dsn("shimd") + "?wsrep_sync_wait=1"
		p := &harness.Process{Bin: sutBin, DataDir: tempDir(t, nd.name), Backend: harness.Backend{Name: "galera", Kind: harness.KindMySQL, Endpoint: ep}}
		if err := p.Start(); err != nil {
			t.Fatalf("start shimd on %s: %v\n%s", nd.name, err, p.Output())
		}
		t.Cleanup(func() { p.Kill() })
		procs = append(procs, p)
		clis = append(clis, dialT(t, p.Endpoint))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchers := make([]*galeraWatch, len(clis))
	for i, cli := range clis {
		watchers[i] = startGaleraWatch(ctx, t, cli)
	}

	// Load: writers on every node; each acknowledged put is read back at
	// once, linearizably, through the next node.
	const writersPerNode = 3
	var mu sync.Mutex
	var acked []galeraAck
	var errs []string
	staleReads := 0
	var slowest time.Duration
	stop := make(chan struct{})
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for n := range clis {
		for w := 0; w < writersPerNode; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					key := fmt.Sprintf("g/n%d/w%d/%06d", n, w, k)
					pctx, pcancel := context.WithTimeout(ctx, 20*time.Second)
					start := time.Now()
					resp, err := clis[n].Put(pctx, key, "v")
					took := time.Since(start)
					pcancel()
					if err != nil {
						select {
						case <-killed:
							if n == len(clis)-1 {
								return // its database is gone
							}
						default:
						}
						mu.Lock()
						errs = append(errs, fmt.Sprintf("put %s through %s: %v", key, c.nodes[n].name, err))
						mu.Unlock()
						continue
					}
					rev := resp.Header.Revision
					other := (n + 1) % (len(clis) - 1) // a node that survives
					g, gerr := clis[other].Get(ctx, key)
					mu.Lock()
					acked = append(acked, galeraAck{key: key, rev: rev, node: n})
					slowest = max(slowest, took)
					if gerr != nil {
						errs = append(errs, fmt.Sprintf("get %s through %s: %v", key, c.nodes[other].name, gerr))
					} else if len(g.Kvs) != 1 || g.Kvs[0].ModRevision != rev {
						staleReads++
					}
					mu.Unlock()
				}
			}()
		}
	}
	waitAcked := func(n int) {
		waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledged writes", n), func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= n, fmt.Sprintf("%d acknowledged, errors: %d", len(acked), len(errs))
		})
	}
	waitAcked(1500)
	mu.Lock()
	beforeKill := len(acked)
	mu.Unlock()
	close(killed)
	killAt := time.Now()
	c.nodes[2].kill()
	// The killed node's shimd says so, so that a load balancer moves its
	// clients.
	waitFor(t, 30*time.Second, "/health false on the shimd of the killed node", func() (bool, string) {
		a := httpGet(procs[2].Endpoint + "/health")
		return !isHealthy(a), a.String()
	})
	waitAcked(beforeKill + 1500)
	close(stop)
	wg.Wait()
	loadTook := time.Since(killAt)

	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Errorf("%d client-visible errors on the surviving nodes, first: %s", len(errs), errs[0])
	}
	if staleReads > 0 {
		t.Errorf("%d linearizable reads on another node missed the write just acknowledged", staleReads)
	}
	// No revision handed out twice.
	byRev := map[int64]galeraAck{}
	var maxRev int64
	for _, a := range acked {
		if prev, dup := byRev[a.rev]; dup {
			t.Errorf("revision %d acknowledged twice: %s through node%d and %s through node%d", a.rev, prev.key, prev.node+1, a.key, a.node+1)
		}
		byRev[a.rev] = a
		maxRev = max(maxRev, a.rev)
	}
	// No acknowledged write lost, read through each surviving node.
	for _, i := range []int{0, 1} {
		got := map[string]int64{}
		resp, err := clis[i].Get(ctx, "g/", clientv3.WithPrefix())
		if err != nil {
			t.Fatalf("list through %s: %v", c.nodes[i].name, err)
		}
		for _, kv := range resp.Kvs {
			got[string(kv.Key)] = kv.ModRevision
		}
		lost := 0
		for _, a := range acked {
			if got[a.key] != a.rev {
				if lost++; lost <= 5 {
					t.Errorf("through %s: acknowledged %s at revision %d, database has revision %d", c.nodes[i].name, a.key, a.rev, got[a.key])
				}
			}
		}
		if lost > 0 {
			t.Errorf("through %s: %d of %d acknowledged writes lost", c.nodes[i].name, lost, len(acked))
		}
	}
	// Watches: every revision on the survivors, a gapless prefix on the
	// killed node's.
	for i, w := range watchers {
		if i < 2 {
			waitFor(t, 30*time.Second, fmt.Sprintf("the watcher on %s reaches revision %d", c.nodes[i].name, maxRev), func() (bool, string) {
				last := w.last()
				return last >= maxRev, fmt.Sprintf("at revision %d", last)
			})
		}
		evs := w.snapshot()
		for j := 1; j < len(evs); j++ {
			if evs[j].rev != evs[j-1].rev+1 {
				t.Errorf("watcher on %s: revision %d follows %d", c.nodes[i].name, evs[j].rev, evs[j-1].rev)
				break
			}
		}
		seen := map[int64]string{}
		for _, e := range evs {
			seen[e.rev] = e.key
		}
		missed := 0
		for _, a := range acked {
			if k, ok := seen[a.rev]; (i < 2 || ok) && k != a.key {
				missed++
			}
		}
		if missed > 0 {
			t.Errorf("watcher on %s: %d acknowledged writes missing or at another revision", c.nodes[i].name, missed)
		}
		if i == 2 && len(evs) > 0 {
			t.Logf("watcher on the killed node saw revisions %d..%d", evs[0].rev, evs[len(evs)-1].rev)
		}
	}
	retries := 0.0
	for _, p := range procs[:2] {
		if m, err := scrape(p.Endpoint + "/metrics"); err == nil {
			retries += m["shimd_log_write_conflict_retries_total"]
		}
	}
	perNode := make([]int, 3)
	for _, a := range acked {
		perNode[a.node]++
	}
	sort.Slice(acked, func(i, j int) bool { return acked[i].rev < acked[j].rev })
	t.Logf("%d writes acknowledged (per node %v), %d before the kill; revisions up to %d; conflict retries on the survivors: %.0f; slowest put %v; load after the kill took %v; whole test body %v",
		len(acked), perNode, beforeKill, maxRev, retries, slowest.Round(time.Millisecond), loadTook.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
}

type galeraAck struct {
	key  string
	rev  int64
	node int
}

type galeraEvent struct {
	key string
	rev int64
}

// galeraWatch collects a watch's events on g/ from the first revision.
type galeraWatch struct {
	mu  sync.Mutex
	evs []galeraEvent
}

func startGaleraWatch(ctx context.Context, t *testing.T, cli *clientv3.Client) *galeraWatch {
	w := &galeraWatch{}
	ch := cli.Watch(ctx, "g/", clientv3.WithPrefix(), clientv3.WithRev(1), clientv3.WithCreatedNotify())
	if r := <-ch; !r.Created {
		t.Fatalf("watch: first response is not a creation: %v", r.Err())
	}
	go func() {
		for r := range ch {
			w.mu.Lock()
			for _, e := range r.Events {
				w.evs = append(w.evs, galeraEvent{key: string(e.Kv.Key), rev: e.Kv.ModRevision})
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *galeraWatch) last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.evs) == 0 {
		return 0
	}
	return w.evs[len(w.evs)-1].rev
}

func (w *galeraWatch) snapshot() []galeraEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]galeraEvent(nil), w.evs...)
}
