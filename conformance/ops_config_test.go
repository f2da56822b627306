package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// shimd's configuration sources: flags, SHIMD_<FLAG> environment variables
// and a YAML --config-file, with the documented precedence (command line >
// environment > file), and the one-line error with exit code 2 for a bad
// value from any of them.

// firstLogLine is the first line shimd wrote, decoded if it is JSON.
func firstLogLine(out string) (line string, obj map[string]any) {
	line, _, _ = strings.Cut(strings.TrimSpace(out), "\n")
	if json.Unmarshal([]byte(line), &obj) != nil {
		obj = nil
	}
	return line, obj
}

func writeFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpsConfig(t *testing.T) {
	requireShimd(t, "configuration")
	dir := tempDir(t, "config")

	// serves reports whether shimd answers /health on u.
	serves := func(u string) bool { return isHealthy(httpGet(u + "/health")) }

	t.Run("environment", func(t *testing.T) {
		u, m := freeURL(t), freeURL(t)
		p := startRaw(t, dir, nil, opsEnv(
			"SHIMD_LISTEN_CLIENT_URLS="+u, "SHIMD_LISTEN_METRICS_URLS="+m,
			"SHIMD_DATA_DIR="+filepath.Join(dir, "env.shimd"), "SHIMD_LOG_FORMAT=json",
			"SHIMD_QUOTA_BACKEND_BYTES=77777777"), u+"/health")
		if !serves(m) {
			t.Errorf("SHIMD_LISTEN_METRICS_URLS=%s: nothing healthy there", m)
		}
		if _, err := os.Stat(filepath.Join(dir, "env.shimd")); err != nil {
			t.Errorf("SHIMD_DATA_DIR: %v", err)
		}
		if g := mustScrape(t, u+"/metrics")["etcd_server_quota_backend_bytes"]; g != 77777777 {
			t.Errorf("SHIMD_QUOTA_BACKEND_BYTES=77777777: etcd_server_quota_backend_bytes = %v", g)
		}
		if line, obj := firstLogLine(p.out.String()); obj == nil {
			t.Errorf("SHIMD_LOG_FORMAT=json: the first log line is not JSON: %s", line)
		}
	})

	t.Run("config file", func(t *testing.T) {
		u1, u2, m := freeURL(t), freeURL(t), freeURL(t)
		cfg := writeFile(t, dir, "shimd.yaml", fmt.Sprintf(`# shimd configuration: flag names as keys
name: from-file
data-dir: %s
listen-client-urls:
  - %s
  - %s
listen-metrics-urls: %s
log-format: json
log-level: info
quota-backend-bytes: 8589934592
max-txn-ops: 256
auto-compaction-mode: periodic
auto-compaction-retention: 1h
db-poll-interval: 250ms
postgres-vacuum-full: false
`, filepath.Join(dir, "file.shimd"), u1, u2, m))
		p := startRaw(t, dir, []string{"--config-file", cfg}, opsEnv(), u1+"/health")
		for _, u := range []string{u2, m} {
			if !serves(u) {
				t.Errorf("config file lists %s: nothing healthy there", u)
			}
		}
		if g := mustScrape(t, u1+"/metrics")["etcd_server_quota_backend_bytes"]; g != 8589934592 {
			t.Errorf("quota-backend-bytes: 8589934592 in the file: etcd_server_quota_backend_bytes = %v", g)
		}
		line, obj := firstLogLine(p.out.String())
		if obj == nil {
			t.Errorf("log-format: json in the file: the first log line is not JSON: %s", line)
		}
		// SHIMD_CONFIG_FILE names the file too.
		u3 := freeURL(t)
		p3 := startRaw(t, dir, []string{"--listen-client-urls", u3, "--listen-metrics-urls", freeURL(t), "--data-dir", filepath.Join(dir, "viaenv.shimd")}, opsEnv("SHIMD_CONFIG_FILE="+cfg), u3+"/health")
		if g := mustScrape(t, u3+"/metrics")["etcd_server_quota_backend_bytes"]; g != 8589934592 {
			t.Errorf("SHIMD_CONFIG_FILE: the file's quota-backend-bytes is not in effect: etcd_server_quota_backend_bytes = %v", g)
		}
		if line, obj := firstLogLine(p3.out.String()); obj == nil {
			t.Errorf("SHIMD_CONFIG_FILE: the file's log-format: json is not in effect: %s", line)
		}
	})

	t.Run("precedence", func(t *testing.T) {
		fileURL, envURL, flagURL := freeURL(t), freeURL(t), freeURL(t)
		cfg := writeFile(t, dir, "prec.yaml", fmt.Sprintf("listen-client-urls: %s\nlog-format: json\ndata-dir: %s\n", fileURL, filepath.Join(dir, "prec.shimd")))

		// Environment over file: the URL from the environment, the log
		// format still from the file.
		p := startRaw(t, dir, []string{"--config-file", cfg}, opsEnv("SHIMD_LISTEN_CLIENT_URLS="+envURL), envURL+"/health")
		if serves(fileURL) {
			t.Errorf("the file's %s is served although SHIMD_LISTEN_CLIENT_URLS=%s", fileURL, envURL)
		}
		if line, obj := firstLogLine(p.out.String()); obj == nil {
			t.Errorf("log-format: json in the file (environment silent on it): first log line not JSON: %s", line)
		}
		if err := p.stop(); err != nil {
			t.Fatal(err)
		}

		// Command line over environment over file.
		p = startRaw(t, dir, []string{"--config-file", cfg, "--listen-client-urls", flagURL}, opsEnv("SHIMD_LISTEN_CLIENT_URLS="+envURL, "SHIMD_LOG_FORMAT=text"), flagURL+"/health")
		for _, u := range []string{fileURL, envURL} {
			if serves(u) {
				t.Errorf("%s is served although --listen-client-urls %s is on the command line", u, flagURL)
			}
		}
		if line, obj := firstLogLine(p.out.String()); obj != nil || !strings.Contains(line, "level=INFO") {
			t.Errorf("SHIMD_LOG_FORMAT=text over the file's json: first log line %s", line)
		}
	})

	t.Run("bad values", func(t *testing.T) {
		bad := writeFile(t, dir, "bad.yaml", "max-txn-ops: lots\n")
		unknown := writeFile(t, dir, "unknown.yaml", "listen-client-url: http://127.0.0.1:2379\n")
		broken := writeFile(t, dir, "broken.yaml", "listen-client-urls: [http://127.0.0.1:2379\n")
		cases := []struct {
			desc    string
			args    []string
			env     []string
			mention string // the message must name what is wrong
		}{
			{"flag: --log-format xml", []string{"--log-format", "xml"}, nil, "--log-format"},
			{"flag: --log-level verbose", []string{"--log-level=verbose"}, nil, "--log-level"},
			{"flag: --max-txn-ops abc", []string{"--max-txn-ops", "abc"}, nil, "max-txn-ops"},
			{"flag: --quota-backend-bytes -1", []string{"--quota-backend-bytes=-1"}, nil, "--quota-backend-bytes"},
			{"flag: --listen-client-urls without scheme", []string{"--listen-client-urls", "127.0.0.1:2379"}, nil, "127.0.0.1:2379"},
			{"flag: --auto-compaction-retention soon", []string{"--auto-compaction-retention", "soon"}, nil, "--auto-compaction-retention"},
			{"flag: --auto-compaction-mode daily", []string{"--auto-compaction-mode", "daily", "--auto-compaction-retention", "1"}, nil, "daily"},
			{"flag: --cert-file without --key-file", []string{"--cert-file", "x.crt"}, nil, "--key-file"},
			{"flag: --endpoint with an unknown scheme", []string{"--endpoint", "redis://127.0.0.1:6379", "--data-dir", filepath.Join(dir, "bad.shimd")}, nil, "redis"},
			{"environment: SHIMD_MAX_TXN_OPS=abc", nil, []string{"SHIMD_MAX_TXN_OPS=abc"}, "SHIMD_MAX_TXN_OPS"},
			{"environment: SHIMD_LOG_FORMAT=xml", nil, []string{"SHIMD_LOG_FORMAT=xml"}, "xml"},
			{"config file: max-txn-ops: lots", []string{"--config-file", bad}, nil, "max-txn-ops"},
			{"config file: unknown key", []string{"--config-file", unknown}, nil, "listen-client-url"},
			{"config file: not YAML", []string{"--config-file", broken}, nil, "broken.yaml"},
			{"config file: missing", []string{"--config-file", filepath.Join(dir, "missing.yaml")}, nil, "missing.yaml"},
		}
		for _, c := range cases {
			r := runShimd(t, dir, opsEnv(c.env...), 30*time.Second, c.args...)
			msg := strings.TrimSpace(r.stderr)
			lines := strings.Count(msg, "\n") + 1
			if r.code != 2 || lines != 1 || !strings.Contains(msg, c.mention) || !strings.HasPrefix(msg, "shimd: ") {
				t.Errorf("%s: exit %d with %d lines on stderr; want exit 2 and one line \"shimd: ...\" naming %q:\n%s", c.desc, r.code, lines, c.mention, clip(msg, 600))
			}
		}
		// An unknown flag is a usage error: exit 2 (etcd prints its usage too).
		if r := runShimd(t, dir, opsEnv(), 30*time.Second, "--listen-client-url", "http://127.0.0.1:2379"); r.code != 2 || !strings.Contains(r.stderr, "listen-client-url") {
			t.Errorf("unknown flag: exit %d, stderr %s", r.code, clip(r.stderr, 300))
		}
		// --help is not an error.
		if r := runShimd(t, dir, opsEnv(), 30*time.Second, "--help"); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "--config-file") && !strings.Contains(r.stdout+r.stderr, "-config-file") {
			t.Errorf("shimd --help: exit %d", r.code)
		}
		for _, sub := range [][]string{{"migrate", "--help"}, {"healthcheck", "--help"}, {"snapshot", "restore", "--help"}, {"snapshot", "save", "--help"}, {"snapshot", "status", "--help"}} {
			if r := runShimd(t, dir, opsEnv(), 30*time.Second, sub...); r.code != 0 {
				t.Errorf("shimd %s: exit %d: %s", strings.Join(sub, " "), r.code, clip(r.stderr, 300))
			}
		}
	})

	t.Run("deploy/shimd.yaml", func(t *testing.T) {
		// The example configuration must be accepted as shipped; the test
		// only moves its paths and ports (the command line wins).
		u, m := freeURL(t), freeURL(t)
		example, err := filepath.Abs(filepath.Join("..", "deploy", "shimd.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		startRaw(t, dir, []string{"--config-file", example,
			"--data-dir", filepath.Join(dir, "deploy.shimd"), "--listen-client-urls", u, "--listen-metrics-urls", m}, opsEnv(), u+"/health")
		if !serves(m) {
			t.Errorf("--listen-metrics-urls %s not healthy", m)
		}
	})
}

// TestOpsSlowRequestLog: with --warning-apply-duration below every request's
// time, each request is logged with its method and key range, never with a
// value (values may be secrets), and counted in etcd_server_slow_apply_total.
func TestOpsSlowRequestLog(t *testing.T) {
	requireShimd(t, "the slow request log")
	dir := tempDir(t, "slowlog")
	u := freeURL(t)
	p := startRaw(t, dir, []string{"--listen-client-urls", u, "--data-dir", filepath.Join(dir, "d.shimd"),
		"--warning-apply-duration", "1ns", "--log-format", "json"}, opsEnv(), u+"/health")
	cli := dialT(t, u)
	ctx := ctxT(t, time.Minute)
	secret, secret2 := "TOPSECRET-value-4b1d", "TOPSECRET-compare-9c2e"
	if _, err := cli.Put(ctx, "/registry/secrets/default/db", secret); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("/registry/secrets/default/db"), "=", secret2)).
		Then(clientv3.OpPut("/registry/secrets/default/db", secret2)).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "/registry/pods/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ // method -> key it must name
		"/etcdserverpb.KV/Put":   "/registry/secrets/default/db",
		"/etcdserverpb.KV/Txn":   "/registry/secrets/default/db",
		"/etcdserverpb.KV/Range": "/registry/pods/",
	}
	waitFor(t, 10*time.Second, "the three slow requests logged", func() (bool, string) {
		found := 0
		for _, l := range strings.Split(p.out.String(), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(l), &e) != nil || e["msg"] != "request took too long" {
				continue
			}
			if k, ok := want[fmt.Sprint(e["method"])]; ok && e["key"] == k && e["level"] == "WARN" {
				found++
			}
		}
		return found >= 3, clip(p.out.String(), 2000)
	})
	if out := p.out.String(); strings.Contains(out, "TOPSECRET") {
		t.Errorf("a value appears in the log:\n%s", clip(out, 2000))
	}
	if l := strings.Split(p.out.String(), "\n"); len(l) > 0 {
		for _, line := range l {
			var e map[string]any
			if msg := strings.TrimSpace(line); msg != "" && json.Unmarshal([]byte(msg), &e) != nil {
				t.Errorf("--log-format json: a log line is not JSON: %s", msg)
			}
		}
	}
	if g := mustScrape(t, u+"/metrics")["etcd_server_slow_apply_total"]; g < 3 {
		t.Errorf("etcd_server_slow_apply_total = %v after 3 slow requests", g)
	}
	if e, ok := slowEntry(p.out.String(), "/etcdserverpb.KV/Range"); ok && e["range_end"] != "/registry/pods0" {
		t.Errorf("the slow Range is logged with range_end %v, want /registry/pods0", e["range_end"])
	}
}

// range2 returns the first slow-request log entry of method.
func slowEntry(out, method string) (map[string]any, bool) {
	for _, l := range strings.Split(out, "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(l), &e) == nil && e["msg"] == "request took too long" && e["method"] == method {
			return e, true
		}
	}
	return nil, false
}
