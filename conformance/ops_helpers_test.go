package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shimd/shimd/conformance/harness"
)

// Helpers of the operator-facing tests (ops_*_test.go): shimd started
// exactly as an operator would (own flags, environment, config file), the
// HTTP endpoints, a Prometheus text parser, condition waits, and a loopback
// TCP proxy that stands between shimd and its database so that the database
// can be made unreachable without touching the shared server.

// opsEnv is the environment for a shimd started by an ops test: the test
// process's, without any SHIMD_* variable (they would configure shimd), plus
// extra.
func opsEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHIMD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// rawProc is a shimd started with a hand-written command line.
type rawProc struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	exit   error
	stopMu sync.Mutex
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRaw runs shimd with args and env (see opsEnv) in dir, and waits until
// readyURL (an HTTP URL served by it, e.g. its /health) answers at all. It is
// stopped with SIGTERM when t ends and must then exit 0.
func startRaw(t testing.TB, dir string, args, env []string, readyURL string) *rawProc {
	t.Helper()
	cmd := exec.Command(sutBin, args...)
	cmd.Dir = dir
	cmd.Env = env
	p := &rawProc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start shimd %v: %v", args, err)
	}
	go func() {
		p.exit = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("shimd %v: %v\n--- output ---\n%s", args, err, p.out.String())
		}
	})
	deadline := time.Now().Add(harness.ReadyTimeout)
	c := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-p.done:
			t.Fatalf("shimd %v exited before serving %s: %v\n--- output ---\n%s", args, readyURL, p.exit, p.out.String())
		default:
		}
		resp, err := c.Get(readyURL)
		if err == nil {
			resp.Body.Close()
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("shimd %v: %s not answering after %v: %v\n--- output ---\n%s", args, readyURL, harness.ReadyTimeout, err, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits (SIGKILL after 30 s); a non-zero exit is an
// error. It is idempotent.
func (p *rawProc) stop() error {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	select {
	case <-p.done:
		if p.exit != nil {
			return fmt.Errorf("exited: %v", p.exit)
		}
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("ignored SIGTERM for 30 s; killed")
	}
	if p.exit != nil {
		return fmt.Errorf("exit after SIGTERM: %v", p.exit)
	}
	return nil
}

// runResult is the outcome of a shimd that runs to completion.
type runResult struct {
	stdout, stderr string
	code           int
}

// runShimd runs shimd with args to completion (at most timeout).
func runShimd(t testing.TB, dir string, env []string, timeout time.Duration, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, sutBin, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := runResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	case ctx.Err() != nil:
		t.Fatalf("shimd %v still running after %v (a server start where an exit was expected?)\nstderr: %s", args, timeout, r.stderr)
	default:
		t.Fatalf("shimd %v: %v\nstderr: %s", args, err, r.stderr)
	}
	return r
}

// freeURL returns http://127.0.0.1:<a free port>.
func freeURL(t testing.TB) string {
	t.Helper()
	p, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", p)
}

// httpAnswer is one HTTP response, read whole.
type httpAnswer struct {
	code int
	body string
	took time.Duration
	err  error
}

func (a httpAnswer) String() string {
	if a.err != nil {
		return fmt.Sprintf("error %v (after %v)", a.err, a.took.Round(time.Millisecond))
	}
	return fmt.Sprintf("%d %q (after %v)", a.code, strings.TrimSpace(a.body), a.took.Round(time.Millisecond))
}

// httpGet fetches url with a 10 s limit.
func httpGet(url string) httpAnswer {
	start := time.Now()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return httpAnswer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return httpAnswer{code: resp.StatusCode, body: string(b), err: err, took: time.Since(start)}
}

// waitFor polls cond every 100 ms until it holds, failing t after timeout
// with what cond last reported.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %v; last: %s", what, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metrics is one scrape of a Prometheus text endpoint: series (name and
// labels, labels sorted by name as client_golang prints them) to value.
type metrics map[string]float64

// scrape fetches and parses url (a /metrics endpoint).
func scrape(url string) (metrics, error) {
	a := httpGet(url)
	if a.err != nil {
		return nil, a.err
	}
	if a.code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, a)
	}
	return parseMetrics(a.body)
}

func mustScrape(t testing.TB, url string) metrics {
	t.Helper()
	m, err := scrape(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return m
}

// parseMetrics reads the Prometheus text format (no timestamps, no escaped
// quotes in label values: enough for shimd's and etcd's metrics).
func parseMetrics(text string) (metrics, error) {
	m := metrics{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("bad metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m, nil
}

// series names a series: name and label pairs (in any order).
func series(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	type kv struct{ k, v string }
	var kvs []kv
	for i := 0; i+1 < len(labels); i += 2 {
		kvs = append(kvs, kv{labels[i], labels[i+1]})
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].k < kvs[j].k })
	parts := make([]string, len(kvs))
	for i, p := range kvs {
		parts[i] = fmt.Sprintf("%s=%q", p.k, p.v)
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// has reports whether any series of the metric family name is present
// (histograms by their _count).
func (m metrics) has(name string) bool {
	for k := range m {
		base, _, _ := strings.Cut(k, "{")
		if base == name || base == name+"_count" || base == name+"_total" {
			return true
		}
	}
	return false
}

// sum adds the values of every series of name whose labels include all of
// the given pairs.
func (m metrics) sum(name string, labels ...string) float64 {
	var total float64
	for k, v := range m {
		base, rest, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(","+strings.TrimSuffix(rest, "}")+",", fmt.Sprintf(",%s=%q,", labels[i], labels[i+1])) {
				match = false
				break
			}
		}
		if match {
			total += v
		}
	}
	return total
}

// tcpProxy forwards loopback connections to a database server, and can make
// the database unreachable for the processes behind it: refusing
// connections (as a stopped server does) or swallowing them (as a network
// partition does).
type tcpProxy struct {
	t      testing.TB
	addr   string // where the proxy listens
	target string // the database server

	mu    sync.Mutex
	ln    net.Listener
	mode  proxyMode
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

type proxyMode int

const (
	proxyForward   proxyMode = iota
	proxyRefuse              // the port is closed: connection refused
	proxyBlackhole           // connections are accepted and then nothing happens
)

func (m proxyMode) String() string {
	return [...]string{"forwarding", "refusing connections", "black hole"}[m]
}

// newProxy starts a proxy to target on a free loopback port; it is closed
// when t ends.
func newProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{t: t, addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			mode := p.mode
			p.conns[c] = struct{}{}
			p.mu.Unlock()
			if mode == proxyBlackhole {
				continue // held open, never answered, closed at the next mode change
			}
			go p.pipe(c)
		}
	}()
}

func (p *tcpProxy) pipe(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if p.mode != proxyForward {
		p.mu.Unlock()
		up.Close()
		p.drop(c)
		return
	}
	p.conns[up] = struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	p.drop(c)
	p.drop(up)
}

func (p *tcpProxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// set switches the mode, ending every connection open at the time.
func (p *tcpProxy) set(mode proxyMode) {
	p.t.Helper()
	p.mu.Lock()
	old := p.mode
	p.mode = mode
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	ln := p.ln
	p.mu.Unlock()
	switch {
	case mode == proxyRefuse && old != proxyRefuse:
		ln.Close()
	case mode != proxyRefuse && old == proxyRefuse:
		var err error
		for i := 0; i < 50; i++ {
			if ln, err = net.Listen("tcp", p.addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
		}
		p.mu.Lock()
		p.serve(ln)
		p.mu.Unlock()
	}
}

func (p *tcpProxy) close() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
