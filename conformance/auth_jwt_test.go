package conformance

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/shimd/shimd/conformance/harness"
)

// TestAuthJWT compares JWT tokens (--auth-token jwt,...; both servers get
// the same RSA key): they work on every request, and once the auth
// revision moves, a token issued before fails with ErrAuthOldRevision.
func TestAuthJWT(t *testing.T) {
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	privFile, pubFile := filepath.Join(dir, "jwt.key"), filepath.Join(dir, "jwt.pub")
	if err := os.WriteFile(privFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		t.Fatal(err)
	}
	o := harness.Options{BcryptCost: 4, AuthToken: "jwt,pub-key=" + pubFile + ",priv-key=" + privFile + ",sign-method=RS256"}
	forEachBackend(t, o, func(s *suite) {
		s.run("jwt", func(c *sc) {
			a := newAuthScenario(c)
			authSetup(a)
			rng := func(user string) {
				a.t.Helper()
				a.kv(user, "Range a", func(ctx context.Context, c pb.KVClient) (any, error) { return c.Range(ctx, rangeReq("a", "")) })
			}
			rng("root")
			a.ok(a.auth("root", "RoleAdd r", func(ctx context.Context, c pb.AuthClient) (any, error) {
				return c.RoleAdd(ctx, &pb.AuthRoleAddRequest{Name: "r"})
			}))
			// The token predates the revision RoleAdd moved to.
			rng("root")
			a.auth("root", "UserList", func(ctx context.Context, c pb.AuthClient) (any, error) {
				return c.UserList(ctx, &pb.AuthUserListRequest{})
			})
			a.ok(nil, a.login("root", "rootpw"))
			rng("root")
			authTeardown(a)
		})
	})
}
