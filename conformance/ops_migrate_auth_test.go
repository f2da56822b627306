package conformance

import (
	"strings"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// TestOpsMigrateAuth: `shimd migrate --history` from an etcd with auth
// enabled. Without credentials the copy is refused with etcd's error and
// writes nothing; with a wrong password it says so without echoing it;
// with --from-user root:… it copies the auth store with the history, so
// that on shimd auth is on, at the source's auth revision, and the users
// log in with their passwords and hold their roles' permissions.
func TestOpsMigrateAuth(t *testing.T) {
	requireShimd(t, "shimd migrate from an etcd with auth enabled")
	src := startRef(t, harness.Options{})
	t.Cleanup(src.stop)
	authRev := snapAuthSetup(t, src)
	srcURL := src.cli.Endpoints()[0]

	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			dataDir := tempDir(t, "migrated")
			target := []string{"--data-dir", dataDir}
			if b.IsShared() {
				target = []string{"--endpoint", st.Backend.Endpoint}
			}
			run := func(args ...string) runResult {
				return runShimd(t, "", opsEnv(), 2*time.Minute, append(append([]string{"migrate", "--history", "--from", srcURL}, args...), target...)...)
			}
			if r := run(); r.code == 0 || !strings.Contains(r.stderr, "user name is empty") {
				t.Fatalf("migrate without credentials: exit %d, %q; want a failure with etcd's \"user name is empty\"", r.code, r.stderr)
			}
			if r := run("--from-user", "root:not-the-password"); r.code == 0 || !strings.Contains(r.stderr, "authentication failed") || strings.Contains(r.stderr, "not-the-password") {
				t.Fatalf("migrate with a wrong password: exit %d, %q; want a failure saying authentication failed, without the password", r.code, r.stderr)
			}
			if r := run("--from-user", "root", "--from-password", "rootpw"); r.code != 0 {
				t.Fatalf("migrate as root: exit %d\n%s", r.code, r.stderr)
			}
			dir := dataDir
			if b.IsShared() {
				dir = tempDir(t, "shimd")
			}
			snapAuthCheck(t, startShimdOn(t, st.Backend, dir, harness.Options{}), authRev)
		})
	}
}
