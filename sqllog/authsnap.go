package sqllog

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"
	"google.golang.org/protobuf/proto"
)

// The auth store in snapshots, as etcd's snapshots hold its auth buckets:
// records 'A' (enabled, auth revision), 'U' a user (name, password hash,
// no-password flag, roles as JSON) and 'O' a role (name, permissions as
// etcd's authpb.Role), written before the end record. Snapshots of
// earlier versions have none, and restore to a fresh auth store.
// Simple tokens are not kept: they die with the process that restores.

// writeAuthRecords writes the auth store as read in tx.
func writeAuthRecords(ctx context.Context, st *store, tx *sql.Tx, rec *recordWriter) error {
	d, err := (&authTables{st: st}).read(ctx, tx, false)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	enabled := int64(0)
	if d.Enabled {
		enabled = 1
	}
	rec.begin('A')
	rec.int(enabled, d.Rev)
	for _, name := range sortedKeys(d.Users) {
		u := d.Users[name]
		roles, _ := json.Marshal(append([]string{}, u.Roles...))
		nopw := int64(0)
		if u.NoPassword {
			nopw = 1
		}
		rec.begin('U')
		rec.int(nopw)
		rec.bytes([]byte(name), u.Password, roles)
	}
	for _, name := range sortedKeys(d.Roles) {
		perms, err := proto.Marshal(&authpb.Role{KeyPermission: d.Roles[name].Perms})
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		rec.begin('O')
		rec.bytes([]byte(name), perms)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// authRestore collects a snapshot's auth records.
type authRestore struct {
	d    *AuthData
	seen bool
}

// record reads one auth record of type t; it reports false for a type
// that is not an auth record.
func (ar *authRestore) record(t byte, rd *recordReader) (bool, error) {
	if ar.d == nil {
		ar.d = &AuthData{Rev: 1, Users: map[string]*AuthUser{}, Roles: map[string]*AuthRole{}}
	}
	switch t {
	case 'A':
		ar.seen = true
		ar.d.Enabled, ar.d.Rev = rd.int() == 1, rd.int()
	case 'U':
		u := &AuthUser{NoPassword: rd.int() == 1}
		name, pw, roles := rd.bytes(), rd.bytes(), rd.bytes()
		u.Name, u.Password = string(name), append([]byte(nil), pw...)
		if err := json.Unmarshal(roles, &u.Roles); err != nil {
			return true, fmt.Errorf("snapshot: user roles: %w", err)
		}
		ar.d.Users[u.Name] = u
	case 'O':
		name, perms := rd.bytes(), rd.bytes()
		var r authpb.Role
		if err := proto.Unmarshal(perms, &r); err != nil {
			return true, fmt.Errorf("snapshot: role permissions: %w", err)
		}
		ar.d.Roles[string(name)] = &AuthRole{Name: string(name), Perms: r.KeyPermission}
	default:
		return false, nil
	}
	return true, nil
}

// apply writes the restored auth store in tx, over the fresh one.
func (ar *authRestore) apply(ctx context.Context, st *store, tx *sql.Tx) error {
	if !ar.seen {
		return nil
	}
	a := &authTables{st: st}
	before, err := a.read(ctx, tx, true)
	if err != nil {
		return err
	}
	return a.write(ctx, tx, before, ar.d, AuthChange{Write: true, DropAllTokens: true})
}
