package sqllog

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/authpb"
	"google.golang.org/protobuf/proto"
)

// The auth store in snapshots, in etcd's auth buckets: "auth" holds the
// enabled flag (one byte, 1 or 0) and the auth revision (8 bytes,
// big-endian), "authUsers" each user as a marshalled authpb.User (the
// password as its bcrypt hash, as etcd keeps it) and "authRoles" each role
// as an authpb.Role. Simple tokens are not kept: they die with the store
// that issued them, as etcd's do with its process.

// writeAuthBuckets writes the auth store as read in tx into btx.
func writeAuthBuckets(ctx context.Context, st *store, tx *sql.Tx, btx *bolt.Tx) error {
	d, err := (&authTables{st: st}).read(ctx, tx, false)
	if err != nil {
		return err
	}
	enabled := []byte{0}
	if d.Enabled {
		enabled = []byte{1}
	}
	a := btx.Bucket(bucketAuth)
	if err := a.Put(authEnabledKey, enabled); err != nil {
		return err
	}
	if err := a.Put(authRevisionKey, u64(d.Rev)); err != nil {
		return err
	}
	for name, u := range d.Users {
		pu := &authpb.User{Name: []byte(name), Password: u.Password, Roles: u.Roles}
		if u.NoPassword {
			pu.Options = &authpb.UserAddOptions{NoPassword: true}
		}
		if err := putProto(btx.Bucket(bucketAuthUsers), []byte(name), pu); err != nil {
			return err
		}
	}
	for name, r := range d.Roles {
		if err := putProto(btx.Bucket(bucketAuthRoles), []byte(name), &authpb.Role{Name: []byte(name), KeyPermission: r.Perms}); err != nil {
			return err
		}
	}
	return nil
}

func putProto(b *bolt.Bucket, key []byte, m proto.Message) error {
	v, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put(key, v)
}

// readAuthBuckets reads the auth store of an etcd snapshot; ok is false if
// it has none (or only etcd's defaults: disabled, nobody, revision 0 or 1).
func readAuthBuckets(btx *bolt.Tx) (d *AuthData, ok bool, err error) {
	d = &AuthData{Rev: 1, Users: map[string]*AuthUser{}, Roles: map[string]*AuthRole{}}
	if a := btx.Bucket(bucketAuth); a != nil {
		d.Enabled = bytes.Equal(a.Get(authEnabledKey), []byte{1})
		if v := a.Get(authRevisionKey); len(v) == 8 {
			d.Rev = max(int64(binary.BigEndian.Uint64(v)), 1)
		}
	}
	if b := btx.Bucket(bucketAuthUsers); b != nil {
		err = b.ForEach(func(k, v []byte) error {
			var pu authpb.User
			if err := proto.Unmarshal(v, &pu); err != nil {
				return fmt.Errorf("user %q: %w", k, err)
			}
			d.Users[string(k)] = &AuthUser{Name: string(k), Password: pu.Password, NoPassword: pu.Options != nil && pu.Options.NoPassword, Roles: pu.Roles}
			return nil
		})
	}
	if b := btx.Bucket(bucketAuthRoles); b != nil && err == nil {
		err = b.ForEach(func(k, v []byte) error {
			var pr authpb.Role
			if err := proto.Unmarshal(v, &pr); err != nil {
				return fmt.Errorf("role %q: %w", k, err)
			}
			d.Roles[string(k)] = &AuthRole{Name: string(k), Perms: pr.KeyPermission}
			return nil
		})
	}
	if err != nil {
		return nil, false, fmt.Errorf("auth: %w", err)
	}
	return d, d.Enabled || d.Rev > 1 || len(d.Users) > 0 || len(d.Roles) > 0, nil
}

// restoreAuth writes d in tx over the fresh auth store.
func restoreAuth(ctx context.Context, st *store, tx *sql.Tx, d *AuthData) error {
	a := &authTables{st: st}
	before, err := a.read(ctx, tx, true)
	if err != nil {
		return err
	}
	return a.write(ctx, tx, before, d, AuthChange{Write: true, DropAllTokens: true})
}
