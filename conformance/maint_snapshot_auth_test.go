package conformance

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/shimd/shimd/conformance/harness"
)

// TestSnapshotAuth: a snapshot carries the auth store in etcd's auth
// buckets, both ways. Users, roles and permissions set up on etcd survive
// `shimd snapshot restore` (the users log in with their passwords, whose
// bcrypt hashes are in the file), and those set up on shimd survive
// `etcdutl snapshot restore` into etcd: on both, auth stays enabled, the
// auth revision is the original's, a user reads what its role grants and is
// denied the rest, and an anonymous request is refused.
func TestSnapshotAuth(t *testing.T) {
	requireShimd(t, "snapshots with the auth store")
	utl := etcdutl(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			t.Run("etcd-to-shimd", func(t *testing.T) {
				ref := startRef(t, harness.Options{})
				t.Cleanup(ref.stop)
				rev := snapAuthSetup(t, ref)
				file := snapSaveAs(t, ref)
				snapAuthCheck(t, snapRestoreShimd(t, b, file), rev)
			})
			t.Run("shimd-to-etcd", func(t *testing.T) {
				orig := startShimd(t, b, harness.Options{})
				rev := snapAuthSetup(t, orig)
				file := snapSaveAs(t, orig)
				snapAuthCheck(t, snapRestoreEtcd(t, utl, file), rev)
			})
		})
	}
}

// snapAuthSetup gives s a root user, a user "app" whose role reads and
// writes /app/, a key inside and one outside, and enables auth; it returns
// the auth revision.
func snapAuthSetup(t *testing.T, s *server) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	steps := []struct {
		desc string
		fn   func() error
	}{
		{"put /app/a", func() error { _, err := s.cli.Put(ctx, "/app/a", "in"); return err }},
		{"put /other", func() error { _, err := s.cli.Put(ctx, "/other", "out"); return err }},
		{"UserAdd root", func() error { _, err := s.cli.UserAdd(ctx, "root", "rootpw"); return err }},
		{"UserGrantRole root", func() error { _, err := s.cli.UserGrantRole(ctx, "root", "root"); return err }},
		{"RoleAdd app", func() error { _, err := s.cli.RoleAdd(ctx, "app"); return err }},
		{"RoleGrantPermission app", func() error {
			_, err := s.cli.RoleGrantPermission(ctx, "app", "/app/", "/app0", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"UserAdd app", func() error { _, err := s.cli.UserAdd(ctx, "app", "apppw"); return err }},
		{"UserGrantRole app", func() error { _, err := s.cli.UserGrantRole(ctx, "app", "app"); return err }},
		{"AuthEnable", func() error { _, err := s.cli.AuthEnable(ctx); return err }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			t.Fatalf("%s: %s: %v", s.name, st.desc, err)
		}
	}
	root := userClient(t, s, "root", "rootpw")
	st, err := root.AuthStatus(ctx)
	if err != nil {
		t.Fatalf("%s: AuthStatus: %v", s.name, err)
	}
	return st.AuthRevision
}

// snapSaveAs saves a snapshot of s as root.
func snapSaveAs(t *testing.T, s *server) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := userClient(t, s, "root", "rootpw").Snapshot(ctx)
	if err != nil {
		t.Fatalf("%s: Snapshot as root: %v", s.name, err)
	}
	defer rc.Close()
	file := filepath.Join(t.TempDir(), "snap.db")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatalf("%s: reading the snapshot: %v", s.name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return file
}

func snapAuthCheck(t *testing.T, s *server, wantRev uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.cli.Get(ctx, "/app/a"); !errors.Is(err, rpctypes.ErrUserEmpty) {
		t.Errorf("%s: anonymous Get after the restore: %v, want %v", s.name, err, rpctypes.ErrUserEmpty)
	}
	root := userClient(t, s, "root", "rootpw")
	st, err := root.AuthStatus(ctx)
	if err != nil {
		t.Fatalf("%s: AuthStatus as root: %v", s.name, err)
	}
	if !st.Enabled || st.AuthRevision != wantRev {
		t.Errorf("%s: AuthStatus enabled %v revision %d, want enabled, revision %d", s.name, st.Enabled, st.AuthRevision, wantRev)
	}
	users, err := root.UserList(ctx)
	if err != nil {
		t.Fatalf("%s: UserList: %v", s.name, err)
	}
	if !slices.Equal(users.Users, []string{"app", "root"}) {
		t.Errorf("%s: users %q, want [app root]", s.name, users.Users)
	}
	app := userClient(t, s, "app", "apppw")
	if r, err := app.Get(ctx, "/app/a"); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "in" {
		t.Errorf("%s: Get /app/a as app: %v %v", s.name, r, err)
	}
	if _, err := app.Put(ctx, "/app/b", "new"); err != nil {
		t.Errorf("%s: Put /app/b as app: %v", s.name, err)
	}
	if _, err := app.Get(ctx, "/other"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("%s: Get /other as app: %v, want %v", s.name, err, rpctypes.ErrPermissionDenied)
	}
	if _, err := clientv3.New(clientv3.Config{Endpoints: s.cli.Endpoints(), Username: "app", Password: "wrong", DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("%s: log in with a wrong password: %v, want %v", s.name, err, rpctypes.ErrAuthFailed)
	}
}

// userClient is a client of s logged in as user.
func userClient(t *testing.T, s *server, user, password string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.cli.Endpoints(), Username: user, Password: password, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("%s: log in as %s: %v", s.name, user, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
