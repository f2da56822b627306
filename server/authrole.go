package server

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// The Auth service's role RPCs.

func (a *authServer) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	if err := a.sizedAdmin(ctx, &pb.InternalRaftRequest{AuthRoleAdd: r}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.RoleAdd(ctx, r.Name))
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleAddResponse{Header: h}, nil
}

func (a *authServer) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	c, err := a.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.Admin(); err != nil && !c.HasRole(r.Role) {
		return nil, toGRPC(err)
	}
	perms, err := a.s.auth.RoleGet(ctx, r.Role)
	h, err := a.done(err)
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleGetResponse{Header: h, Perm: perms}, nil
}

func (a *authServer) RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	if err := a.admin(ctx); err != nil {
		return nil, err
	}
	roles, err := a.s.auth.RoleList(ctx)
	h, err := a.done(err)
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleListResponse{Header: h, Roles: roles}, nil
}

func (a *authServer) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	if err := a.sizedAdmin(ctx, &pb.InternalRaftRequest{AuthRoleDelete: r}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.RoleDelete(ctx, r.Role))
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleDeleteResponse{Header: h}, nil
}

func (a *authServer) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	if err := a.sizedAdmin(ctx, &pb.InternalRaftRequest{AuthRoleGrantPermission: r}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.RoleGrantPermission(ctx, r))
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleGrantPermissionResponse{Header: h}, nil
}

func (a *authServer) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	if err := a.sizedAdmin(ctx, &pb.InternalRaftRequest{AuthRoleRevokePermission: r}); err != nil {
		return nil, err
	}
	h, err := a.done(a.s.auth.RoleRevokePermission(ctx, r))
	if err != nil {
		return nil, err
	}
	return &pb.AuthRoleRevokePermissionResponse{Header: h}, nil
}
