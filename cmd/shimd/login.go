package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// login authenticates to a server with auth enabled, as etcdctl's --user
// and --password do, and returns ctx carrying the token for every call
// made with it. user is "name" or "name:password"; password, when set,
// wins over the one in user. With no user, ctx is returned as it is.
func login(ctx context.Context, conn *grpc.ClientConn, user, password string) (context.Context, error) {
	if user == "" {
		if password != "" {
			return nil, errors.New("a password needs a user name")
		}
		return ctx, nil
	}
	name, pw, _ := strings.Cut(user, ":")
	if password != "" {
		pw = password
	}
	if name == "" {
		return nil, errors.New("the user name is empty")
	}
	resp, err := pb.NewAuthClient(conn).Authenticate(ctx, &pb.AuthenticateRequest{Name: name, Password: pw})
	if err != nil {
		// The error is the server's and never holds the password.
		return nil, fmt.Errorf("authenticate as %q: %s", name, rpctypes.ErrorDesc(err))
	}
	return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, resp.Token), nil
}
