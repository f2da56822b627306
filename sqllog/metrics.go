package sqllog

import (
	"database/sql"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics with etcd's names where they mean the same, so that etcd's
// dashboards and alerts work unchanged, and shimd_* for what only shimd has.
var (
	rangeCounter = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd", Subsystem: "mvcc", Name: "range_total", Help: "Total number of ranges seen by this member."})
	putCounter = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd", Subsystem: "mvcc", Name: "put_total", Help: "Total number of puts seen by this member."})
	deleteCounter = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd", Subsystem: "mvcc", Name: "delete_total", Help: "Total number of deletes seen by this member."})
	txnCounter = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd", Subsystem: "mvcc", Name: "txn_total", Help: "Total number of txns seen by this member."})
	currentRevGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd_debugging", Subsystem: "mvcc", Name: "current_revision", Help: "The current revision of store."})
	compactRevGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd_debugging", Subsystem: "mvcc", Name: "compact_revision", Help: "The revision of the last compaction in store."})
	watcherGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd_debugging", Subsystem: "mvcc", Name: "watcher_total", Help: "Total number of watchers."})
	slowWatcherGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd_debugging", Subsystem: "mvcc", Name: "slow_watcher_total", Help: "Total number of unsynced slow watchers."})
	watchStreamGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "etcd_debugging", Subsystem: "mvcc", Name: "watch_stream_total", Help: "Total number of watch streams."})
	eventsCounter = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "etcd_debugging", Subsystem: "mvcc", Name: "events_total", Help: "Total number of events sent by this member."})
	commitSec = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "etcd", Subsystem: "disk", Name: "backend_commit_duration_seconds",
		Help:    "The latency distributions of commit called by backend (shimd: the SQL commit of a write batch).",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})

	statementSec = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "shimd", Subsystem: "sql", Name: "statement_duration_seconds",
		Help:    "Latency of shimd's SQL statements, by statement.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"statement"})
	batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "shimd", Subsystem: "log", Name: "write_batch_requests",
		Help:    "Write requests committed together in one database transaction (group commit).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	followerLag = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "shimd", Subsystem: "log", Name: "follower_lag_revisions",
		Help: "Revisions other processes had committed that this one had not yet applied, at the last poll."})
	polls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "shimd", Subsystem: "log", Name: "polls_total",
		Help: "Polls of a shared database for other processes' commits, by whether they found any."}, []string{"result"})
	conflictRetries = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "shimd", Subsystem: "log", Name: "write_conflict_retries_total",
		Help: "Write batches run again after the database rejected them for a conflict (Galera certification, deadlock)."})
	reloads = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "shimd", Subsystem: "log", Name: "index_rebuilds_total",
		Help: "Times this process fell behind a compaction of the shared log and rebuilt its index from the database."})
)

func init() {
	prometheus.MustRegister(rangeCounter, putCounter, deleteCounter, txnCounter, currentRevGauge, compactRevGauge,
		watcherGauge, slowWatcherGauge, watchStreamGauge, eventsCounter, commitSec, statementSec, batchSize, followerLag, polls, reloads, conflictRetries)
}

// observe records how long statement took since start.
func observe(statement string, start time.Time) {
	statementSec.WithLabelValues(statement).Observe(time.Since(start).Seconds())
}

// registerPool exports a connection pool's statistics (once per pool name).
func registerPool(db *sql.DB, name string) {
	err := prometheus.Register(collectors.NewDBStatsCollector(db, name))
	var already prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &already) {
		panic(err)
	}
}
