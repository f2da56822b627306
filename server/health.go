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

// healthLoop keeps the grpc.health.v1 status in step with Health.
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
		if ok {
			hasLeaderGauge.Set(1)
		} else {
			hasLeaderGauge.Set(0)
		}
		select {
		case <-ctx.Done():
			hs.Shutdown()
			return
		case <-t.C:
		}
	}
}

// HTTPHandler serves etcd's HTTP endpoints beside gRPC: /health (etcd's JSON),
// /livez and /readyz, /version and, if metrics is set, /metrics.
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
	// /livez asks only whether the database answers: a raised alarm needs an
	// operator, not a restart. /readyz also fails on alarms.
	check := func(name string, alarms bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var ok bool
			var reason string
			if alarms {
				ok, reason = s.Health(r.Context(), nil)
			} else {
				ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
				err := s.log.Ping(ctx)
				cancel()
				ok = err == nil
				if !ok {
					reason = "DATABASE UNREACHABLE: " + err.Error()
				}
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if !ok {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "[-]database failed: %s\n%s check failed\n", reason, name)
				return
			}
			if _, verbose := r.URL.Query()["verbose"]; verbose {
				fmt.Fprintf(w, "[+]database ok\n%s check passed\n", name)
				return
			}
			fmt.Fprint(w, "ok")
		}
	}
	mux.HandleFunc("/livez", check("livez", false))
	mux.HandleFunc("/readyz", check("readyz", true))
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"etcdserver": Version, "etcdcluster": strings.Join(strings.Split(Version, ".")[:2], ".") + ".0"})
	})
	if metrics != nil {
		mux.Handle("/metrics", metrics)
	}
	return mux
}
