package sqllog

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/authpb"
	"google.golang.org/protobuf/proto"
)

// AuthUser is a user of etcd's auth store: the bcrypt hash of its password
// (none with NoPassword) and its roles, sorted.
type AuthUser struct {
	Name       string
	Password   []byte
	NoPassword bool
	Roles      []string
}

// AuthRole is a role and its key permissions, sorted by key.
type AuthRole struct {
	Name  string
	Perms []*authpb.Permission
}

// AuthData is the whole auth store as of revision Rev.
type AuthData struct {
	Enabled bool
	Rev     int64
	Users   map[string]*AuthUser
	Roles   map[string]*AuthRole
}

// Gen is the auth generation of d: it moves with every change other
// processes must see, the revision and (etcd's AuthEnable does not move
// the revision) the enabled flag: 2 × revision + enabled.
func (d *AuthData) Gen() int64 {
	g := 2 * d.Rev
	if d.Enabled {
		g++
	}
	return g
}

// AuthChange tells UpdateAuth what a change did: whether to write it at
// all, whether it moves the auth revision (etcd's AuthEnable writes the
// flag without), and which simple tokens it invalidates.
type AuthChange struct {
	Write, Bump bool
	// DropTokensOf names users whose tokens die; DropAllTokens kills all.
	DropTokensOf  []string
	DropAllTokens bool
}

// authTables is the auth store's tables: users, roles, the enabled flag
// and the auth revision. Every change locks the auth row and moves the
// revision in the same transaction; rev is the revision this process last
// saw, as a generation (AuthData.Gen), from its own changes or from the
// meta row it reads at each barrier and poll (where the generation is read
// with it, so that noticing another process's change costs no extra round
// trip).
type authTables struct {
	st  *store
	gen atomic.Int64
}

// AuthGen is the auth generation (AuthData.Gen) this process last saw in
// the database.
func (a *authTables) AuthGen() int64 { return a.gen.Load() }

// SyncAuth reads the database's auth generation (one primary-key read) and
// records it: what a denied write checks before it answers, in case the
// denial came from an auth store another process has changed since.
func (a *authTables) SyncAuth(ctx context.Context) error {
	var gen int64
	if err := a.st.be.Read.QueryRowContext(ctx, `SELECT auth_gen FROM `+metaTable+` WHERE id = 1`).Scan(&gen); err != nil {
		return fmt.Errorf("read auth generation: %w", err)
	}
	a.saw(gen)
	return nil
}

// saw records an auth generation read from the database.
func (a *authTables) saw(gen int64) {
	for {
		cur := a.gen.Load()
		if gen <= cur || a.gen.CompareAndSwap(cur, gen) {
			return
		}
	}
}

type checkedAtKey struct{}

// CheckedAt returns ctx for a write whose permissions were checked against
// auth generation gen (AuthData.Gen, as AuthGen returned it). The log
// commits such a write only while the database's auth generation is still
// gen, in the same transaction, as etcd checks permissions in its apply
// loop; otherwise the write fails with ErrAuthStale. With auth off the
// generation still counts: auth switched on through another process stops
// a write that was let through without credentials.
func CheckedAt(ctx context.Context, gen int64) context.Context {
	return context.WithValue(ctx, checkedAtKey{}, gen)
}

// checkedAt is the generation CheckedAt gave ctx, 0 for none.
func checkedAt(ctx context.Context) int64 {
	gen, _ := ctx.Value(checkedAtKey{}).(int64)
	return gen
}

func nameHash(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64() >> 1)
}

// initAuth creates the auth row of a fresh store (or of one created before
// auth existed): disabled, revision 1, as etcd's new auth store.
func (a *authTables) initAuth(ctx context.Context) error {
	var n int
	if err := a.st.be.Write.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+authTable).Scan(&n); err != nil {
		return fmt.Errorf("read auth: %w", err)
	}
	if n > 0 {
		return nil
	}
	_, err := a.st.be.Write.ExecContext(ctx, a.st.q(`INSERT INTO `+authTable+` (id, enabled, rev) VALUES (1, ?, 1)`), false)
	if err != nil {
		// Another process starting at the same time got there first.
		if cerr := a.st.be.Write.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+authTable).Scan(&n); cerr == nil && n > 0 {
			return nil
		}
		return fmt.Errorf("init auth: %w", err)
	}
	return nil
}

// LoadAuth reads the whole auth store.
func (a *authTables) LoadAuth(ctx context.Context) (*AuthData, error) {
	tx, err := a.st.be.Dialect.BeginSnapshot(ctx, a.st.be.Read)
	if err != nil {
		return nil, fmt.Errorf("load auth: %w", err)
	}
	defer tx.Rollback()
	d, err := a.read(ctx, tx, false)
	if err != nil {
		return nil, err
	}
	a.saw(d.Gen())
	return d, tx.Commit()
}

// read reads the auth store in tx; with lock it locks the auth row until
// the transaction ends.
func (a *authTables) read(ctx context.Context, tx *sql.Tx, lock bool) (*AuthData, error) {
	d := &AuthData{Users: map[string]*AuthUser{}, Roles: map[string]*AuthRole{}}
	q := `SELECT enabled, rev FROM ` + authTable + ` WHERE id = 1`
	if lock {
		q += a.st.be.Dialect.ForUpdate()
	}
	if err := tx.QueryRowContext(ctx, q).Scan(&d.Enabled, &d.Rev); err != nil {
		return nil, fmt.Errorf("read auth: %w", err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT name, password, no_password, roles FROM `+authUserTable)
	if err != nil {
		return nil, fmt.Errorf("read auth users: %w", err)
	}
	for rows.Next() {
		var name, roles []byte
		u := &AuthUser{}
		if err := rows.Scan(&name, &u.Password, &u.NoPassword, &roles); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read auth users: %w", err)
		}
		u.Name = string(name)
		if err := json.Unmarshal(roles, &u.Roles); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read auth user roles: %w", err)
		}
		d.Users[u.Name] = u
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read auth users: %w", err)
	}
	rows, err = tx.QueryContext(ctx, `SELECT name, perms FROM `+authRoleTable)
	if err != nil {
		return nil, fmt.Errorf("read auth roles: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, perms []byte
		if err := rows.Scan(&name, &perms); err != nil {
			return nil, fmt.Errorf("read auth roles: %w", err)
		}
		var pr authpb.Role
		if err := proto.Unmarshal(perms, &pr); err != nil {
			return nil, fmt.Errorf("read auth role permissions: %w", err)
		}
		d.Roles[string(name)] = &AuthRole{Name: string(name), Perms: pr.KeyPermission}
	}
	return d, rows.Err()
}

// UpdateAuth applies change to the auth store as it is in the database,
// under the auth row's lock, and commits what it wrote with the auth
// revision moved by one when the change says so. It returns the store as
// committed (or as read, when change wrote nothing or failed).
func (a *authTables) UpdateAuth(ctx context.Context, change func(*AuthData) (AuthChange, error)) (*AuthData, error) {
	tx, err := a.st.be.Dialect.BeginWrite(ctx, a.st.be.Write)
	if err != nil {
		return nil, fmt.Errorf("begin auth change: %w", err)
	}
	defer tx.Rollback()
	before, err := a.read(ctx, tx, true)
	if err != nil {
		return nil, err
	}
	a.saw(before.Gen())
	after, err := a.read(ctx, tx, false) // a copy for change to modify
	if err != nil {
		return nil, err
	}
	c, err := change(after)
	if err != nil || !c.Write {
		return before, err
	}
	if c.Bump {
		after.Rev = before.Rev + 1
	}
	if err := a.write(ctx, tx, before, after, c); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit auth change: %w", err)
	}
	a.saw(after.Gen())
	return after, nil
}

// write stores the difference between before and after.
func (a *authTables) write(ctx context.Context, tx *sql.Tx, before, after *AuthData, c AuthChange) error {
	exec := func(q string, args ...any) error {
		if _, err := tx.ExecContext(ctx, a.st.q(q), args...); err != nil {
			return fmt.Errorf("write auth: %w", err)
		}
		return nil
	}
	if err := exec(`UPDATE `+authTable+` SET enabled = ?, rev = ? WHERE id = 1`, after.Enabled, after.Rev); err != nil {
		return err
	}
	// Under the meta row's lock: a write batch checked at the old
	// generation commits before this change or not at all.
	if err := exec(`UPDATE `+metaTable+` SET auth_gen = ? WHERE id = 1`, after.Gen()); err != nil {
		return err
	}
	for _, name := range changedNames(before.Users, after.Users, userEqual) {
		if err := exec(`DELETE FROM `+authUserTable+` WHERE name_hash = ? AND name = ?`, nameHash(name), []byte(name)); err != nil {
			return err
		}
		if u, ok := after.Users[name]; ok {
			roles, _ := json.Marshal(append([]string{}, u.Roles...))
			pw := u.Password
			if pw == nil {
				pw = []byte{}
			}
			if err := exec(`INSERT INTO `+authUserTable+` (name_hash, name, password, no_password, roles) VALUES (?, ?, ?, ?, ?)`,
				nameHash(name), []byte(name), pw, u.NoPassword, roles); err != nil {
				return err
			}
		}
	}
	for _, name := range changedNames(before.Roles, after.Roles, roleEqual) {
		if err := exec(`DELETE FROM `+authRoleTable+` WHERE name_hash = ? AND name = ?`, nameHash(name), []byte(name)); err != nil {
			return err
		}
		if r, ok := after.Roles[name]; ok {
			perms, err := proto.Marshal(&authpb.Role{KeyPermission: r.Perms})
			if err != nil {
				return fmt.Errorf("write auth role: %w", err)
			}
			if perms == nil {
				perms = []byte{}
			}
			if err := exec(`INSERT INTO `+authRoleTable+` (name_hash, name, perms) VALUES (?, ?, ?)`, nameHash(name), []byte(name), perms); err != nil {
				return err
			}
		}
	}
	if c.DropAllTokens {
		return exec(`DELETE FROM ` + authTokenTable)
	}
	for _, name := range c.DropTokensOf {
		if err := exec(`DELETE FROM `+authTokenTable+` WHERE user_name = ?`, []byte(name)); err != nil {
			return err
		}
	}
	return nil
}

// changedNames lists, sorted, the names added, removed or changed.
func changedNames[T any](before, after map[string]T, equal func(a, b T) bool) []string {
	var out []string
	for name, b := range before {
		if a, ok := after[name]; !ok || !equal(a, b) {
			out = append(out, name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func userEqual(a, b *AuthUser) bool {
	if a.Name != b.Name || string(a.Password) != string(b.Password) || a.NoPassword != b.NoPassword || len(a.Roles) != len(b.Roles) {
		return false
	}
	for i := range a.Roles {
		if a.Roles[i] != b.Roles[i] {
			return false
		}
	}
	return true
}

func roleEqual(a, b *AuthRole) bool {
	if len(a.Perms) != len(b.Perms) {
		return false
	}
	for i := range a.Perms {
		if !proto.Equal(a.Perms[i], b.Perms[i]) {
			return false
		}
	}
	return true
}
