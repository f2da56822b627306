package conformance

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// A PostgreSQL primary and standby built from the machine's binaries, for
// the failover tests (failover_test.go). Knobs:
//
//	SHIMD_TEST_PG_BIN=dir   the PostgreSQL binaries (default: the newest /usr/lib/postgresql/*/bin)
//	SHIMD_TEST_FAILOVER=0   skip the failover tests
//	SHIMD_TEST_FAILOVER_FLAGS="--db-timeout 10s ..."  shimd's flags in them ("-": the defaults)

// pgNode is one PostgreSQL server of the cluster.
type pgNode struct {
	name string
	dir  string // data directory
	port int
}

type pgHA struct {
	t       *testing.T
	bin     string
	base    string
	asUser  []string // the command prefix that runs as the postgres user ("" when not root)
	primary *pgNode
	standby *pgNode
}

// pgBinDir finds initdb, pg_ctl, pg_basebackup and postgres, or "".
func pgBinDir() string {
	if d := os.Getenv("SHIMD_TEST_PG_BIN"); d != "" {
		return d
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		ok := true
		for _, b := range []string{"initdb", "pg_ctl", "pg_basebackup", "postgres"} {
			if _, err := os.Stat(filepath.Join(dirs[i], b)); err != nil {
				ok = false
			}
		}
		if ok {
			return dirs[i]
		}
	}
	return ""
}

// requireFailover skips unless a failover test can run here: a real shimd,
// PostgreSQL among the backends, and the PostgreSQL server binaries.
func requireFailover(t *testing.T) string {
	t.Helper()
	if v := os.Getenv("SHIMD_TEST_FAILOVER"); v == "0" || v == "false" {
		t.Skip("SHIMD_TEST_FAILOVER=0")
	}
	requireRealSUT(t)
	pg := false
	for _, b := range harness.Backends() {
		pg = pg || b.Kind == harness.KindPostgres
	}
	if !pg {
		t.Skip("SKIPPED: PostgreSQL is not among the backends under test")
	}
	bin := pgBinDir()
	if bin == "" {
		t.Skip("SKIPPED: no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) in /usr/lib/postgresql/*/bin; set SHIMD_TEST_PG_BIN")
	}
	return bin
}

// newPGHA starts a primary and a streaming standby on free loopback
// ports: a synchronous standby (synchronous_commit=on, the standby named
// in synchronous_standby_names) when sync, else an asynchronous one. Both
// are stopped, whatever their state, when t ends.
func newPGHA(t *testing.T, bin string, sync bool) *pgHA {
	t.Helper()
	base, err := os.MkdirTemp("", "shimd-pgcluster-")
	if err != nil {
		t.Fatal(err)
	}
	c := &pgHA{t: t, bin: bin, base: base}
	t.Cleanup(c.destroy)
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root: run it as postgres, in a
		// directory of its own.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("SKIPPED: running as root and there is no postgres user to run PostgreSQL as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(base, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(base, uid, gid); err != nil {
			t.Fatal(err)
		}
		c.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	c.primary = &pgNode{name: "primary", dir: filepath.Join(base, "primary"), port: freePort(t)}
	c.standby = &pgNode{name: "standby1", dir: filepath.Join(base, "standby"), port: freePort(t)}

	c.run("initdb", "-D", c.primary.dir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
	syncNames := "''"
	if sync {
		syncNames = "'standby1'"
	}
	c.appendConf(c.primary, c.nodeConf(c.primary)+fmt.Sprintf("synchronous_standby_names = %s\n", syncNames))
	c.start(c.primary)
	// A role of the test's own, which shutOut leaves in; committed locally,
	// as there is no standby yet to wait for.
	c.exec(c.primary, "SET LOCAL synchronous_commit = local", "CREATE ROLE "+pgTestRole+" SUPERUSER LOGIN")
	c.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(c.primary.port), "-U", "postgres", "-D", c.standby.dir, "-R", "-X", "stream", "--no-sync")
	// cluster_name is the standby's application_name towards the primary;
	// once promoted it must not wait for a synchronous standby of its own.
	c.appendConf(c.standby, c.nodeConf(c.standby)+"synchronous_standby_names = ''\n")
	c.start(c.standby)
	want := "async"
	if sync {
		want = "sync"
	}
	c.waitReplication(want)
	return c
}

// nodeConf is the part of postgresql.conf that differs per node. fsync is
// off: the faults here kill processes, not the machine, and the page cache
// survives them.
func (c *pgHA) nodeConf(n *pgNode) string {
	return fmt.Sprintf(`
port = %d
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
cluster_name = '%s'
wal_level = replica
max_wal_senders = 4
hot_standby = on
synchronous_commit = on
fsync = off
shared_buffers = 16MB
max_connections = 80
wal_keep_size = 64MB
log_min_messages = warning
`, n.port, c.base, n.name)
}

func (c *pgHA) appendConf(n *pgNode, text string) {
	c.t.Helper()
	f, err := os.OpenFile(filepath.Join(n.dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		c.t.Fatal(err)
	}
}

// run runs one of the PostgreSQL binaries as the postgres user.
func (c *pgHA) run(name string, args ...string) {
	c.t.Helper()
	if out, err := c.command(name, args...).CombinedOutput(); err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func (c *pgHA) command(name string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, c.asUser...), filepath.Join(c.bin, name)), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.base
	return cmd
}

func (c *pgHA) start(n *pgNode) {
	c.t.Helper()
	c.run("pg_ctl", "-D", n.dir, "-l", filepath.Join(c.base, n.name+".log"), "-w", "-t", "60", "start")
}

// stop stops n cleanly (a standby left behind on purpose).
func (c *pgHA) stop(n *pgNode) {
	c.t.Helper()
	c.run("pg_ctl", "-D", n.dir, "-w", "-t", "60", "-m", "fast", "stop")
}

// promote makes the standby the primary and waits until it accepts writes.
func (c *pgHA) promote() {
	c.t.Helper()
	c.run("pg_ctl", "-D", c.standby.dir, "-w", "-t", "60", "promote")
}

// dsn names both nodes, the primary first, for a read-write session: what
// shimd is given in production too.
func (c *pgHA) dsn() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write",
		c.primary.port, c.standby.port)
}

// pgTestRole is the test's own superuser; shimd connects as postgres.
const pgTestRole = "failover_test"

// nodeDB opens a connection pool to one node alone, as role.
func (c *pgHA) nodeDB(n *pgNode, role string) *sql.DB {
	c.t.Helper()
	db, err := sql.Open("pgx", fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", role, n.port))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { db.Close() })
	return db
}

// exec runs statements in one transaction on n, as postgres.
func (c *pgHA) exec(n *pgNode, stmts ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := c.nodeDB(n, "postgres").BeginTx(ctx, nil)
	if err != nil {
		c.t.Fatalf("%s: %v", n.name, err)
	}
	defer tx.Rollback()
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			c.t.Fatalf("%s: %s: %v\n%s", n.name, q, err, c.logs())
		}
	}
	if err := tx.Commit(); err != nil {
		c.t.Fatalf("%s: commit: %v", n.name, err)
	}
}

// waitReplication waits until the primary streams to the standby in the
// wanted mode ("sync" or "async").
func (c *pgHA) waitReplication(want string) {
	c.t.Helper()
	db := c.nodeDB(c.primary, "postgres")
	deadline := time.Now().Add(60 * time.Second)
	var state string
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := db.QueryRowContext(ctx, `SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming'`).Scan(&state)
		cancel()
		if err == nil && state == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("the standby is not streaming %s within 60 s (state %q)\n%s", want, state, c.logs())
}

// shutOut makes n refuse shimd's role (postgres) over TCP, or, with
// !out, accept it again; n reloads its configuration if it runs.
func (c *pgHA) shutOut(n *pgNode, out bool) {
	c.t.Helper()
	path := filepath.Join(n.dir, "pg_hba.conf")
	b, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	const line = "host all postgres 127.0.0.1/32 reject\n"
	text := strings.TrimPrefix(string(b), line)
	if out {
		text = line + text
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		c.t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.dir, "postmaster.pid")); err == nil {
		c.run("pg_ctl", "-D", n.dir, "reload")
	}
}

// postmaster is the pid of n's postmaster.
func (c *pgHA) postmaster(n *pgNode) int {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, "postmaster.pid"))
	if err != nil {
		c.t.Fatalf("%s: %v", n.name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		c.t.Fatalf("%s: postmaster.pid: %v", n.name, err)
	}
	return pid
}

// processes is n's postmaster and every process it started (backends,
// walsenders, background workers).
func (c *pgHA) processes(n *pgNode) []int {
	pm := c.postmaster(n)
	pids := []int{pm}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid(pid) == pm {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ppid is pid's parent, from /proc/pid/stat (0 if gone).
func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...: comm may hold spaces, so from the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// freeze stops (SIGSTOP) n's postmaster, then every process it started:
// the postmaster first, so that no backend forked meanwhile escapes.
func (c *pgHA) freeze(n *pgNode) {
	pm := c.postmaster(n)
	c.signal([]int{pm}, syscall.SIGSTOP)
	for range 3 {
		c.signal(c.processes(n), syscall.SIGSTOP)
	}
}

// signal sends sig to the given processes.
func (c *pgHA) signal(pids []int, sig syscall.Signal) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
}

// logs is the tail of both servers' logs, for failure messages.
func (c *pgHA) logs() string {
	var b strings.Builder
	for _, n := range []*pgNode{c.primary, c.standby} {
		if n == nil {
			continue
		}
		data, _ := os.ReadFile(filepath.Join(c.base, n.name+".log"))
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "--- %s log (tail) ---\n%s\n", n.name, data)
	}
	return b.String()
}

// destroy kills both servers, stopped (SIGSTOP) or not, and removes them.
func (c *pgHA) destroy() {
	for _, n := range []*pgNode{c.primary, c.standby} {
		if n == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(n.dir, "postmaster.pid")); err != nil {
			continue
		}
		pids := c.processes(n)
		c.signal(pids, syscall.SIGKILL)
		c.signal(pids, syscall.SIGCONT)
		// Wait until the children are gone before the files go.
		for i := 0; i < 100 && syscall.Kill(pids[0], 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.RemoveAll(c.base)
}
