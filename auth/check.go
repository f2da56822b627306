package auth

// Checker answers the permission checks of one request against one auth
// revision of the store. A nil Checker is auth switched off: everything
// is permitted. Info is nil for a request without credentials.
type Checker struct {
	m    *model
	Info *Info
}

// Rev is the auth revision the checker judges by.
func (c *Checker) Rev() uint64 { return c.m.rev() }

// op is etcd's isOpPermitted.
func (c *Checker) op(key, end []byte, write bool) error {
	if c == nil {
		return nil
	}
	if c.Info == nil || c.Info.Revision == 0 {
		return ErrUserEmpty
	}
	if c.Info.Revision < c.m.rev() {
		return ErrAuthOldRevision
	}
	if c.m.data.Users[c.Info.Username] == nil {
		return ErrPermissionDenied
	}
	if c.m.hasRole(c.Info.Username, rootRole) {
		return nil
	}
	if p := c.m.perms[c.Info.Username]; p != nil && p.allowed(key, end, write) {
		return nil
	}
	return ErrPermissionDenied
}

// Range checks read permission on [key, end) (one key without end).
func (c *Checker) Range(key, end []byte) error { return c.op(key, end, false) }

// Put checks write permission on key.
func (c *Checker) Put(key []byte) error { return c.op(key, nil, true) }

// Delete checks write permission on [key, end).
func (c *Checker) Delete(key, end []byte) error { return c.op(key, end, true) }

// Admin is etcd's IsAdminPermitted: the caller holds the root role.
func (c *Checker) Admin() error {
	if c == nil {
		return nil
	}
	if c.Info == nil || c.Info.Username == "" {
		return ErrUserEmpty
	}
	if c.m.data.Users[c.Info.Username] == nil {
		return ErrUserNotFound
	}
	if !c.m.hasRole(c.Info.Username, rootRole) {
		return ErrPermissionDenied
	}
	return nil
}

// RequireUser is etcd's requireAuthInfo: some credentials are given.
func (c *Checker) RequireUser() error {
	if c != nil && c.Info == nil {
		return ErrUserEmpty
	}
	return nil
}

// HasRole reports whether the caller holds role.
func (c *Checker) HasRole(role string) bool {
	return c != nil && c.Info != nil && c.m.hasRole(c.Info.Username, role)
}

// User is the caller's user name, "" without credentials.
func (c *Checker) User() string {
	if c == nil || c.Info == nil {
		return ""
	}
	return c.Info.Username
}
