package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// proc is a started child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
}

func startProc(name, logFile string, bin string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "### %s %s\n### started %s\n", bin, strings.Join(args, " "), time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) error {
	if p == nil {
		return nil
	}
	if !p.exited() {
		fmt.Fprintf(p.log, "### SIGTERM %s\n", time.Now().Format(time.RFC3339Nano))
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	fmt.Fprintf(p.log, "### exited %s: %v\n", time.Now().Format(time.RFC3339Nano), p.err)
	p.log.Close()
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return nil // killed by our signal or exited with status: logged
	}
	return p.err
}

// Backend is the etcd API server kube-apiserver stores its data in: shimd on
// one of its databases, or the reference etcd.
type Backend struct {
	Name     string // sqlite, postgres, mariadb, etcd
	Port     int
	DataDir  string
	Endpoint string // shimd --endpoint ("" = SQLite in DataDir)
	LogFile  string
	bins     *Binaries
	p        *proc
	cleanup  func() error // drops the PostgreSQL schema / MariaDB database
	// TLS, when set, makes shimd serve https and require client
	// certificates from this PKI's CA (etcd's --client-cert-auth).
	TLS *PKI
}

func (b *Backend) URL() string {
	if b.TLS != nil {
		return fmt.Sprintf("https://127.0.0.1:%d", b.Port)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", b.Port)
}

// Start (re)starts the server on its port and waits until it answers.
func (b *Backend) Start() error {
	var err error
	if b.Name == "etcd" {
		peer, perr := freePort()
		if perr != nil {
			return perr
		}
		pu := fmt.Sprintf("http://127.0.0.1:%d", peer)
		b.p, err = startProc("etcd", b.LogFile, b.bins.Etcd,
			"--name", "default", "--data-dir", b.DataDir,
			"--listen-client-urls", b.URL(), "--advertise-client-urls", b.URL(),
			"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
			"--initial-cluster", "default="+pu, "--log-level", "warn")
	} else {
		args := []string{"--listen-client-urls", b.URL(), "--data-dir", b.DataDir, "--log-level", "warn"}
		if b.Endpoint != "" {
			args = append(args, "--endpoint", b.Endpoint)
		}
		if b.TLS != nil {
			// The apiserver's serving certificate (for 127.0.0.1) serves here too.
			args = append(args, "--cert-file", b.TLS.CertFile, "--key-file", b.TLS.KeyFile,
				"--trusted-ca-file", b.TLS.CAFile, "--client-cert-auth")
		}
		b.p, err = startProc("shimd", b.LogFile, b.bins.Shimd, args...)
	}
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b.p.exited() {
			return fmt.Errorf("%s exited: %v (see %s)", b.Name, b.p.err, b.LogFile)
		}
		cli, err := b.Client()
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = cli.Status(ctx, b.URL())
			cancel()
			cli.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering Status after 60s: %v", b.Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (b *Backend) Stop() error { return b.p.stop(30 * time.Second) }

// DumpGoroutines makes shimd (a Go program) print its goroutines into its
// log and exit (SIGQUIT); used when it seems stuck.
func (b *Backend) DumpGoroutines() {
	if b.p != nil && !b.p.exited() {
		_ = b.p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-b.p.done:
		case <-time.After(10 * time.Second):
		}
	}
}

// Client is an etcd v3 client for direct looks at the stored data.
func (b *Backend) Client() (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   []string{b.URL()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if b.TLS != nil {
		tc, err := b.TLS.TLSConfig()
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
	}
	return clientv3.New(cfg)
}

// APIServer is a running kube-apiserver.
type APIServer struct {
	Port       int
	LogFile    string
	Kubeconfig string
	pki        *PKI
	p          *proc
	http       *http.Client
}

func (a *APIServer) URL() string { return fmt.Sprintf("https://127.0.0.1:%d", a.Port) }

func startAPIServer(bins *Binaries, pki *PKI, dir, etcdURL string, extra []string) (*APIServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := pki.TLSConfig()
	if err != nil {
		return nil, err
	}
	a := &APIServer{
		Port:       port,
		LogFile:    filepath.Join(dir, "kube-apiserver.log"),
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		pki:        pki,
		http: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true},
		},
	}
	if err := pki.WriteKubeconfig(a.Kubeconfig, a.URL()); err != nil {
		return nil, err
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		// Serve on loopback only, but advertise an address of TEST-NET-1
		// (RFC 5737, never routed): the lease endpoint reconciler refuses a
		// loopback one (1.37 does not start; 1.36 retried every 10s), and
		// with this one it writes its master lease and the kubernetes
		// Endpoints/EndpointSlice as in a cluster. Nothing dials it.
		"--advertise-address=192.0.2.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + pki.CertFile,
		"--tls-private-key-file=" + pki.KeyFile,
		"--client-ca-file=" + pki.CAFile,
		"--service-account-key-file=" + pki.SAKeyFile,
		"--service-account-signing-key-file=" + pki.SAKeyFile,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		"--profiling=false",
		"--v=2",
	}
	args = append(args, extra...)
	a.p, err = startProc("kube-apiserver", a.LogFile, bins.KubeAPIServer, args...)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// get fetches path (e.g. /readyz?verbose) with the admin certificate.
func (a *APIServer) get(path string) (int, string, error) {
	resp, err := a.http.Get(a.URL() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// waitReady polls /readyz until it answers 200.
func (a *APIServer) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if a.p.exited() {
			return fmt.Errorf("kube-apiserver exited: %v (see %s)", a.p.err, a.LogFile)
		}
		code, body, err := a.get("/readyz?verbose")
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%d %s", code, body)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/readyz not ok after %s; last answer: %s", timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (a *APIServer) Stop() error { return a.p.stop(30 * time.Second) }

// waitStable waits until /readyz and the etcd checks have answered 200 for
// `stable` in a row; it returns the failed answers it saw meanwhile.
func (a *APIServer) waitStable(stable, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	var flaps []string
	okSince := time.Now()
	for {
		ok := true
		for _, p := range healthPaths {
			code, body, err := a.get(p)
			if err != nil || code != http.StatusOK {
				ok = false
				flaps = append(flaps, fmt.Sprintf("%s %s: %d %v %s", time.Now().Format("15:04:05.000"), p, code, err, failedChecks(body)))
			}
		}
		now := time.Now()
		if !ok {
			okSince = now
		} else if now.Sub(okSince) >= stable {
			return flaps, nil
		}
		if now.After(deadline) {
			return flaps, fmt.Errorf("health not stable for %s within %s", stable, timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// failedChecks shortens a health answer to its failed checks ("[-]...")
// or its first line.
func failedChecks(body string) string {
	var failed []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, l)
		}
	}
	if len(failed) > 0 {
		return strings.Join(failed, "; ")
	}
	return firstLine(body)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// healthWatcher polls the health endpoints while the scenario runs and
// remembers every answer that was not 200.
type healthWatcher struct {
	a      *APIServer
	mu     sync.Mutex
	paused bool
	checks int
	fails  []string
	stop   chan struct{}
	done   chan struct{}
}

var healthPaths = []string{"/readyz", "/livez", "/readyz/etcd", "/livez/etcd", "/readyz/etcd-readiness"}

func watchHealth(a *APIServer, every time.Duration) *healthWatcher {
	h := &healthWatcher{a: a, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
			for _, p := range healthPaths {
				code, body, err := a.get(p)
				h.mu.Lock()
				if !h.paused {
					h.checks++
					if err != nil || code != http.StatusOK {
						h.fails = append(h.fails, fmt.Sprintf("%s %s: %d %v %s",
							time.Now().Format("15:04:05.000"), p, code, err, failedChecks(body)))
					}
				}
				h.mu.Unlock()
			}
		}
	}()
	return h
}

func (h *healthWatcher) pause(p bool) {
	h.mu.Lock()
	h.paused = p
	h.mu.Unlock()
}

func (h *healthWatcher) finish() (checks int, fails []string) {
	close(h.stop)
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checks, h.fails
}
