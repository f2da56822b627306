package conformance

import (
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/conformance/harness"
)

// TestOpsDockerfile checks ../Dockerfile without a container engine: the
// build stage's COPY lines bring every package the binary needs (the build
// runs on a copy of exactly those files), the image listens in cleartext on
// the container's loopback only unless the user asks for more (see
// checkDockerListen), and the HEALTHCHECK command, run
// as written against a shimd, passes while it is healthy (also with NOSPACE
// raised) and fails once it is gone.
func TestOpsDockerfile(t *testing.T) {
	requireShimd(t, "the Dockerfile")
	text, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines.
	lines := strings.Split(strings.ReplaceAll(string(text), "\\\n", " "), "\n")

	ctx := tempDir(t, "docker-context")
	stage := 0
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			stage++
		case "COPY":
			if stage != 1 || strings.HasPrefix(f[1], "--") {
				continue
			}
			for _, src := range f[1 : len(f)-1] {
				cmd := exec.Command("cp", "-r", filepath.Join("..", src), filepath.Join(ctx, filepath.Base(src)))
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("COPY %s: %v: %s", src, err, out)
				}
			}
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(ctx, "shimd.bin"), "./cmd/shimd")
	build.Dir = ctx
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Errorf("the Dockerfile's build stage does not build: the files it copies are not enough:\n%s", out)
	}

	checkDockerListen(t, lines)

	var hc []string
	re := regexp.MustCompile(`(?m)^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$`)
	m := re.FindStringSubmatch(strings.Join(lines, "\n"))
	if m == nil {
		t.Fatal("no HEALTHCHECK ... CMD [...] (exec form: the image has no shell)")
	}
	if err := json.Unmarshal([]byte(m[1]), &hc); err != nil || len(hc) < 2 || hc[0] != "/usr/local/bin/shimd" || hc[1] != "healthcheck" {
		t.Fatalf("HEALTHCHECK CMD %s: want [\"/usr/local/bin/shimd\", \"healthcheck\", ...] (%v)", m[1], err)
	}
	srv := startShimd(t, harness.Backend{Name: "sqlite", Kind: harness.KindSQLite}, harness.Options{})
	port := strings.TrimPrefix(srv.proc.Endpoint, "http://127.0.0.1:")
	args := make([]string, len(hc)-1)
	for i, a := range hc[1:] {
		args[i] = strings.ReplaceAll(a, "127.0.0.1:2379", "127.0.0.1:"+port)
	}
	if !strings.Contains(strings.Join(args, " "), port) {
		args = append(args, "--url", srv.proc.Endpoint+"/health")
	}
	check := func() runResult { return runShimd(t, "", opsEnv(), 30*time.Second, args...) }
	if r := check(); r.code != 0 {
		t.Errorf("HEALTHCHECK %v on a healthy shimd: exit %d: %s", hc, r.code, r.stderr)
	}
	ctxT := ctxT(t, time.Minute)
	st, err := maint(srv).Status(ctxT, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := maint(srv).Alarm(ctxT, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, Alarm: pb.AlarmType_NOSPACE, MemberID: st.Header.MemberId}); err != nil {
		t.Fatal(err)
	}
	if r := check(); r.code != 0 {
		t.Errorf("HEALTHCHECK %v with NOSPACE raised: exit %d: %s (a full quota needs an operator, not a restart)", hc, r.code, r.stderr)
	}
	if err := srv.proc.Stop(); err != nil {
		t.Fatal(err)
	}
	if r := check(); r.code == 0 {
		t.Errorf("HEALTHCHECK %v with shimd stopped: exit 0", hc)
	}
	srv.proc.Start() // for the cleanup's stop
}

// checkDockerListen fails t if the image, as its ENTRYPOINT and ENV start
// shimd with no flags of the user's, listens in cleartext (http://) beyond
// the container's loopback: reachable from every network that reaches the
// container, with no TLS, and without the user having asked. Listen URLs not
// given there are shimd's defaults, read from `shimd --help`.
func checkDockerListen(t *testing.T, lines []string) {
	t.Helper()
	var entry []string
	env := map[string]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimSpace(l[len(f[0]):])), &entry); err != nil {
				t.Fatalf("ENTRYPOINT %s: want the exec form (the image has no shell): %v", l, err)
			}
		case "ENV":
			if !strings.Contains(f[1], "=") { // ENV KEY VALUE
				env[f[1]] = strings.Join(f[2:], " ")
				break
			}
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = strings.Trim(v, `"`)
			}
		}
	}
	if len(entry) == 0 || entry[0] != "/usr/local/bin/shimd" {
		t.Fatalf("ENTRYPOINT %q: want /usr/local/bin/shimd and its flags", entry)
	}
	help := runShimd(t, "", opsEnv(), 30*time.Second, "--help")
	for _, flag := range []string{"listen-client-urls", "listen-metrics-urls"} {
		value, from := "", ""
		if m := regexp.MustCompile(`(?m)^  --` + flag + ` .*\n.*\(default "([^"]*)"\)$`).FindStringSubmatch(help.stdout + help.stderr); m != nil {
			value, from = m[1], "shimd's default"
		}
		if v, ok := env["SHIMD_"+strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))]; ok {
			value, from = v, "ENV"
		}
		for i, a := range entry[1:] {
			a = strings.TrimLeft(a, "-")
			if v, ok := strings.CutPrefix(a, flag+"="); ok {
				value, from = v, "ENTRYPOINT"
			} else if a == flag && i+2 < len(entry) {
				value, from = entry[i+2], "ENTRYPOINT"
			}
		}
		if value == "" && flag == "listen-client-urls" {
			t.Fatalf("cannot tell the image's --%s: not in ENTRYPOINT or ENV, and no default in shimd --help", flag)
		}
		for _, raw := range strings.Split(value, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if raw == "" || err != nil {
				continue
			}
			ip := net.ParseIP(u.Hostname())
			loopback := u.Hostname() == "localhost" || (ip != nil && ip.IsLoopback())
			if u.Scheme == "http" && !loopback {
				t.Errorf("the image listens on %s (--%s, from %s): cleartext beyond the container's loopback without the user asking", raw, flag, from)
			}
		}
		t.Logf("image --%s: %q (%s)", flag, value, from)
	}
}
