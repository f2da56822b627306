package shimd

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// shutdownTimeout bounds each step of shutting down.
const shutdownTimeout = 5 * time.Second

// closeWithin runs close, giving up (and saying so) after shutdownTimeout.
func closeWithin(lg *slog.Logger, what string, close func() error) {
	done := make(chan error, 1)
	go func() { done <- close() }()
	select {
	case err := <-done:
		if err != nil {
			lg.Warn("closing "+what+" failed", "err", err)
		}
	case <-time.After(shutdownTimeout):
		lg.Warn("closing " + what + " timed out; exiting anyway (acknowledged writes are already durable)")
	}
}

// listen opens the client and metrics listeners (all or none) and records
// their URLs with the ports actually bound.
func (s *Server) listen(cfg *Config) (client, metrics []net.Listener, err error) {
	open := func(list []string) ([]net.Listener, []string, error) {
		urls, _ := parseURLs(list) // validated
		var lns []net.Listener
		var actual []string
		for _, u := range urls {
			ln, err := net.Listen("tcp", u.Host)
			if err != nil {
				return nil, nil, fmt.Errorf("listen on %s: %w", u, err)
			}
			s.listeners = append(s.listeners, ln)
			if u.Port() == "0" {
				port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
				u.Host = net.JoinHostPort(u.Hostname(), port)
			}
			lns = append(lns, ln)
			actual = append(actual, u.String())
		}
		return lns, actual, nil
	}
	if client, s.clientURLs, err = open(cfg.ListenClientURLs); err == nil {
		metrics, s.metricsURLs, err = open(cfg.ListenMetricsURLs)
	}
	if err != nil {
		s.closeListeners()
		return nil, nil, err
	}
	return client, metrics, nil
}

func isHTTPS(u string) bool { return strings.HasPrefix(u, "https://") }

// dispatch sends gRPC requests to g and the rest to h. Once draining is
// set (shutdown), it answers new gRPC requests UNAVAILABLE itself: a
// stopping grpc.Server's ServeHTTP returns without writing anything, which
// a client reads as a malformed response (200, no content-type) instead of
// an error it knows to retry elsewhere.
func dispatch(g *grpc.Server, h http.Handler, draining *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			if draining.Load() {
				w.Header().Set("Content-Type", "application/grpc")
				w.Header().Set("Grpc-Status", strconv.Itoa(int(codes.Unavailable)))
				w.Header().Set("Grpc-Message", "shimd is shutting down")
				w.WriteHeader(http.StatusOK)
				return
			}
			g.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// tlsConfig builds the server's TLS settings from etcd's flags, or nil.
func tlsConfig(cfg *Config) (*tls.Config, error) {
	if cfg.CertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load --cert-file/--key-file: %w", err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// gRPC clients insist on ALPN h2; browsers and curl may use HTTP/1.1.
		NextProtos: []string{"h2", "http/1.1"},
	}
	if cfg.TrustedCAFile != "" {
		pem, err := os.ReadFile(cfg.TrustedCAFile)
		if err != nil {
			return nil, fmt.Errorf("read --trusted-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--trusted-ca-file %s holds no PEM certificate", cfg.TrustedCAFile)
		}
		tc.ClientCAs = pool
		// As in etcd, a trusted CA requires client certificates, with
		// --client-cert-auth or without.
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
