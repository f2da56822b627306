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

// The recovery is proved with margins measured on the store itself, not
// with a quota that happens to sit above what the backend takes: held is
// the store's size holding one value of the fill's key, which is what it
// holds again once compaction to the last revision and defragmentation are
// done. Before the fill the quota must leave room for held, quotaSlack and
// one more value; after the defragmentation the size must be at most held
// plus quotaSlack, so far under the quota that a value fits, whereas a
// defragmentation that gave back nothing leaves it at the quota.

const (
	// quotaSlack is what a defragmented store may take beyond held: the
	// files' allocation unit. InnoDB grows a file-per-table tablespace by
	// 1 MiB extents, and a rebuild lays pages out a little differently
	// from the writes that made them (measured on MariaDB 10.11: up to 3
	// pages more); SQLite and PostgreSQL grow by pages.
	quotaSlack = 1 << 20
	// quotaGuideBytes is the quota of the guide's example, for its 1 MiB
	// values (quotaBytes would leave one value of room on MariaDB, where
	// one 1 MiB value takes a 2 MiB file).
	quotaGuideBytes = 16 << 20
	quotaGuideValue = 1 << 20
)

// requireRecoveryRoom fails t unless quota leaves room, above held, for
// quotaSlack and one more value of value bytes.
func requireRecoveryRoom(t *testing.T, held, value, quota int64) {
	t.Helper()
	if need := held + quotaSlack + value; need >= quota {
		t.Fatalf("the %d byte quota leaves no room to prove the recovery: the store takes %d bytes holding one %d byte value, plus %d of slack and one more value is %d", quota, held, value, quotaSlack, need)
	}
}

// checkDefragmented fails t unless size, the store's size after compaction
// and defragmentation, is back to held give or take quotaSlack.
func checkDefragmented(t *testing.T, size, held, quota int64) {
	t.Helper()
	if size > held+quotaSlack {
		t.Errorf("dbSize %d after compaction and defragmentation, want at most %d (%d held with one value before the fill, plus %d of slack); quota %d", size, held+quotaSlack, held, quotaSlack, quota)
	}
}

// quotaRecoveryArgs are the shimd-only flags of the recovery tests on b.
func quotaRecoveryArgs(b harness.Backend) []string {
	if b.Kind == harness.KindPostgres {
		return maintShimdArgs("--postgres-vacuum-full")
	}
	return nil
}

// TestQuotaRecovery follows the guide through clientv3. The compaction is
// not physical, as with `etcdctl compact`, and the defragmentation follows
// at once: it must still give back the compacted rows.
func TestQuotaRecovery(t *testing.T) {
	requireSUT(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			srv := startShimd(t, b, harness.Options{QuotaBackendBytes: quotaBytes}, quotaRecoveryArgs(b)...)
			cli := srv.cli
			ctx := ctxT(t, 3*time.Minute)
			m := maint(srv)

			if _, err := cli.Put(ctx, "key", maintRandValue(newRand(2), quotaValue)); err != nil {
				t.Fatalf("first put: %v", err)
			}
			st1, err := m.Status(ctx, &pb.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			held := st1.DbSize
			requireRecoveryRoom(t, held, quotaValue, quotaBytes)

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
			t.Logf("%d more puts of %d KiB accepted (dbSize %d with one); Status: dbSize %d, dbSizeInUse %d, quota %d, errors %q, revision %d",
				n, quotaValue>>10, held, st.DbSize, st.DbSizeInUse, st.DbSizeQuota, st.Errors, st.Header.Revision)
			wantAlarm := fmt.Sprintf("memberID:%d alarm:NOSPACE", self)
			// protobuf-go's text format spaces fields by one or two, by binary.
			if len(st.Errors) != 1 || strings.Join(strings.Fields(st.Errors[0]), " ") != wantAlarm {
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
			if _, err := cli.Compact(ctx, rev); err != nil {
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
			checkDefragmented(t, st2.DbSize, held, quotaBytes)
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
			srv := startShimd(t, b, harness.Options{QuotaBackendBytes: quotaGuideBytes}, quotaRecoveryArgs(b)...)
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

			dbSize := func() int64 {
				t.Helper()
				js := must("endpoint", "status", "--write-out=json")
				m := regexp.MustCompile(`"dbSize":([0-9]+)`).FindStringSubmatch(js)
				if m == nil {
					t.Fatalf("no dbSize in %s", js)
				}
				size, _ := strconv.ParseInt(m[1], 10, 64)
				return size
			}

			r := newRand(5)
			if _, err := runCtl(t, ctl, ep, maintRandValue(r, quotaGuideValue), "put", "key"); err != nil {
				t.Fatalf("first put: %v", err)
			}
			held := dbSize()
			requireRecoveryRoom(t, held, quotaGuideValue, quotaGuideBytes)
			var failed string
			for i := 1; i < 100; i++ {
				// 1 MiB of /dev/urandom, as in the guide.
				_, err := runCtl(t, ctl, ep, maintRandValue(r, quotaGuideValue), "put", "key")
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
			if !regexp.MustCompile(`^memberID:[0-9]+ +alarm:NOSPACE\s*$`).MatchString(list) {
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
			checkDefragmented(t, dbSize(), held, quotaGuideBytes)
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
			// Room for another value of the fill, as the margins promise.
			if _, err := runCtl(t, ctl, ep, maintRandValue(r, quotaGuideValue), "put", "key2"); err != nil {
				t.Errorf("put of %d KiB after the recovery: %v", quotaGuideValue>>10, err)
			}
			// The history at the compaction revision is still readable.
			if _, err := run("", "get", "key", "--rev="+rev, "--print-value-only=false", "--keys-only"); err != nil {
				t.Errorf("get key --rev=%s after the recovery: %v", rev, err)
			}
		})
	}
}
