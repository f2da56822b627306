package conformance

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/shimd/shimd/conformance/harness"
	"github.com/shimd/shimd/conformance/robust"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	dir                       string
	caFile, certFile, keyFile string
	clientCert, clientKey     string
	pool                      *x509.CertPool
	client                    tls.Certificate
	caCert                    *x509.Certificate
	caKey                     *ecdsa.PrivateKey
	serialSeq                 int64
	otherClient               tls.Certificate // signed by another CA
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	var caPEM []byte
	p.caCert, p.caKey, caPEM = pkiCA(t, "shimd robust test CA")
	p.caFile = p.write(t, "ca.pem", caPEM)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.caCert)
	certPEM, keyPEM := p.issue(t, p.caCert, p.caKey, "shimd server", x509.ExtKeyUsageServerAuth, true)
	p.certFile, p.keyFile = p.write(t, "server.pem", certPEM), p.write(t, "server-key.pem", keyPEM)
	certPEM, keyPEM = p.issue(t, p.caCert, p.caKey, "shimd client", x509.ExtKeyUsageClientAuth, false)
	p.clientCert, p.clientKey = p.write(t, "client.pem", certPEM), p.write(t, "client-key.pem", keyPEM)
	var err error
	if p.client, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	otherCA, otherKey, _ := pkiCA(t, "another CA")
	certPEM, keyPEM = p.issue(t, otherCA, otherKey, "rogue client", x509.ExtKeyUsageClientAuth, false)
	if p.otherClient, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return p
}

func pkiCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func (p *testPKI) issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serialSeq++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + p.serialSeq), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if server {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

func (p *testPKI) write(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tlsConfig is a client configuration trusting the CA, with cert as the
// client certificate (none if nil).
func (p *testPKI) tlsConfig(cert *tls.Certificate) *tls.Config {
	tc := &tls.Config{RootCAs: p.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return tc
}

// TestRobustMTLS starts shimd on https with --client-cert-auth: a clientv3
// client with a client certificate of the trusted CA works; without a
// certificate, or with one of another CA, it is refused; plaintext gRPC and
// HTTP to the https port are refused; /health over https with the client
// certificate answers healthy, and without one is refused.
func TestRobustMTLS(t *testing.T) {
	requireRobust(t)
	if harness.EnvBool(envSelfTest) {
		t.Skip("self-test mode: the etcd stand-in takes no TLS flags")
	}
	pki := newTestPKI(t)
	p := &robust.Proc{
		Bin: sutBin, DataDir: tempDir(t, "shimd"), TLS: pki.tlsConfig(&pki.client),
		Extra: []string{"--cert-file", pki.certFile, "--key-file", pki.keyFile, "--trusted-ca-file", pki.caFile, "--client-cert-auth"},
	}
	if err := p.Start(); err != nil {
		t.Fatalf("start shimd with TLS: %v", err)
	}
	defer func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop: %v\n%s", err, p.Output())
		}
	}()
	t.Logf("shimd on %s", p.URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	newClient := func(tc *tls.Config) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.URL()}, TLS: tc, DialTimeout: 3 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	// With the client certificate.
	cli := newClient(pki.tlsConfig(&pki.client))
	if cli == nil {
		t.Fatal("clientv3 with a client certificate could not be created")
	}
	if _, err := cli.Put(ctx, "tls/k", "v"); err != nil {
		t.Fatalf("put with a client certificate: %v", err)
	}
	if g, err := cli.Get(ctx, "tls/k"); err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "v" {
		t.Fatalf("get with a client certificate: %v %v", g, err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	wch := cli.Watch(wctx, "tls/", clientv3.WithPrefix(), clientv3.WithRev(1))
	select {
	case wr := <-wch:
		if len(wr.Events) != 1 {
			t.Errorf("watch over mTLS: %+v", wr)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("watch over mTLS: nothing in 10 s")
	}
	wcancel()

	refused := func(what string, op func(ctx context.Context) error) {
		t.Helper()
		octx, ocancel := context.WithTimeout(ctx, 3*time.Second)
		defer ocancel()
		if err := op(octx); err == nil {
			t.Errorf("%s: accepted, want refused", what)
		} else {
			t.Logf("%s: refused: %v", what, shortErr(err))
		}
	}
	// Without a client certificate; with one of another CA.
	for _, c := range []struct {
		name string
		cert *tls.Certificate
	}{{"clientv3 without a client certificate", nil}, {"clientv3 with a certificate of another CA", &pki.otherClient}} {
		cli := newClient(pki.tlsConfig(c.cert))
		refused(c.name, func(ctx context.Context) error {
			if cli == nil {
				return fmt.Errorf("no client")
			}
			_, err := cli.Put(ctx, "tls/intruder", "x")
			return err
		})
	}
	// Plaintext gRPC to the https port.
	plain, err := robust.Dial(p.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	refused("plaintext gRPC to the https port", func(ctx context.Context) error {
		_, err := pb.NewKVClient(plain).Put(ctx, &pb.PutRequest{Key: []byte("tls/plain"), Value: []byte("x")}, grpc.WaitForReady(false))
		return err
	})
	// Nothing written by the refused clients.
	if g, err := cli.Get(ctx, "tls/", clientv3.WithPrefix()); err != nil || g.Count != 1 {
		t.Errorf("after the refused clients: %v keys under tls/ (err %v), want only tls/k", g.Kvs, err)
	}

	// /health over https.
	get := func(tc *tls.Config, scheme string) (int, string, error) {
		tr := &http.Transport{TLSClientConfig: tc}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := hc.Get(scheme + "://" + p.Addr() + "/health")
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	code, body, err := get(pki.tlsConfig(&pki.client), "https")
	if err != nil || code != http.StatusOK || !strings.Contains(body, `"health":"true"`) {
		t.Errorf("/health over https with a client certificate: %d %q %v", code, body, err)
	} else {
		t.Logf("/health over https: %d %s", code, strings.TrimSpace(body))
	}
	if code, body, err := get(pki.tlsConfig(nil), "https"); err == nil {
		t.Errorf("/health over https without a client certificate: answered %d %q, want refused", code, body)
	}
	if code, body, err := get(nil, "http"); err == nil && (code == http.StatusOK || strings.Contains(body, "health")) {
		t.Errorf("/health in plaintext to the https port: answered %d %q", code, body)
	} else {
		t.Logf("plaintext /health to the https port: %d %q %v", code, strings.TrimSpace(body), err)
	}
	if !p.Running() {
		t.Fatalf("shimd exited: %v\n%s", p.ExitErr(), p.Output())
	}
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// TestRobustDSNPasswordHidden starts shimd with a password in --endpoint,
// with wrong settings (a bad port, an unknown database, a bad parameter, a
// malformed DSN, a wrong password) and with a right one (debug logging, a
// few requests, its database connections killed, then SIGTERM), and checks
// that the password never appears in what shimd prints. The password holds
// a character that must be percent-encoded in a URL.
func TestRobustDSNPasswordHidden(t *testing.T) {
	requireRealSUT(t)
	const secret = "sekrit"
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			var wrong []string
			var right string
			switch b.Kind {
			case harness.KindPostgres:
				u, err := url.Parse(st.Backend.Endpoint)
				if err != nil {
					t.Fatal(err)
				}
				u.User = url.UserPassword(u.User.Username(), secret+"/pw")
				right = u.String() // trust authentication ignores the password
				bad := func(f func(u *url.URL)) string {
					c := *u
					f(&c)
					return c.String()
				}
				wrong = []string{
					bad(func(u *url.URL) { u.Host = "127.0.0.1:1" }),
					bad(func(u *url.URL) { u.Path = "/nosuchdb_shimd_robust" }),
					bad(func(u *url.URL) { q := u.Query(); q.Set("sslmode", "bogus"); u.RawQuery = q.Encode() }),
					strings.Replace(right, ":5432", ":54x2", 1),
					strings.Replace(right, secret+"%2Fpw", secret+"%zz", 1),
				}
			case harness.KindMySQL:
				user := "rb_" + st.Name[len(st.Name)-10:]
				if err := mysqlUser(t, st, user, secret+"/pw"); err != nil {
					t.Skipf("cannot create a MariaDB user with a password: %v", err)
				}
				cfg, err := gomysql.ParseDSN(strings.TrimPrefix(st.Backend.Endpoint, "mysql://"))
				if err != nil {
					t.Fatal(err)
				}
				cfg.User, cfg.Passwd = user, secret+"/pw"
				right = "mysql://" + cfg.FormatDSN()
				w := *cfg
				w.Passwd = secret + "-wrong"
				wrong = append(wrong, "mysql://"+w.FormatDSN())
				w = *cfg
				w.Addr = "127.0.0.1:1"
				wrong = append(wrong, "mysql://"+w.FormatDSN())
				w = *cfg
				w.DBName = "nosuchdb_shimd_robust"
				wrong = append(wrong, "mysql://"+w.FormatDSN())
				wrong = append(wrong,
					strings.Replace(right, ")/", "/", 1),                                    // unterminated address
					"mysql://"+user+":"+secret+"@127.0.0.1:33x6/"+st.Name,                   // URL form, bad port
					"mysql://"+user+":"+secret+"%zz@127.0.0.1:3306/"+st.Name,                // URL form, bad escape
					strings.Replace(right, "tcp(", "tcpx(", 1),                              // unknown network
					"mysql://"+user+":"+secret+"@tcp(127.0.0.1:3306)/"+st.Name+"?timeout=x", // bad parameter
				)
			}
			for _, ep := range wrong {
				out, exited := runShimdBriefly(t, ep, 15*time.Second)
				t.Logf("wrong setting: %s", firstLine(out))
				if strings.Contains(out, secret) {
					t.Errorf("the password appears in shimd's output for --endpoint %s:\n%s", harness.RedactDSN(ep), out)
				}
				if !exited {
					t.Logf("(shimd kept running with that endpoint)")
				}
			}
			// The right one, under debug logging and connection faults.
			p := &robust.Proc{Bin: sutBin, DataDir: tempDir(t, "right"), Endpoint: right, Extra: []string{"--log-level", "debug"}}
			if err := p.Start(); err != nil {
				t.Fatalf("start with a password in the DSN: %v", err)
			}
			conn := robustDial(t, p)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			kv := pb.NewKVClient(conn)
			for i := 0; i < 20; i++ {
				var err error
				for try := 0; try < 20; try++ { // errors are expected right after the kills
					if _, err = kv.Put(ctx, &pb.PutRequest{Key: []byte(fmt.Sprint("pw/", i)), Value: []byte("v")}); err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					t.Fatalf("put: %v", err)
				}
				if i == 5 || i == 12 {
					if _, err := st.KillConnections(ctx); err != nil {
						t.Logf("kill connections: %v", err)
					}
					time.Sleep(300 * time.Millisecond)
				}
			}
			metrics := ""
			if resp, err := http.Get(p.URL() + "/metrics"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				metrics = string(b)
			}
			if err := p.Stop(); err != nil {
				t.Errorf("stop: %v", err)
			}
			out := p.Output()
			if strings.Contains(out, secret) {
				t.Errorf("the password appears in shimd's output:\n%s", out)
			}
			if strings.Contains(metrics, secret) {
				t.Errorf("the password appears in /metrics")
			}
			t.Logf("right setting: %d bytes of output at debug level, %d of /metrics, no password", len(out), len(metrics))
		})
	}
}

// runShimdBriefly runs shimd with endpoint and returns its output when it
// exits, or after d (then killing it).
func runShimdBriefly(t *testing.T, endpoint string, d time.Duration) (string, bool) {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, sutBin, "--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", port),
		"--data-dir", t.TempDir(), "--endpoint", endpoint, "--log-level", "debug")
	out, _ := cmd.CombinedOutput()
	return string(out), ctx.Err() == nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// mysqlUser creates user (any host) with password and all rights on st's
// database, dropped when t ends.
func mysqlUser(t *testing.T, st *harness.Store, user, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db := st.Admin()
	if _, err := db.ExecContext(ctx, fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s'", user, password)); err != nil {
		return err
	}
	t.Cleanup(func() {
		if _, err := db.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%%'", user)); err != nil {
			t.Errorf("drop MariaDB user %s: %v", user, err)
		}
	})
	if _, err := db.ExecContext(ctx, fmt.Sprintf("GRANT ALL ON %s.* TO '%s'@'%%'", st.Name, user)); err != nil {
		return err
	}
	return nil
}
