package auth

import (
	"bytes"
	"context"
	"encoding/base64"
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/crypto/bcrypt"

	"github.com/shimd/shimd/sqllog"
)

// The changes of the auth store, with etcd's rules and errors (its
// authStore's methods), each applied to the store as it is in the
// database under the auth row's lock. The caller has checked that the
// requester may (Checker.Admin).

// update runs change on the database and installs the result.
func (s *Store) update(ctx context.Context, change func(*sqllog.AuthData) (sqllog.AuthChange, error)) error {
	d, err := s.be.UpdateAuth(ctx, change)
	if d != nil {
		s.install(d)
	}
	return err
}

var bump = sqllog.AuthChange{Write: true, Bump: true}

// HashPassword is what etcd's API layer does with a new password before
// the request is applied: bcrypt at the configured cost, base64.
func (s *Store) HashPassword(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), s.cost)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(h), nil
}

func (s *Store) AuthEnable(ctx context.Context) error {
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if d.Enabled {
			return sqllog.AuthChange{}, nil
		}
		u := d.Users[rootUser]
		if u == nil {
			return sqllog.AuthChange{}, ErrRootUserNotExist
		}
		if i := sort.SearchStrings(u.Roles, rootRole); i == len(u.Roles) || u.Roles[i] != rootRole {
			return sqllog.AuthChange{}, ErrRootRoleNotExist
		}
		d.Enabled = true
		return sqllog.AuthChange{Write: true}, nil
	})
}

func (s *Store) AuthDisable(ctx context.Context) error {
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if !d.Enabled {
			return sqllog.AuthChange{}, nil
		}
		d.Enabled = false
		return sqllog.AuthChange{Write: true, Bump: true, DropAllTokens: true}, nil
	})
}

// Status returns whether auth is on and the auth revision.
func (s *Store) Status(ctx context.Context) (bool, uint64, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return false, 0, err
	}
	return m.enabled(), m.rev(), nil
}

// UserAdd adds a user; r.HashedPassword is set by HashPassword unless
// the user has no password.
func (s *Store) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) error {
	if r.Name == "" {
		return ErrUserEmpty
	}
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if d.Users[r.Name] != nil {
			return sqllog.AuthChange{}, ErrUserAlreadyExist
		}
		u := &sqllog.AuthUser{Name: r.Name, NoPassword: r.Options != nil && r.Options.NoPassword}
		if !u.NoPassword {
			pw, err := selectPassword(r.HashedPassword)
			if err != nil {
				return sqllog.AuthChange{}, ErrNoPasswordUser
			}
			u.Password = pw
		}
		d.Users[r.Name] = u
		return bump, nil
	})
}

func selectPassword(hashed string) ([]byte, error) {
	return base64.StdEncoding.DecodeString(hashed)
}

func (s *Store) UserDelete(ctx context.Context, name string) error {
	if s.current().enabled() && name == rootUser {
		return ErrInvalidAuthMgmt
	}
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if d.Enabled && name == rootUser {
			return sqllog.AuthChange{}, ErrInvalidAuthMgmt
		}
		if d.Users[name] == nil {
			return sqllog.AuthChange{}, ErrUserNotFound
		}
		delete(d.Users, name)
		c := bump
		c.DropTokensOf = []string{name}
		return c, nil
	})
}

// UserChangePassword sets a password; r.HashedPassword is set by
// HashPassword when r.Password is not empty.
func (s *Store) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) error {
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		u := d.Users[r.Name]
		if u == nil {
			return sqllog.AuthChange{}, ErrUserNotFound
		}
		nu := *u
		nu.Password = nil
		if !u.NoPassword {
			pw, err := selectPassword(r.HashedPassword)
			if err != nil {
				return sqllog.AuthChange{}, ErrNoPasswordUser
			}
			nu.Password = pw
		}
		d.Users[r.Name] = &nu
		c := bump
		c.DropTokensOf = []string{r.Name}
		return c, nil
	})
}

func (s *Store) UserGrantRole(ctx context.Context, user, role string) error {
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		u := d.Users[user]
		if u == nil {
			return sqllog.AuthChange{}, ErrUserNotFound
		}
		if role != rootRole && d.Roles[role] == nil {
			return sqllog.AuthChange{}, ErrRoleNotFound
		}
		i := sort.SearchStrings(u.Roles, role)
		if i < len(u.Roles) && u.Roles[i] == role {
			return sqllog.AuthChange{}, nil
		}
		nu := *u
		nu.Roles = append(append([]string{}, u.Roles...), role)
		sort.Strings(nu.Roles)
		d.Users[user] = &nu
		return bump, nil
	})
}

func (s *Store) UserRevokeRole(ctx context.Context, user, role string) error {
	if s.current().enabled() && user == rootUser && role == rootRole {
		return ErrInvalidAuthMgmt
	}
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if d.Enabled && user == rootUser && role == rootRole {
			return sqllog.AuthChange{}, ErrInvalidAuthMgmt
		}
		u := d.Users[user]
		if u == nil {
			return sqllog.AuthChange{}, ErrUserNotFound
		}
		nu := *u
		nu.Roles = nil
		for _, r := range u.Roles {
			if r != role {
				nu.Roles = append(nu.Roles, r)
			}
		}
		if len(nu.Roles) == len(u.Roles) {
			return sqllog.AuthChange{}, ErrRoleNotGranted
		}
		d.Users[user] = &nu
		return bump, nil
	})
}

// UserGet returns a user's roles.
func (s *Store) UserGet(ctx context.Context, name string) ([]string, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return nil, err
	}
	u := m.data.Users[name]
	if u == nil {
		return nil, ErrUserNotFound
	}
	return append([]string(nil), u.Roles...), nil
}

// UserList returns the users' names, sorted as etcd's keys are.
func (s *Store) UserList(ctx context.Context) ([]string, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(m.data.Users))
	for name := range m.data.Users {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

func (s *Store) RoleAdd(ctx context.Context, name string) error {
	if name == "" {
		return ErrRoleEmpty
	}
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if d.Roles[name] != nil {
			return sqllog.AuthChange{}, ErrRoleAlreadyExist
		}
		d.Roles[name] = &sqllog.AuthRole{Name: name}
		return bump, nil
	})
}

// RoleGet returns a role's permissions.
func (s *Store) RoleGet(ctx context.Context, name string) ([]*authpb.Permission, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return nil, err
	}
	r := m.data.Roles[name]
	if r == nil {
		return nil, ErrRoleNotFound
	}
	if name == rootRole {
		// What RoleGet shows for the root role: everything.
		return []*authpb.Permission{{PermType: authpb.Permission_READWRITE, Key: []byte{}, RangeEnd: []byte{0}}}, nil
	}
	return r.Perms, nil
}

func (s *Store) RoleList(ctx context.Context) ([]string, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(m.data.Roles))
	for name := range m.data.Roles {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

func (s *Store) RoleDelete(ctx context.Context, name string) error {
	if s.current().enabled() && name == rootRole {
		return ErrInvalidAuthMgmt
	}
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		if d.Enabled && name == rootRole {
			return sqllog.AuthChange{}, ErrInvalidAuthMgmt
		}
		if d.Roles[name] == nil {
			return sqllog.AuthChange{}, ErrRoleNotFound
		}
		delete(d.Roles, name)
		for un, u := range d.Users {
			var roles []string
			for _, r := range u.Roles {
				if r != name {
					roles = append(roles, r)
				}
			}
			if len(roles) != len(u.Roles) {
				nu := *u
				nu.Roles = roles
				d.Users[un] = &nu
			}
		}
		return bump, nil
	})
}

func (s *Store) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) error {
	if r.Perm == nil {
		return ErrPermissionNotGiven
	}
	if !validPermRange(r.Perm.Key, r.Perm.RangeEnd) {
		return ErrInvalidAuthMgmt
	}
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		role := d.Roles[r.Name]
		if role == nil {
			return sqllog.AuthChange{}, ErrRoleNotFound
		}
		perms := make([]*authpb.Permission, 0, len(role.Perms)+1)
		for _, p := range role.Perms {
			perms = append(perms, &authpb.Permission{Key: p.Key, RangeEnd: p.RangeEnd, PermType: p.PermType})
		}
		i := sort.Search(len(perms), func(i int) bool { return bytes.Compare(perms[i].Key, r.Perm.Key) >= 0 })
		if i < len(perms) && bytes.Equal(perms[i].Key, r.Perm.Key) && bytes.Equal(perms[i].RangeEnd, r.Perm.RangeEnd) {
			perms[i].PermType = r.Perm.PermType
		} else {
			perms = append(perms, &authpb.Permission{Key: r.Perm.Key, RangeEnd: r.Perm.RangeEnd, PermType: r.Perm.PermType})
			sort.SliceStable(perms, func(i, j int) bool { return bytes.Compare(perms[i].Key, perms[j].Key) < 0 })
		}
		d.Roles[r.Name] = &sqllog.AuthRole{Name: r.Name, Perms: perms}
		return bump, nil
	})
}

func (s *Store) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) error {
	return s.update(ctx, func(d *sqllog.AuthData) (sqllog.AuthChange, error) {
		role := d.Roles[r.Role]
		if role == nil {
			return sqllog.AuthChange{}, ErrRoleNotFound
		}
		var perms []*authpb.Permission
		for _, p := range role.Perms {
			if !bytes.Equal(p.Key, r.Key) || !bytes.Equal(p.RangeEnd, r.RangeEnd) {
				perms = append(perms, p)
			}
		}
		if len(perms) == len(role.Perms) {
			return sqllog.AuthChange{}, ErrPermissionNotGranted
		}
		d.Roles[r.Role] = &sqllog.AuthRole{Name: r.Role, Perms: perms}
		return bump, nil
	})
}
