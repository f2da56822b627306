package auth

import (
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"

	"github.com/shimd/shimd/sqllog"
)

// model is one auth revision of the store, immutable once built: the data
// as read from the database, and each user's merged permissions.
type model struct {
	data  *sqllog.AuthData
	perms map[string]*userPerms
}

func newModel(d *sqllog.AuthData) *model {
	m := &model{data: d, perms: make(map[string]*userPerms, len(d.Users))}
	for name, u := range d.Users {
		p := &userPerms{}
		for _, rn := range u.Roles {
			r := d.Roles[rn]
			if r == nil {
				continue
			}
			for _, perm := range r.Perms {
				iv := permInterval(perm)
				switch perm.PermType {
				case authpb.Permission_READWRITE:
					p.read = append(p.read, iv)
					p.write = append(p.write, iv)
				case authpb.Permission_READ:
					p.read = append(p.read, iv)
				case authpb.Permission_WRITE:
					p.write = append(p.write, iv)
				}
			}
		}
		p.read.sorted()
		p.write.sorted()
		m.perms[name] = p
	}
	return m
}

func (m *model) enabled() bool { return m.data.Enabled }
func (m *model) rev() uint64   { return uint64(m.data.Rev) }

// hasRole reports whether user exists and holds role.
func (m *model) hasRole(user, role string) bool {
	u := m.data.Users[user]
	if u == nil {
		return false
	}
	i := sort.SearchStrings(u.Roles, role)
	return i < len(u.Roles) && u.Roles[i] == role
}
