package conformance

import (
	"context"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// authEnforcement compares the checks of every kind of request with auth
// on: anonymous, bogus token, a user with some permissions, root.
func authEnforcement(c *sc) {
	a := newAuthScenario(c)
	must := func(_ any, err error) { a.t.Helper(); a.ok(nil, err) }
	authSetup(a)
	must(a.auth("root", "RoleAdd app", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleAdd(ctx, &pb.AuthRoleAddRequest{Name: "app"})
	}))
	for _, p := range []*authpb.Permission{
		perm(authpb.Permission_READWRITE, "/app/", "/app0"),
		perm(authpb.Permission_READ, "/ro/", "/ro0"),
		perm(authpb.Permission_WRITE, "/wo/", "/wo0"),
		perm(authpb.Permission_READ, "one", ""),
		perm(authpb.Permission_READ, "m", "n"),
		perm(authpb.Permission_READ, "n", "o"),
	} {
		must(a.auth("root", "RoleGrantPermission app "+oneLine(p), func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleGrantPermission(ctx, &pb.AuthRoleGrantPermissionRequest{Name: "app", Perm: p})
		}))
	}
	must(a.auth("root", "UserAdd app", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "app", Password: "apppw"})
	}))
	must(a.auth("root", "UserGrantRole app app", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "app", Role: "app"})
	}))
	must(nil, a.login("app", "apppw"))

	// A bogus token is sent on a few requests only: clientv3's retry
	// interceptor (under the raw clients too) backs off for seconds on
	// ErrInvalidAuthToken, on both servers.
	users := []string{"", "app", "root"}
	putAs := func(key string, prevKV bool) {
		a.t.Helper()
		for _, u := range users {
			r := &pb.PutRequest{Key: []byte(key), Value: []byte("v"), PrevKv: prevKV}
			a.kv(u, "Put "+oneLine(r), func(ctx context.Context, c pb.KVClient) (any, error) { return c.Put(ctx, r) })
		}
	}
	getAs := func(key, end string) {
		a.t.Helper()
		for _, u := range users {
			r := rangeReq(key, end)
			a.kv(u, "Range "+oneLine(r), func(ctx context.Context, c pb.KVClient) (any, error) { return c.Range(ctx, r) })
			rs := rangeReq(key, end)
			rs.Serializable = true
			a.kv(u, "Range "+oneLine(rs), func(ctx context.Context, c pb.KVClient) (any, error) { return c.Range(ctx, rs) })
		}
	}
	delAs := func(key, end string, prevKV bool) {
		a.t.Helper()
		for _, u := range users {
			r := &pb.DeleteRangeRequest{Key: []byte(key), RangeEnd: []byte(end), PrevKv: prevKV}
			a.kv(u, "DeleteRange "+oneLine(r), func(ctx context.Context, c pb.KVClient) (any, error) { return c.DeleteRange(ctx, r) })
		}
	}
	txnAs := func(r *pb.TxnRequest) {
		a.t.Helper()
		for _, u := range users {
			a.kv(u, "Txn "+oneLine(r), func(ctx context.Context, c pb.KVClient) (any, error) { return c.Txn(ctx, r) })
		}
	}

	for _, u := range []string{bogusUser} {
		a.kv(u, "Put /app/a", func(ctx context.Context, c pb.KVClient) (any, error) {
			return c.Put(ctx, &pb.PutRequest{Key: []byte("/app/a"), Value: []byte("v")})
		})
		a.kv(u, "Range /app/a", func(ctx context.Context, c pb.KVClient) (any, error) { return c.Range(ctx, rangeReq("/app/a", "")) })
		a.watchCreate(u, &pb.WatchCreateRequest{Key: []byte("/app/a")})
		a.errOnly(u, "Status", func(ctx context.Context, s *server) error {
			_, err := pb.NewMaintenanceClient(s.cli.ActiveConnection()).Status(ctx, &pb.StatusRequest{})
			return err
		})
	}
	// Put: by key, prev_kv needs read too.
	putAs("/app/a", false)
	putAs("/app/b", true)
	putAs("/ro/a", false)
	putAs("/wo/a", false)
	putAs("/wo/b", true)
	putAs("/other", false)
	putAs("one", false)
	// Range: one key, ranges inside, across, and covered by two grants.
	getAs("/app/a", "")
	getAs("/app/", "/app0")
	getAs("/app/", "/app1")
	getAs("/app/", "\x00")
	getAs("/ro/a", "")
	getAs("/wo/a", "")
	getAs("one", "")
	getAs("one", "one\x00")
	getAs("m", "o")
	getAs("m", "p")
	getAs("\x00", "\x00")
	// DeleteRange: write, prev_kv needs read.
	delAs("/app/b", "", false)
	delAs("/wo/b", "", true)
	delAs("/wo/", "/wo0", false)
	delAs("/ro/a", "", false)
	// Txn: every compare, every op of both branches, nested txns.
	txnAs(&pb.TxnRequest{Compare: cmps(cmpVersion("/app/a", pb.Compare_GREATER, 0)), Success: ops(put("/app/c", "1")), Failure: ops(get("/app/a"))})
	txnAs(&pb.TxnRequest{Compare: cmps(cmpVersion("/other", pb.Compare_GREATER, 0)), Success: ops(put("/app/c", "1"))})
	txnAs(&pb.TxnRequest{Compare: cmps(cmpVersion("/app/a", pb.Compare_GREATER, 0)), Success: ops(put("/app/c", "1")), Failure: ops(put("/ro/x", "1"))})
	txnAs(&pb.TxnRequest{Success: ops(get("/ro/a"), get("/app/a"))})
	txnAs(&pb.TxnRequest{Success: ops(get("/wo/a"))})
	txnAs(&pb.TxnRequest{Success: ops(del("/app/", "/app0"))})
	txnAs(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Success: ops(put("/app/n", "1")), Failure: ops(put("/other", "1"))}))})
	txnAs(&pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Compare: cmps(cmpVersion("/ro/a", pb.Compare_EQUAL, 0)), Success: ops(put("/app/n", "2"))}))})
	// Compact is root's.
	for _, u := range users {
		a.kv(u, "Compact", func(ctx context.Context, c pb.KVClient) (any, error) {
			return c.Compact(ctx, &pb.CompactionRequest{Revision: 2})
		})
	}
	// Watch: checked when created.
	for _, u := range users {
		a.watchCreate(u, &pb.WatchCreateRequest{Key: []byte("/app/a")})
		a.watchCreate(u, &pb.WatchCreateRequest{Key: []byte("/other")})
		a.watchCreate(u, &pb.WatchCreateRequest{Key: []byte("/app/"), RangeEnd: []byte("/app0")})
	}
	// Leases: grant needs a user; revoke needs write on every key.
	for _, u := range users {
		a.do("LeaseGrant as "+u, func(ctx context.Context, s *server) (any, error) {
			return s.lease.LeaseGrant(a.as(ctx, s, u), &pb.LeaseGrantRequest{ID: 0x1000, TTL: 600})
		})
	}
	must(a.do("LeaseGrant 0x2000 as root", func(ctx context.Context, s *server) (any, error) {
		return s.lease.LeaseGrant(a.as(ctx, s, "root"), &pb.LeaseGrantRequest{ID: 0x2000, TTL: 600})
	}))
	must(a.kv("root", "Put /ro/l with lease", func(ctx context.Context, c pb.KVClient) (any, error) {
		return c.Put(ctx, &pb.PutRequest{Key: []byte("/ro/l"), Value: []byte("v"), Lease: 0x2000})
	}))
	a.kv("app", "Put /app/l with a lease on /ro/l", func(ctx context.Context, c pb.KVClient) (any, error) {
		return c.Put(ctx, &pb.PutRequest{Key: []byte("/app/l"), Value: []byte("v"), Lease: 0x2000})
	})
	for _, u := range users {
		a.do("LeaseRevoke 0x2000 as "+u, func(ctx context.Context, s *server) (any, error) {
			return s.lease.LeaseRevoke(a.as(ctx, s, u), &pb.LeaseRevokeRequest{ID: 0x2000})
		})
		a.do("LeaseTimeToLive 0x1000 as "+u, func(ctx context.Context, s *server) (any, error) {
			r, err := s.lease.LeaseTimeToLive(a.as(ctx, s, u), &pb.LeaseTimeToLiveRequest{ID: 0x1000})
			if r != nil {
				r.TTL = 0 // time passes differently
			}
			return r, err
		})
	}
	// Maintenance and cluster: compared by outcome only.
	mclient := func(s *server) pb.MaintenanceClient { return pb.NewMaintenanceClient(s.cli.ActiveConnection()) }
	for _, u := range users {
		a.errOnly(u, "Status", func(ctx context.Context, s *server) error {
			_, err := mclient(s).Status(ctx, &pb.StatusRequest{})
			return err
		})
		a.errOnly(u, "Alarm GET", func(ctx context.Context, s *server) error {
			_, err := mclient(s).Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_GET})
			return err
		})
		a.errOnly(u, "Alarm DEACTIVATE", func(ctx context.Context, s *server) error {
			_, err := mclient(s).Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, Alarm: pb.AlarmType_NOSPACE})
			return err
		})
		a.errOnly(u, "HashKV", func(ctx context.Context, s *server) error {
			_, err := mclient(s).HashKV(ctx, &pb.HashKVRequest{})
			return err
		})
		a.errOnly(u, "Defragment", func(ctx context.Context, s *server) error {
			_, err := mclient(s).Defragment(ctx, &pb.DefragmentRequest{})
			return err
		})
		a.errOnly(u, "MemberList", func(ctx context.Context, s *server) error {
			_, err := pb.NewClusterClient(s.cli.ActiveConnection()).MemberList(ctx, &pb.MemberListRequest{})
			return err
		})
	}
	// A revoked permission applies to the next request.
	must(a.auth("root", "RoleRevokePermission app /app/", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleRevokePermission(ctx, &pb.AuthRoleRevokePermissionRequest{Role: "app", Key: []byte("/app/"), RangeEnd: []byte("/app0")})
	}))
	getAs("/app/a", "")
	must(nil, a.login("app", "apppw"))
	getAs("/app/a", "")
	putAs("/app/a", false)
	authTeardown(a)
}
