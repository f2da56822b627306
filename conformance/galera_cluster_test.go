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

	_ "github.com/go-sql-driver/mysql"

	"github.com/shimd/shimd/conformance/harness"
)

// A MariaDB Galera cluster built from the machine's binaries (Debian's
// mariadb-server and galera-4) in a temporary directory, every node on
// loopback ports: the first bootstraps the cluster, the others join it by
// an rsync state transfer.

const galeraProvider = "/usr/lib/galera/libgalera_smm.so"

type galeraNode struct {
	name                      string
	dir                       string
	port, gport, ist, sstPort int
	cmd                       *exec.Cmd
	exited                    chan struct{}
}

type galeraCluster struct {
	dir   string
	nodes []*galeraNode
}

// galeraBins finds mariadbd and mariadb-install-db, or says what is missing.
func galeraBins() (mariadbd, installDB string, missing []string) {
	find := func(name string, extra ...string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		for _, p := range extra {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
		missing = append(missing, name)
		return ""
	}
	mariadbd = find("mariadbd", "/usr/sbin/mariadbd")
	installDB = find("mariadb-install-db")
	find("rsync") // the joiners' state transfer
	if _, err := os.Stat(galeraProvider); err != nil {
		missing = append(missing, galeraProvider+" (galera-4)")
	}
	return mariadbd, installDB, missing
}

// startGalera starts an n-node cluster and waits until every node is
// synced; it is killed and removed when t ends.
func startGalera(t *testing.T, n int) *galeraCluster {
	t.Helper()
	mariadbd, installDB, missing := galeraBins()
	if len(missing) > 0 {
		if harness.RequireBackends() {
			t.Fatalf("a MariaDB Galera cluster needs %s (%s=1: missing databases are failures)", strings.Join(missing, ", "), harness.EnvRequireBackends)
		}
		t.Skipf("SKIPPED: a MariaDB Galera cluster needs %s", strings.Join(missing, ", "))
	}
	dir, err := os.MkdirTemp("", "shimd-galera-")
	if err != nil {
		t.Fatal(err)
	}
	// rsync's daemon, started by root, writes a joiner's files as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &galeraCluster{dir: dir}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.kill()
		}
		if t.Failed() {
			for _, nd := range c.nodes {
				t.Logf("%s error log (last lines):\n%s", nd.name, tail(filepath.Join(nd.dir, "err.log"), 30))
			}
		}
		os.RemoveAll(dir)
	})
	seed := filepath.Join(dir, "seed")
	out, err := exec.Command(installDB, "--no-defaults", "--user="+currentUser(), "--datadir="+seed,
		"--auth-root-authentication-method=normal", "--skip-test-db").CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}
	var gcomm []string
	for i := 1; i <= n; i++ {
		nd := &galeraNode{name: fmt.Sprintf("node%d", i), dir: filepath.Join(dir, fmt.Sprintf("n%d", i))}
		nd.port, nd.gport, nd.ist, nd.sstPort = freePort(t), freePort(t), freePort(t), freePort(t)
		gcomm = append(gcomm, fmt.Sprintf("127.0.0.1:%d", nd.gport))
		c.nodes = append(c.nodes, nd)
	}
	for i, nd := range c.nodes {
		if err := os.MkdirAll(nd.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		data := filepath.Join(nd.dir, "data")
		if i == 0 {
			if out, err := exec.Command("cp", "-a", seed, data).CombinedOutput(); err != nil {
				t.Fatalf("copy the seed data dir: %v\n%s", err, out)
			}
		} else if err := joinerDataDir(data); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(nd.dir, "my.cnf"), []byte(nd.config(strings.Join(gcomm, ","))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The first node bootstraps; the others join at once, one state
	// transfer after the other.
	if err := c.nodes[0].start(mariadbd, true); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[0].waitSynced(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.nodes[1:] {
		if err := nd.start(mariadbd, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range c.nodes[1:] {
		if err := nd.waitSynced(120 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// config is the node's my.cnf. The timeouts make the cluster notice a
// killed node in seconds (Galera's defaults take about 15 s).
func (nd *galeraNode) config(gcomm string) string {
	lines := []string{
		"[mysqld]",
		"datadir=" + filepath.Join(nd.dir, "data"),
		"socket=" + filepath.Join(nd.dir, "sock"),
		"pid-file=" + filepath.Join(nd.dir, "pid"),
		"log-error=" + filepath.Join(nd.dir, "err.log"),
		"port=" + strconv.Itoa(nd.port),
		"bind-address=127.0.0.1",
		"user=" + currentUser(),
		"skip-name-resolve",
		"performance_schema=OFF",
		"innodb_buffer_pool_size=32M",
		"innodb_log_file_size=16M",
		"binlog_format=ROW",
		"innodb_autoinc_lock_mode=2",
		"wsrep_on=ON",
		"wsrep_provider=" + galeraProvider,
		"wsrep_cluster_name=shimd-test",
		"wsrep_cluster_address=gcomm://" + gcomm,
		fmt.Sprintf("wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:%d;ist.recv_addr=127.0.0.1:%d;gcache.size=32M;"+
			"evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT4S\"", nd.gport, nd.ist),
		fmt.Sprintf("wsrep_node_address=127.0.0.1:%d", nd.gport),
		"wsrep_node_name=" + nd.name,
		"wsrep_sst_method=rsync",
		fmt.Sprintf("wsrep_sst_receive_address=127.0.0.1:%d", nd.sstPort),
	}
	return strings.Join(lines, "\n") + "\n"
}

func (nd *galeraNode) start(mariadbd string, bootstrap bool) error {
	args := []string{"--defaults-file=" + filepath.Join(nd.dir, "my.cnf")}
	if bootstrap {
		args = append(args, "--wsrep-new-cluster")
	}
	out, err := os.Create(filepath.Join(nd.dir, "out.log"))
	if err != nil {
		return err
	}
	nd.cmd = exec.Command(mariadbd, args...)
	nd.cmd.Stdout, nd.cmd.Stderr = out, out
	// Its own process group, so that kill takes the SST scripts too.
	nd.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := nd.cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start %s: %w", nd.name, err)
	}
	nd.exited = make(chan struct{})
	go func() {
		nd.cmd.Wait()
		out.Close()
		close(nd.exited)
	}()
	return nil
}

// kill ends the node as a crash would (SIGKILL), and waits for it.
func (nd *galeraNode) kill() {
	if nd.cmd == nil || nd.cmd.Process == nil {
		return
	}
	syscall.Kill(-nd.cmd.Process.Pid, syscall.SIGKILL)
	<-nd.exited
}

// dsn is the go-sql-driver DSN of database db on the node.
func (nd *galeraNode) dsn(db string) string {
	return fmt.Sprintf("root@tcp(127.0.0.1:%d)/%s", nd.port, db)
}

// waitSynced waits until the node has joined the cluster and applied its
// state: wsrep_local_state_comment is Synced.
func (nd *galeraNode) waitSynced(timeout time.Duration) error {
	db, err := sql.Open("mysql", nd.dsn("")+"?timeout=1s")
	if err != nil {
		return err
	}
	defer db.Close()
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-nd.exited:
			return fmt.Errorf("%s exited while starting:\n%s", nd.name, tail(filepath.Join(nd.dir, "err.log"), 30))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var name, state string
		err := db.QueryRowContext(ctx, "SHOW STATUS LIKE 'wsrep_local_state_comment'").Scan(&name, &state)
		cancel()
		if err == nil && state == "Synced" {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = state
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not synced after %v; last: %s\n%s", nd.name, timeout, last, tail(filepath.Join(nd.dir, "err.log"), 30))
}

// joinerDataDir makes an empty data dir that rsync's daemon, which drops to
// nobody when started by root, can fill.
func joinerDataDir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return fmt.Errorf("joiner data dir: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	return os.Chown(dir, uid, -1)
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}

// freePort is a loopback TCP port free at the time of the call.
func freePort(t *testing.T) int {
	t.Helper()
	p, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// tail is the last n lines of file.
func tail(file string, n int) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
