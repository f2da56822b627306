package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/shimd/shimd/conformance/internal/proc"
)

// ReadyTimeout bounds how long a started server may take to answer a Range.
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

// Process is a shimd (or shimd-compatible) server running as a subprocess,
// on a fresh port at each start.
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

	proc proc.Proc
}

// StartProcess launches bin on dataDir and waits until it serves a Get. For
// a server database, b must be a Store's backend (its Endpoint set).
func StartProcess(bin, dataDir string, b Backend, o Options) (*Process, error) {
	p := &Process{Bin: bin, DataDir: dataDir, Backend: b, Options: o}
	return p, p.Start()
}

// Start (re)launches the server on a fresh port with the same data dir and
// store, and waits until it answers.
func (p *Process) Start() error {
	if p.Backend.IsShared() && p.Backend.Endpoint == "" {
		return fmt.Errorf("backend %s has no store: start shimd on NewStore(backend).Backend", p.Backend.Name)
	}
	p.proc.Bin, p.proc.Dir, p.proc.ReadyTimeout = p.Bin, p.Dir, ReadyTimeout
	p.proc.Args = p.Args
	if p.Args == nil {
		p.proc.Args = p.shimdArgs
	}
	p.proc.Env = nil
	if p.Options.ElectionMs != 0 {
		p.proc.Env = []string{fmt.Sprintf("%s=%d", EnvElectionMs, p.Options.ElectionMs)}
	}
	err := p.proc.Start()
	p.Endpoint = p.proc.URL()
	return err
}

// shimdArgs is shimd's command line for a start on addr.
func (p *Process) shimdArgs(addr string) []string {
	args := []string{"--listen-client-urls", "http://" + addr, "--data-dir", p.DataDir}
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
	if p.Options.AuthToken != "" {
		args = append(args, "--auth-token", p.Options.AuthToken)
	}
	if p.Options.BcryptCost != 0 {
		args = append(args, "--bcrypt-cost", strconv.FormatUint(uint64(p.Options.BcryptCost), 10))
	}
	args = append(args, p.ExtraArgs...)
	return append(args, "--log-level", "warn")
}

// Stop sends SIGTERM and waits for exit (SIGKILL after 30s). It returns an
// error if the server had to be killed or exited unsuccessfully.
func (p *Process) Stop() error { return p.proc.Stop() }

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Process) Kill() { p.proc.Kill() }

// Exited is closed when the current incarnation exits.
func (p *Process) Exited() <-chan struct{} { return p.proc.Exited() }

// Pid is the process id of the current incarnation (0 before Start).
func (p *Process) Pid() int { return p.proc.Pid() }

// ExitErr is the Wait error of the current incarnation (nil while running).
func (p *Process) ExitErr() error { return p.proc.ExitErr() }

// Output returns the tail of the server's stdout+stderr.
func (p *Process) Output() string { return p.proc.Output() }

// Env helpers shared by the tests and the fake server.

// EnvBool reports whether the environment variable is set to a true value.
func EnvBool(name string) bool {
	v, _ := strconv.ParseBool(os.Getenv(name))
	return v
}
