package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/soheilhy/cmux"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/shimd/shimd/compact"
	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/drivers/mysql"
	"github.com/shimd/shimd/drivers/postgres"
	"github.com/shimd/shimd/drivers/sqlite"
	"github.com/shimd/shimd/server"
	"github.com/shimd/shimd/sqllog"
)

// openBackend opens the database --endpoint names.
func openBackend(ctx context.Context, cfg *config) (*drivers.Backend, error) {
	ep := cfg.endpoint
	opts := drivers.Options{MaxOpenConns: cfg.dbMaxConns, ConnectTimeout: cfg.dbConnectTimeout}
	switch {
	case ep == "":
		return sqlite.Open(filepath.Join(cfg.dataDir, sqlite.FileName))
	case strings.HasPrefix(ep, "sqlite://"), strings.HasPrefix(ep, "file:"):
		return sqlite.Open(ep)
	case strings.HasPrefix(ep, "postgres://"), strings.HasPrefix(ep, "postgresql://"):
		opts.PostgresVacuumFull = cfg.pgVacuumFull
		return postgres.Open(ctx, ep, opts)
	case strings.HasPrefix(ep, "mysql://"):
		return mysql.Open(ctx, ep, opts)
	}
	scheme, _, _ := strings.Cut(ep, "://")
	return nil, fmt.Errorf("--endpoint: unsupported database %q (supported: sqlite://, postgres://, mysql://, or empty for SQLite in --data-dir)", scheme)
}

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

// openLog opens the database --endpoint names and the log in it.
func openLog(ctx context.Context, cfg *config, lg *slog.Logger) (*sqllog.Log, error) {
	be, err := openBackend(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	cacheBytes := cfg.valueCacheSize
	if cacheBytes == 0 {
		cacheBytes = -1 // the flag's 0 disables; the option's 0 is the default
	}
	log, err := sqllog.Open(ctx, be, sqllog.Options{Logger: lg, PollInterval: cfg.dbPollInterval, ValueCacheBytes: cacheBytes})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("open database: %w", err)
	}
	return log, nil
}

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
func tlsConfig(cfg *config) (*tls.Config, error) {
	if cfg.certFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.certFile, cfg.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load --cert-file/--key-file: %w", err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// gRPC clients insist on ALPN h2; browsers and curl may use HTTP/1.1.
		NextProtos: []string{"h2", "http/1.1"},
	}
	if cfg.trustedCAFile != "" {
		pem, err := os.ReadFile(cfg.trustedCAFile)
		if err != nil {
			return nil, fmt.Errorf("read --trusted-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--trusted-ca-file %s holds no PEM certificate", cfg.trustedCAFile)
		}
		tc.ClientCAs = pool
		// As in etcd, a trusted CA requires client certificates, with
		// --client-cert-auth or without.
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

func run(ctx context.Context, cfg *config) error {
	lg := newLogger(cfg, os.Stderr)
	tc, err := tlsConfig(cfg)
	if err != nil {
		return err
	}
	clientURLs, _ := parseURLs(cfg.listenClientURLs)
	metricsURLs, _ := parseURLs(cfg.listenMetricsURLs)

	log, err := openLog(ctx, cfg, lg)
	if err != nil {
		return err
	}
	// A database that hangs must not keep shimd from exiting.
	defer closeWithin(lg, "log", log.Close)

	var advertised []string
	adv, _ := parseURLs(cfg.advertiseClientURLs)
	if len(adv) == 0 {
		adv = clientURLs
	}
	for _, u := range adv {
		advertised = append(advertised, u.String())
	}
	srv := server.New(log, server.Config{
		Name:                   cfg.name,
		ClientURLs:             advertised,
		QuotaBackendBytes:      cfg.quotaBackendBytes,
		MaxTxnOps:              cfg.maxTxnOps,
		MaxRequestBytes:        cfg.maxRequestBytes,
		ProgressNotifyInterval: cfg.progressInterval,
		WarningApplyDuration:   cfg.warningApply,
		KeepAliveMinTime:       cfg.keepAliveMinTime,
		KeepAliveInterval:      cfg.keepAliveInterval,
		KeepAliveTimeout:       cfg.keepAliveTimeout,
		MaxConcurrentStreams:   uint32(cfg.maxStreams),
		Logger:                 lg,
	})
	defer closeWithin(lg, "server", func() error { srv.Close(); return nil })
	retention, revisions, _ := compact.ParseRetention(cfg.compactionMode, cfg.compactionRetain)
	go compact.Run(ctx, log, compact.Config{
		Mode: cfg.compactionMode, Retention: retention, Revisions: revisions,
		Active: srv.CompactionLeader, Logger: lg,
	})

	g := grpc.NewServer(srv.GRPCOptions()...)
	srv.Register(g)
	// HTTP/1.1 and cleartext HTTP/2 for the health and metrics endpoints.
	httpLog := slog.NewLogLogger(lg.Handler(), slog.LevelWarn)
	httpSrv := &http.Server{
		Handler:           h2c.NewHandler(srv.HTTPHandler(promhttp.Handler()), &http2.Server{}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpLog,
	}

	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	listen := func(u *url.URL) (net.Listener, error) {
		ln, err := net.Listen("tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", u, err)
		}
		listeners = append(listeners, ln)
		return ln, nil
	}
	// Over TLS, net/http negotiates HTTP/2 itself and hands gRPC requests
	// (by content type) to the gRPC server, as etcd does; the health and
	// metrics endpoints then work over h2 and HTTP/1.1 alike.
	var draining atomic.Bool
	tlsSrv := &http.Server{
		Handler:           dispatch(g, httpSrv.Handler, &draining),
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpLog,
	}
	// Metrics URLs get a server of their own, as in etcd: /metrics and the
	// health endpoints only, never gRPC (a client URL's port must not be
	// reachable through a port opened for monitoring). https:// uses the
	// client URLs' TLS settings, client certificates included; http:// is
	// cleartext HTTP/1.1, as etcd's.
	metricsSrv := &http.Server{
		Handler:           srv.MetricsHandler(promhttp.Handler()),
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpLog,
	}
	errc := make(chan error, 3*(len(clientURLs)+len(metricsURLs)))
	for _, u := range clientURLs {
		ln, err := listen(u)
		if err != nil {
			closeAll()
			return err
		}
		if u.Scheme == "https" {
			go func() { errc <- tlsSrv.ServeTLS(ln, "", "") }()
		} else {
			// Cleartext: gRPC and HTTP share the port through cmux, as in
			// etcd; a connection is gRPC if its first HTTP/2 request says so.
			m := cmux.New(ln)
			grpcL := m.MatchWithWriters(cmux.HTTP2MatchHeaderFieldSendSettings("content-type", "application/grpc"))
			httpL := m.Match(cmux.Any())
			go func() { errc <- g.Serve(grpcL) }()
			go func() { errc <- httpSrv.Serve(httpL) }()
			go func() { errc <- m.Serve() }()
		}
		lg.Info("serving client traffic", "url", u.String(), "backend", log.Backend().Name, "revision", log.Rev(), "member", fmt.Sprintf("%x", srv.MemberID()))
	}
	for _, u := range metricsURLs {
		ln, err := listen(u)
		if err != nil {
			closeAll()
			return err
		}
		if u.Scheme == "https" {
			go func() { errc <- metricsSrv.ServeTLS(ln, "", "") }()
		} else {
			go func() { errc <- metricsSrv.Serve(ln) }()
		}
		lg.Info("serving metrics and health", "url", u.String())
	}

	select {
	case <-ctx.Done():
		lg.Info("shutting down")
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, cmux.ErrListenerClosed) {
			g.Stop()
			closeAll()
			return fmt.Errorf("serve: %w", err)
		}
	}
	// Let in-flight requests finish, but do not wait on clients forever.
	draining.Store(true)
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	httpSrv.Shutdown(sctx)
	tlsSrv.Shutdown(sctx)
	metricsSrv.Shutdown(sctx)
	cancel()
	closeAll()
	return nil
}
