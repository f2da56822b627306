package shimd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/soheilhy/cmux"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/auth"
	"github.com/shimd/shimd/compact"
	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/peerwake"
	"github.com/shimd/shimd/server"
	"github.com/shimd/shimd/sqllog"
)

// Server is a running shimd: what Run started.
type Server struct {
	lg          *slog.Logger
	log         *sqllog.Log
	srv         *server.Server
	grpc        *grpc.Server
	https       []*http.Server // shut down after gRPC
	listeners   []net.Listener
	draining    atomic.Bool
	clientURLs  []string
	metricsURLs []string

	auth *auth.Store

	stop context.CancelFunc
	done chan struct{}
	err  error // set before done is closed
}

// Run opens the database, listens on the client and metrics URLs and
// returns once they accept connections; it serves until ctx ends, Close is
// called or a listener fails. The Server then stops accepting requests,
// lets those in flight finish (5 s at most), and closes the database; Done
// is closed when that is over. ctx also bounds opening the database.
//
// A Config Validate rejects is an error, as is a database that cannot be
// opened or a URL that cannot be listened on.
func Run(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	lg := cfg.Logger
	tc, err := tlsConfig(&cfg)
	if err != nil {
		return nil, err
	}
	var wake *peerwake.Waker
	log, err := openLog(ctx, cfg, func(be *drivers.Backend) (err error) {
		wake, err = openPeerWake(&cfg, be)
		return err
	})
	if err != nil {
		if wake != nil {
			wake.Close()
		}
		return nil, err
	}
	as, err := auth.Open(ctx, log, auth.Config{
		Token: cfg.AuthToken, TokenTTL: cfg.AuthTokenTTL, BcryptCost: cfg.BcryptCost,
		ClientCertAuth: cfg.ClientCertAuth, Logger: lg,
	})
	if err != nil {
		closeWithin(lg, "log", log.Close)
		return nil, fmt.Errorf("--auth-token: %w", err)
	}
	s := &Server{lg: lg, log: log, auth: as, done: make(chan struct{})}
	ctx, s.stop = context.WithCancel(ctx)
	clientLns, metricsLns, err := s.listen(&cfg)
	if err != nil {
		s.stop()
		as.Close()
		closeWithin(lg, "log", log.Close)
		return nil, err
	}

	advertised := s.clientURLs
	if len(cfg.AdvertiseClientURLs) > 0 {
		urls, _ := parseURLs(cfg.AdvertiseClientURLs)
		advertised = nil
		for _, u := range urls {
			advertised = append(advertised, u.String())
		}
	}
	s.srv = server.New(log, server.Config{
		Name:                   cfg.Name,
		ClientURLs:             advertised,
		WakeAddr:               wakeAddr(wake),
		QuotaBackendBytes:      cfg.QuotaBackendBytes,
		MaxTxnOps:              cfg.MaxTxnOps,
		MaxRequestBytes:        cfg.MaxRequestBytes,
		ProgressNotifyInterval: cfg.WatchProgressNotifyInterval,
		WarningApplyDuration:   cfg.WarningApplyDuration,
		KeepAliveMinTime:       cfg.GRPCKeepAliveMinTime,
		KeepAliveInterval:      cfg.GRPCKeepAliveInterval,
		KeepAliveTimeout:       cfg.GRPCKeepAliveTimeout,
		MaxConcurrentStreams:   cfg.MaxConcurrentStreams,
		Auth:                   as,
		Logger:                 lg,
	})
	if wake != nil {
		go runPeerWake(ctx, wake, s.srv)
	}
	retention, revisions, _ := compact.ParseRetention(cfg.AutoCompactionMode, cfg.AutoCompactionRetention)
	go compact.Run(ctx, log, compact.Config{
		Mode: cfg.AutoCompactionMode, Retention: retention, Revisions: revisions,
		Active: s.srv.CompactionLeader, Logger: lg,
	})

	s.grpc = grpc.NewServer(s.srv.GRPCOptions()...)
	s.srv.Register(s.grpc)
	// HTTP/1.1 and cleartext HTTP/2 for the health and metrics endpoints.
	httpLog := slog.NewLogLogger(lg.Handler(), slog.LevelWarn)
	httpSrv := &http.Server{
		Handler:           h2c.NewHandler(s.srv.HTTPHandler(promhttp.Handler()), &http2.Server{}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpLog,
	}
	// Over TLS, net/http negotiates HTTP/2 itself and hands gRPC requests
	// (by content type) to the gRPC server, as etcd does; the health and
	// metrics endpoints then work over h2 and HTTP/1.1 alike.
	tlsSrv := &http.Server{
		Handler:           dispatch(s.grpc, httpSrv.Handler, &s.draining),
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
		Handler:           s.srv.MetricsHandler(promhttp.Handler()),
		TLSConfig:         tc,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpLog,
	}
	s.https = []*http.Server{httpSrv, tlsSrv, metricsSrv}

	errc := make(chan error, 3*(len(clientLns)+len(metricsLns)))
	for i, ln := range clientLns {
		if isHTTPS(s.clientURLs[i]) {
			go func() { errc <- tlsSrv.ServeTLS(ln, "", "") }()
		} else {
			// Cleartext: gRPC and HTTP share the port through cmux, as in
			// etcd; a connection is gRPC if its first HTTP/2 request says so.
			m := cmux.New(ln)
			grpcL := m.MatchWithWriters(cmux.HTTP2MatchHeaderFieldSendSettings("content-type", "application/grpc"))
			httpL := m.Match(cmux.Any())
			go func() { errc <- s.grpc.Serve(grpcL) }()
			go func() { errc <- httpSrv.Serve(httpL) }()
			go func() { errc <- m.Serve() }()
		}
		lg.Info("serving client traffic", "url", s.clientURLs[i], "backend", log.Backend().Name, "revision", log.Rev(), "member", fmt.Sprintf("%x", s.srv.MemberID()))
	}
	for i, ln := range metricsLns {
		if isHTTPS(s.metricsURLs[i]) {
			go func() { errc <- metricsSrv.ServeTLS(ln, "", "") }()
		} else {
			go func() { errc <- metricsSrv.Serve(ln) }()
		}
		lg.Info("serving metrics and health", "url", s.metricsURLs[i])
	}
	go s.serve(ctx, errc)
	return s, nil
}

// serve waits for the end (ctx, Close or a listener's failure), shuts
// down and closes done.
func (s *Server) serve(ctx context.Context, errc <-chan error) {
	defer close(s.done)
	select {
	case <-ctx.Done():
		s.lg.Info("shutting down")
		s.shutdown()
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, cmux.ErrListenerClosed) {
			s.shutdown()
			break
		}
		s.err = fmt.Errorf("serve: %w", err)
		s.grpc.Stop()
		s.closeListeners()
	}
	s.stop() // ends auto-compaction
	// A database that hangs must not keep shimd from stopping.
	closeWithin(s.lg, "server", func() error { s.srv.Close(); s.auth.Close(); return nil })
	closeWithin(s.lg, "log", s.log.Close)
}

// shutdown lets in-flight requests finish, but does not wait on clients
// forever.
func (s *Server) shutdown() {
	s.draining.Store(true)
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownTimeout):
		s.grpc.Stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	for _, h := range s.https {
		h.Shutdown(sctx)
	}
	cancel()
	s.closeListeners()
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close()
	}
}

// ClientURL is the first client URL listened on, with its actual port.
func (s *Server) ClientURL() string { return s.clientURLs[0] }

// ClientURLs are the client URLs listened on, in Config order, each with
// its actual port (a port 0 replaced by the one the system chose).
func (s *Server) ClientURLs() []string { return append([]string(nil), s.clientURLs...) }

// MetricsURLs are the metrics URLs listened on, as ClientURLs.
func (s *Server) MetricsURLs() []string { return append([]string(nil), s.metricsURLs...) }

// Done is closed once the Server has stopped and closed its database.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is, once Done is closed, why the Server stopped: nil after its
// context ended or Close, otherwise the listener's error.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close stops the Server as its context ending would, waits until it has
// stopped and returns Err. It may be called more than once.
func (s *Server) Close() error {
	s.stop()
	<-s.done
	return s.Err()
}
