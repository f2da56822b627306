package server

import (
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	dbSizeGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd", Subsystem: "mvcc", Name: "db_total_size_in_bytes",
		Help: "Total size of the underlying database physically allocated in bytes."})
	dbSizeInUseGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd", Subsystem: "mvcc", Name: "db_total_size_in_use_in_bytes",
		Help: "Total size of the underlying database logically in use in bytes."})
	quotaGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd", Subsystem: "server", Name: "quota_backend_bytes",
		Help: "Current backend storage quota size in bytes."})
	hasLeaderGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd", Subsystem: "server", Name: "has_leader",
		Help: "Whether or not a leader exists. 1 is existence, 0 is not (shimd: whether the database answers)."})
	slowRequests = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd", Subsystem: "server", Name: "slow_apply_total",
		Help: "The total number of slow apply requests (likely overloaded from slow disk)."})

	// The watch send loop's timings, as etcd 3.7's (per event divides by
	// the events, so a response without any observes +Inf, as etcd's does).
	watchSendSec         = sendLoopHistogram("watch_stream_duration_seconds", "The total duration in seconds of running through the send loop watch stream response all events.")
	watchSendPerEventSec = sendLoopHistogram("watch_stream_duration_per_event_seconds", "The average duration in seconds of running through the send loop watch stream response, per event.")
	watchSendControlSec  = sendLoopHistogram("control_stream_duration_seconds", "The total duration in seconds of running through the send loop control stream response.")
	watchSendProgressSec = sendLoopHistogram("progress_duration_seconds", "The total duration in seconds of running through the progress loop control stream response.")

	// grpcMetrics is the grpc_server_* family, from the maintained
	// go-grpc-middleware provider.
	grpcMetrics = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
)

func init() {
	prometheus.MustRegister(dbSizeGauge, dbSizeInUseGauge, quotaGauge, hasLeaderGauge, slowRequests, grpcMetrics,
		watchSendSec, watchSendPerEventSec, watchSendControlSec, watchSendProgressSec)
}

func sendLoopHistogram(name, help string) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "etcd_debugging", Subsystem: "server", Name: "watch_send_loop_" + name, Help: help,
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
}

// observeSend records the time a watch response with events took to send.
func observeSend(start time.Time, events int) {
	d := time.Since(start).Seconds()
	watchSendSec.Observe(d)
	watchSendPerEventSec.Observe(d / float64(events))
}
