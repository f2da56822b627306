package conformance

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// TestOpsDocs runs every command shown in ../README.md and ../docs/*.md, so
// that the documentation cannot drift from the binary. The rules, also in
// docs/README.md:
//
//   - A fenced block whose info string is `sh` is a script: it runs with
//     bash (-e -o pipefail). A `console` block is a session: each `$ `
//     line runs and the lines after it, up to the next prompt, are its
//     expected output (stdout and stderr together; `...` matches any text
//     within a line, a line of just `...` any number of lines; etcd client
//     library log lines are ignored). In the README, indented blocks
//     starting with `$ ` are sessions too.
//   - A block right after a line `<!-- docs-test: skip (reason) -->` is not
//     run. Blocks in other languages (yaml, ini, text) are not run; `bash`,
//     `shell` and `shell-session` are refused, so that nothing meant to be
//     run escapes by accident.
//   - Each document runs in its own empty directory, in order, with shimd
//     and etcdctl 3.6 on PATH (also as bin/shimd and bin/etcdctl), against a
//     fresh shimd started by the test as `shimd` would start there (SQLite
//     in ./default.shimd).
//   - A line of a script that starts a server (`shimd` with flags and no
//     subcommand, optionally after VAR=value assignments) is not given to
//     bash: the test starts it in the background, after stopping the server
//     that listened on the same client URL, and waits for it to listen. It
//     stays up for the following blocks; all are stopped (SIGTERM, clean
//     exit required) when the document ends.
//   - Every 127.0.0.1:PORT and localhost:PORT except the databases' 5432 and
//     3306 is moved to a free port, and etcdctl's default endpoint with
//     127.0.0.1:2379 (bin/etcdctl adds --endpoints unless given). Each distinct local DSN of the forms in docsDSNRE
//     becomes a fresh store on the test's PostgreSQL or MariaDB. If the
//     text mentions 127.0.0.1:12379, an etcd 3.6 listens there (the source
//     of migration examples).
func TestOpsDocs(t *testing.T) {
	requireShimd(t, "the documentation")
	docs, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs = append([]string{filepath.Join("..", "README.md")}, docs...)
	ctl := etcdctl(t)
	for _, doc := range docs {
		t.Run(strings.TrimPrefix(doc, "../"), func(t *testing.T) {
			text, err := os.ReadFile(doc)
			if err != nil {
				t.Fatal(err)
			}
			blocks, err := docBlocks(string(text), filepath.Base(doc) == "README.md")
			if err != nil {
				t.Fatal(err)
			}
			runDoc(t, string(text), blocks, ctl)
		})
	}
}

// The local development DSNs the docs show: each distinct one (by database
// name) becomes a fresh store on the test's database server.
var docsDSNRE = map[harness.Kind]*regexp.Regexp{
	harness.KindPostgres: regexp.MustCompile(`postgres://postgres@127\.0\.0\.1:5432/[A-Za-z0-9_]+\?sslmode=disable`),
	harness.KindMySQL:    regexp.MustCompile(`mysql://root@tcp\(127\.0\.0\.1:3306\)/[A-Za-z0-9_]+`),
}

// docBlock is one runnable block of a document.
type docBlock struct {
	line    int    // 1-based line of the first line of content
	kind    string // "sh" or "console"
	text    string
	skipped string // the skip reason, if marked
}

var (
	fenceRE = regexp.MustCompile("^( {0,3})(```+)\\s*([^`\\s]*)")
	skipRE  = regexp.MustCompile(`^\s*<!--\s*docs-test:\s*skip\b(.*?)-->\s*$`)
)

// docBlocks extracts the fenced sh and console blocks (and, if indented,
// the indented `$ ` sessions) of a markdown text.
func docBlocks(text string, indented bool) ([]docBlock, error) {
	lines := strings.Split(text, "\n")
	var out []docBlock
	prevNonBlank := ""
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if m := fenceRE.FindStringSubmatch(l); m != nil {
			indent, fence, info := len(m[1]), m[2], m[3]
			start := i + 1
			j := start
			for ; j < len(lines); j++ {
				if strings.HasPrefix(strings.TrimLeft(lines[j], " "), fence) {
					break
				}
			}
			if j == len(lines) {
				return nil, fmt.Errorf("line %d: unclosed code fence", i+1)
			}
			var body []string
			for _, b := range lines[start:j] {
				if len(b) >= indent && strings.TrimSpace(b[:indent]) == "" {
					b = b[indent:]
				}
				body = append(body, b)
			}
			skip := ""
			if sm := skipRE.FindStringSubmatch(prevNonBlank); sm != nil {
				skip = strings.Trim(strings.TrimSpace(sm[1]), "()")
				if skip == "" {
					skip = "marked skip"
				}
			}
			switch info {
			case "sh", "console":
				out = append(out, docBlock{line: start + 1, kind: info, text: strings.Join(body, "\n"), skipped: skip})
			case "bash", "shell", "shell-session", "zsh":
				if skip == "" {
					return nil, fmt.Errorf("line %d: a ```%s block: use ```sh (run) or ```console (run, output checked), or mark it <!-- docs-test: skip (reason) -->", i+1, info)
				}
			}
			i = j
			prevNonBlank = ""
			continue
		}
		if indented && strings.HasPrefix(l, "    $ ") && (i == 0 || strings.TrimSpace(lines[i-1]) == "") {
			j := i
			var body []string
			for ; j < len(lines); j++ {
				if strings.HasPrefix(lines[j], "    ") {
					body = append(body, lines[j][4:])
				} else if strings.TrimSpace(lines[j]) == "" {
					body = append(body, "")
				} else {
					break
				}
			}
			for len(body) > 0 && body[len(body)-1] == "" {
				body = body[:len(body)-1]
			}
			out = append(out, docBlock{line: i + 1, kind: "console", text: strings.Join(body, "\n")})
			i = j - 1
			prevNonBlank = ""
			continue
		}
		if strings.TrimSpace(l) != "" {
			prevNonBlank = l
		}
	}
	return out, nil
}

// docRun is the state of one document's run.
type docRun struct {
	t       *testing.T
	dir     string
	env     []string
	ports   map[string]string // "2379" -> free port
	servers map[string]*rawProc
	dsns    map[string]string // docs DSN -> fresh store endpoint ("" if the database is unavailable)
}

var hostPortRE = regexp.MustCompile(`\b(127\.0\.0\.1|localhost):(\d{2,5})\b`)

// remap moves the document's loopback ports and swaps its DSNs.
func (r *docRun) remap(s string) string {
	for from, to := range r.dsns {
		s = strings.ReplaceAll(s, from, to)
	}
	return hostPortRE.ReplaceAllStringFunc(s, func(m string) string {
		host, port, _ := strings.Cut(m, ":")
		if port == "5432" || port == "3306" {
			return m
		}
		return host + ":" + r.port(port)
	})
}

func (r *docRun) port(p string) string {
	if q, ok := r.ports[p]; ok {
		return q
	}
	n, err := harness.FreePort()
	if err != nil {
		r.t.Fatal(err)
	}
	r.ports[p] = strconv.Itoa(n)
	return r.ports[p]
}

func runDoc(t *testing.T, text string, blocks []docBlock, ctl string) {
	dir := tempDir(t, "doc")
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &docRun{t: t, dir: dir, ports: map[string]string{}, servers: map[string]*rawProc{}, dsns: map[string]string{}}
	shimdAbs, err := filepath.Abs(sutBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(shimdAbs, filepath.Join(bin, "shimd")); err != nil {
		t.Fatal(err)
	}
	// etcdctl's default endpoint, 127.0.0.1:2379, moved with the ports.
	// (ETCDCTL_ENDPOINTS would do, but etcdctl refuses it beside an
	// explicit --endpoints.)
	ctlAbs, err := filepath.Abs(ctl)
	if err != nil {
		t.Fatal(err)
	}
	wrapper := fmt.Sprintf(`#!/bin/sh
for a in "$@"; do
  case "$a" in --endpoints|--endpoints=*) exec %q "$@";; esac
done
exec %q --endpoints=http://127.0.0.1:%s "$@"
`, ctlAbs, ctlAbs, r.port("2379"))
	if err := os.WriteFile(filepath.Join(bin, "etcdctl"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	for kind, re := range docsDSNRE {
		for _, dsn := range re.FindAllString(text, -1) {
			if _, done := r.dsns[dsn]; done {
				continue
			}
			for _, b := range harness.Backends() {
				if b.Kind != kind {
					continue
				}
				needBackend(t, b) // skips (or fails under SHIMD_REQUIRE_BACKENDS)
				r.dsns[dsn] = newStore(t, b).Backend.Endpoint
			}
			if r.dsns[dsn] == "" {
				t.Skipf("the document uses %s and no %s backend is configured", dsn, kind)
			}
		}
	}
	r.env = opsEnv("PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"))
	if strings.Contains(text, "127.0.0.1:12379") {
		e, err := harness.StartEtcd(harness.EtcdConfig{Dir: tempDir(t, "source-etcd"), ClientURL: "http://127.0.0.1:" + r.port("12379"), NoFsync: true})
		if err != nil {
			t.Fatalf("start the etcd at 127.0.0.1:12379 (here %s): %v", r.port("12379"), err)
		}
		t.Cleanup(e.Close)
	}
	t.Cleanup(func() {
		var hosts []string
		for h := range r.servers {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		for _, u := range hosts {
			if err := r.servers[u].stop(); err != nil {
				t.Errorf("the server on %s: %v\n--- output ---\n%s", u, err, clip(r.servers[u].out.String(), 4000))
			}
		}
	})
	// The document's own server, as `shimd` starts in its directory.
	r.startServer(0, "shimd", nil, nil)

	ran := 0
	defer func() { t.Logf("%d of %d blocks run", ran, len(blocks)) }()
	for _, b := range blocks {
		if b.skipped != "" {
			t.Logf("line %d: %s block not run: %s", b.line, b.kind, b.skipped)
			continue
		}
		switch b.kind {
		case "sh":
			r.script(b)
		case "console":
			r.session(b)
		}
		ran++
		if t.Failed() {
			return
		}
	}
}

// logicalLines joins backslash-continued lines, keeping each one's line number.
func logicalLines(text string, first int) (lines []string, nums []int) {
	var cur strings.Builder
	start := -1
	for i, l := range strings.Split(text, "\n") {
		if start < 0 {
			start = first + i
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(l)
			cur.WriteString("\n")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, cur.String())
		nums = append(nums, start)
		cur.Reset()
		start = -1
	}
	return lines, nums
}

// serverLine splits a line that starts a shimd server into its variable
// assignments and arguments; ok is false for anything else.
func serverLine(line string) (env, args []string, ok bool) {
	words, err := shellWords(line)
	if err != nil || len(words) == 0 {
		return nil, nil, false
	}
	i := 0
	for i < len(words) && regexp.MustCompile(`^[A-Z_][A-Z0-9_]*=`).MatchString(words[i]) {
		i++
	}
	if i >= len(words) || (words[i] != "shimd" && words[i] != "bin/shimd") {
		return nil, nil, false
	}
	rest := words[i+1:]
	if len(rest) > 0 {
		switch {
		case !strings.HasPrefix(rest[0], "-"), rest[0] == "--help", rest[0] == "-h", rest[0] == "-help":
			return nil, nil, false // a subcommand, or help
		}
	}
	for _, w := range rest {
		if w == "&" || w == "|" || w == "&&" || w == ";" || strings.HasPrefix(w, ">") {
			return nil, nil, false // shell syntax around it: leave it to bash
		}
	}
	return words[:i], rest, true
}

// shellWords splits a command line as sh would, for the simple lines the
// docs use: quotes, backslash-newline, no expansions.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '\n':
			i++
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return words, nil
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unclosed quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			j := strings.IndexByte(s[i+1:], '"')
			if j < 0 {
				return nil, fmt.Errorf("unclosed quote")
			}
			if strings.ContainsAny(s[i+1:i+1+j], "$`\\") {
				return nil, fmt.Errorf("expansion in a server line")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '$' || c == '`':
			return nil, fmt.Errorf("expansion in a server line")
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// listenURLRE finds the first client URL in a config file.
var listenURLRE = regexp.MustCompile(`(?s)listen-client-urls:\s*(?:-\s*)?\[?\s*"?(https?://[^\s,"\]]+)`)

// serverEnv is the environment of a server line: the document's, the
// line's assignments and, if neither the line nor a config file names the
// client URLs, SHIMD_LISTEN_CLIENT_URLS for 2379 (moved), which is where
// `shimd` would listen. It returns the host:port the server listens on.
func (r *docRun) serverEnv(args, env []string) ([]string, string) {
	out := append(append([]string(nil), r.env...), env...)
	list, cfg := "", ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "SHIMD_LISTEN_CLIENT_URLS="); ok {
			list = v
		}
		if v, ok := strings.CutPrefix(e, "SHIMD_CONFIG_FILE="); ok {
			cfg = v
		}
	}
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasVal && i+1 < len(args) {
			val = args[i+1]
		}
		switch name {
		case "listen-client-urls":
			list = val
		case "config-file":
			cfg = val
		}
	}
	if list == "" && cfg != "" {
		if b, err := os.ReadFile(filepath.Join(r.dir, cfg)); err == nil {
			if m := listenURLRE.FindSubmatch(b); m != nil {
				list = string(m[1])
			}
		} else if b, err := os.ReadFile(cfg); err == nil {
			if m := listenURLRE.FindSubmatch(b); m != nil {
				list = string(m[1])
			}
		}
	}
	if list == "" {
		list = "http://127.0.0.1:" + r.port("2379")
		out = append(out, "SHIMD_LISTEN_CLIENT_URLS="+list)
	}
	first, _, _ := strings.Cut(list, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil {
		return out, ""
	}
	return out, u.Host
}

// startServer (re)starts the server a line describes.
func (r *docRun) startServer(line int, text string, env, args []string) {
	t := r.t
	cmdEnv, host := r.serverEnv(args, env)
	if host == "" {
		t.Fatalf("line %d: %s: cannot tell where it listens", line, text)
	}
	if old := r.servers[host]; old != nil {
		if err := old.stop(); err != nil {
			t.Errorf("line %d: stopping the previous server on %s: %v\n%s", line, host, err, clip(old.out.String(), 4000))
		}
		delete(r.servers, host)
	}
	cmd := exec.Command(sutBin, args...)
	cmd.Dir = r.dir
	cmd.Env = cmdEnv
	p := &rawProc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("line %d: %s: %v", line, text, err)
	}
	go func() {
		p.exit = cmd.Wait()
		close(p.done)
	}()
	r.servers[host] = p
	deadline := time.Now().Add(harness.ReadyTimeout)
	for {
		select {
		case <-p.done:
			delete(r.servers, host)
			t.Fatalf("line %d: %s\n  exited before listening on %s: %v\n--- output ---\n%s", line, text, host, p.exit, clip(p.out.String(), 4000))
		default:
		}
		if c, err := net.DialTimeout("tcp", host, time.Second); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("line %d: %s: not listening on %s after %v\n%s", line, text, host, harness.ReadyTimeout, clip(p.out.String(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// script runs an sh block: bash segments between server lines.
func (r *docRun) script(b docBlock) {
	lines, nums := logicalLines(r.remap(b.text), b.line)
	var seg []string
	segStart := b.line
	flush := func() {
		if strings.TrimSpace(strings.Join(seg, "\n")) != "" {
			r.bash(segStart, strings.Join(seg, "\n"))
		}
		seg = nil
	}
	for i, l := range lines {
		if env, args, ok := serverLine(l); ok {
			flush()
			r.startServer(nums[i], strings.TrimSpace(l), env, args)
			if r.t.Failed() {
				return
			}
			continue
		}
		if len(seg) == 0 {
			segStart = nums[i]
		}
		seg = append(seg, l)
	}
	flush()
}

// bash runs a script segment, which must succeed.
func (r *docRun) bash(line int, script string) {
	t := r.t
	out, err := r.run("set -eo pipefail\n" + script)
	if err != nil {
		t.Errorf("line %d: script failed: %v\n--- script (ports moved) ---\n%s\n--- output ---\n%s", line, err, script, clip(out, 4000))
	}
}

// run runs bash -c script in the document's directory, with a time limit.
func (r *docRun) run(script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = r.dir
	cmd.Env = r.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after 2 minutes")
	}
	return out.String(), err
}

// session runs a console block's commands and compares their output.
func (r *docRun) session(b docBlock) {
	t := r.t
	type step struct {
		line int
		cmd  string
		want []string
	}
	var steps []step
	lines := strings.Split(b.text, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "$ ") {
			if len(steps) == 0 {
				if strings.TrimSpace(l) != "" {
					t.Errorf("line %d: console block: output before the first `$ ` prompt: %q", b.line+i, l)
				}
				continue
			}
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, l)
			continue
		}
		cmd := strings.TrimPrefix(l, "$ ")
		for strings.HasSuffix(cmd, "\\") && i+1 < len(lines) {
			i++
			cmd += "\n" + lines[i]
		}
		steps = append(steps, step{line: b.line + i, cmd: cmd})
	}
	for _, s := range steps {
		cmd := r.remap(s.cmd)
		if env, args, ok := serverLine(cmd); ok {
			r.startServer(s.line, cmd, env, args)
			continue
		}
		out, _ := r.run(cmd)
		got := cleanOutput(out)
		want := s.want
		for len(want) > 0 && strings.TrimSpace(want[len(want)-1]) == "" {
			want = want[:len(want)-1]
		}
		for i := range want {
			want[i] = r.remap(want[i])
		}
		if !matchLines(want, got) {
			t.Errorf("line %d: $ %s\n--- documented ---\n%s\n--- got ---\n%s", s.line, s.cmd, strings.Join(want, "\n"), strings.Join(got, "\n"))
		}
	}
}

// cleanOutput splits output into lines without trailing blanks, dropping
// etcdctl's JSON log lines (it logs retries and snapshot progress).
func cleanOutput(out string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), " \t\r")
		if strings.HasPrefix(l, `{"level":"`) && strings.Contains(l, `"ts":"`) {
			continue // etcdctl's own and its client library's log lines
		}
		lines = append(lines, l)
	}
	for len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// matchLines matches output against documented lines: `...` within a line
// matches any text, a line of just `...` any number of lines.
func matchLines(want, got []string) bool {
	if len(want) == 0 {
		return len(got) == 0
	}
	if strings.TrimSpace(want[0]) == "..." {
		for i := 0; i <= len(got); i++ {
			if matchLines(want[1:], got[i:]) {
				return true
			}
		}
		return false
	}
	if len(got) == 0 || !matchLine(strings.TrimRight(want[0], " \t"), got[0]) {
		return false
	}
	return matchLines(want[1:], got[1:])
}

func matchLine(want, got string) bool {
	parts := strings.Split(want, "...")
	var re strings.Builder
	re.WriteString("^")
	for i, p := range parts {
		if i > 0 {
			re.WriteString(".*")
		}
		re.WriteString(regexp.QuoteMeta(p))
	}
	re.WriteString("$")
	return regexp.MustCompile(re.String()).MatchString(got)
}

// TestOpsDocsMachinery checks the extraction and matching without servers.
func TestOpsDocsMachinery(t *testing.T) {
	md := "intro\n\n```sh\netcdctl put a 1\n```\n\n<!-- docs-test: skip (needs kube-apiserver) -->\n```sh\nkube-apiserver --etcd-servers=x\n```\n\n```yaml\na: b\n```\n\n" +
		"```console\n$ etcdctl get a\na\n1\n```\n\n    $ bin/etcdctl put b 2\n    OK\n\n    $ bin/etcdctl get b\n    b\n\n    2\n\ntext\n"
	bs, err := docBlocks(md, true)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range bs {
		got = append(got, fmt.Sprintf("%d:%s:%q:%s", b.line, b.kind, b.text, b.skipped))
	}
	want := []string{
		`4:sh:"etcdctl put a 1":`,
		`9:sh:"kube-apiserver --etcd-servers=x":needs kube-apiserver`,
		`17:console:"$ etcdctl get a\na\n1":`,
		`22:console:"$ bin/etcdctl put b 2\nOK\n\n$ bin/etcdctl get b\nb\n\n2":`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("blocks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := docBlocks("```bash\nls\n```\n", false); err == nil {
		t.Error("a ```bash block was accepted")
	}
	for _, c := range []struct {
		line string
		ok   bool
		args string
	}{
		{"shimd", true, ""},
		{"shimd --data-dir x.shimd --quota-backend-bytes=1048576", true, "--data-dir x.shimd --quota-backend-bytes=1048576"},
		{"SHIMD_LOG_FORMAT=json shimd --name a", true, "--name a"},
		{"shimd --endpoint 'mysql://root@tcp(127.0.0.1:3306)/shimd'", true, "--endpoint mysql://root@tcp(127.0.0.1:3306)/shimd"},
		{"shimd snapshot restore backup.db", false, ""},
		{"shimd --help", false, ""},
		{"shimd --data-dir x &", false, ""},
		{"etcdctl put a b", false, ""},
	} {
		_, args, ok := serverLine(c.line)
		if ok != c.ok || strings.Join(args, " ") != c.args {
			t.Errorf("serverLine(%q) = %q, %v; want %q, %v", c.line, args, ok, c.args, c.ok)
		}
	}
	for _, c := range []struct {
		want, got string
		ok        bool
	}{
		{`{"header":{...,"revision":3,...},"kvs":[...]}`, `{"header":{"cluster_id":1,"revision":3,"raft_term":1},"kvs":[{"key":"a"}]}`, true},
		{`took ...`, `took 7.1ms`, true},
		{`OK`, `OK2`, false},
	} {
		if matchLine(c.want, c.got) != c.ok {
			t.Errorf("matchLine(%q, %q) != %v", c.want, c.got, c.ok)
		}
	}
	if !matchLines([]string{"a", "...", "z"}, []string{"a", "b", "c", "z"}) || matchLines([]string{"a"}, []string{"a", "b"}) {
		t.Error("matchLines")
	}
}
