package txn

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/sqllog"
)

// requestSec is etcd 3.7's etcd_server_request_duration_seconds: the time
// of each request the apply layer runs, by etcd's request type.
var requestSec = prometheus.NewHistogramVec(prometheus.HistogramOpts{
	Namespace: "etcd", Subsystem: "server", Name: "request_duration_seconds",
	Help:    "Response latency distribution in seconds for each type.",
	Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
}, []string{"type", "success"})

func init() { prometheus.MustRegister(requestSec) }

// observeRead records a read: successful if it answered.
func observeRead(typ string, start time.Time, err *error) {
	requestSec.WithLabelValues(typ, boolLabel(*err == nil)).Observe(time.Since(start).Seconds())
}

// ObserveWrite records a write as etcd does: successful unless it could not
// be proposed, here committed. Refusals by the request's own outcome (a
// missing lease or key, a compacted revision, an alarm) and a client that
// stopped waiting count as successful, as they do in etcd, where such
// requests went through raft.
func ObserveWrite(typ string, start time.Time, err *error) {
	e := *err
	ok := e == nil || errors.Is(e, context.Canceled) || errors.Is(e, context.DeadlineExceeded) ||
		errors.Is(e, sqllog.ErrCompacted) || errors.Is(e, sqllog.ErrFutureRev) ||
		errors.Is(e, ErrKeyNotFound) || errors.Is(e, ErrLeaseNotFound)
	if _, isStatus := status.FromError(e); isStatus && e != nil {
		ok = true // etcd's own errors (NOSPACE, CORRUPT, …)
	}
	requestSec.WithLabelValues(typ, boolLabel(ok)).Observe(time.Since(start).Seconds())
}

func boolLabel(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
