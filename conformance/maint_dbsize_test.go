package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// TestDBSizeDefrag: Status.dbSize is the space the store takes on disk. A
// history of 200 keys × 20 revisions of 4 KiB values (16 MiB, 95 %
// superseded) is written, compacted to the current revision and
// defragmented: dbSize must fall, and dbSizeInUse never exceed dbSize.
//
// PostgreSQL runs twice: with --postgres-vacuum-full (VACUUM FULL rewrites
// the tables: dbSize must fall) and with the default plain VACUUM, which
// only makes the space reusable (returning just empty trailing pages, and
// adding free-space and visibility maps). There dbSize need not fall, but
// writing the same history again must reuse the space: dbSize may grow by
// at most a quarter of the first growth.
func TestDBSizeDefrag(t *testing.T) {
	requireSUT(t)
	for _, b := range harness.Backends() {
		type variant struct {
			name     string
			args     []string
			mustFall bool
		}
		vs := []variant{{b.Name, nil, true}}
		if b.Kind == harness.KindPostgres {
			vs = []variant{{b.Name + "/vacuum-full", maintShimdArgs("--postgres-vacuum-full"), true}, {b.Name + "/vacuum", nil, maintSelfTest()}}
		}
		for _, v := range vs {
			t.Run(v.name, func(t *testing.T) {
				needBackend(t, b)
				srv := startShimd(t, b, harness.Options{}, v.args...)
				maintDBSizeDefrag(t, srv, v.mustFall)
			})
		}
	}
}

const (
	dbsKeys    = 200
	dbsRounds  = 20
	dbsValue   = 4 << 10
	dbsPerTxn  = 100
	dbsTimeout = 5 * time.Minute
)

func maintDBSizeDefrag(t *testing.T, srv *server, mustFall bool) {
	ctx := ctxT(t, dbsTimeout)
	m := maint(srv)
	status := func(when string) *pb.StatusResponse {
		t.Helper()
		st, err := m.Status(ctx, &pb.StatusRequest{})
		if err != nil {
			t.Fatalf("Status %s: %v%s", when, err, srv.crashInfo())
		}
		t.Logf("%-28s dbSize %9d  dbSizeInUse %9d  revision %d", when+":", st.DbSize, st.DbSizeInUse, st.Header.Revision)
		if st.DbSizeInUse > st.DbSize {
			t.Errorf("%s: dbSizeInUse %d > dbSize %d", when, st.DbSizeInUse, st.DbSize)
		}
		return st
	}
	empty := status("empty")

	r := newRand(7)
	write := func() {
		t.Helper()
		for round := 0; round < dbsRounds; round++ {
			for k := 0; k < dbsKeys; k += dbsPerTxn {
				var puts []clientv3.Op
				for i := k; i < k+dbsPerTxn && i < dbsKeys; i++ {
					puts = append(puts, clientv3.OpPut(fmt.Sprintf("dbs/%03d", i), maintRandValue(r, dbsValue)))
				}
				if _, err := srv.cli.Txn(ctx).Then(puts...).Commit(); err != nil {
					t.Fatalf("round %d: txn: %v%s", round, err, srv.crashInfo())
				}
			}
		}
	}
	write()
	written := status("after the writes")
	if want := int64(dbsKeys * dbsRounds * dbsValue); written.DbSize < want {
		t.Errorf("dbSize %d after writing %d bytes of incompressible values: too small to be the space on disk", written.DbSize, want)
	}

	rev := written.Header.Revision
	if _, err := srv.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact %d: %v", rev, err)
	}
	compacted := status("after the compaction")
	if compacted.DbSizeInUse >= written.DbSizeInUse {
		t.Errorf("dbSizeInUse did not fall with the compaction: %d, then %d", written.DbSizeInUse, compacted.DbSizeInUse)
	}

	start := time.Now()
	if _, err := srv.cli.Defragment(ctx, srv.proc.Endpoint); err != nil {
		t.Fatalf("defragment: %v%s", err, srv.crashInfo())
	}
	t.Logf("defragment took %v", time.Since(start).Round(time.Millisecond))
	defragged := status("after the defragmentation")
	if mustFall && defragged.DbSize >= written.DbSize {
		t.Errorf("dbSize did not fall: %d before, %d after compaction and defragmentation", written.DbSize, defragged.DbSize)
	}
	if mustFall {
		// What is left is 200 live values of 4 KiB (800 KiB) and the empty
		// store: allow for the database's own overhead.
		if limit := empty.DbSize + 4*int64(dbsKeys*dbsValue); defragged.DbSize > limit {
			t.Errorf("dbSize %d after defragmentation: more than %d (empty store %d + 4 × the live data)", defragged.DbSize, limit, empty.DbSize)
		}
	}
	// The data is intact.
	g, err := srv.cli.Get(context.Background(), "dbs/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Errorf("count after the defragmentation: %v", err)
	} else if g.Count != dbsKeys {
		t.Errorf("after the defragmentation: %d keys, want %d", g.Count, dbsKeys)
	}
	// Wait for a background re-measurement: it must agree.
	time.Sleep(1200 * time.Millisecond)
	later := status("a second later")
	if mustFall && later.DbSize > defragged.DbSize*2 {
		t.Errorf("dbSize went from %d right after the defragmentation to %d a second later", defragged.DbSize, later.DbSize)
	}
	if mustFall {
		return
	}
	// The space is reusable: the same history again takes little more.
	write()
	again := status("after writing it again")
	if grew, first := again.DbSize-defragged.DbSize, written.DbSize-empty.DbSize; grew > first/4 {
		t.Errorf("writing the history again grew dbSize by %d bytes (the first time: %d): the defragmented space was not reused", grew, first)
	}
}
