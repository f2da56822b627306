package conformance

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// TestAuthEtcdctl runs etcdctl 3.7's user, role and auth commands, and
// requests with --user, against both servers: the same output, and the
// same "Error:" lines.
func TestAuthEtcdctl(t *testing.T) {
	bin := etcdctl(t)
	forEachBackend(t, harness.Options{BcryptCost: 4}, func(s *suite) {
		s.run("etcdctl", func(c *sc) {
			ref, sut := c.p.ref.cli.Endpoints()[0], c.p.sut.cli.Endpoints()[0]
			run := func(endpoint, stdin string, args []string) string {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints=" + endpoint, "--command-timeout=20s"}, args...)...)
				cmd.Stdin = strings.NewReader(stdin)
				var stdout, stderr strings.Builder
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				out := stdout.String()
				for _, l := range strings.Split(stderr.String(), "\n") {
					if strings.HasPrefix(l, "Error:") {
						out += l + "\n"
					}
				}
				if err != nil {
					out += "exit: " + err.Error() + "\n"
				}
				return out
			}
			root, u1 := "--user=root:rootpw", "--user=u1:pw1"
			for _, cmd := range []struct {
				stdin string
				args  []string
			}{
				{"", []string{"auth", "status"}},
				{"", []string{"auth", "enable"}},
				{"", []string{"user", "add", "root:rootpw"}},
				{"", []string{"user", "add", "root:again"}},
				{"", []string{"role", "add", "root"}},
				{"", []string{"user", "grant-role", "root", "root"}},
				{"", []string{"role", "add", "r1"}},
				{"", []string{"role", "grant-permission", "r1", "readwrite", "/a/", "--prefix=true"}},
				{"", []string{"role", "grant-permission", "r1", "read", "b", "c"}},
				{"", []string{"role", "grant-permission", "r1", "write", "w"}},
				{"", []string{"role", "grant-permission", "r1", "read", "x", "--from-key"}},
				{"", []string{"user", "add", "u1:pw1"}},
				{"", []string{"user", "add", "cert", "--no-password"}},
				{"", []string{"user", "grant-role", "u1", "r1"}},
				{"", []string{"user", "grant-role", "u1", "nope"}},
				{"", []string{"user", "list"}},
				{"", []string{"role", "list"}},
				{"", []string{"role", "get", "r1"}},
				{"", []string{"role", "get", "root"}},
				{"", []string{"user", "get", "u1", "--detail"}},
				{"", []string{"auth", "enable"}},
				{"", []string{"auth", "status"}},
				{"", []string{"put", "x", "1"}},
				{"", []string{root, "put", "x", "1"}},
				{"", []string{u1, "put", "x", "2"}},
				{"", []string{u1, "put", "/a/b", "2"}},
				{"", []string{u1, "get", "/a/", "--prefix"}},
				{"", []string{u1, "get", "b"}},
				{"", []string{u1, "get", "b", "c"}},
				{"", []string{u1, "get", "a", "c"}},
				{"", []string{u1, "del", "w"}},
				{"", []string{u1, "user", "list"}},
				{"", []string{u1, "user", "get", "u1"}},
				{"", []string{u1, "role", "get", "r1"}},
				{"", []string{"--user=u1:wrong", "get", "/a/b"}},
				{"", []string{"--user=cert:x", "get", "/a/b"}},
				{"", []string{root, "auth", "status"}},
				{"", []string{root, "user", "delete", "root"}},
				{"", []string{root, "user", "revoke-role", "root", "root"}},
				{"", []string{root, "role", "delete", "root"}},
				{"", []string{root, "role", "revoke-permission", "r1", "/a/", "--prefix=true"}},
				{"", []string{root, "role", "revoke-permission", "r1", "never"}},
				{"", []string{u1, "get", "/a/b"}},
				{"new\n", []string{root, "user", "passwd", "u1", "--interactive=false"}},
				{"", []string{u1, "get", "b"}},
				{"", []string{"--user=u1:new", "get", "b"}},
				{"", []string{root, "user", "revoke-role", "u1", "r1"}},
				{"", []string{root, "user", "revoke-role", "u1", "r1"}},
				{"", []string{root, "role", "delete", "r1"}},
				{"", []string{root, "compaction", "2"}},
				{"", []string{root, "auth", "disable"}},
				{"", []string{"auth", "status"}},
				{"", []string{"user", "delete", "u1"}},
				{"", []string{"user", "delete", "cert"}},
				{"", []string{"user", "delete", "root"}},
				{"", []string{"role", "delete", "root"}},
				{"", []string{"user", "list"}},
			} {
				e, s := run(ref, cmd.stdin, cmd.args), run(sut, cmd.stdin, cmd.args)
				if strings.Join(cmd.args, " ") == root+" auth status" && !strings.Contains(e, "Authentication Status: true") {
					c.t.Fatalf("etcdctl %v on etcd: %q", cmd.args, e)
				}
				if e != s {
					c.t.Fatalf("etcdctl %v: etcd and shimd differ:\n%s", cmd.args, sideBySide("etcd", strings.Split(e, "\n"), "shimd", strings.Split(s, "\n")))
				}
			}
		})
	})
}
