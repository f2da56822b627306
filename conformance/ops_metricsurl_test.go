package conformance

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd/conformance/harness"
)

// metricsURLPaths are asked on a metrics URL of shimd and of etcd; each must
// answer the same status on both: /metrics and the health endpoints, and a
// 404 for the client URLs' other endpoints.
var metricsURLPaths = []string{
	"/metrics", "/health", "/health?exclude=NOSPACE", "/livez", "/readyz?verbose",
	"/livez/serializable_read", "/readyz/linearizable_read",
	"/version", "/", "/v3/kv/range", "/debug/pprof/",
}

// metricsURLAnswer is what one metrics URL answers: the status and body of
// each of metricsURLPaths (status "error" if none), and the gRPC code of a
// Put and a Range.
type metricsURLAnswer struct {
	paths      map[string]string
	put, rng   codes.Code
	putMessage string
	bodies     map[string]string
}

// probeMetricsURL asks base (http:// or https://, with tc for https) every
// path of metricsURLPaths and a gRPC Put and Range of key.
func probeMetricsURL(t *testing.T, base string, tc *tls.Config, key string) metricsURLAnswer {
	t.Helper()
	a := metricsURLAnswer{paths: map[string]string{}, bodies: map[string]string{}}
	for _, p := range metricsURLPaths {
		r := httpGetTLS(base+p, tc)
		a.paths[p], a.bodies[p] = fmt.Sprint(r.code), r.body
		if r.err != nil {
			a.paths[p] = "error"
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv := pb.NewKVClient(conn)
	_, err = kv.Put(ctx, &pb.PutRequest{Key: []byte(key), Value: []byte("through the metrics URL")})
	a.put, a.putMessage = status.Code(err), fmt.Sprint(err)
	_, err = kv.Range(ctx, &pb.RangeRequest{Key: []byte(key)})
	a.rng = status.Code(err)
	return a
}

// startEtcdMetricsURLs starts an embedded etcd 3.6 on clientURL with
// metricsURLs and, if pki is set, etcd's client TLS flags: --cert-file,
// --key-file, --trusted-ca-file and, if clientCertAuth, --client-cert-auth.
func startEtcdMetricsURLs(t *testing.T, clientURL string, metricsURLs []string, pki *testPKI, clientCertAuth bool) {
	t.Helper()
	cu, err := url.Parse(clientURL)
	if err != nil {
		t.Fatal(err)
	}
	peerPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg := embed.NewConfig()
	cfg.Name = "ref"
	cfg.Dir = t.TempDir()
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cfg.UnsafeNoFsync = true
	cfg.WatchProgressNotifyInterval = 10 * time.Minute // see harness.StartEtcd
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	for _, m := range metricsURLs {
		mu, err := url.Parse(m)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ListenMetricsUrls = append(cfg.ListenMetricsUrls, *mu)
	}
	if pki != nil {
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = pki.certFile, pki.keyFile
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = pki.caFile, clientCertAuth
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("embedded etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("embedded etcd: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("embedded etcd not ready after a minute")
	}
}

// compareMetricsURL probes the same metrics URL of shimd and of etcd and
// fails t where they differ, or where shimd's lets gRPC through.
func compareMetricsURL(t *testing.T, what, shimdBase, etcdBase string, tc *tls.Config) {
	t.Helper()
	got := probeMetricsURL(t, shimdBase, tc, "ops/metricsurl/"+what)
	want := probeMetricsURL(t, etcdBase, tc, "ops/metricsurl/"+what)
	t.Logf("%s: etcd answers gRPC Put %v, Range %v (%s); paths %v", what, want.put, want.rng, shortErr(fmt.Errorf("%s", want.putMessage)), want.paths)
	if got.put == codes.OK || got.rng == codes.OK {
		t.Errorf("%s: shimd's metrics URL %s serves gRPC: Put %v, Range %v", what, shimdBase, got.put, got.rng)
	}
	if got.put != want.put || got.rng != want.rng {
		t.Errorf("%s: gRPC through the metrics URL: shimd Put %v, Range %v (%s); etcd Put %v, Range %v", what, got.put, got.rng, got.putMessage, want.put, want.rng)
	}
	for _, p := range metricsURLPaths {
		if got.paths[p] != want.paths[p] {
			t.Errorf("%s: GET %s on the metrics URL: shimd %s, etcd %s", what, p, got.paths[p], want.paths[p])
		}
	}
	if !strings.Contains(got.bodies["/metrics"], "\netcd_server_has_leader 1\n") {
		t.Errorf("%s: shimd's /metrics on the metrics URL lacks etcd_server_has_leader 1:\n%s", what, clip(got.bodies["/metrics"], 500))
	}
	if b := strings.TrimSpace(got.bodies["/health"]); b != `{"health":"true","reason":""}` {
		t.Errorf("%s: shimd's /health on the metrics URL: %q", what, b)
	}
}

// TestOpsMetricsURL: a --listen-metrics-urls URL serves /metrics and the
// health endpoints and nothing else, as etcd 3.6's does: gRPC there fails
// with etcd's code (it must not be a way around the client URLs' TLS), and
// every path answers etcd's status. An https:// metrics URL takes the client
// TLS settings, so with --client-cert-auth a request without a client
// certificate is refused (also with --trusted-ca-file alone, as in etcd); an
// http:// one beside it stays cleartext.
func TestOpsMetricsURL(t *testing.T) {
	requireShimd(t, "--listen-metrics-urls")
	https := func(u string) string { return strings.Replace(u, "http://", "https://", 1) }
	t.Run("http", func(t *testing.T) {
		client, metrics := freeURL(t), freeURL(t)
		startRaw(t, tempDir(t, "shimd"), []string{"--listen-client-urls", client, "--listen-metrics-urls", metrics}, opsEnv(), client+"/health")
		etcdClient, etcdMetrics := freeURL(t), freeURL(t)
		startEtcdMetricsURLs(t, etcdClient, []string{etcdMetrics}, nil, false)
		compareMetricsURL(t, "http", metrics, etcdMetrics, nil)

		cli := dialT(t, client)
		if g, err := cli.Get(ctxT(t, 10*time.Second), "ops/metricsurl/", clientv3.WithPrefix()); err != nil || g.Count != 0 {
			t.Errorf("keys written through the metrics URL: %v, %v", g, err)
		}
	})
	t.Run("https", func(t *testing.T) {
		pki := newTestPKI(t)
		client, metrics, plain := https(freeURL(t)), https(freeURL(t)), freeURL(t)
		tlsFlags := []string{"--cert-file", pki.certFile, "--key-file", pki.keyFile, "--trusted-ca-file", pki.caFile, "--client-cert-auth"}
		startRaw(t, tempDir(t, "shimd"), append([]string{"--listen-client-urls", client, "--listen-metrics-urls", metrics + "," + plain}, tlsFlags...), opsEnv(), plain+"/health")
		etcdClient, etcdMetrics, etcdPlain := https(freeURL(t)), https(freeURL(t)), freeURL(t)
		startEtcdMetricsURLs(t, etcdClient, []string{etcdMetrics, etcdPlain}, pki, true)

		compareMetricsURL(t, "https with a client certificate", metrics, etcdMetrics, pki.tlsConfig(&pki.client))
		compareMetricsURL(t, "http beside https", plain, etcdPlain, nil)
		// Refused alike by both; etcd's answer checks the test's assumptions.
		for _, c := range []struct {
			what string
			tc   *tls.Config
		}{
			{"https without a client certificate", pki.tlsConfig(nil)},
			{"https with a certificate of another CA", pki.tlsConfig(&pki.otherClient)},
			{"cleartext to the https metrics URL", nil},
		} {
			for name, base := range map[string]string{"shimd": metrics, "etcd": etcdMetrics} {
				if c.tc == nil {
					base = strings.Replace(base, "https://", "http://", 1)
				}
				a := httpGetTLS(base+"/health", c.tc)
				if a.err == nil && (a.code == http.StatusOK || strings.Contains(a.body, "health")) {
					t.Errorf("%s: %s's metrics URL answered /health %s, want refused", c.what, name, a)
				} else {
					t.Logf("%s: %s refuses: %s", c.what, name, a)
				}
			}
		}

		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client}, TLS: pki.tlsConfig(&pki.client), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		if g, err := cli.Get(ctxT(t, 10*time.Second), "ops/metricsurl/", clientv3.WithPrefix()); err != nil || g.Count != 0 {
			t.Errorf("keys written through the metrics URL: %v, %v", g, err)
		}
	})
	t.Run("https trusted CA only", func(t *testing.T) {
		pki := newTestPKI(t)
		client, metrics, plain := https(freeURL(t)), https(freeURL(t)), freeURL(t)
		tlsFlags := []string{"--cert-file", pki.certFile, "--key-file", pki.keyFile, "--trusted-ca-file", pki.caFile}
		startRaw(t, tempDir(t, "shimd"), append([]string{"--listen-client-urls", client, "--listen-metrics-urls", metrics + "," + plain}, tlsFlags...), opsEnv(), plain+"/health")
		etcdClient, etcdMetrics := https(freeURL(t)), https(freeURL(t))
		startEtcdMetricsURLs(t, etcdClient, []string{etcdMetrics}, pki, false)
		for name, base := range map[string]string{"shimd": metrics, "etcd": etcdMetrics} {
			if a := httpGetTLS(base+"/health", pki.tlsConfig(&pki.client)); a.code != http.StatusOK {
				t.Errorf("%s: /health on the metrics URL with a client certificate: %s", name, a)
			}
			if a := httpGetTLS(base+"/health", pki.tlsConfig(nil)); a.err == nil {
				t.Errorf("%s: /health on the metrics URL without a client certificate: %s, want refused (--trusted-ca-file requires one)", name, a)
			}
		}
	})
}

// httpGetTLS is httpGet with tc as the client's TLS settings.
func httpGetTLS(url string, tc *tls.Config) httpAnswer {
	start := time.Now()
	tr := &http.Transport{TLSClientConfig: tc}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return httpAnswer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return httpAnswer{code: resp.StatusCode, body: string(b), err: err, took: time.Since(start)}
}
