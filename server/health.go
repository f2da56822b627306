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

// Health reports whether this member can serve: the database answers and,
// unless excluded, no alarm is raised (etcd's /health fails on alarms too).
func (s *Server) Health(ctx context.Context, exclude map[string]bool) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	if err := s.log.Ping(ctx); err != nil {
		return false, "DATABASE UNREACHABLE: " + err.Error()
	}
	for _, a := range s.log.Alarms() {
		name := pb.AlarmType(a.Type).String()
		if !exclude[name] {
			return false, "ALARM " + name
		}
	}
	return true, ""
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

// check is one named check of /livez or /readyz; it returns "" when fine.
type check struct {
	name string
	run  func(ctx context.Context) string
}

// checks answers like etcd 3.6's /livez and /readyz: "ok", or with
// ?verbose one line per check; ?exclude=NAME skips a check; 503 and the
// failed checks when one fails.
func checks(endpoint string, list []check) http.HandlerFunc {
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
			if reason := c.run(ctx); reason != "" {
				failed = true
				fmt.Fprintf(&b, "[-]%s failed: %s\n", c.name, reason)
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

// HTTPHandler serves etcd's HTTP endpoints beside gRPC: /health (etcd's JSON),
// /livez and /readyz (etcd 3.6's checks), /version and, if metrics is set,
// /metrics.
func (s *Server) HTTPHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		exclude := map[string]bool{}
		for _, a := range r.URL.Query()["exclude"] {
			exclude[a] = true
		}
		ok, reason := s.Health(r.Context(), exclude)
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(map[string]string{"health": fmt.Sprint(ok), "reason": reason})
	})
	// A read answers when the database does: shimd's serializable and
	// linearizable reads both need it.
	read := func(ctx context.Context) string {
		if err := s.log.Ping(ctx); err != nil {
			return "database unreachable: " + err.Error()
		}
		return ""
	}
	corruption := func(ctx context.Context) string {
		for _, a := range s.log.Alarms() {
			if pb.AlarmType(a.Type) == pb.AlarmType_CORRUPT {
				return "alarm CORRUPT"
			}
		}
		return ""
	}
	mux.HandleFunc("/livez", checks("livez", []check{{"serializable_read", read}}))
	mux.HandleFunc("/readyz", checks("readyz", []check{
		{"data_corruption", corruption},
		{"serializable_read", read},
		{"linearizable_read", read},
		{"non_learner", func(context.Context) string { return "" }},
	}))
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"etcdserver": Version, "etcdcluster": strings.Join(strings.Split(Version, ".")[:2], ".") + ".0"})
	})
	if metrics != nil {
		mux.Handle("/metrics", metrics)
	}
	return mux
}
