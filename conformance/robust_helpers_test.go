package conformance

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// Helpers of the robustness tests (robust_*_test.go). Knobs:
//
//	SHIMD_ROBUST_ROUNDS=n          linearizability rounds per fault (default 3)
//	SHIMD_ROBUST_ROUND_SECONDS=s   load per round (default 2.5)
//	SHIMD_ROBUST_CLIENTS=n         concurrent clients (default 8)
//	SHIMD_ROBUST_CHAOS_ROUNDS=n    rounds of TestRobustSharedChaos (default 8)
//	SHIMD_ROBUST_CHAOS_ROUND_SECONDS=s  load per round of TestRobustSharedChaos (default 6)
//	SHIMD_ROBUST_CHAOS_PROCS=n     its shimd processes (default 3)
//	SHIMD_ROBUST_SEED=n            its choices of faults and operations (default random)
//	SHIMD_ROBUST_CYCLES=n          kill -9 cycles of the durability test (default 50)
//	SHIMD_ROBUST_WATCH_MB=n        MB of events written past a stalled watcher (default 500)
//	SHIMD_TEST_DB_RESTART=1        also restart the PostgreSQL / MariaDB server (disturbs other users)
//	SHIMD_ROBUST=0                 skip the robustness tests altogether

func robustEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func robustEnvFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}

// requireRobust skips in -short mode, when SHIMD_ROBUST=0, and when the
// server could not be built.
func requireRobust(t *testing.T) {
	t.Helper()
	if v := os.Getenv("SHIMD_ROBUST"); v == "0" || v == "false" {
		t.Skip("SHIMD_ROBUST=0")
	}
	requireSUT(t)
}

// robustProc starts shimd on store st (a fixed port across restarts), and
// kills it when t ends. extra are more flags.
func robustProc(t *testing.T, st *harness.Store, name string, extra ...string) *robust.Proc {
	t.Helper()
	p := &robust.Proc{Bin: sutBin, DataDir: tempDir(t, name), Endpoint: st.Backend.Endpoint, Extra: extra}
	if err := p.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if !p.Running() {
			return
		}
		if err := p.Stop(); err != nil {
			t.Errorf("%s: stop: %v\n%s", name, err, p.Output())
		}
	})
	return p
}

// robustDial connects to p (reconnecting on its own after restarts).
func robustDial(t *testing.T, p *robust.Proc) *grpc.ClientConn {
	t.Helper()
	return robustDialTLS(t, p.Addr(), nil)
}

func robustDialTLS(t *testing.T, addr string, tc *tls.Config, extra ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := robust.Dial(addr, tc, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// robustBarrier waits until the store's revision has stopped moving (writes
// of unknown outcome still in flight have landed or died) and returns it.
// Every process must answer the same revision.
func robustBarrier(t *testing.T, conns []*grpc.ClientConn) int64 {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	prev := int64(-1)
	var lastErr error
	for time.Now().Before(deadline) {
		revs := make([]int64, len(conns))
		ok := true
		for i, c := range conns {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, err := pb.NewKVClient(c).Range(ctx, &pb.RangeRequest{Key: []byte("robust/barrier")}, grpc.WaitForReady(true))
			cancel()
			if err != nil {
				ok, lastErr = false, err
				break
			}
			revs[i] = r.Header.Revision
		}
		if ok {
			for i := range revs {
				if revs[i] != revs[0] {
					// Processes on one store may differ while a commit
					// propagates; a persistent difference fails below.
					ok = false
					lastErr = fmt.Errorf("processes answer different revisions: %v", revs)
				}
			}
		}
		if ok && revs[0] == prev {
			return prev
		}
		if ok {
			prev = revs[0]
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("the store's revision did not settle within 60 s: %v", lastErr)
	return 0
}

// Database server faults.

// restartDBServer restarts the PostgreSQL cluster or the MariaDB server and
// waits until it answers again.
func restartDBServer(ctx context.Context, t *testing.T, st *harness.Store) (time.Duration, error) {
	start := time.Now()
	switch st.Backend.Kind {
	case harness.KindPostgres:
		ver, cluster := pgCluster(t)
		out, err := exec.CommandContext(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", ver, cluster, "restart").CombinedOutput()
		if err != nil {
			_ = exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", ver, cluster, "start").Run()
			return 0, fmt.Errorf("pg_ctlcluster restart: %v\n%s", err, out)
		}
	case harness.KindMySQL:
		if err := restartMariaDB(ctx); err != nil {
			return 0, err
		}
	default:
		return 0, fmt.Errorf("no server to restart for %s", st.Backend.Name)
	}
	if err := waitDB(ctx, st.Admin()); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// restartMariaDB stops mariadbd (SIGTERM, then waits for it to exit) and
// starts it again as the README says.
func restartMariaDB(ctx context.Context) error {
	if _, err := exec.LookPath("start-stop-daemon"); err != nil {
		return fmt.Errorf("start-stop-daemon not found: %v", err)
	}
	pid := mariadbPid()
	if pid == 0 {
		return fmt.Errorf("mariadbd is not running (no pid in /run/mysqld/mysqld.pid or pidof)")
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop mariadbd %d: %v", pid, err)
	}
	for i := 0; ; i++ {
		if syscall.Kill(pid, 0) != nil {
			break
		}
		if i > 600 { // 60 s
			return fmt.Errorf("mariadbd %d did not exit within 60 s", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := exec.CommandContext(ctx, "start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd").CombinedOutput()
	if err != nil {
		return fmt.Errorf("start mariadbd: %v\n%s", err, out)
	}
	return nil
}

func mariadbPid() int {
	if b, err := os.ReadFile("/run/mysqld/mysqld.pid"); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
			return pid
		}
	}
	if out, err := exec.Command("pidof", "mariadbd").Output(); err == nil {
		if pid, err := strconv.Atoi(strings.Fields(string(out))[0]); err == nil {
			return pid
		}
	}
	return 0
}

// waitDB waits (60 s) until the server answers a query.
func waitDB(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(60 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var one int
		err = db.QueryRowContext(qctx, "SELECT 1").Scan(&one)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("database server not answering 60 s after the restart: %v", err)
}
