// Package robust holds the pieces of shimd's robustness tests that do not
// depend on the conformance harness: a shimd launcher that restarts on the
// same port, an etcd KV model for porcupine with a history recorder, a
// fault-surviving watch recorder and the checks of etcd's watch guarantees.
package robust

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/internal/proc"
)

// Proc is a shimd subprocess that keeps its port across restarts, so that
// clients connected to it reconnect to the next incarnation by themselves.
type Proc struct {
	Bin     string
	DataDir string
	// Endpoint is passed as --endpoint when non-empty (a server database).
	Endpoint string
	// Extra are appended to the command line (after --log-level warn, so a
	// flag given here wins).
	Extra []string
	// TLS, when set, makes the process listen on https and is the client
	// configuration used for the readiness probe.
	TLS *tls.Config
	// Port is chosen at the first Start and kept.
	Port int

	proc proc.Proc
}

// URL is the client URL (http:// or https://).
func (p *Proc) URL() string {
	scheme := "http"
	if p.TLS != nil {
		scheme = "https"
	}
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, p.Port)
}

// Addr is host:port of the client listener.
func (p *Proc) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// Starts counts the incarnations started so far.
func (p *Proc) Starts() int { return p.proc.Starts() }

// Start launches (or relaunches) the process on its port and waits until it
// answers a Range. A port still held by the kernel after a kill is retried
// for a few seconds.
func (p *Proc) Start() error {
	p.proc.Bin, p.proc.TLS, p.proc.Port = p.Bin, p.TLS, p.Port
	p.proc.KeepPort, p.proc.OutputMax = true, 1<<20
	p.proc.Args = p.argsFor
	err := p.proc.Start()
	p.Port = p.proc.Port
	return err
}

// Args is the command line of the next start.
func (p *Proc) Args() []string { return p.argsFor(p.Addr()) }

// argsFor is the command line of a start on addr.
func (p *Proc) argsFor(addr string) []string {
	scheme := "http://"
	if p.TLS != nil {
		scheme = "https://"
	}
	args := []string{"--listen-client-urls", scheme + addr, "--data-dir", p.DataDir}
	if p.Endpoint != "" {
		args = append(args, "--endpoint", p.Endpoint)
	}
	args = append(args, "--log-level", "warn")
	return append(args, p.Extra...)
}

// Kill sends SIGKILL and waits until the process is reaped.
func (p *Proc) Kill() { p.proc.Kill() }

// Freeze stops the process (SIGSTOP): it keeps its sockets, database
// connections and locks but runs no code, like a process descheduled or
// stuck in a long GC pause, until Thaw.
func (p *Proc) Freeze() error { return p.proc.Freeze() }

// Thaw resumes a frozen process (SIGCONT).
func (p *Proc) Thaw() error { return p.proc.Thaw() }

// Pause freezes the process for d (or until ctx ends), then thaws it.
func (p *Proc) Pause(ctx context.Context, d time.Duration) error {
	if err := p.Freeze(); err != nil {
		return err
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	return p.Thaw()
}

// Stop sends SIGTERM (after SIGCONT, in case it is frozen) and waits
// (SIGKILL after 30 s); it reports an unclean exit.
func (p *Proc) Stop() error { return p.proc.Stop() }

// Exited is closed when the current incarnation exits.
func (p *Proc) Exited() <-chan struct{} { return p.proc.Exited() }

// Running reports whether the current incarnation is alive.
func (p *Proc) Running() bool {
	select {
	case <-p.Exited():
		return false
	default:
		return p.Pid() != 0
	}
}

// ExitErr is the current incarnation's Wait error.
func (p *Proc) ExitErr() error { return p.proc.ExitErr() }

// Pid of the current incarnation (0 before Start).
func (p *Proc) Pid() int { return p.proc.Pid() }

// Output is the tail (1 MiB) of the current incarnation's stdout and stderr.
func (p *Proc) Output() string { return p.proc.Output() }

// Dial opens a gRPC connection to addr that reconnects quickly (a killed
// server is back within a second or so) and has no message size limits.
// tc nil means plaintext; extra are more options (per-RPC credentials).
func Dial(addr string, tc *tls.Config, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	return proc.Dial(addr, tc, extra...)
}

// Mem is a process's resident set (VmRSS), its peak (VmHWM) and its
// anonymous part (RssAnon: the heap, without file pages such as a mapped
// database), in bytes.
type Mem struct{ RSS, HWM, Anon int64 }

// ReadMem reads /proc/pid/status.
func ReadMem(pid int) (Mem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, err
	}
	defer f.Close()
	var m Mem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			m.RSS = n << 10
		case "VmHWM:":
			m.HWM = n << 10
		case "RssAnon:":
			m.Anon = n << 10
		}
	}
	return m, sc.Err()
}
