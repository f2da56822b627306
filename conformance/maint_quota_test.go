package conformance

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// The quota recovery procedure of etcd's maintenance guide
// (https://etcd.io/docs/v3.6/op-guide/maintenance/#space-quota), on every
// backend, with shimd alone: fill the store until "database space
// exceeded", see the NOSPACE alarm, compact to the current revision,
// defragment, disarm the alarm, and write again. PostgreSQL runs with
// --postgres-vacuum-full: a plain VACUUM makes the space reusable but gives
// little of it back, so the size would stay over the quota.

// quotaRecoveryArgs are the shimd-only flags of the recovery tests on b.
func quotaRecoveryArgs(b harness.Backend) []string {
	if b.Kind == harness.KindPostgres {
		return maintShimdArgs("--postgres-vacuum-full")
	}
	return nil
}

// TestQuotaRecovery follows the guide through clientv3.
func TestQuotaRecovery(t *testing.T) {
	requireSUT(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			srv := startShimd(t, b, harness.Options{QuotaBackendBytes: quotaBytes}, quotaRecoveryArgs(b)...)
			cli := srv.cli
			ctx := ctxT(t, 3*time.Minute)
			m := maint(srv)

			n, err := fillUntilNoSpace(ctx, cli, "key", quotaValue, quotaMax, 3)
			if err == nil {
				st, _ := m.Status(ctx, &pb.StatusRequest{})
				t.Fatalf("%d puts of %d KiB accepted with a %d byte quota, no NOSPACE (dbSize now %d)", n, quotaValue>>10, quotaBytes, st.GetDbSize())
			}
			if errCode(err) != errCode(rpctypes.ErrGRPCNoSpace) || rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCNoSpace) {
				t.Fatalf("put %d failed with %s, want %s", n+1, errString(err), errString(rpctypes.ErrGRPCNoSpace))
			}
			last, err := cli.Get(ctx, "key")
			if err != nil || len(last.Kvs) != 1 {
				t.Fatalf("get key after the fill: %v %v", last, err)
			}
			st, err := m.Status(ctx, &pb.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			self := st.Header.MemberId
			t.Logf("%d puts of %d KiB accepted; Status: dbSize %d, dbSizeInUse %d, quota %d, errors %q, revision %d",
				n, quotaValue>>10, st.DbSize, st.DbSizeInUse, st.DbSizeQuota, st.Errors, st.Header.Revision)
			wantAlarm := fmt.Sprintf("memberID:%d alarm:NOSPACE", self)
			if len(st.Errors) != 1 || strings.TrimSpace(st.Errors[0]) != wantAlarm {
				t.Errorf("Status errors = %q, want [%q]", st.Errors, wantAlarm)
			}
			if st.DbSizeQuota != quotaBytes {
				t.Errorf("Status dbSizeQuota = %d, want %d", st.DbSizeQuota, quotaBytes)
			}

			al, err := cli.AlarmList(ctx)
			if err != nil {
				t.Fatalf("alarm list: %v", err)
			}
			if len(al.Alarms) != 1 || al.Alarms[0].Alarm != pb.AlarmType_NOSPACE || al.Alarms[0].MemberID != self {
				t.Fatalf("alarm list = %v, want NOSPACE of member %#x", al.Alarms, self)
			}

			rev := st.Header.Revision
			if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
				t.Fatalf("compact %d: %v", rev, err)
			}
			start := time.Now()
			if _, err := cli.Defragment(ctx, srv.proc.Endpoint); err != nil {
				t.Fatalf("defragment: %v", err)
			}
			took := time.Since(start)
			st2, err := m.Status(ctx, &pb.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("after compact %d + defragment (%v): dbSize %d, dbSizeInUse %d", rev, took.Round(time.Millisecond), st2.DbSize, st2.DbSizeInUse)
			if st2.DbSize >= quotaBytes {
				t.Errorf("dbSize %d after compaction and defragmentation is still over the %d byte quota", st2.DbSize, quotaBytes)
			}
			// Still raised until disarmed.
			if _, err := cli.Put(ctx, "newkey", "123"); errCode(err) != errCode(rpctypes.ErrGRPCNoSpace) {
				t.Errorf("put before disarming: %v, want %v", err, rpctypes.ErrGRPCNoSpace)
			}

			dr, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{})
			if err != nil {
				t.Fatalf("alarm disarm: %v", err)
			}
			if len(dr.Alarms) != 1 || dr.Alarms[0].Alarm != pb.AlarmType_NOSPACE {
				t.Errorf("alarm disarm answered %v, want the NOSPACE alarm", dr.Alarms)
			}
			if al, err := cli.AlarmList(ctx); err != nil || len(al.Alarms) != 0 {
				t.Errorf("alarm list after disarm: %v %v, want none", al, err)
			}
			if _, err := cli.Put(ctx, "newkey", "123"); err != nil {
				t.Fatalf("put after recovery: %v%s", err, srv.crashInfo())
			}
			if _, err := cli.Put(ctx, "key", maintRandValue(newRand(4), quotaValue)); err != nil {
				t.Errorf("put of %d KiB after recovery: %v", quotaValue>>10, err)
			}
			g, err := cli.Get(ctx, "key", clientv3.WithRev(rev))
			if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != string(last.Kvs[0].Value) || g.Kvs[0].ModRevision != last.Kvs[0].ModRevision {
				t.Errorf("key at the compaction revision %d is not the last accepted value (mod %d): %v", rev, last.Kvs[0].ModRevision, err)
			}
			if st3, err := m.Status(ctx, &pb.StatusRequest{}); err != nil || len(st3.Errors) != 0 {
				t.Errorf("Status after recovery: errors %q, %v", st3.GetErrors(), err)
			}
		})
	}
}

// quotaRevisionRE is how the guide extracts the revision from
// `etcdctl endpoint status --write-out="json"`.
var quotaRevisionRE = regexp.MustCompile(`"revision":[0-9]*`)

// TestQuotaRecoveryEtcdctl follows the guide with a real etcdctl 3.6 and its
// exact commands:
//
//	while [ 1 ]; do dd if=/dev/urandom bs=1024 count=1024 | etcdctl put key || break; done
//	etcdctl --write-out=table endpoint status
//	etcdctl alarm list
//	rev=$(etcdctl endpoint status --write-out="json" | egrep -o '"revision":[0-9]*' | egrep -o '[0-9].*')
//	etcdctl compact $rev
//	etcdctl defrag
//	etcdctl alarm disarm
//	etcdctl put newkey 123
func TestQuotaRecoveryEtcdctl(t *testing.T) {
	requireSUT(t)
	ctl := etcdctl(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			srv := startShimd(t, b, harness.Options{QuotaBackendBytes: quotaBytes}, quotaRecoveryArgs(b)...)
			ep := srv.proc.Endpoint
			run := func(stdin string, args ...string) (string, error) {
				t.Helper()
				out, err := runCtl(t, ctl, ep, stdin, args...)
				t.Logf("$ etcdctl %s\n%s(exit: %v)", strings.Join(args, " "), clip(out, 2500), err)
				return out, err
			}
			must := func(args ...string) string {
				t.Helper()
				out, err := run("", args...)
				if err != nil {
					t.Fatalf("etcdctl %s: %v%s", strings.Join(args, " "), err, srv.crashInfo())
				}
				return out
			}

			r := newRand(5)
			var failed string
			for i := 0; i < 100; i++ {
				// 1 MiB of /dev/urandom, as in the guide.
				_, err := runCtl(t, ctl, ep, maintRandValue(r, 1<<20), "put", "key")
				if err != nil {
					failed = err.Error()
					t.Logf("put %d failed: %v", i+1, err)
					break
				}
			}
			if !strings.Contains(failed, "etcdserver: mvcc: database space exceeded") {
				t.Fatalf("the fill did not end with \"database space exceeded\" (last output %q)", failed)
			}

			table := must("--write-out=table", "endpoint", "status")
			if !strings.Contains(table, "alarm:NOSPACE") {
				t.Errorf("endpoint status table does not show the NOSPACE alarm")
			}
			list := must("alarm", "list")
			js := must("endpoint", "status", "--write-out=json")
			m := quotaRevisionRE.FindString(js)
			if m == "" {
				t.Fatalf("no \"revision\" in the endpoint status JSON: %s", js)
			}
			rev := strings.TrimPrefix(m, `"revision":`)
			if !regexp.MustCompile(`^memberID:[0-9]+ alarm:NOSPACE\s*$`).MatchString(list) {
				t.Errorf("alarm list = %q, want one NOSPACE alarm", list)
			}
			if id := regexp.MustCompile(`"member_id":([0-9]+)`).FindStringSubmatch(js); id == nil || !strings.Contains(list, "memberID:"+id[1]+" ") {
				t.Errorf("alarm list %q does not name the member of endpoint status (%v)", list, id)
			}

			if out := must("compact", rev); strings.TrimSpace(out) != "compacted revision "+rev {
				t.Errorf("compact answered %q", out)
			}
			if out := must("defrag"); !strings.Contains(out, "Finished defragmenting etcd member["+ep+"]") {
				t.Errorf("defrag answered %q", out)
			}
			if out := must("alarm", "disarm"); strings.TrimSpace(out) != strings.TrimSpace(list) {
				t.Errorf("alarm disarm answered %q, want the alarm it disarmed (%q)", out, list)
			}
			if out := must("put", "newkey", "123"); strings.TrimSpace(out) != "OK" {
				t.Errorf("put newkey answered %q", out)
			}
			if out := must("get", "newkey"); out != "newkey\n123\n" {
				t.Errorf("get newkey answered %q", out)
			}
			if out := must("alarm", "list"); out != "" {
				t.Errorf("alarm list after the recovery: %q", out)
			}
			js = must("endpoint", "status", "--write-out=json")
			if m := regexp.MustCompile(`"dbSize":([0-9]+)`).FindStringSubmatch(js); m == nil {
				t.Errorf("no dbSize in %s", js)
			} else if size, _ := strconv.ParseInt(m[1], 10, 64); size >= quotaBytes {
				t.Errorf("dbSize %d after the recovery is over the %d byte quota", size, quotaBytes)
			}
			// The history at the compaction revision is still readable.
			if _, err := run("", "get", "key", "--rev="+rev, "--print-value-only=false", "--keys-only"); err != nil {
				t.Errorf("get key --rev=%s after the recovery: %v", rev, err)
			}
		})
	}
}
