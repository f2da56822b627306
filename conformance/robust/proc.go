// Package robust holds the pieces of shimd's robustness tests that do not
// depend on the conformance harness: a shimd launcher that restarts on the
// same port, an etcd KV model for porcupine with a history recorder, a
// fault-surviving watch recorder and the checks of etcd's watch guarantees.
package robust

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
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

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *tailBuffer
	done   chan struct{}
	exit   error
	starts int
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
func (p *Proc) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Start launches (or relaunches) the process on its port and waits until it
// answers a Range. A port still held by the kernel after a kill is retried
// for a few seconds.
func (p *Proc) Start() error {
	if p.Port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		p.Port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := p.startOnce()
		if err == nil || !strings.Contains(err.Error(), "address already in use") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Args is the command line of the next start.
func (p *Proc) Args() []string {
	args := []string{"--listen-client-urls", p.URL(), "--data-dir", p.DataDir}
	if p.Endpoint != "" {
		args = append(args, "--endpoint", p.Endpoint)
	}
	args = append(args, "--log-level", "warn")
	return append(args, p.Extra...)
}

func (p *Proc) startOnce() error {
	args := p.Args()
	cmd := exec.Command(p.Bin, args...)
	out := &tailBuffer{max: 1 << 20}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
	if err := p.waitReady(60 * time.Second); err != nil {
		p.Kill()
		return fmt.Errorf("shimd %s: %w\n--- output ---\n%s", strings.Join(args, " "), err, out.String())
	}
	return nil
}

func (p *Proc) waitReady(timeout time.Duration) error {
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
		_, last = kv.Range(ctx, &pb.RangeRequest{Key: []byte("robust-readiness-probe")})
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(30 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %v", timeout, last)
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

func (p *Proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		return errors.New("not started")
	}
	return cmd.Process.Signal(sig)
}

// Stop sends SIGTERM (after SIGCONT, in case it is frozen) and waits
// (SIGKILL after 20 s); it reports an unclean exit.
func (p *Proc) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return fmt.Errorf("had already exited: %v", p.ExitErr())
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("ignored SIGTERM for 20 s; killed")
	}
	if err := p.ExitErr(); err != nil {
		return fmt.Errorf("exited with %v after SIGTERM", err)
	}
	return nil
}

// Exited is closed when the current incarnation exits.
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		return c
	}
	return p.done
}

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

// Output is the tail (1 MiB) of the current incarnation's stdout and stderr.
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
func Dial(addr string, tc *tls.Config) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.5, Jitter: 0.2, MaxDelay: 400 * time.Millisecond},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1), grpc.MaxCallSendMsgSize(1<<31-1)),
	)
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
