package server

import (
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

	// grpcMetrics is the grpc_server_* family, from the maintained
	// go-grpc-middleware provider.
	grpcMetrics = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
)

func init() {
	prometheus.MustRegister(dbSizeGauge, dbSizeInUseGauge, quotaGauge, hasLeaderGauge, slowRequests, grpcMetrics)
}
