package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestDBHang: shimd reaches its database through a TCP relay that can
// freeze, as a host does when it loses power or is cut off by a partition:
// connections stay open and nothing comes back, neither for the ones open
// nor for new ones. With --db-timeout 2s, a Put during the freeze must be
// answered with an error within seconds, not wait out the client's 60 s. When the
// relay forwards again — new connections only: the frozen ones stay frozen
// forever, as those to a dead host would — the same shimd process must
// accept writes again within 20 s, every acknowledged put must read back,
// and the put whose commit was cut off is either wholly there or wholly
// absent.
func TestDBHang(t *testing.T) {
	requireRealSUT(t)
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			relay := newFreezeRelay(t, dbAddr(t, st.Backend))
			hung := st.Backend
			hung.Endpoint = strings.Replace(hung.Endpoint, relay.target, relay.addr(), 1)
			p := &harness.Process{Bin: sutBin, DataDir: tempDir(t, "shimd"), Backend: hung, ExtraArgs: []string{"--db-timeout", "2s", "--db-connect-timeout", "1s"}}
			if err := p.Start(); err != nil {
				t.Fatalf("start shimd through the relay: %v", err)
			}
			t.Cleanup(func() { p.Stop() })
			cli, err := dial(p.Endpoint)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			put := func(key string, d time.Duration) (*clientv3.PutResponse, error) {
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
				return cli.Put(ctx, key, "v-"+key)
			}
			acked := map[string]int64{}
			for i := range 5 {
				k := fmt.Sprintf("before/%d", i)
				r, err := put(k, 10*time.Second)
				if err != nil {
					t.Fatalf("put %s before the freeze: %v", k, err)
				}
				acked[k] = r.Header.Revision
			}

			relay.freeze()
			start := time.Now()
			// Raw gRPC: clientv3 would retry an Unavailable put until its own
			// deadline, as it does while etcd has no leader.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, err = pb.NewKVClient(cli.ActiveConnection()).Put(ctx, &pb.PutRequest{Key: []byte("during"), Value: []byte("v-during")})
			cancel()
			took := time.Since(start)
			if err == nil {
				t.Fatalf("a put while the database is frozen succeeded")
			}
			if took > 20*time.Second {
				t.Fatalf("a put while the database is frozen took %v to fail (err %v): the hung connection was not abandoned\n%s", took.Round(time.Millisecond), err, p.Output())
			}
			t.Logf("put during the freeze failed after %v: %v", took.Round(time.Millisecond), err)

			relay.thaw()
			deadline := time.Now().Add(20 * time.Second)
			var last error
			for i := 0; ; i++ {
				k := fmt.Sprintf("after/%d", i)
				r, err := put(k, 5*time.Second)
				if err == nil {
					acked[k] = r.Header.Revision
					t.Logf("writes back %v after the relay forwards again", time.Since(deadline.Add(-20*time.Second)).Round(time.Millisecond))
					break
				}
				last = err
				if time.Now().After(deadline) {
					t.Fatalf("no write acknowledged within 20 s of the database answering again; last error: %v\n%s", last, p.Output())
				}
			}
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for k, rev := range acked {
				r, err := cli.Get(ctx, k)
				if err != nil || len(r.Kvs) != 1 || r.Kvs[0].ModRevision != rev || string(r.Kvs[0].Value) != "v-"+k {
					t.Errorf("acknowledged put %s at revision %d: read back %v, %v", k, rev, r, err)
				}
			}
			if r, err := cli.Get(ctx, "during"); err != nil {
				t.Errorf("get the cut-off put: %v", err)
			} else if len(r.Kvs) == 1 && string(r.Kvs[0].Value) != "v-during" {
				t.Errorf("the cut-off put is there with value %q", r.Kvs[0].Value)
			}
		})
	}
}

// dbAddr is the host:port of the database server in b's DSN.
func dbAddr(t *testing.T, b harness.Backend) string {
	t.Helper()
	for _, a := range []string{"127.0.0.1:5432", "127.0.0.1:3306", "localhost:5432", "localhost:3306"} {
		if strings.Contains(b.Endpoint, a) {
			return a
		}
	}
	t.Skipf("the %s test DSN names no loopback server address this test knows to relay", b.Name)
	return ""
}

// freezeRelay forwards TCP connections to target until frozen; frozen, it
// neither forwards nor answers (connections open before stay silent
// forever, new ones are accepted and left hanging). Thawed, it forwards new
// connections again.
type freezeRelay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	epoch  int // freezes so far: a connection from before one is dead
	conns  []net.Conn
}

func newFreezeRelay(t *testing.T, target string) *freezeRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &freezeRelay{ln: ln, target: target}
	go r.serve()
	t.Cleanup(r.close)
	return r
}

func (r *freezeRelay) addr() string { return r.ln.Addr().String() }

func (r *freezeRelay) freeze() { r.mu.Lock(); r.frozen = true; r.epoch++; r.mu.Unlock() }

func (r *freezeRelay) thaw() { r.mu.Lock(); r.frozen = false; r.mu.Unlock() }

func (r *freezeRelay) close() {
	r.ln.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
}

func (r *freezeRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.conns = append(r.conns, c)
		frozen := r.frozen
		r.mu.Unlock()
		if frozen {
			continue // accepted, never answered
		}
		up, err := net.Dial("tcp", r.target)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, up)
		epoch := r.epoch
		r.mu.Unlock()
		go r.pipe(c, up, epoch)
		go r.pipe(up, c, epoch)
	}
}

// pipe copies src to dst until the relay freezes; from then on the
// connection is silent for good, thawed or not: what arrives is neither
// forwarded nor answered, and nothing is closed.
func (r *freezeRelay) pipe(src, dst net.Conn, epoch int) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		r.mu.Lock()
		dead := r.frozen || r.epoch != epoch
		r.mu.Unlock()
		if dead {
			io.Copy(io.Discard, src) // swallowed until the test ends
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			dst.Close()
			return
		}
	}
}
