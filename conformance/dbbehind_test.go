package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestDBBehind: the database goes back in time underneath two running
// shimd processes (as after a failover to an asynchronous standby that
// lacked the last commits, or a restore from a backup): its last revisions
// are deleted by SQL. Without a replicated cluster (TestPGFailover/async-lost
// has one), on every shared backend, each process must resynchronise: serve
// exactly what the database holds (what a fresh process reads), never a
// lost key, read lost revisions as compacted, cancel its watchers as
// compacted, be ready again and take writes at revisions above every one
// handed out before.
func TestDBBehind(t *testing.T) {
	requireRealSUT(t)
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			procs := []*harness.Process{startOn(t, st, "one"), startOn(t, st, "two")}
			clis := []*clientv3.Client{dialT(t, procs[0].Endpoint), dialT(t, procs[1].Endpoint)}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var keep, last int64
			for i := range 20 {
				r, err := clis[i%2].Put(ctx, fmt.Sprintf("b/%02d", i), fmt.Sprint("v", i))
				if err != nil {
					t.Fatal(err)
				}
				if i == 9 {
					keep = r.Header.Revision
				}
				last = r.Header.Revision
			}
			var watches []clientv3.WatchChan
			for _, c := range clis {
				if _, err := c.Get(ctx, "b/19"); err != nil { // caught up with the other's puts
					t.Fatal(err)
				}
				watches = append(watches, c.Watch(ctx, "b/", clientv3.WithPrefix(), clientv3.WithRev(last+1)))
			}

			rollBack(ctx, t, st, keep)

			for i, c := range clis {
				waitFor(t, 20*time.Second, fmt.Sprintf("process %d to drop the lost keys", i), func() (bool, string) {
					g, err := c.Get(ctx, "b/", clientv3.WithPrefix())
					if err != nil {
						return false, err.Error()
					}
					return len(g.Kvs) == 10, fmt.Sprintf("%d keys at revision %d", len(g.Kvs), g.Header.Revision)
				})
			}
			fresh := startOn(t, st, "fresh")
			want := fullRange(t, dialT(t, fresh.Endpoint))
			for i, c := range clis {
				if d := diffKVs(fullRange(t, c).Kvs, want.Kvs); d != "" {
					t.Errorf("process %d does not serve what the database holds: %s", i, d)
				}
				if _, err := c.Get(ctx, "b/15", clientv3.WithRev(keep+2)); !errors.Is(err, rpctypes.ErrCompacted) {
					t.Errorf("process %d: get at lost revision %d: %v, want %v", i, keep+2, err, rpctypes.ErrCompacted)
				}
				select {
				case r := <-watches[i]:
					if r.CompactRevision == 0 || !errors.Is(r.Err(), rpctypes.ErrCompacted) {
						t.Errorf("process %d: watcher got %+v (err %v), want a cancel as compacted", i, r, r.Err())
					}
				case <-time.After(10 * time.Second):
					t.Errorf("process %d: watcher not cancelled within 10 s", i)
				}
			}
			// Writes go on, above every revision handed out before.
			for i, c := range clis {
				waitFor(t, 10*time.Second, fmt.Sprintf("process %d ready", i), func() (bool, string) {
					a := httpGet(procs[i].Endpoint + "/readyz")
					return a.code == http.StatusOK, a.String()
				})
				r, err := c.Put(ctx, fmt.Sprint("b/after/", i), "x")
				if err != nil {
					t.Fatalf("process %d: put after the resync: %v", i, err)
				}
				if r.Header.Revision <= last {
					t.Errorf("process %d: put after the resync got revision %d, already handed out (up to %d) before", i, r.Header.Revision, last)
				}
			}
			resyncs := 0.0
			logged := false
			for _, p := range procs {
				resyncs += mustScrape(t, p.Endpoint+"/metrics").sum("shimd_db_resync_total")
				logged = logged || strings.Contains(p.Output(), "the database is behind this process's memory")
			}
			if resyncs < 1 || !logged {
				t.Errorf("shimd_db_resync_total %v over both processes, logged: %v; want at least 1, and logged", resyncs, logged)
			}
			t.Logf("database rolled back from revision %d to %d; shimd_db_resync_total %v", last, keep, resyncs)
		})
	}
}

// rollBack makes st's database lose every revision after rev, as a
// standby promoted before it received them would.
func rollBack(ctx context.Context, t *testing.T, st *harness.Store, rev int64) {
	t.Helper()
	db, s := st.Admin(), st.Name+"."
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	q := func(query string) string {
		if st.Backend.Kind == harness.KindPostgres {
			return strings.ReplaceAll(strings.ReplaceAll(query, "?", "$1"), "S.", s)
		}
		return strings.ReplaceAll(query, "S.", s)
	}
	if _, err := tx.ExecContext(ctx, q("DELETE FROM S.shimd_log WHERE rev > ?"), rev); err != nil {
		t.Fatalf("roll back the log: %v", err)
	}
	var lastID int64
	if err := tx.QueryRowContext(ctx, q("SELECT COALESCE(MAX(id), 0) FROM S.shimd_log")).Scan(&lastID); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, q("UPDATE S.shimd_meta SET rev = ?, last_id = "+fmt.Sprint(lastID)+" WHERE id = 1"), rev); err != nil {
		t.Fatalf("roll back the meta row: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}
