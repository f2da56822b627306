package sqllog

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
)

func TestAuthTables(t *testing.T) {
	l, path := openTemp(t)
	ctx := context.Background()
	d, err := l.LoadAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Enabled || d.Rev != 1 || len(d.Users) != 0 {
		t.Fatalf("fresh auth store: %+v", d)
	}
	d, err = l.UpdateAuth(ctx, func(d *AuthData) (AuthChange, error) {
		d.Users["root"] = &AuthUser{Name: "root", Password: []byte("hash"), Roles: []string{"root"}}
		d.Roles["r\x00ö"] = &AuthRole{Name: "r\x00ö", Perms: []*authpb.Permission{{Key: []byte("a"), RangeEnd: []byte("b"), PermType: authpb.Permission_READ}}}
		d.Enabled = true
		return AuthChange{Write: true, Bump: true}, nil
	})
	if err != nil || d.Rev != 2 || l.AuthGen() != 5 {
		t.Fatalf("update: %v %+v", err, d)
	}
	if err := l.PutToken(ctx, "old.5", "root", time.Now().Add(time.Minute), 1); !errors.Is(err, ErrAuthChanged) {
		t.Fatalf("token at an old revision: %v", err)
	}
	if err := l.PutToken(ctx, "tok.5", "root", time.Now().Add(time.Minute), 2); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = openAt(t, path)
	d, err = l.LoadAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u := d.Users["root"]
	r := d.Roles["r\x00ö"]
	if !d.Enabled || d.Rev != 2 || u == nil || string(u.Password) != "hash" || len(u.Roles) != 1 || r == nil || len(r.Perms) != 1 || string(r.Perms[0].RangeEnd) != "b" {
		t.Fatalf("reloaded: %+v %+v %+v", d, u, r)
	}
	user, _, ok, err := l.LookupToken(ctx, "tok.5")
	if err != nil || !ok || user != "root" {
		t.Fatalf("token: %q %v %v", user, ok, err)
	}
	_, err = l.UpdateAuth(ctx, func(d *AuthData) (AuthChange, error) {
		delete(d.Users, "root")
		return AuthChange{Write: true, Bump: true, DropTokensOf: []string{"root"}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := l.LookupToken(ctx, "tok.5"); ok {
		t.Fatal("token of a deleted user survived")
	}
	if d, _ := l.LoadAuth(ctx); d.Rev != 3 || len(d.Users) != 0 {
		t.Fatalf("after delete: %+v", d)
	}
}

func TestAuthSnapshot(t *testing.T) {
	l, _ := openTemp(t)
	ctx := context.Background()
	_, err := l.UpdateAuth(ctx, func(d *AuthData) (AuthChange, error) {
		d.Users["root"] = &AuthUser{Name: "root", Password: []byte("hash"), Roles: []string{"r", "root"}}
		d.Users["cert"] = &AuthUser{Name: "cert", NoPassword: true}
		d.Roles["r"] = &AuthRole{Name: "r", Perms: []*authpb.Permission{{Key: []byte("a"), RangeEnd: []byte("\x00"), PermType: authpb.Permission_WRITE}}}
		d.Enabled = true
		return AuthChange{Write: true, Bump: true}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "snap.db")
	if _, err := l.WriteSnapshotDB(ctx, path); err != nil {
		t.Fatal(err)
	}
	l2, _ := openTemp(t)
	if err := Restore(ctx, l2, path, RestoreOptions{SkipHashCheck: true}); err != nil {
		t.Fatal(err)
	}
	d, err := l2.LoadAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Enabled || d.Rev != 2 || len(d.Users) != 2 || !d.Users["cert"].NoPassword || string(d.Users["root"].Password) != "hash" ||
		len(d.Users["root"].Roles) != 2 || len(d.Roles["r"].Perms) != 1 || string(d.Roles["r"].Perms[0].RangeEnd) != "\x00" {
		t.Fatalf("restored auth store: %+v", d)
	}
}
