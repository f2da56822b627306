package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestSnapshotEtcdInterop: shimd's snapshots are etcd backend files, and
// etcd's restore into shimd, on every backend, both ways round:
//
//   - shimd → etcd → shimd: `etcdctl snapshot save` from shimd, checked by
//     `etcdutl snapshot status` (revision, total keys), restored with
//     `etcdutl snapshot restore` and served by etcd 3.7.3, which must answer
//     like the original shimd (every key, value, revision and version at
//     every retained revision, HashKV, compaction, leases and their keys,
//     the next revisions); the same file restored with etcdutl 3.6 and
//     served by the real etcd 3.6 binary (built from etcdrel/v3.6) must too;
//     then the 3.7.3 etcd's snapshot restored with `shimd snapshot restore`
//     must answer like that etcd;
//   - etcd → shimd → etcd: the same history written to etcd, its snapshot
//     restored into shimd, and shimd's snapshot restored into etcd again;
//   - `shimd migrate --history` from that etcd.
func TestSnapshotEtcdInterop(t *testing.T) {
	requireShimd(t, "snapshots in etcd's format")
	ctl, utl := etcdctl(t), etcdutl(t)
	rel := etcd36(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			t.Run("shimd-etcd-shimd", func(t *testing.T) {
				orig := startShimd(t, b, harness.Options{})
				compactRev := maintSnapshotHistory(t, orig)
				file := snapSave(t, ctl, orig)
				snapCheckStatus(t, utl, file, orig)
				etcd := snapRestoreEtcd(t, utl, file)
				maintCompareRestored(t, orig, etcd, compactRev, false)
				start := time.Now()
				maintCompareRestored(t, orig, snapRestoreEtcdRelease(t, rel, file), compactRev, false)
				t.Logf("restore into %s and comparison: %s", rel.label(), time.Since(start).Round(10*time.Millisecond))
				back := snapRestoreShimd(t, b, snapSave(t, ctl, etcd))
				maintCompareRestored(t, etcd, back, compactRev, false)
			})
			t.Run("etcd-shimd-etcd", func(t *testing.T) {
				ref := startRef(t, harness.Options{})
				t.Cleanup(ref.stop)
				compactRev := maintSnapshotHistory(t, ref)
				file := snapSave(t, ctl, ref)
				restored := snapRestoreShimd(t, b, file)
				maintCompareRestored(t, ref, restored, compactRev, false)
				file = snapSave(t, ctl, restored)
				snapCheckStatus(t, utl, file, restored)
				maintCompareRestored(t, restored, snapRestoreEtcd(t, utl, file), compactRev, false)
			})
			t.Run("migrate-history", func(t *testing.T) {
				ref := startRef(t, harness.Options{})
				t.Cleanup(ref.stop)
				compactRev := maintSnapshotHistory(t, ref)
				st := newStore(t, b)
				dataDir := tempDir(t, "migrated")
				args := []string{"migrate", "--history", "--from", ref.cli.Endpoints()[0], "--data-dir", dataDir}
				if st.Backend.Endpoint != "" {
					args = append(args, "--endpoint", st.Backend.Endpoint)
				}
				if out, err := exec.Command(sutBin, args...).CombinedOutput(); err != nil {
					t.Fatalf("shimd %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				maintCompareRestored(t, ref, startShimdOn(t, st.Backend, dataDir, harness.Options{}), compactRev, false)
			})
		})
	}
}

// etcdutl returns an etcdutl binary of the conformance module's etcd
// release (pinned by tools.go). ETCDUTL_BIN overrides it.
func etcdutl(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ETCDUTL_BIN"); p != "" {
		return p
	}
	bin, err := harness.Build(".", "go.etcd.io/etcd/etcdutl/v3", t.TempDir(), "etcdutl")
	if err != nil {
		t.Fatalf("build etcdutl: %v", err)
	}
	return bin
}

// snapSave takes a snapshot of s with etcdctl.
func snapSave(t *testing.T, ctl string, s *server) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "snap.db")
	out, err := runCtl(t, ctl, s.cli.Endpoints()[0], "", "snapshot", "save", file)
	if err != nil || !strings.Contains(out, "Snapshot saved at "+file) {
		t.Fatalf("etcdctl snapshot save from %s: %v\n%s%s", s.name, err, out, s.crashInfo())
	}
	return file
}

// snapCheckStatus compares what `etcdutl snapshot status` reads in file
// with s: its revision and its number of live keys.
func snapCheckStatus(t *testing.T, utl, file string, s *server) {
	t.Helper()
	out, err := exec.Command(utl, "snapshot", "status", file, "-w", "json").Output()
	if err != nil {
		t.Fatalf("etcdutl snapshot status: %v\n%s", err, out)
	}
	var st struct {
		Revision int64 `json:"revision"`
		TotalKey int   `json:"totalKey"`
		Version  string
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("etcdutl snapshot status: %v\n%s", err, out)
	}
	r, err := s.cli.Get(ctxT(t, 10*time.Second), "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != r.Header.Revision || int64(st.TotalKey) != r.Count {
		t.Errorf("etcdutl snapshot status: revision %d, %d keys; %s has revision %d, %d keys", st.Revision, st.TotalKey, s.name, r.Header.Revision, r.Count)
	}
	sout, err := exec.Command(sutBin, "snapshot", "status", file, "-w", "json").Output()
	if err != nil {
		t.Fatalf("shimd snapshot status: %v\n%s", err, sout)
	}
	var mine map[string]any
	var theirs map[string]any
	json.Unmarshal(out, &theirs)
	json.Unmarshal(sout, &mine)
	for _, k := range []string{"hash", "revision", "totalKey", "totalSize", "version"} {
		if mine[k] != theirs[k] {
			t.Errorf("shimd snapshot status %s = %v, etcdutl's %v", k, mine[k], theirs[k])
		}
	}
}

// snapRestoreEtcd restores file with etcdutl and starts an embedded etcd
// 3.7.3 on the result.
func snapRestoreEtcd(t *testing.T, utl, file string) *server {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "etcd")
	out, err := exec.Command(utl, "snapshot", "restore", file, "--data-dir", dir, "--name", "ref",
		"--initial-cluster", "ref=http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380").CombinedOutput()
	if err != nil {
		t.Fatalf("etcdutl snapshot restore: %v\n%s", err, out)
	}
	e, err := harness.StartEtcd(harness.EtcdConfig{Dir: dir, NoFsync: true})
	if err != nil {
		t.Fatalf("start etcd on the restored snapshot: %v", err)
	}
	s, err := newServer("etcd(restored)", e.Endpoint, e.Close)
	if err != nil {
		t.Fatalf("connect to the restored etcd: %v", err)
	}
	t.Cleanup(s.stop)
	return s
}

// etcdRelease is an etcd release's own etcd and etcdutl binaries.
type etcdRelease struct {
	Version       string // v3.6.17: the build module's requirement ("" for binaries from the environment)
	Etcd, Etcdutl string
}

// label names the release in logs and reports.
func (r etcdRelease) label() string {
	if r.Version == "" {
		return r.Etcd
	}
	return "etcd " + r.Version
}

// etcd36Dir is the module that builds etcd and etcdutl of the etcd 3.6
// release line (its go.mod pins the release).
const etcd36Dir = "etcdrel/v3.6"

var etcd36Build struct {
	once sync.Once
	rel  etcdRelease
	err  error
}

// etcd36 returns etcd and etcdutl 3.6, built from etcd36Dir once per run
// of the test binary into runBinDir (Go's build cache makes later runs
// cheap; the first one downloads and compiles etcd). SHIMD_TEST_ETCD_BIN
// and SHIMD_TEST_ETCDUTL_BIN replace either with a binary of one's own (a
// real etcd and etcdutl, of any release). A failed build fails the test,
// with go build's output.
func etcd36(t testing.TB) etcdRelease {
	t.Helper()
	b := &etcd36Build
	b.once.Do(func() {
		b.rel, b.err = buildEtcd36(t)
	})
	if b.err != nil {
		t.Fatalf("etcd 3.6 for the snapshot interop (set SHIMD_TEST_ETCD_BIN and SHIMD_TEST_ETCDUTL_BIN to prebuilt binaries to skip the build): %v", b.err)
	}
	return b.rel
}

var etcdRequireRE = regexp.MustCompile(`(?m)^\s*(?:require\s+)?go\.etcd\.io/etcd/server/v3 (v\S+)`)

func buildEtcd36(t testing.TB) (etcdRelease, error) {
	rel := etcdRelease{Etcd: os.Getenv("SHIMD_TEST_ETCD_BIN"), Etcdutl: os.Getenv("SHIMD_TEST_ETCDUTL_BIN")}
	if rel.Etcd != "" && rel.Etcdutl != "" {
		t.Logf("etcd 3.6: %s and %s (SHIMD_TEST_ETCD_BIN, SHIMD_TEST_ETCDUTL_BIN)", rel.Etcd, rel.Etcdutl)
		return rel, nil
	}
	mod, err := os.ReadFile(filepath.Join(etcd36Dir, "go.mod"))
	if err != nil {
		return rel, err
	}
	m := etcdRequireRE.FindSubmatch(mod)
	if m == nil {
		return rel, fmt.Errorf("%s/go.mod: no go.etcd.io/etcd/server/v3 requirement", etcd36Dir)
	}
	rel.Version = string(m[1])
	dir := runBinDir
	if dir == "" {
		dir = t.TempDir()
	}
	dir = filepath.Join(dir, "etcd-"+rel.Version)
	t.Logf("building etcd %s and etcdutl from %s into %s, once per run (downloads and compiles etcd on a cold Go build cache)...", rel.Version, etcd36Dir, dir)
	start := time.Now()
	for _, c := range []struct {
		bin  *string
		pkg  string
		name string
	}{
		{&rel.Etcd, "go.etcd.io/etcd/server/v3", "etcd"},
		{&rel.Etcdutl, "go.etcd.io/etcd/etcdutl/v3", "etcdutl"},
	} {
		if *c.bin != "" {
			t.Logf("%s: %s (from the environment)", c.name, *c.bin)
			continue
		}
		if *c.bin, err = harness.Build(etcd36Dir, c.pkg, dir, c.name); err != nil {
			return rel, err
		}
	}
	t.Logf("built etcd %s in %s", rel.Version, time.Since(start).Round(100*time.Millisecond))
	return rel, nil
}

// snapRestoreEtcdRelease restores file with rel's etcdutl and starts rel's
// etcd binary on the result (one member on loopback ports).
func snapRestoreEtcdRelease(t *testing.T, rel etcdRelease, file string) *server {
	t.Helper()
	const name = "m1"
	dir := filepath.Join(t.TempDir(), "etcd")
	peer := freeURL(t)
	out, err := exec.Command(rel.Etcdutl, "snapshot", "restore", file, "--data-dir", dir, "--name", name,
		"--initial-cluster", name+"="+peer, "--initial-advertise-peer-urls", peer).CombinedOutput()
	if err != nil {
		t.Fatalf("%s snapshot restore: %v\n%s", rel.Etcdutl, err, out)
	}
	p := &harness.Process{Bin: rel.Etcd, DataDir: dir, Backend: harness.Backend{Name: "etcd"}, Args: func(addr string) []string {
		return []string{"--name", name, "--data-dir", dir,
			"--listen-client-urls", "http://" + addr, "--advertise-client-urls", "http://" + addr,
			"--listen-peer-urls", peer, "--log-level", "warn"}
	}}
	if err := p.Start(); err != nil {
		t.Fatalf("start %s on the restored snapshot: %v\n%s", rel.Etcd, err, p.Output())
	}
	label := rel.label()
	s, err := newServer(label+" (restored)", p.Endpoint, func() { p.Stop() })
	if err != nil {
		t.Fatalf("connect to %s: %v", label, err)
	}
	t.Cleanup(s.stop)
	st, err := s.cli.Status(ctxT(t, 10*time.Second), p.Endpoint)
	if err != nil {
		t.Fatalf("%s: status: %v", label, err)
	}
	if rel.Version != "" && "v"+st.Version != rel.Version {
		t.Fatalf("%s reports version %s", label, st.Version)
	}
	t.Logf("etcd %s serves the snapshot restored by its etcdutl", st.Version)
	return s
}

// snapRestoreShimd restores file with `shimd snapshot restore` into a fresh
// store of b and starts shimd on it.
func snapRestoreShimd(t *testing.T, b harness.Backend, file string) *server {
	t.Helper()
	st := newStore(t, b)
	dataDir := tempDir(t, "restored")
	if out, err := exec.Command(sutBin, snapRestoreArgs(file, st, dataDir)...).CombinedOutput(); err != nil {
		t.Fatalf("shimd snapshot restore: %v\n%s", err, out)
	}
	return startShimdOn(t, st.Backend, dataDir, harness.Options{})
}

func snapRestoreArgs(file string, st *harness.Store, dataDir string) []string {
	args := []string{"snapshot", "restore", file, "--data-dir", dataDir}
	if st.Backend.Endpoint != "" {
		args = append(args, "--endpoint", st.Backend.Endpoint)
	}
	return args
}

// TestSnapshotDamaged: `shimd snapshot restore` of a truncated or corrupt
// snapshot fails with an error that says so and leaves the store as it was
// (a restore of the intact file into the same store then succeeds, and
// serves what the original does).
func TestSnapshotDamaged(t *testing.T) {
	requireShimd(t, "snapshot restore")
	ctl := etcdctl(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			orig := startShimd(t, b, harness.Options{})
			ctx := ctxT(t, time.Minute)
			r := newRand(7)
			for i := range 300 {
				if _, err := orig.cli.Put(ctx, fmt.Sprintf("dmg/%03d", i%120), maintRandValue(r, 600)); err != nil {
					t.Fatal(err)
				}
			}
			file := snapSave(t, ctl, orig)
			good, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			n := len(good)
			body, sum := good[:n-32], good[n-32:]
			flip := func(data []byte, at int) []byte {
				out := slices.Clone(data)
				out[at] ^= 0x40
				return out
			}
			garbage := slices.Clone(body)
			for i := 2 * 4096; i < len(garbage); i++ {
				garbage[i] = byte(i * 7)
			}
			cases := []struct {
				name string
				data []byte
				args []string
				want string
			}{
				{"empty", nil, nil, "not an etcd snapshot"},
				{"text", []byte("not a snapshot at all\n"), nil, "not an etcd snapshot"},
				{"head-cut", good[8192:], nil, "not an etcd snapshot"},
				{"truncated-half", good[:n/2], nil, "no SHA-256 trailer"},
				{"truncated-1-byte", good[:n-1], nil, "no SHA-256 trailer"},
				{"truncated-page-kept-trailer", slices.Concat(body[:len(body)-4096], sum), nil, "checksum mismatch"},
				{"corrupt-middle", flip(good, n/2), nil, "checksum mismatch"},
				{"corrupt-trailer", flip(good, n-1), nil, "checksum mismatch"},
				{"corrupt-pages-no-check", garbage, []string{"--skip-hash-check"}, "not a valid etcd snapshot"},
			}
			st := newStore(t, b)
			dataDir := tempDir(t, "restored")
			for _, c := range cases {
				bad := filepath.Join(t.TempDir(), c.name+".db")
				if err := os.WriteFile(bad, c.data, 0o600); err != nil {
					t.Fatal(err)
				}
				out, err := exec.Command(sutBin, append(snapRestoreArgs(bad, st, dataDir), c.args...)...).CombinedOutput()
				if err == nil {
					t.Errorf("%s: the restore succeeded:\n%s", c.name, out)
					continue
				}
				if !strings.Contains(string(out), c.want) || strings.Contains(string(out), "panic") {
					t.Errorf("%s: the restore failed with %q, want an error saying %q", c.name, out, c.want)
				}
				t.Logf("%s: %s", c.name, strings.TrimSpace(string(out)))
			}
			// The store is untouched: a restore (which needs an empty one)
			// of the intact file succeeds, and serves the original's data.
			if out, err := exec.Command(sutBin, snapRestoreArgs(file, st, dataDir)...).CombinedOutput(); err != nil {
				t.Fatalf("restore of the intact file after the failed ones: %v\n%s", err, out)
			}
			restored := startShimdOn(t, st.Backend, dataDir, harness.Options{})
			for _, s := range []*server{orig, restored} {
				for _, rev := range []int64{0, 150} {
					g, err := s.cli.Get(ctx, "dmg/", clientv3.WithPrefix(), clientv3.WithRev(rev))
					if err != nil {
						t.Fatalf("%s: %v", s.name, err)
					}
					o, _ := orig.cli.Get(ctx, "dmg/", clientv3.WithPrefix(), clientv3.WithRev(rev))
					if g.Header.Revision != o.Header.Revision || len(g.Kvs) != len(o.Kvs) || fmt.Sprint(g.Kvs) != fmt.Sprint(o.Kvs) {
						t.Errorf("%s at revision %d differs from the original", s.name, rev)
					}
				}
			}
		})
	}
}

// TestSnapshotDuringWrites: a snapshot taken while clients write is one
// consistent revision: restored, it equals the original at that revision
// (every key, and HashKV), and the writes never stopped.
func TestSnapshotDuringWrites(t *testing.T) {
	requireShimd(t, "snapshot restore")
	ctl := etcdctl(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			orig := startShimd(t, b, harness.Options{})
			ctx := ctxT(t, 2*time.Minute)
			r := newRand(3)
			for i := range 2000 {
				if _, err := orig.cli.Put(ctx, fmt.Sprintf("w/%04d", i%500), maintRandValue(r, 200)); err != nil {
					t.Fatal(err)
				}
			}
			stop := make(chan struct{})
			var writes int
			var werr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, werr = orig.cli.Put(ctx, fmt.Sprintf("w/%04d", i%700), fmt.Sprint(i)); werr != nil {
						return
					}
					writes++
				}
			}()
			file := snapSave(t, ctl, orig)
			close(stop)
			<-done
			if werr != nil || writes == 0 {
				t.Fatalf("writes during the snapshot: %d, %v", writes, werr)
			}
			restored := snapRestoreShimd(t, b, file)
			g, err := restored.cli.Get(ctx, "w/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			rev := g.Header.Revision
			o, err := orig.cli.Get(ctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(rev))
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(o.Kvs) != fmt.Sprint(g.Kvs) {
				t.Errorf("the restored store differs from the original at revision %d", rev)
			}
			h1, err1 := maint(orig).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
			h2, err2 := maint(restored).HashKV(ctx, &pb.HashKVRequest{Revision: rev})
			if err1 != nil || err2 != nil || h1.Hash != h2.Hash {
				t.Errorf("HashKV at %d: original %v %v, restored %v %v", rev, h1, err1, h2, err2)
			}
			t.Logf("snapshot at revision %d; %d writes while it was taken", rev, writes)
		})
	}
}
