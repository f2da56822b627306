// Package proc launches a server under test (shimd, etcd, kine: anything
// serving etcd's KV API) as a subprocess: start and readiness, restarts on
// the same or a fresh port, SIGTERM, kill -9, SIGSTOP/SIGCONT, and the tail
// of its output. The harness's Process and robust's Proc are both built on
// it.
package proc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Defaults of Proc's zero fields.
const (
	DefaultOutputMax    = 64 << 10
	DefaultReadyTimeout = 60 * time.Second
	stopTimeout         = 30 * time.Second
)

// Proc is one server, started and restarted by Start. Its fields are read
// at each Start, so set them before it.
type Proc struct {
	Bin string
	// Args is the command line of a start listening for clients on addr
	// (127.0.0.1:port).
	Args func(addr string) []string
	// Dir is the working directory ("" = this process's).
	Dir string
	// Env is added to this process's environment.
	Env []string
	// TLS, when set, is the client configuration of the readiness probe,
	// and URL says https.
	TLS *tls.Config
	// KeepPort keeps the port of the first start across restarts, so that
	// clients reconnect to the next incarnation by themselves; a port the
	// kernel still holds after a kill is retried for a few seconds.
	// Otherwise each start takes a fresh port.
	KeepPort bool
	// Port is the current (or, with KeepPort and set before the first
	// Start, the chosen) port.
	Port int
	// OutputMax is how much of the output's tail is kept
	// (DefaultOutputMax if 0); ReadyTimeout bounds the wait for the first
	// answered Range (DefaultReadyTimeout if 0).
	OutputMax    int
	ReadyTimeout time.Duration

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *tailBuffer
	done   chan struct{}
	exit   error
	starts int
}

// Addr is host:port of the client listener.
func (p *Proc) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// URL is the client URL (http:// or https://).
func (p *Proc) URL() string {
	if p.TLS != nil {
		return "https://" + p.Addr()
	}
	return "http://" + p.Addr()
}

// Start launches (or relaunches) the server and waits until it answers a
// Range. The server is killed if it does not.
func (p *Proc) Start() error {
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 1; ; attempt++ {
		if p.Port == 0 || !p.KeepPort {
			port, err := freePort()
			if err != nil {
				return err
			}
			p.Port = port
		}
		err := p.startOnce()
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		// A fresh port taken meanwhile by another process: take another.
		// A kept one: wait for the kernel to let it go.
		if !p.KeepPort && attempt == 3 || p.KeepPort && time.Now().After(deadline) {
			return err
		}
		if p.KeepPort {
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (p *Proc) startOnce() error {
	args := p.Args(p.Addr())
	cmd := exec.Command(p.Bin, args...)
	cmd.Dir = p.Dir
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	out := &tailBuffer{max: p.OutputMax}
	if out.max == 0 {
		out.max = DefaultOutputMax
	}
	cmd.Stdout = out
	cmd.Stderr = out
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.out, p.done, p.exit = cmd, out, done, nil
	p.starts++
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
		return fmt.Errorf("%s %s: %w\n--- server output ---\n%s", p.Bin, strings.Join(args, " "), err, out.String())
	}
	return nil
}

// waitReady sends Ranges until one succeeds, the process exits or
// ReadyTimeout passes.
func (p *Proc) waitReady() error {
	timeout := p.ReadyTimeout
	if timeout == 0 {
		timeout = DefaultReadyTimeout
	}
	conn, err := Dial(p.Addr(), p.TLS)
	if err != nil {
		return err
	}
	defer conn.Close()
	kv := pb.NewKVClient(conn)
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-p.Exited():
			return fmt.Errorf("exited before becoming ready: %v", p.ExitErr())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, last = kv.Range(ctx, &pb.RangeRequest{Key: []byte("conformance-readiness-probe")})
		cancel()
		// With auth on, an anonymous Range is refused: the server answered.
		if last == nil || errors.Is(last, rpctypes.ErrGRPCUserEmpty) {
			return nil
		}
		select {
		case <-p.Exited():
		case <-time.After(30 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready after %v: last Range error: %v", timeout, last)
}

// Stop sends SIGTERM (after SIGCONT, in case it is frozen) and waits for
// the exit (SIGKILL after 30 s). It reports a server that had already
// exited, had to be killed or exited unsuccessfully.
func (p *Proc) Stop() error {
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
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("server ignored SIGTERM for %v; killed", stopTimeout)
	}
	if err := p.ExitErr(); err != nil {
		return fmt.Errorf("server exited with %v after SIGTERM", err)
	}
	return nil
}

// Kill sends SIGKILL and waits until the process is reaped.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Freeze stops the process (SIGSTOP): it keeps its sockets, database
// connections and locks but runs no code, like a process descheduled or
// stuck in a long GC pause, until Thaw.
func (p *Proc) Freeze() error { return p.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen process (SIGCONT).
func (p *Proc) Thaw() error { return p.signal(syscall.SIGCONT) }

func (p *Proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		return errors.New("not started")
	}
	return cmd.Process.Signal(sig)
}

// Exited is closed when the current incarnation exits (never before the
// first Start).
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// ExitErr is the current incarnation's Wait error (nil while it runs).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

// Pid of the current incarnation (0 before Start).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Starts counts the incarnations started so far.
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Output is the tail of the current incarnation's stdout and stderr.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

// Dial opens a gRPC connection to addr that reconnects quickly (a killed
// server is back within a second or so) and has no message size limits.
// tc nil means plaintext.
func Dial(addr string, tc *tls.Config, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	return grpc.NewClient("passthrough:///"+addr, append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.5, Jitter: 0.2, MaxDelay: 400 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1), grpc.MaxCallSendMsgSize(1<<31-1)),
	}, extra...)...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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
