// Package server implements etcd's v3 gRPC services on top of the revision
// log, as etcd's v3rpc layer does: each service validates its requests as
// etcd does, then delegates, KV and Lease requests to the apply layer
// (package server/txn, which runs them on sqllog), the others to sqllog.
// The space quota is a decorator of the KV and Lease services (quota.go).
package server

import (
	"context"
	"hash/fnv"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"

	"github.com/shimd/shimd/auth"
	"github.com/shimd/shimd/server/txn"
	"github.com/shimd/shimd/sqllog"
)

// Defaults match etcd's.
const (
	DefaultMaxTxnOps       = 128
	DefaultMaxRequestBytes = 1536 * 1024
	// grpcOverheadBytes is the slack etcd allows above --max-request-bytes at
	// the gRPC layer, so that the finer "request is too large" check can answer.
	grpcOverheadBytes = 512 * 1024
)

// Config holds the request limits and identity of a member.
type Config struct {
	// Name is the member's name (etcd's --name); the member id derives from
	// it and the client URLs.
	Name       string
	ClientURLs []string
	// WakeAddr is the address the member listens on for wake-ups after
	// other members' commits, recorded with its heartbeat ("" for none).
	WakeAddr string
	// QuotaBackendBytes is the space quota (0: etcd's default, 2 GiB).
	QuotaBackendBytes int64
	MaxTxnOps         int
	MaxRequestBytes   int
	// ProgressNotifyInterval is how often idle progress_notify watchers are
	// told the current revision.
	ProgressNotifyInterval time.Duration
	// WarningApplyDuration: slower requests are logged.
	WarningApplyDuration time.Duration
	// KeepAliveMinTime is the shortest ping interval clients may use;
	// KeepAliveInterval and KeepAliveTimeout are the server's own pings.
	// etcd's defaults: 5 s, 2 h, 20 s.
	KeepAliveMinTime, KeepAliveInterval, KeepAliveTimeout time.Duration
	// MaxConcurrentStreams bounds the streams of one client connection.
	MaxConcurrentStreams uint32
	// Auth is the auth store (nil: one opened on the log with etcd's
	// defaults).
	Auth   *auth.Store
	Logger *slog.Logger
}

// Server is one shimd member: the gRPC services over one log.
type Server struct {
	log      *sqllog.Log
	cfg      Config
	lg       *slog.Logger
	memberID uint64
	quota    *quota
	apply    *txn.Applier
	streams  streamHeap
	auth     *auth.Store
	health   *health.Server
	stop     context.CancelFunc
	wg       sync.WaitGroup
}

// New returns a server for log.
func New(log *sqllog.Log, cfg Config) *Server {
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = DefaultMaxTxnOps
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.ProgressNotifyInterval <= 0 {
		cfg.ProgressNotifyInterval = DefaultProgressNotifyInterval
	}
	cfg.ProgressNotifyInterval = max(cfg.ProgressNotifyInterval, minProgressNotifyInterval)
	if cfg.KeepAliveMinTime <= 0 {
		cfg.KeepAliveMinTime = 5 * time.Second
	}
	if cfg.KeepAliveInterval <= 0 {
		cfg.KeepAliveInterval = 2 * time.Hour
	}
	if cfg.KeepAliveTimeout <= 0 {
		cfg.KeepAliveTimeout = 20 * time.Second
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = math.MaxUint32
	}
	if cfg.WarningApplyDuration <= 0 {
		cfg.WarningApplyDuration = DefaultWarningApplyDuration
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The member id is stable for a name on a database, as etcd's is for a
	// member of a cluster.
	h := fnv.New64a()
	h.Write([]byte(cfg.Name))
	var b [8]byte
	for i, c := 0, log.ClusterID(); i < 8; i++ {
		b[i] = byte(c >> (8 * i))
	}
	h.Write(b[:])
	for _, u := range cfg.ClientURLs {
		h.Write([]byte(u))
	}
	// Two processes with the default name listening on 0.0.0.0 would
	// otherwise share an id (one member row, two auto-compactors).
	host, _ := os.Hostname()
	h.Write([]byte(host))
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{log: log, cfg: cfg, lg: cfg.Logger, memberID: h.Sum64(), stop: stop, apply: txn.NewApplier(log), auth: cfg.Auth}
	if s.auth == nil {
		var err error
		if s.auth, err = auth.Open(ctx, log, auth.Config{Logger: s.lg}); err != nil {
			panic("shimd: opening the auth store: " + err.Error())
		}
	}
	s.quota = newQuota(log, s.lg, s.memberID, cfg.QuotaBackendBytes)
	s.health = health.NewServer()
	s.quota.refresh(ctx)
	hl := func(ctx context.Context) { s.healthLoop(ctx, s.health) }
	leases := &leaseServer{s: s}
	for _, loop := range []func(context.Context){leases.expireLeases, s.quota.measure, s.heartbeat, hl} {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			loop(ctx)
		}()
	}
	return s
}

// MemberID is this member's id.
func (s *Server) MemberID() uint64 { return s.memberID }

// Close stops the server's background work; the log stays open.
func (s *Server) Close() {
	s.stop()
	s.wg.Wait()
	if s.cfg.Auth == nil {
		s.auth.Close()
	}
}

// GRPCOptions are the server options etcd's limits imply.
func (s *Server) GRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.cfg.MaxRequestBytes + grpcOverheadBytes),
		grpc.MaxSendMsgSize(1<<31 - 1),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		// Clients such as kube-apiserver ping every 30 s; grpc-go's default
		// policy would close their connections for pinging too often.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.cfg.KeepAliveMinTime, PermitWithoutStream: false}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepAliveInterval, Timeout: s.cfg.KeepAliveTimeout}),
		grpc.ChainUnaryInterceptor(grpcMetrics.UnaryServerInterceptor(), slowLog(s.lg, s.cfg.WarningApplyDuration)),
		grpc.ChainStreamInterceptor(grpcMetrics.StreamServerInterceptor()),
	}
}

// Register adds shimd's services to g.
func (s *Server) Register(g *grpc.Server) {
	pb.RegisterKVServer(g, quotaKVServer{&kvServer{s: s}, s.quota})
	pb.RegisterLeaseServer(g, quotaLeaseServer{authLeaseServer{&leaseServer{s: s}, s}, s.quota})
	pb.RegisterWatchServer(g, &watchServer{s: s})
	pb.RegisterMaintenanceServer(g, authMaintenanceServer{&maintenanceServer{s: s}, s})
	pb.RegisterClusterServer(g, authClusterServer{&clusterServer{s: s}, s})
	pb.RegisterAuthServer(g, &authServer{s: s})
	healthpb.RegisterHealthServer(g, s.health)
	grpcMetrics.InitializeMetrics(g)
}

// header returns a response header at rev with this member's identity.
func (s *Server) header(rev int64) *pb.ResponseHeader {
	h := &pb.ResponseHeader{Revision: rev}
	s.fill(h)
	return h
}

// fill stamps the identity fields on a header, and the current revision
// when the header has none, as etcd's v3rpc layer does.
func (s *Server) fill(h *pb.ResponseHeader) {
	h.ClusterId = s.log.ClusterID()
	h.MemberId = s.memberID
	h.RaftTerm = 1
	if h.Revision == 0 {
		h.Revision = s.log.Rev()
	}
}
