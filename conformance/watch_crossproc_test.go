package conformance

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// TestWatchCrossProcess is the differential watch test with the server
// under test being two shimd processes on one shared store (PostgreSQL,
// MariaDB), against one etcd: to a client, the two processes must look like
// one etcd. Writes and watch streams go to either process. In particular a
// watch created on B after a write acknowledged by A must start after that
// write ("from now" and the created response's header revision are about
// the store, not about what B has seen so far), and a watcher on B gets the
// events of writes made through A exactly as etcd sends them.
//
// Skipped in self-test mode (etcd stand-ins do not share a store) and on
// SQLite.
func TestWatchCrossProcess(t *testing.T) {
	requireRealSUT(t)
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("CONFORMANCE_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("CONFORMANCE_SEED: %v", err)
		}
	}
	for _, bk := range sharedBackends() {
		t.Run(bk.Name, func(t *testing.T) {
			st := newStore(t, bk)
			var suts []*server
			for _, name := range []string{"a", "b"} {
				p := startOn(t, st, name) // stopped at cleanup
				s, err := newServer(sutName+"-"+name, p.Endpoint, func() {})
				if err != nil {
					t.Fatal(err)
				}
				s.proc = p
				defer s.stop()
				suts = append(suts, s)
			}
			ref := startRef(t, harness.Options{})
			defer ref.stop()
			p := &pair{ref: ref, sut: suts[0]}
			on := func(i int) { p.sut = suts[i] }
			run := func(name string, fn func(c *sc)) bool {
				return t.Run(name, func(t *testing.T) { fn(&sc{t: t, p: p, name: t.Name()}) })
			}

			ok := run("watch-on-b-writes-on-a", func(c *sc) {
				on(1)
				w := c.openWatch("raw on b")
				w.create(wcreate("wxa/", prefixEnd("wxa/"), 0))
				pk := wcreate("wxa/", prefixEnd("wxa/"), 0)
				pk.PrevKv = true
				w.create(pk)
				w.created(2)
				var last int64
				for i := 0; i < 30; i++ {
					on(i % 2)
					last = c.mustPut(fmt.Sprintf("wxa/%d", i%4), fmt.Sprint(i))
				}
				w.expect("one response per revision, from both processes", all(eventAt(0, last), eventAt(1, last)), viewExact)
				on(1)
				w.settle()
			})

			ok = ok && run("watch-from-now-after-write-elsewhere", func(c *sc) {
				for i := 0; i < 30; i++ {
					on(0)
					c.mustPut("wxn/k", fmt.Sprint(i)) // acknowledged by a
					on(1)
					w := c.openWatch(fmt.Sprintf("raw on b #%d", i))
					w.create(wcreate("wxn/", prefixEnd("wxn/"), 0))
					w.wait("created", isCreated(0).n(1))
					r := c.mustPut("wxn/k2", fmt.Sprint(i))
					// The created response's header revision is the write
					// above, and its event must not be delivered.
					w.expect("created, then only the write made after it", all(isCreated(0).n(1), eventAt(0, r)), viewExact)
				}
			})

			ok = ok && run("progress-on-b-after-write-on-a", func(c *sc) {
				on(1)
				w := c.openWatch("raw on b")
				w.create(wcreate("wxp/", prefixEnd("wxp/"), 0))
				w.created(1)
				for i := 0; i < 10; i++ {
					on(0)
					c.mustPut("wxp/k", fmt.Sprint(i)) // through a
					w.requestProgress()
					w.expect("the event, then progress at its revision", isProgress(-1).n(1), viewExact)
				}
			})

			if ok {
				writes, watches := envInt(t, "CONFORMANCE_WATCH_WRITES", 600), envInt(t, "CONFORMANCE_WATCH_COUNT", 40)
				t.Logf("seed %d, %d writes, %d watches (replay with CONFORMANCE_SEED=%d)", seed, writes, watches, seed)
				run(fmt.Sprintf("random-seed-%d", seed), func(c *sc) {
					r := &wrand{c: c, seed: seed, g: &gen{r: rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))}, stats: map[string]int{}, noCompact: map[int64]bool{}, suts: suts}
					r.run(writes, watches)
				})
			}
		})
	}
}
