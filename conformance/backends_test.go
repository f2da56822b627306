package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Helpers for the tests that run shimd without a reference etcd on the
// server databases: several processes on one store (multiproc_test.go),
// database faults (dbfault_test.go) and the latency benchmarks
// (crossproc_bench_test.go).

// sharedBackends are the backends whose stores several shimd processes can
// share (PostgreSQL, MariaDB), unreachable ones included: tests skip or fail
// on those through needBackend.
func sharedBackends() []harness.Backend {
	var out []harness.Backend
	for _, b := range harness.Backends() {
		if b.IsShared() {
			out = append(out, b)
		}
	}
	return out
}

// requireRealSUT skips tests that need several real shimd processes on one
// store: the self-test stand-in ignores --endpoint, so its processes share
// nothing.
func requireRealSUT(t testing.TB) {
	t.Helper()
	requireSUT(t)
	if harness.EnvBool(envSelfTest) {
		t.Skip("self-test mode: etcd stand-ins do not share a SQL store")
	}
}

// startOn starts a shimd on store st, stopped (SIGTERM, checked) when t
// ends. extra are shimd-only flags.
func startOn(t testing.TB, st *harness.Store, name string, extra ...string) *harness.Process {
	t.Helper()
	p := &harness.Process{Bin: sutBin, DataDir: tempDir(t, name), Backend: st.Backend, ExtraArgs: extra}
	if err := p.Start(); err != nil {
		t.Fatalf("start %s %s on %s: %v", sutName, name, st.Backend.Name, err)
	}
	t.Cleanup(func() {
		select {
		case <-p.Exited():
			t.Errorf("%s %s exited during the test: %v\n%s", sutName, name, p.ExitErr(), p.Output())
			return
		default:
		}
		if err := p.Stop(); err != nil {
			t.Errorf("%s %s: stop: %v\n%s", sutName, name, err, p.Output())
		}
	})
	return p
}

// dialT connects to a server, closing the client when t ends.
func dialT(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := dial(endpoint)
	if err != nil {
		t.Fatalf("dial %s: %v", endpoint, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestBackends checks the store provisioning itself on every backend: a new
// store is empty (shimd's first put gets revision 2, as on a fresh etcd),
// stores are isolated from each other, and a dropped store is gone.
func TestBackends(t *testing.T) {
	requireSUT(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			if b.Endpoint != "" {
				t.Fatalf("backend list entry has an endpoint (%s): stores would be shared between tests", b.Endpoint)
			}
			st1, st2 := newStore(t, b), newStore(t, b)
			if b.IsShared() && st1.Backend.Endpoint == st2.Backend.Endpoint {
				t.Fatalf("two stores share the endpoint %s", st1.Backend.Endpoint)
			}
			t.Logf("store endpoints: %q, %q", harness.RedactDSN(st1.Backend.Endpoint), harness.RedactDSN(st2.Backend.Endpoint))
			p1 := startOn(t, st1, "one")
			p2 := startOn(t, st2, "two")
			c1, c2 := dialT(t, p1.Endpoint), dialT(t, p2.Endpoint)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i, c := range []*clientv3.Client{c1, c2} {
				r, err := c.Put(ctx, "k", fmt.Sprint("v", i))
				if err != nil {
					t.Fatalf("store %d: put: %v", i+1, err)
				}
				if r.Header.Revision != 2 {
					t.Errorf("store %d: first put got revision %d, want 2 (is the store fresh?)", i+1, r.Header.Revision)
				}
			}
			for i, c := range []*clientv3.Client{c1, c2} {
				g, err := c.Get(ctx, "", clientv3.WithPrefix())
				if err != nil {
					t.Fatalf("store %d: get: %v", i+1, err)
				}
				if len(g.Kvs) != 1 || string(g.Kvs[0].Value) != fmt.Sprint("v", i) {
					t.Errorf("store %d holds %v, want only k=v%d (stores not isolated?)", i+1, g.Kvs, i)
				}
			}
			if !b.IsShared() {
				return
			}
			if n, err := st1.Connections(ctx); !harness.EnvBool(envSelfTest) && (err != nil || n == 0) {
				t.Errorf("store 1: %d database connections identified (err %v); KillConnections could not find shimd's", n, err)
			}
			st3, err := harness.NewStore(b)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := st3.Exists(ctx); !ok || err != nil {
				t.Errorf("new store %s does not exist (err %v)", st3.Name, err)
			}
			if err := st3.Drop(); err != nil {
				t.Errorf("drop %s: %v", st3.Name, err)
			}
			if ok, err := st3.Exists(ctx); ok || err != nil {
				t.Errorf("store %s still exists after Drop (err %v)", st3.Name, err)
			}
		})
	}
}
