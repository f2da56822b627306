package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ReadyTimeout bounds how long a started server may take to answer a Get.
var ReadyTimeout = 60 * time.Second

// Build compiles pkg into dir/name with the go tool, running in srcDir.
func Build(srcDir, pkg, dir, name string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = srcDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s (in %s): %v\n%s", pkg, srcDir, err, b)
	}
	return out, nil
}

// Process is a shimd (or shimd-compatible) server running as a subprocess.
type Process struct {
	Bin     string
	DataDir string
	Backend Backend
	Options Options
	// ExtraArgs are appended to the command line (shimd-only flags such as
	// --db-poll-interval; the self-test stand-in does not accept them).
	ExtraArgs []string
	// Args, when set, replaces the whole command line: it gets the client
	// listen address (127.0.0.1:port) of each start. For a server with
	// other flags than shimd's (the benchmark's kine); Options, ExtraArgs
	// and Backend.Endpoint are then not passed, readiness and stopping
	// are the same.
	Args func(listenAddr string) []string
	// Dir is the server's working directory ("" = this process's), for a
	// server that keeps its files relative to it.
	Dir      string
	Endpoint string // client URL of the current incarnation

	mu     sync.Mutex
	cmd    *exec.Cmd
	stderr *tailBuffer
	done   chan struct{}
	exit   error
}

// StartProcess launches bin on dataDir and waits until it serves a Get. For
// a server database, b must be a Store's backend (its Endpoint set).
func StartProcess(bin, dataDir string, b Backend, o Options) (*Process, error) {
	p := &Process{Bin: bin, DataDir: dataDir, Backend: b, Options: o}
	return p, p.Start()
}

// Start (re)launches the server on a fresh port with the same data dir and
// store.
func (p *Process) Start() error {
	if p.Backend.IsShared() && p.Backend.Endpoint == "" {
		return fmt.Errorf("backend %s has no store: start shimd on NewStore(backend).Backend", p.Backend.Name)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if lastErr = p.startOnce(); lastErr == nil {
			return nil
		}
		if !bytes.Contains([]byte(lastErr.Error()), []byte("address already in use")) {
			break
		}
	}
	return lastErr
}

func (p *Process) startOnce() error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ep := "http://" + addr
	args := []string{"--listen-client-urls", ep, "--data-dir", p.DataDir}
	if p.Backend.Endpoint != "" {
		args = append(args, "--endpoint", p.Backend.Endpoint)
	}
	if p.Options.MaxTxnOps != 0 {
		args = append(args, "--max-txn-ops", strconv.FormatUint(uint64(p.Options.MaxTxnOps), 10))
	}
	if p.Options.MaxRequestBytes != 0 {
		args = append(args, "--max-request-bytes", strconv.FormatUint(uint64(p.Options.MaxRequestBytes), 10))
	}
	if p.Options.QuotaBackendBytes != 0 {
		args = append(args, "--quota-backend-bytes", strconv.FormatInt(p.Options.QuotaBackendBytes, 10))
	}
	if p.Options.WatchProgressNotifyInterval != 0 {
		args = append(args, "--watch-progress-notify-interval", p.Options.WatchProgressNotifyInterval.String())
	}
	args = append(args, p.ExtraArgs...)
	args = append(args, "--log-level", "warn")
	if p.Args != nil {
		args = p.Args(addr)
	}

	cmd := exec.Command(p.Bin, args...)
	cmd.Dir = p.Dir
	stderr := &tailBuffer{max: 64 << 10}
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	if p.Options.ElectionMs != 0 {
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", EnvElectionMs, p.Options.ElectionMs))
	}
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.stderr, p.done, p.exit, p.Endpoint = cmd, stderr, done, nil, ep
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exit = err
		p.mu.Unlock()
		close(done)
	}()
	if err := p.waitReady(); err != nil {
		p.Kill()
		return fmt.Errorf("%s %v: %w\n--- server output ---\n%s", p.Bin, args, err, stderr.String())
	}
	return nil
}

// waitReady polls with Gets until one succeeds, the process exits or the
// deadline passes.
func (p *Process) waitReady() error {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{p.Endpoint},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(ReadyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited before becoming ready: %v", p.ExitErr())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, lastErr = cli.Get(ctx, "conformance-readiness-probe")
		cancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready after %v: last Get error: %v", ReadyTimeout, lastErr)
}

// Stop sends SIGTERM and waits for exit (SIGKILL after 30s). It returns an
// error if the server had to be killed or exited unsuccessfully.
func (p *Process) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return fmt.Errorf("server had already exited: %v", p.ExitErr())
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("server ignored SIGTERM for 30s; killed")
	}
	if err := p.ExitErr(); err != nil {
		return fmt.Errorf("server exited with %v after SIGTERM", err)
	}
	return nil
}

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Process) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Exited is closed when the current incarnation exits.
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Pid is the process id of the current incarnation (0 before Start).
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// ExitErr is the Wait error of the current incarnation (nil while running).
func (p *Process) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// Output returns the tail of the server's stdout+stderr.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stderr == nil {
		return ""
	}
	return p.stderr.String()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// Env helpers shared by the tests and the fake server.

// EnvBool reports whether the environment variable is set to a true value.
func EnvBool(name string) bool {
	v, _ := strconv.ParseBool(os.Getenv(name))
	return v
}
