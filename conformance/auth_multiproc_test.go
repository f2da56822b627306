package conformance

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"
)

// TestAuthMultiProcess: two shimd processes on one store (PostgreSQL,
// MariaDB). Every auth change made through A is seen by B at B's next
// request: a user added through A authenticates through B, a token issued
// by A works on B, a revoked permission is denied by B, a changed password
// kills A's tokens on B, and enabling or disabling auth through A applies
// to B's next read and write.
func TestAuthMultiProcess(t *testing.T) {
	requireRealSUT(t)
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			pa := startOn(t, st, "shimdA", "--bcrypt-cost", "4")
			pb_ := startOn(t, st, "shimdB", "--bcrypt-cost", "4")
			authMultiProcess(t, dialT(t, pa.Endpoint), dialT(t, pb_.Endpoint), pb_.Endpoint)
		})
	}
}

func authMultiProcess(t *testing.T, a, b *clientv3.Client, bEndpoint string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	want := func(what string, err, target error) {
		t.Helper()
		if errCode(err) != errCode(target) || rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(target) {
			t.Fatalf("%s: got %v, want %v", what, err, target)
		}
	}
	authA, authB := pb.NewAuthClient(a.ActiveConnection()), pb.NewAuthClient(b.ActiveConnection())
	kvB := pb.NewKVClient(b.ActiveConnection())
	with := func(tok string) context.Context { return metadata.AppendToOutgoingContext(ctx, "token", tok) }

	// Enabling auth through A: B's next anonymous read and write are refused.
	_, err := a.UserAdd(ctx, "root", "rootpw")
	must("UserAdd root on A", err)
	_, err = a.UserGrantRole(ctx, "root", "root")
	must("grant root on A", err)
	_, err = a.AuthEnable(ctx)
	must("AuthEnable on A", err)
	_, err = kvB.Range(ctx, &pb.RangeRequest{Key: []byte("x")})
	want("anonymous Range on B right after AuthEnable on A", err, rpctypes.ErrGRPCUserEmpty)
	_, err = kvB.Put(ctx, &pb.PutRequest{Key: []byte("x"), Value: []byte("v")})
	want("anonymous Put on B right after AuthEnable on A", err, rpctypes.ErrGRPCUserEmpty)

	// A user added through A authenticates through B at once, and a
	// token from A works on B.
	ra, err := authA.Authenticate(ctx, &pb.AuthenticateRequest{Name: "root", Password: "rootpw"})
	must("Authenticate root on A", err)
	rootA := ra.Token
	_, err = authA.RoleAdd(with(rootA), &pb.AuthRoleAddRequest{Name: "app"})
	must("RoleAdd on A", err)
	_, err = authA.RoleGrantPermission(with(rootA), &pb.AuthRoleGrantPermissionRequest{Name: "app",
		Perm: &authpb.Permission{PermType: authpb.Permission_READWRITE, Key: []byte("/app/"), RangeEnd: []byte("/app0")}})
	must("RoleGrantPermission on A", err)
	_, err = authA.UserAdd(with(rootA), &pb.AuthUserAddRequest{Name: "app", Password: "apppw"})
	must("UserAdd app on A", err)
	_, err = authA.UserGrantRole(with(rootA), &pb.AuthUserGrantRoleRequest{User: "app", Role: "app"})
	must("UserGrantRole on A", err)
	rb, err := authB.Authenticate(ctx, &pb.AuthenticateRequest{Name: "app", Password: "apppw"})
	must("Authenticate app on B, added through A", err)
	appB := rb.Token
	ra, err = authA.Authenticate(ctx, &pb.AuthenticateRequest{Name: "app", Password: "apppw"})
	must("Authenticate app on A", err)
	appA := ra.Token
	_, err = kvB.Put(with(appA), &pb.PutRequest{Key: []byte("/app/a"), Value: []byte("v")})
	must("Put on B with A's token", err)
	_, err = kvB.Range(with(appB), &pb.RangeRequest{Key: []byte("/app/a")})
	must("Range on B with B's token", err)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{bEndpoint}, Username: "app", Password: "apppw", DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	must("clientv3 with a user on B", err)
	defer cli.Close()
	_, err = cli.Get(ctx, "/app/a")
	must("clientv3 Get as app on B", err)

	// A permission revoked through A is denied by B on the next request.
	_, err = authA.RoleRevokePermission(with(rootA), &pb.AuthRoleRevokePermissionRequest{Role: "app", Key: []byte("/app/"), RangeEnd: []byte("/app0")})
	must("RoleRevokePermission on A", err)
	_, err = kvB.Put(with(appB), &pb.PutRequest{Key: []byte("/app/a"), Value: []byte("w")})
	want("Put on B after the revocation on A", err, rpctypes.ErrGRPCPermissionDenied)
	_, err = cli.Get(ctx, "/app/a")
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("clientv3 Get on B after the revocation on A: got %v, want permission denied", err)
	}

	// A changed password kills the user's tokens everywhere.
	_, err = authA.UserChangePassword(with(rootA), &pb.AuthUserChangePasswordRequest{Name: "app", Password: "new"})
	must("UserChangePassword on A", err)
	_, err = kvB.Range(with(appA), &pb.RangeRequest{Key: []byte("/app/a")})
	want("Range on B with A's token after a password change", err, rpctypes.ErrGRPCInvalidAuthToken)
	_, err = kvB.Range(with(appB), &pb.RangeRequest{Key: []byte("/app/a")})
	want("Range on B with B's token after a password change", err, rpctypes.ErrGRPCInvalidAuthToken)

	// Disabling auth through A: B's next anonymous write succeeds.
	_, err = authA.AuthDisable(with(rootA), &pb.AuthDisableRequest{})
	must("AuthDisable on A", err)
	_, err = kvB.Put(ctx, &pb.PutRequest{Key: []byte("x"), Value: []byte("v")})
	must("anonymous Put on B after AuthDisable on A", err)
	st, err := authB.AuthStatus(ctx, &pb.AuthStatusRequest{})
	must("AuthStatus on B", err)
	sa, err := authA.AuthStatus(ctx, &pb.AuthStatusRequest{})
	must("AuthStatus on A", err)
	if st.Enabled || st.AuthRevision != sa.AuthRevision {
		t.Fatalf("AuthStatus: B %v rev %d, A %v rev %d", st.Enabled, st.AuthRevision, sa.Enabled, sa.AuthRevision)
	}
}
