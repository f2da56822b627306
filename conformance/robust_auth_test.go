package conformance

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/credentials"

	"github.com/shimd/shimd/conformance/robust"
)

// tokenCreds sends a token with every request and stream.
type tokenCreds string

func (c tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"token": string(c)}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return false }

// robustEnableAuth adds root with the root role, enables auth through p
// and returns credentials carrying a token of root's.
func robustEnableAuth(t *testing.T, p *robust.Proc) credentials.PerRPCCredentials {
	t.Helper()
	conn := robustDialTLS(t, p.Addr(), nil)
	a := pb.NewAuthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "root", Password: "rootpw"}); err != nil {
		t.Fatalf("UserAdd root: %v", err)
	}
	if _, err := a.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"}); err != nil {
		t.Fatalf("UserGrantRole root root: %v", err)
	}
	if _, err := a.AuthEnable(ctx, &pb.AuthEnableRequest{}); err != nil {
		t.Fatalf("AuthEnable: %v", err)
	}
	resp, err := a.Authenticate(ctx, &pb.AuthenticateRequest{Name: "root", Password: "rootpw"})
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	return tokenCreds(resp.Token)
}
