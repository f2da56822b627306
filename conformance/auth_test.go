package conformance

import (
	"context"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/conformance/harness"
)

// TestAuth compares etcd's Auth service and its enforcement: every RPC,
// the root rules, bad input, and each request kind's checks, with simple
// tokens. Both servers hash at bcrypt's minimum cost, for speed.
func TestAuth(t *testing.T) {
	forEachBackend(t, harness.Options{BcryptCost: 4}, func(s *suite) {
		s.run("management", authManagement)
		s.run("enforcement", authEnforcement)
	})
}

// authSetup adds root (with the root role) and enables auth, as root.
func authSetup(a *authScenario) {
	a.t.Helper()
	a.ok(a.auth("", "UserAdd root", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserAdd(ctx, &pb.AuthUserAddRequest{Name: "root", Password: "rootpw"})
	}))
	a.ok(a.auth("", "UserGrantRole root root", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: "root", Role: "root"})
	}))
	a.ok(a.auth("", "AuthEnable", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.AuthEnable(ctx, &pb.AuthEnableRequest{})
	}))
	a.ok(nil, a.login("root", "rootpw"))
}

// authTeardown disables auth and removes every user and role, so that the
// next scenario on the pair starts from a fresh auth store (but the auth
// revision, which both servers move alike).
func authTeardown(a *authScenario) {
	a.t.Helper()
	a.ok(a.auth("root", "AuthDisable", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.AuthDisable(ctx, &pb.AuthDisableRequest{})
	}))
	users, err := a.auth("", "UserList", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserList(ctx, &pb.AuthUserListRequest{})
	})
	a.ok(users, err)
	for _, u := range users.(*pb.AuthUserListResponse).Users {
		a.ok(a.auth("", "UserDelete "+u, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.UserDelete(ctx, &pb.AuthUserDeleteRequest{Name: u})
		}))
	}
	roles, err := a.auth("", "RoleList", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleList(ctx, &pb.AuthRoleListRequest{})
	})
	a.ok(roles, err)
	for _, r := range roles.(*pb.AuthRoleListResponse).Roles {
		a.ok(a.auth("", "RoleDelete "+r, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleDelete(ctx, &pb.AuthRoleDeleteRequest{Role: r})
		}))
	}
}

func authManagement(c *sc) {
	a := newAuthScenario(c)
	call := func(user, desc string, fn func(ctx context.Context, c pb.AuthClient) (any, error)) {
		a.t.Helper()
		a.auth(user, desc, fn) // errors are compared, not expected
	}
	status := func(user string) {
		a.t.Helper()
		call(user, "AuthStatus", func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.AuthStatus(ctx, &pb.AuthStatusRequest{})
		})
	}
	userAdd := func(user string, r *pb.AuthUserAddRequest) {
		a.t.Helper()
		call(user, "UserAdd "+truncate(r.Name, 20), func(ctx context.Context, c pb.AuthClient) (any, error) { return c.UserAdd(ctx, r) })
	}
	roleAdd := func(user, name string) {
		a.t.Helper()
		call(user, "RoleAdd "+truncate(name, 20), func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleAdd(ctx, &pb.AuthRoleAddRequest{Name: name})
		})
	}
	grant := func(user, role string, p *authpb.Permission) {
		a.t.Helper()
		call(user, "RoleGrantPermission "+role+" "+oneLine(p), func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleGrantPermission(ctx, &pb.AuthRoleGrantPermissionRequest{Name: role, Perm: p})
		})
	}
	revoke := func(user, role, key, end string) {
		a.t.Helper()
		call(user, "RoleRevokePermission "+role+" "+key+" "+end, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleRevokePermission(ctx, &pb.AuthRoleRevokePermissionRequest{Role: role, Key: []byte(key), RangeEnd: []byte(end)})
		})
	}
	grantRole := func(user, u, role string) {
		a.t.Helper()
		call(user, "UserGrantRole "+u+" "+role, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: u, Role: role})
		})
	}
	revokeRole := func(user, u, role string) {
		a.t.Helper()
		call(user, "UserRevokeRole "+u+" "+role, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.UserRevokeRole(ctx, &pb.AuthUserRevokeRoleRequest{Name: u, Role: role})
		})
	}
	userGet := func(user, name string) {
		a.t.Helper()
		call(user, "UserGet "+name, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.UserGet(ctx, &pb.AuthUserGetRequest{Name: name})
		})
	}
	roleGet := func(user, name string) {
		a.t.Helper()
		call(user, "RoleGet "+name, func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleGet(ctx, &pb.AuthRoleGetRequest{Role: name})
		})
	}
	lists := func(user string) {
		a.t.Helper()
		call(user, "UserList", func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.UserList(ctx, &pb.AuthUserListRequest{})
		})
		call(user, "RoleList", func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.RoleList(ctx, &pb.AuthRoleListRequest{})
		})
	}
	enable := func(user string) {
		a.t.Helper()
		call(user, "AuthEnable", func(ctx context.Context, c pb.AuthClient) (any, error) {
			return c.AuthEnable(ctx, &pb.AuthEnableRequest{})
		})
	}

	status("")
	lists("")
	// AuthEnable needs root, holding the root role.
	enable("")
	userAdd("", &pb.AuthUserAddRequest{Name: "root", Password: "rootpw"})
	enable("")
	status("")
	// Bad names: empty, long, unusual bytes; duplicates.
	userAdd("", &pb.AuthUserAddRequest{Name: "", Password: "x"})
	userAdd("", &pb.AuthUserAddRequest{Name: "root", Password: "again"})
	userAdd("", &pb.AuthUserAddRequest{Name: strings.Repeat("n", 4096), Password: "x"})
	userAdd("", &pb.AuthUserAddRequest{Name: strings.Repeat("big", 600<<10), Password: "x"})
	userAdd("", &pb.AuthUserAddRequest{Name: "ünï cødé\x00/", Password: "x"})
	userAdd("", &pb.AuthUserAddRequest{Name: "long-password", Password: strings.Repeat("p", 73)})
	userAdd("", &pb.AuthUserAddRequest{Name: "nopw", Options: &authpb.UserAddOptions{NoPassword: true}})
	userAdd("", &pb.AuthUserAddRequest{Name: "u1", Password: "pw1"})
	userAdd("", &pb.AuthUserAddRequest{Name: "u2", Password: "pw2", Options: &authpb.UserAddOptions{}})
	roleAdd("", "")
	roleAdd("", "r1")
	roleAdd("", "r1")
	roleAdd("", "r2")
	roleAdd("", strings.Repeat("r", 5000))
	roleGet("", "root")
	roleAdd("", "root")
	roleGet("", "root")
	roleGet("", "nope")
	lists("")
	userGet("", "u1")
	userGet("", "nope")
	// Permissions: missing, invalid ranges, kinds of ranges, updates.
	call("", "RoleGrantPermission no perm", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleGrantPermission(ctx, &pb.AuthRoleGrantPermissionRequest{Name: "r1"})
	})
	grant("", "r1", perm(authpb.Permission_READ, "", ""))
	grant("", "r1", perm(authpb.Permission_READ, "b", "a"))
	grant("", "r1", perm(authpb.Permission_READ, "a", "a"))
	grant("", "nope", perm(authpb.Permission_READ, "a", ""))
	grant("", "r1", perm(authpb.Permission_READWRITE, "/app/", "/app0"))
	grant("", "r1", perm(authpb.Permission_READ, "/ro/", "/ro0"))
	grant("", "r1", perm(authpb.Permission_WRITE, "/wo/", "/wo0"))
	grant("", "r1", perm(authpb.Permission_READ, "single", ""))
	grant("", "r1", perm(authpb.Permission_READ, "/open/", "\x00"))
	grant("", "r1", perm(authpb.Permission_WRITE, "/open/", "\x00"))
	grant("", "r1", perm(authpb.Permission_READ, "/app/", "/app0"))
	grant("", "r1", perm(authpb.Permission_READWRITE, "/app/", "/app0"))
	grant("", "r2", perm(authpb.Permission_READ, "a", "b"))
	grant("", "r2", perm(authpb.Permission_READ, "b", "c"))
	roleGet("", "r1")
	revoke("", "r1", "/ro/", "")
	revoke("", "r1", "never", "")
	revoke("", "nope", "a", "")
	revoke("", "r1", "/ro/", "/ro0")
	roleGet("", "r1")
	// Roles of users.
	grantRole("", "nope", "r1")
	grantRole("", "u1", "nope")
	grantRole("", "u1", "r1")
	grantRole("", "u1", "r1")
	grantRole("", "u1", "r2")
	grantRole("", "u2", "r2")
	userGet("", "u1")
	revokeRole("", "u2", "r1")
	revokeRole("", "nope", "r1")
	revokeRole("", "u2", "r2")
	call("", "RoleDelete r2", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleDelete(ctx, &pb.AuthRoleDeleteRequest{Role: "r2"})
	})
	call("", "RoleDelete nope", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleDelete(ctx, &pb.AuthRoleDeleteRequest{Role: "nope"})
	})
	userGet("", "u1")
	call("", "UserChangePassword nope", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserChangePassword(ctx, &pb.AuthUserChangePasswordRequest{Name: "nope", Password: "x"})
	})
	call("", "UserChangePassword nopw", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserChangePassword(ctx, &pb.AuthUserChangePasswordRequest{Name: "nopw", Password: "x"})
	})
	call("", "UserDelete nope", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserDelete(ctx, &pb.AuthUserDeleteRequest{Name: "nope"})
	})
	// Authentication is refused while auth is off.
	a.login("u1", "pw1")
	// The root user needs the root role (granted without the role).
	grantRole("", "root", "root")
	enable("")
	enable("root")
	status("")

	// With auth on: anonymous, bogus and non-root callers are refused.
	lists("")
	lists(bogusUser)
	status(bogusUser)
	a.login("root", "wrong")
	a.login("nobody", "x")
	a.login("nopw", "")
	a.login("nopw", "x")
	a.login("root", "rootpw")
	a.login("u1", "pw1")
	lists("u1")
	userGet("u1", "u1")
	userGet("u1", "root")
	roleGet("u1", "r1")
	roleGet("u1", "root")
	roleAdd("u1", "r3")
	userAdd("u1", &pb.AuthUserAddRequest{Name: "u3", Password: "x"})
	lists("root")
	status("root")
	// The root user, and its root role, cannot be removed while auth is on.
	call("root", "UserDelete root", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserDelete(ctx, &pb.AuthUserDeleteRequest{Name: "root"})
	})
	revokeRole("root", "root", "root")
	call("root", "RoleDelete root", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.RoleDelete(ctx, &pb.AuthRoleDeleteRequest{Role: "root"})
	})
	// A changed password or a deleted user invalidates tokens.
	call("root", "UserChangePassword u1", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserChangePassword(ctx, &pb.AuthUserChangePasswordRequest{Name: "u1", Password: "new"})
	})
	userGet("u1", "u1")
	a.login("u1", "pw1")
	a.login("u1", "new")
	userGet("u1", "u1")
	call("root", "UserDelete u1", func(ctx context.Context, c pb.AuthClient) (any, error) {
		return c.UserDelete(ctx, &pb.AuthUserDeleteRequest{Name: "u1"})
	})
	userGet("u1", "u1")
	status("root")
	authTeardown(a)
	status("")
}
