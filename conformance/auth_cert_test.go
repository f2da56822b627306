package conformance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// TestAuthClientCert: with --client-cert-auth and auth on, a verified
// client certificate's common name is the user of a request without a
// token, as in etcd: root's certificate may do anything, app's what app's
// role grants, and a name that is no user is denied. On every backend.
func TestAuthClientCert(t *testing.T) {
	requireRobust(t)
	if harness.EnvBool(envSelfTest) {
		t.Skip("self-test mode: the etcd stand-in takes no TLS flags")
	}
	pki := newTestPKI(t)
	cert := func(cn string) *tls.Certificate {
		certPEM, keyPEM := pki.issue(t, pki.caCert, pki.caKey, cn, x509.ExtKeyUsageClientAuth, false)
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			authClientCert(t, pki, cert, newStore(t, b).Backend.Endpoint)
		})
	}
}

func authClientCert(t *testing.T, pki *testPKI, cert func(cn string) *tls.Certificate, endpoint string) {
	p := &robust.Proc{
		Bin: sutBin, DataDir: tempDir(t, "shimd"), Endpoint: endpoint, TLS: pki.tlsConfig(&pki.client),
		Extra: []string{"--cert-file", pki.certFile, "--key-file", pki.keyFile, "--trusted-ca-file", pki.caFile, "--client-cert-auth", "--bcrypt-cost", "4"},
	}
	if err := p.Start(); err != nil {
		t.Fatalf("start shimd with TLS: %v", err)
	}
	defer func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop: %v\n%s", err, p.Output())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := func(c *tls.Certificate) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL()}, TLS: pki.tlsConfig(c), DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	must := func(what string) func(any, error) {
		return func(_ any, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
	anon := client(&pki.client) // CN "shimd client": no such user
	must("UserAdd root")(anon.Auth.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true}))
	must("grant root")(anon.UserGrantRole(ctx, "root", "root"))
	must("RoleAdd app")(anon.RoleAdd(ctx, "app"))
	must("grant /app/")(anon.RoleGrantPermission(ctx, "app", "/app/", "/app0", clientv3.PermissionType(clientv3.PermReadWrite)))
	must("UserAdd app")(anon.Auth.UserAddWithOptions(ctx, "app", "", &clientv3.UserAddOptions{NoPassword: true}))
	must("grant app")(anon.UserGrantRole(ctx, "app", "app"))
	must("AuthEnable")(anon.AuthEnable(ctx))

	root, app := client(cert("root")), client(cert("app"))
	must("Put as root's certificate")(root.Put(ctx, "/other", "v"))
	must("Put /app/a as app's certificate")(app.Put(ctx, "/app/a", "v"))
	must("Get /app/a as app's certificate")(app.Get(ctx, "/app/a"))
	if _, err := app.Put(ctx, "/other", "v"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("Put /other as app's certificate: %v, want permission denied", err)
	}
	if _, err := anon.Get(ctx, "/app/a"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("Get as a certificate of no user: %v, want permission denied", err)
	}
	if _, err := app.UserList(ctx); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("UserList as app's certificate: %v, want permission denied", err)
	}
	must("UserList as root's certificate")(root.UserList(ctx))
	must("AuthDisable as root's certificate")(root.AuthDisable(ctx))
}
