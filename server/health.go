package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthTimeout bounds the database check behind a health request.
const healthTimeout = 2 * time.Second

// What the health endpoints say when the database does not answer. The
// driver's error names the database user, name and host, which are no
// business of whoever can reach a health or metrics port: it goes to the log.
const (
	reasonDBUnreachable = "DATABASE UNREACHABLE"                         // /health, as etcd's "RANGE ERROR"
	checkDBUnreachable  = "database unreachable"                         // /livez, /readyz
	checkDBBehind       = "database behind this member, resynchronising" // /readyz
	checkWriteStalled   = "database write stalled"                       // /readyz
	reasonDBBehind      = "DATABASE BEHIND MEMBER, RESYNCHRONISING"      // /health
)

// Health reports whether this member can serve: the database answers and,
// unless excluded, no alarm is raised (etcd's /health fails on alarms too).
// The reason is fit to show any client; healthDetail adds the error.
func (s *Server) Health(ctx context.Context, exclude map[string]bool) (bool, string) {
	ok, reason, _ := s.healthDetail(ctx, exclude)
	return ok, reason
}

// healthDetail is Health and the error behind a failure, for the log.
func (s *Server) healthDetail(ctx context.Context, exclude map[string]bool) (bool, string, error) {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	if err := s.log.Ping(ctx); err != nil {
		return false, reasonDBUnreachable, err
	}
	if s.log.Resyncing() {
		return false, reasonDBBehind, nil
	}
	for _, a := range s.log.Alarms() {
		name := pb.AlarmType(a.Type).String()
		if !exclude[name] {
			return false, "ALARM " + name, nil
		}
	}
	return true, "", nil
}

// healthLoop keeps the grpc.health.v1 status in step with Health, and
// etcd_server_has_leader with whether the database answers: an alarm needs
// an operator, and must not fire etcd's "no leader" alert.
func (s *Server) healthLoop(ctx context.Context, hs *health.Server) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ok, _ := s.Health(ctx, nil)
		status := healthpb.HealthCheckResponse_SERVING
		if !ok {
			status = healthpb.HealthCheckResponse_NOT_SERVING
		}
		hs.SetServingStatus("", status)
		pctx, cancel := context.WithTimeout(ctx, healthTimeout)
		if s.log.Ping(pctx) == nil {
			hasLeaderGauge.Set(1)
		} else {
			hasLeaderGauge.Set(0)
		}
		cancel()
		select {
		case <-ctx.Done():
			hs.Shutdown()
			return
		case <-t.C:
		}
	}
}

// check is one named check of /livez or /readyz. run returns "" when fine,
// else a reason fit to show any client and the error behind it (for the
// log; may be nil).
type check struct {
	name string
	run  func(ctx context.Context) (string, error)
}

// checks answers like etcd 3.6's /livez and /readyz: "ok", or with
// ?verbose one line per check; ?exclude=NAME skips a check; 503 and the
// failed checks when one fails.
func (s *Server) checks(endpoint string, list []check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		exclude := map[string]bool{}
		for _, e := range r.URL.Query()["exclude"] {
			exclude[e] = true
		}
		var b strings.Builder
		failed := false
		for _, c := range list {
			if exclude[c.name] {
				fmt.Fprintf(&b, "[+]%s excluded: ok\n", c.name)
				continue
			}
			if reason, err := c.run(ctx); reason != "" {
				failed = true
				fmt.Fprintf(&b, "[-]%s failed: %s\n", c.name, reason)
				s.lg.Warn("health check failed", "path", r.URL.Path, "check", c.name, "reason", reason, "err", err)
			} else {
				fmt.Fprintf(&b, "[+]%s ok\n", c.name)
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if failed {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%s%s check failed\n", b.String(), endpoint)
			return
		}
		if _, verbose := r.URL.Query()["verbose"]; verbose {
			fmt.Fprintf(w, "%sok\n", b.String())
			return
		}
		fmt.Fprint(w, "ok\n")
	}
}

// healthMux serves /health (etcd's JSON), /livez and /readyz (etcd 3.6's
// checks, each also alone at /livez/NAME, /readyz/NAME) and, if metrics is
// set, /metrics: what etcd serves on a --listen-metrics-urls URL.
func (s *Server) healthMux(metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		exclude := map[string]bool{}
		for _, a := range r.URL.Query()["exclude"] {
			exclude[a] = true
		}
		ok, reason, err := s.healthDetail(r.Context(), exclude)
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			s.lg.Warn("serving /health false", "reason", reason, "err", err)
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(map[string]string{"health": fmt.Sprint(ok), "reason": reason})
	})
	// A read answers when the database does: shimd's serializable and
	// linearizable reads both need it.
	read := func(ctx context.Context) (string, error) {
		if err := s.log.Ping(ctx); err != nil {
			return checkDBUnreachable, err
		}
		return "", nil
	}
	// Not ready either while memory may not be what the database holds (the
	// database is behind it after a failover to a standby that lacked
	// commits, and the process resynchronises), nor while writes are stuck
	// though reads answer (a commit hung on a frozen primary holds every
	// write until --db-timeout).
	linearizable := func(ctx context.Context) (string, error) {
		if s.log.Resyncing() {
			return checkDBBehind, nil
		}
		if d := s.log.WriteStalled(); d > healthTimeout {
			return checkWriteStalled, fmt.Errorf("a database commit has been running for %v", d.Round(time.Millisecond))
		}
		return read(ctx)
	}
	corruption := func(ctx context.Context) (string, error) {
		for _, a := range s.log.Alarms() {
			if pb.AlarmType(a.Type) == pb.AlarmType_CORRUPT {
				return "alarm CORRUPT", nil
			}
		}
		return "", nil
	}
	for endpoint, list := range map[string][]check{
		"livez": {{"serializable_read", read}},
		"readyz": {
			{"data_corruption", corruption},
			{"serializable_read", read},
			{"linearizable_read", linearizable},
			{"non_learner", func(context.Context) (string, error) { return "", nil }},
		},
	} {
		mux.HandleFunc("/"+endpoint, s.checks(endpoint, list))
		for _, c := range list {
			mux.HandleFunc("/"+endpoint+"/"+c.name, s.checks(endpoint, []check{c}))
		}
	}
	if metrics != nil {
		mux.Handle("/metrics", metrics)
	}
	return mux
}

// MetricsHandler serves a --listen-metrics-urls URL: /metrics and the health
// endpoints, and nothing else (no /version, no gRPC), as etcd does.
func (s *Server) MetricsHandler(metrics http.Handler) http.Handler {
	return s.healthMux(metrics)
}

// HTTPHandler serves etcd's HTTP endpoints beside gRPC on a client URL: those
// of MetricsHandler (/metrics only if metrics is set) and /version.
func (s *Server) HTTPHandler(metrics http.Handler) http.Handler {
	mux := s.healthMux(metrics)
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		// etcd's versions, in its field order.
		json.NewEncoder(w).Encode(struct {
			Server  string `json:"etcdserver"`
			Cluster string `json:"etcdcluster"`
			Storage string `json:"storage"`
		}{Version, strings.Join(strings.Split(Version, ".")[:2], ".") + ".0", storageVersion})
	})
	return mux
}
