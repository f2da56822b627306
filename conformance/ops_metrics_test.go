package conformance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestOpsMetrics checks /metrics after a known sequence of requests, on
// every backend, against shimd's own Status and against what an embedded
// etcd 3.7 reports for the same sequence.
//
// The sequence is chosen so that etcd's counters are unambiguous: etcd's mvcc
// layer also counts the reads a request makes internally (a txn compare is a
// range, a put with prev_kv or ignore_value reads the key first), so it uses
// none of those: plain puts, deletes of existing single keys, plain gets,
// and txns with no compare whose only branch is two puts (etcd counts a txn
// when a write transaction does more than one operation, and counts the
// puts inside it as puts).
func TestOpsMetrics(t *testing.T) {
	requireShimd(t, "metrics")
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			const quota = 123456789
			metricsURL := freeURL(t)
			srv := startShimd(t, b, harness.Options{QuotaBackendBytes: quota}, "--listen-metrics-urls", metricsURL)
			ref := startRef(t, harness.Options{})
			t.Cleanup(ref.stop)
			clientURL := srv.proc.Endpoint
			ctx := ctxT(t, 2*time.Minute)

			// The sequence, on both servers; the last response's revision.
			counted := []string{"etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_range_total", "etcd_mvcc_txn_total"}
			want := map[string]float64{"etcd_mvcc_put_total": 11, "etcd_mvcc_delete_total": 3, "etcd_mvcc_range_total": 5, "etcd_mvcc_txn_total": 2}
			rpcs := map[string]float64{"Put": 7, "DeleteRange": 3, "Range": 5, "Txn": 2}
			sequence := func(s *server) int64 {
				t.Helper()
				var last int64
				check := func(err error, what string) {
					t.Helper()
					if err != nil {
						t.Fatalf("%s: %s: %v", s.name, what, err)
					}
				}
				for i := 0; i < 7; i++ {
					r, err := s.cli.Put(ctx, fmt.Sprintf("ops/m/k%d", i%5), strings.Repeat("v", 100*i+1))
					check(err, "put")
					last = r.Header.Revision
				}
				for _, k := range []string{"ops/m/k0", "ops/m/k1", "ops/m/k2"} {
					r, err := s.cli.Delete(ctx, k)
					check(err, "delete "+k)
					last = r.Header.Revision
					if r.Deleted != 1 {
						t.Fatalf("%s: delete %s deleted %d keys", s.name, k, r.Deleted)
					}
				}
				gets := [][]clientv3.OpOption{nil, {clientv3.WithPrefix()}, {clientv3.WithSerializable()}, {clientv3.WithPrefix(), clientv3.WithCountOnly()}, {clientv3.WithPrefix(), clientv3.WithKeysOnly()}}
				for _, opts := range gets {
					r, err := s.cli.Get(ctx, "ops/m/k3", opts...)
					check(err, "get")
					last = r.Header.Revision
				}
				for i := 0; i < 2; i++ {
					r, err := s.cli.Txn(ctx).Then(clientv3.OpPut(fmt.Sprintf("ops/m/t%da", i), "x"), clientv3.OpPut(fmt.Sprintf("ops/m/t%db", i), "y")).Commit()
					check(err, "txn")
					last = r.Header.Revision
				}
				// A refused request: counted by gRPC code, not by mvcc.
				if _, err := s.kv.Put(ctx, &pb.PutRequest{}); err == nil {
					t.Fatalf("%s: put of an empty key succeeded", s.name)
				}
				return last
			}

			etcdURL := ref.cli.Endpoints()[0]
			eBefore, sBefore := mustScrape(t, etcdURL+"/metrics"), mustScrape(t, clientURL+"/metrics")
			sequence(ref)
			seqStart := time.Now()
			last := sequence(srv)
			seqTime := time.Since(seqStart)
			eAfter, sAfter := mustScrape(t, etcdURL+"/metrics"), mustScrape(t, clientURL+"/metrics")

			for _, name := range counted {
				got, etcd := sAfter[name]-sBefore[name], eAfter[name]-eBefore[name]
				if got != want[name] || etcd != want[name] {
					t.Errorf("%s rose by %v on shimd and %v on etcd, want %v", name, got, etcd, want[name])
				}
			}
			for method, n := range rpcs {
				for _, m := range []string{"grpc_server_started_total", "grpc_server_handled_total"} {
					labels, want := []string{"grpc_service", "etcdserverpb.KV", "grpc_method", method}, n
					if m == "grpc_server_handled_total" {
						labels = append(labels, "grpc_code", "OK")
					} else if method == "Put" {
						want++ // the refused put was started too
					}
					if got := sAfter.sum(m, labels...) - sBefore.sum(m, labels...); got != want {
						t.Errorf("%s{%s} rose by %v, want %v", m, strings.Join(labels, " "), got, want)
					}
				}
			}
			// etcd 3.7's request timings, by request type; the refused put is
			// refused before it is timed.
			for typ, n := range rpcs {
				const name = "etcd_server_request_duration_seconds_count"
				labels := []string{"type", typ, "success", "true"}
				if got, etcd := sAfter.sum(name, labels...)-sBefore.sum(name, labels...), eAfter.sum(name, labels...)-eBefore.sum(name, labels...); got != n || etcd != n {
					t.Errorf("%s{type=%q} rose by %v on shimd and %v on etcd, want %v", name, typ, got, etcd, n)
				}
			}
			inval := []string{"grpc_service", "etcdserverpb.KV", "grpc_method", "Put", "grpc_code", "InvalidArgument"}
			if got, etcd := sAfter.sum("grpc_server_handled_total", inval...)-sBefore.sum("grpc_server_handled_total", inval...),
				eAfter.sum("grpc_server_handled_total", inval...)-eBefore.sum("grpc_server_handled_total", inval...); got != 1 || etcd != 1 {
				t.Errorf("grpc_server_handled_total for the refused put (InvalidArgument) rose by %v on shimd, %v on etcd, want 1", got, etcd)
			}
			if got := sAfter.sum("grpc_server_handling_seconds_count", "grpc_method", "Put") - sBefore.sum("grpc_server_handling_seconds_count", "grpc_method", "Put"); got != 8 {
				t.Errorf("grpc_server_handling_seconds_count{Put} rose by %v, want 8", got)
			}

			// Group commit: 12 write requests, one at a time.
			if got := sAfter["shimd_log_write_batch_requests_sum"] - sBefore["shimd_log_write_batch_requests_sum"]; got != 12 {
				t.Errorf("shimd_log_write_batch_requests_sum rose by %v, want 12 (one per write request)", got)
			}
			if got := sAfter["etcd_disk_backend_commit_duration_seconds_count"] - sBefore["etcd_disk_backend_commit_duration_seconds_count"]; got < 1 || got > 12 {
				t.Errorf("etcd_disk_backend_commit_duration_seconds_count rose by %v, want 1..12 commits for 12 writes", got)
			}
			// PostgreSQL appends a batch in one statement, the others INSERT.
			inserts := 0.0
			for _, st := range []string{"insert", "append_batch"} {
				inserts += sAfter.sum("shimd_sql_statement_duration_seconds_count", "statement", st) - sBefore.sum("shimd_sql_statement_duration_seconds_count", "statement", st)
			}
			if inserts < 1 {
				t.Errorf("shimd_sql_statement_duration_seconds{statement=\"insert\" or \"append_batch\"} counted no appends")
			}
			if b.Kind == harness.KindPostgres {
				// One statement per batch, and this process's own NOTIFYs
				// wake no catch-up of the shared log.
				fast := sAfter.sum("shimd_sql_statement_duration_seconds_count", "statement", "append_batch") - sBefore.sum("shimd_sql_statement_duration_seconds_count", "statement", "append_batch")
				if fast < 1 {
					t.Errorf("PostgreSQL: no write batch took the one-statement append")
				}
				// Polls: one per linearizable read (5), the periodic ones
				// (every 100 ms) and a few stragglers, not one per write.
				if got, max := sAfter.sum("shimd_log_polls_total")-sBefore.sum("shimd_log_polls_total"), 5+float64(seqTime/(100*time.Millisecond))+3; got > max {
					t.Errorf("shimd_log_polls_total rose by %v in %v of this process's 12 writes (want <= %v): its own notifications woke catch-ups", got, seqTime, max)
				}
			}

			// Gauges.
			if got := sAfter["etcd_debugging_mvcc_current_revision"]; got != float64(last) {
				t.Errorf("etcd_debugging_mvcc_current_revision = %v, want %d (the last response's revision)", got, last)
			}
			if got := sAfter["etcd_server_quota_backend_bytes"]; got != quota {
				t.Errorf("etcd_server_quota_backend_bytes = %v, want %d (--quota-backend-bytes)", got, quota)
			}
			if got := sAfter["etcd_server_has_leader"]; got != 1 {
				t.Errorf("etcd_server_has_leader = %v, want 1", got)
			}
			m := maint(srv)
			// The size gauges are refreshed every second; Status measures now.
			waitFor(t, 15*time.Second, "db size gauges equal Status", func() (bool, string) {
				st, err := m.Status(ctx, &pb.StatusRequest{})
				if err != nil {
					return false, err.Error()
				}
				g := mustScrape(t, clientURL+"/metrics")
				size, inUse := g["etcd_mvcc_db_total_size_in_bytes"], g["etcd_mvcc_db_total_size_in_use_in_bytes"]
				state := fmt.Sprintf("gauges %v/%v, Status dbSize %d dbSizeInUse %d quota %d", size, inUse, st.DbSize, st.DbSizeInUse, st.DbSizeQuota)
				return size == float64(st.DbSize) && inUse == float64(st.DbSizeInUse) && st.DbSizeQuota == quota && st.DbSize > 0, state
			})

			// Compaction and watchers.
			if _, err := srv.cli.Compact(ctx, last-1); err != nil {
				t.Fatal(err)
			}
			if got := mustScrape(t, clientURL+"/metrics")["etcd_debugging_mvcc_compact_revision"]; got != float64(last-1) {
				t.Errorf("etcd_debugging_mvcc_compact_revision = %v after compacting at %d", got, last-1)
			}
			wctx, wcancel := context.WithCancel(ctx)
			wch := srv.cli.Watch(wctx, "ops/m/", clientv3.WithPrefix())
			if _, err := srv.cli.Put(ctx, "ops/m/watched", "1"); err != nil {
				t.Fatal(err)
			}
			<-wch
			waitFor(t, 10*time.Second, "the watch send loop timed the event's response", func() (bool, string) {
				got := mustScrape(t, clientURL+"/metrics")["etcd_debugging_server_watch_send_loop_watch_stream_duration_seconds_count"]
				return got >= 1, fmt.Sprintf("etcd_debugging_server_watch_send_loop_watch_stream_duration_seconds_count = %v", got)
			})
			waitFor(t, 10*time.Second, "one watcher and one watch stream counted", func() (bool, string) {
				g := mustScrape(t, clientURL+"/metrics")
				return g["etcd_debugging_mvcc_watcher_total"] == 1 && g["etcd_debugging_mvcc_watch_stream_total"] == 1,
					fmt.Sprintf("watcher_total %v, watch_stream_total %v", g["etcd_debugging_mvcc_watcher_total"], g["etcd_debugging_mvcc_watch_stream_total"])
			})
			wcancel()
			waitFor(t, 10*time.Second, "no watcher counted after the cancel", func() (bool, string) {
				g := mustScrape(t, clientURL+"/metrics")
				return g["etcd_debugging_mvcc_watcher_total"] == 0, fmt.Sprintf("watcher_total %v", g["etcd_debugging_mvcc_watcher_total"])
			})

			// Every documented family is exported, on the client URL and on
			// --listen-metrics-urls alike.
			families := []string{
				"etcd_mvcc_db_total_size_in_bytes", "etcd_mvcc_db_total_size_in_use_in_bytes", "etcd_server_quota_backend_bytes",
				"etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_range_total", "etcd_mvcc_txn_total",
				"etcd_debugging_mvcc_current_revision", "etcd_debugging_mvcc_compact_revision",
				"etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_slow_watcher_total", "etcd_debugging_mvcc_events_total",
				"etcd_disk_backend_commit_duration_seconds", "etcd_server_has_leader", "etcd_server_slow_apply_total",
				"grpc_server_started_total", "grpc_server_handled_total", "grpc_server_msg_received_total", "grpc_server_msg_sent_total",
				"grpc_server_handling_seconds", "etcd_server_request_duration_seconds",
				"etcd_debugging_server_watch_send_loop_watch_stream_duration_seconds", "etcd_debugging_server_watch_send_loop_control_stream_duration_seconds",
				"shimd_sql_statement_duration_seconds", "shimd_log_write_batch_requests", "shimd_log_follower_lag_revisions",
				"go_sql_open_connections", "go_sql_wait_count_total", "go_goroutines", "process_resident_memory_bytes",
			}
			if b.IsShared() {
				families = append(families, "shimd_log_polls_total")
			}
			client, side := mustScrape(t, clientURL+"/metrics"), mustScrape(t, metricsURL+"/metrics")
			for _, f := range families {
				if !client.has(f) {
					t.Errorf("%s/metrics has no %s", clientURL, f)
				}
				if !side.has(f) {
					t.Errorf("%s/metrics (--listen-metrics-urls) has no %s", metricsURL, f)
				}
			}
			for _, name := range append(counted, "etcd_server_quota_backend_bytes", "etcd_debugging_mvcc_current_revision") {
				if client[name] != side[name] {
					t.Errorf("%s is %v on the client URL but %v on --listen-metrics-urls", name, client[name], side[name])
				}
			}
			for _, pool := range []string{"shimd_read", "shimd_write"} {
				if _, ok := client[series("go_sql_max_open_connections", "db_name", pool)]; !ok {
					t.Errorf("no go_sql_max_open_connections{db_name=%q}", pool)
				}
			}
			if a := httpGet(metricsURL + "/health"); a.code != 200 || !strings.Contains(a.body, `"health":"true"`) {
				t.Errorf("GET %s/health (--listen-metrics-urls): %s", metricsURL, a)
			}
		})
	}
}
