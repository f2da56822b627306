package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// authServer is etcd's Auth service over the auth store (package auth).
// Each request resolves its caller's credentials first (an invalid token
// fails every RPC but Authenticate, as etcd's raft requests do), then the
// management RPCs need the root role, as etcd's authApplierV3 demands.
type authServer struct {
	pb.UnimplementedAuthServer
	s *Server
}

// admin checks a management request's caller.
func (a *authServer) admin(ctx context.Context) error { return a.s.admin(ctx) }

// done returns a response header, or the error as etcd sends it.
func (a *authServer) done(err error) (*pb.ResponseHeader, error) {
	if err != nil {
		return nil, toGRPC(err)
	}
	h := &pb.ResponseHeader{}
	a.s.fill(h)
	return h, nil
}

func (a *authServer) AuthEnable(ctx context.Context, r *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	if err := a.admin(ctx); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.AuthEnable(ctx))
	if err != nil {
		return nil, err
	}
	return &pb.AuthEnableResponse{Header: h}, nil
}

func (a *authServer) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	if err := a.admin(ctx); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.AuthDisable(ctx))
	if err != nil {
		return nil, err
	}
	return &pb.AuthDisableResponse{Header: h}, nil
}

func (a *authServer) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	if _, err := a.s.caller(ctx); err != nil {
		return nil, err
	}
	enabled, rev, err := a.s.auth.Status(ctx)
	h, err := a.done(err)
	if err != nil {
		return nil, err
	}
	return &pb.AuthStatusResponse{Header: h, Enabled: enabled, AuthRevision: rev}, nil
}

// Authenticate is linearizable, as etcd's: the process first catches up
// with the database, so a user added through another process is known.
func (a *authServer) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	if err := a.s.log.Barrier(ctx); err != nil {
		return nil, toGRPC(err)
	}
	token, err := a.s.auth.Authenticate(ctx, r.Name, r.Password, a.s.log.Rev())
	h, err := a.done(err)
	if err != nil {
		return nil, err
	}
	return &pb.AuthenticateResponse{Header: h, Token: token}, nil
}

func (a *authServer) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	req := &pb.AuthUserAddRequest{Name: r.Name, Options: r.Options, HashedPassword: r.HashedPassword}
	hash := r.Options == nil || !r.Options.NoPassword
	if err := a.hashedAdmin(ctx, r.Password, hash, &req.HashedPassword, &pb.InternalRaftRequest{AuthUserAdd: req}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.UserAdd(ctx, req))
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserAddResponse{Header: h}, nil
}

func (a *authServer) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	c, err := a.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Admin(); err != nil && r.Name != c.User() {
		return nil, toGRPC(err)
	}
	roles, err := a.s.auth.UserGet(ctx, r.Name)
	h, err := a.done(err)
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserGetResponse{Header: h, Roles: roles}, nil
}

func (a *authServer) UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	if err := a.admin(ctx); err != nil {
		return nil, err
	}
	users, err := a.s.auth.UserList(ctx)
	h, err := a.done(err)
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserListResponse{Header: h, Users: users}, nil
}

func (a *authServer) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	if err := a.admin(ctx); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.UserDelete(ctx, r.Name))
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserDeleteResponse{Header: h}, nil
}

func (a *authServer) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	req := &pb.AuthUserChangePasswordRequest{Name: r.Name, HashedPassword: r.HashedPassword}
	if err := a.hashedAdmin(ctx, r.Password, r.Password != "", &req.HashedPassword, &pb.InternalRaftRequest{AuthUserChangePassword: req}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.UserChangePassword(ctx, req))
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserChangePasswordResponse{Header: h}, nil
}

func (a *authServer) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	if err := a.sizedAdmin(ctx, &pb.InternalRaftRequest{AuthUserGrantRole: r}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.UserGrantRole(ctx, r.User, r.Role))
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserGrantRoleResponse{Header: h}, nil
}

func (a *authServer) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	if err := a.sizedAdmin(ctx, &pb.InternalRaftRequest{AuthUserRevokeRole: r}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.UserRevokeRole(ctx, r.Name, r.Role))
	if err != nil {
		return nil, err
	}
	return &pb.AuthUserRevokeRoleResponse{Header: h}, nil
}

// hashedAdmin is sizedAdmin for a request carrying a password: if hash is
// set, the password is hashed into *hashed first (raft holds the request
// hashed points into), as etcd hashes before any other check.
func (a *authServer) hashedAdmin(ctx context.Context, password string, hash bool, hashed *string, raft *pb.InternalRaftRequest) error {
	if hash {
		h, err := a.s.auth.HashPassword(password)
		if err != nil {
			return toGRPC(err)
		}
		*hashed = h
	}
	return a.sizedAdmin(ctx, raft)
}

// sizedAdmin is a management request's checks in etcd's order: the
// credentials, the request's size as a raft proposal, the root role.
func (a *authServer) sizedAdmin(ctx context.Context, req *pb.InternalRaftRequest) error {
	if _, err := a.s.caller(ctx); err != nil {
		return err
	}
	if err := checkSize(req, a.s.cfg.MaxRequestBytes); err != nil {
		return toGRPC(err)
	}
	return a.admin(ctx)
}
