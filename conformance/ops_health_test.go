package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/shimd/shimd/conformance/harness"
)

// The health endpoints, as a load balancer, a kubelet or a container engine
// uses them: /health (etcd's JSON), /livez, /readyz, grpc.health.v1 and
// etcd_server_has_leader, while the database is unreachable and while the
// NOSPACE alarm is raised.

// healthState is what every health signal of one shimd says at one moment.
type healthState struct {
	health, excl, livez, readyz httpAnswer
	grpc                        string
	hasLeader                   float64
}

func (h healthState) String() string {
	return fmt.Sprintf("/health %s; /health?exclude=NOSPACE %s; /livez %s; /readyz %s; grpc.health.v1 %s; etcd_server_has_leader %v",
		h.health, h.excl, h.livez, h.readyz, h.grpc, h.hasLeader)
}

func readHealth(s *server, base string) healthState {
	h := healthState{
		health: httpGet(base + "/health"),
		excl:   httpGet(base + "/health?exclude=NOSPACE"),
		livez:  httpGet(base + "/livez"),
		readyz: httpGet(base + "/readyz?verbose"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := healthpb.NewHealthClient(s.cli.ActiveConnection()).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		h.grpc = "error: " + err.Error()
	} else {
		h.grpc = r.Status.String()
	}
	h.hasLeader = -1
	if m, err := scrape(base + "/metrics"); err == nil {
		h.hasLeader = m["etcd_server_has_leader"]
	}
	return h
}

// etcdHealth decodes /health's body.
func etcdHealth(a httpAnswer) (health, reason string) {
	var v struct{ Health, Reason string }
	if json.Unmarshal([]byte(a.body), &v) != nil {
		return "", ""
	}
	return v.Health, v.Reason
}

func isHealthy(a httpAnswer) bool {
	h, _ := etcdHealth(a)
	return a.err == nil && a.code == 200 && h == "true"
}

func isUnhealthy(a httpAnswer, reason string) bool {
	h, r := etcdHealth(a)
	return a.err == nil && a.code == 503 && h == "false" && strings.Contains(r, reason)
}

// healthWait bounds how long a health request may take while the database
// hangs: shimd gives its check 2 s.
const healthWait = 5 * time.Second

// TestOpsHealthDatabaseDown points shimd at its database through a loopback
// proxy, then makes the database unreachable twice, without touching the
// shared server: first refusing connections (a stopped database), then
// accepting and never answering (a partition). Each time every health
// signal must turn bad promptly, and good again once the proxy forwards.
// The HTTP answers give a generic reason, the driver's error going to the log.
func TestOpsHealthDatabaseDown(t *testing.T) {
	requireShimd(t, "database health")
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			target, endpoint, err := viaProxyEndpoint(st.Backend)
			if err != nil {
				t.Fatal(err)
			}
			proxy := newProxy(t, target)
			bk := st.Backend
			bk.Endpoint = strings.Replace(endpoint, "PROXY", proxy.addr, 1)
			srv := startShimdOn(t, bk, tempDir(t, "shimd"), harness.Options{}, "--db-connect-timeout", "1s")
			base := srv.proc.Endpoint
			ctx := ctxT(t, 3*time.Minute)
			if _, err := srv.cli.Put(ctx, "ops/h/before", "1"); err != nil {
				t.Fatal(err)
			}
			healthy := func() (bool, string) {
				h := readHealth(srv, base)
				ok := isHealthy(h.health) && isHealthy(h.excl) && h.livez.code == 200 && h.readyz.code == 200 &&
					h.grpc == "SERVING" && h.hasLeader == 1
				return ok, h.String()
			}
			waitFor(t, 10*time.Second, "healthy at the start", healthy)

			for _, mode := range []proxyMode{proxyRefuse, proxyBlackhole} {
				t.Logf("database: %s", mode)
				proxy.set(mode)
				waitFor(t, 30*time.Second, "every health signal bad with the database "+mode.String(), func() (bool, string) {
					h := readHealth(srv, base)
					for _, a := range []httpAnswer{h.health, h.excl, h.livez, h.readyz} {
						if a.took > healthWait {
							t.Errorf("a health request took %v with the database %s (want < %v): %s", a.took, mode, healthWait, h)
						}
					}
					ok := isUnhealthy(h.health, "DATABASE UNREACHABLE") && isUnhealthy(h.excl, "DATABASE UNREACHABLE") &&
						h.livez.code == 503 && h.readyz.code == 503 && strings.Contains(h.readyz.body, "[-]serializable_read") &&
						h.grpc == "NOT_SERVING" && h.hasLeader == 0
					return ok, h.String()
				})
				checkHealthReasons(t, readHealth(srv, base), mode, []string{proxy.addr, target, st.Name, dsnUser(bk.Endpoint)})
				for _, msg := range []string{`msg="serving /health false" reason="DATABASE UNREACHABLE" err=`, `msg="health check failed" path=/livez check=serializable_read reason="database unreachable" err=`} {
					if !strings.Contains(srv.proc.Output(), msg) {
						t.Errorf("with the database %s, shimd's log has no %s", mode, msg)
					}
				}
				if out, err := runShimdHealthcheck(t, base+"/health"); err == nil {
					t.Errorf("shimd healthcheck exited 0 with the database %s: %s", mode, out)
				}
				proxy.set(proxyForward)
				waitFor(t, 60*time.Second, "healthy again after the database came back from "+mode.String(), healthy)
				if _, err := srv.cli.Put(ctx, "ops/h/after-"+fmt.Sprint(int(mode)), "1"); err != nil {
					t.Errorf("put after the database came back: %v", err)
				}
			}
			if out, err := runShimdHealthcheck(t, base+"/health"); err != nil {
				t.Errorf("shimd healthcheck: %v: %s", err, out)
			}
			g, err := srv.cli.Get(ctx, "ops/h/", clientv3.WithPrefix())
			if err != nil || g.Count != 3 {
				t.Errorf("after the outages: get ops/h/ = %v, %v; want the 3 keys", g, err)
			}
		})
	}
}

// checkHealthReasons fails t unless every HTTP health answer in h gives only
// a generic reason: the driver's error names the database user, name and
// host (secret is a list of those), and belongs in the log, not in answers
// to whoever reaches a health port.
func checkHealthReasons(t *testing.T, h healthState, mode proxyMode, secret []string) {
	t.Helper()
	for _, a := range []httpAnswer{h.health, h.excl} {
		if _, r := etcdHealth(a); r != "DATABASE UNREACHABLE" {
			t.Errorf("with the database %s, /health's reason is %q, want just DATABASE UNREACHABLE", mode, r)
		}
	}
	line := regexp.MustCompile(`^(\[\+\]\w+ ok|\[-\]\w+ failed: database unreachable|(livez|readyz) check failed)$`)
	for _, a := range []httpAnswer{h.livez, h.readyz} {
		for _, l := range strings.Split(strings.TrimSpace(a.body), "\n") {
			if !line.MatchString(l) {
				t.Errorf("with the database %s, /livez or /readyz says %q, want only generic reasons", mode, l)
			}
		}
	}
	for _, a := range []httpAnswer{h.health, h.excl, h.livez, h.readyz} {
		for _, s := range secret {
			if s != "" && strings.Contains(a.body, s) {
				t.Errorf("with the database %s, a health answer names %q: %s", mode, s, a)
			}
		}
	}
}

// dsnUser is the database user named in a postgres:// or mysql:// DSN.
func dsnUser(dsn string) string {
	if m := regexp.MustCompile(`^mysql://([^:@/]+)[:@]`).FindStringSubmatch(dsn); m != nil {
		return m[1]
	}
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		return u.User.Username()
	}
	return ""
}

// viaProxyEndpoint returns the database server address of a store's
// endpoint and the endpoint with that address replaced by "PROXY".
func viaProxyEndpoint(b harness.Backend) (target, endpoint string, err error) {
	switch b.Kind {
	case harness.KindPostgres:
		u, err := url.Parse(b.Endpoint)
		if err != nil {
			return "", "", err
		}
		target = u.Host
		u.Host = "PROXY"
		return target, u.String(), nil
	case harness.KindMySQL:
		m := regexp.MustCompile(`@tcp\(([^)]+)\)`).FindStringSubmatchIndex(b.Endpoint)
		if m == nil {
			return "", "", fmt.Errorf("no @tcp(host:port) in %s", harness.RedactDSN(b.Endpoint))
		}
		return b.Endpoint[m[2]:m[3]], b.Endpoint[:m[2]] + "PROXY" + b.Endpoint[m[3]:], nil
	}
	return "", "", fmt.Errorf("backend %s has no database server", b.Name)
}

// runShimdHealthcheck runs `shimd healthcheck --url url`.
func runShimdHealthcheck(t testing.TB, url string) (string, error) {
	r := runShimd(t, "", opsEnv(), 30*time.Second, "healthcheck", "--url", url)
	if r.code != 0 {
		return r.stderr, fmt.Errorf("exit %d", r.code)
	}
	return r.stderr, nil
}

// TestOpsHealthAlarm raises the NOSPACE alarm through the Alarm API, on
// shimd and on an embedded etcd: /health must then say false with etcd's
// reason (and true with ?exclude=NOSPACE), grpc.health.v1 must fail, /livez
// and /readyz must not (as etcd 3.6's: only a CORRUPT alarm fails /readyz;
// an alarm needs an operator, not a restart or an empty load balancer), and
// etcd_server_has_leader must stay 1 as etcd's does. `etcdctl alarm disarm`
// makes everything healthy again.
func TestOpsHealthAlarm(t *testing.T) {
	requireShimd(t, "alarm health")
	ctl := etcdctl(t)
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			srv := startShimd(t, b, harness.Options{})
			ref := startRef(t, harness.Options{})
			t.Cleanup(ref.stop)
			ctx := ctxT(t, 2*time.Minute)
			base, etcdBase := srv.proc.Endpoint, ref.cli.Endpoints()[0]

			for _, s := range []*server{ref, srv} {
				st, err := maint(s).Status(ctx, &pb.StatusRequest{})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := maint(s).Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_ACTIVATE, Alarm: pb.AlarmType_NOSPACE, MemberID: st.Header.MemberId}); err != nil {
					t.Fatalf("%s: raise NOSPACE: %v", s.name, err)
				}
			}
			eh, eex := httpGet(etcdBase+"/health"), httpGet(etcdBase+"/health?exclude=NOSPACE")
			if !isUnhealthy(eh, "NOSPACE") || !isHealthy(eex) {
				t.Fatalf("reference etcd with NOSPACE raised: /health %s, ?exclude=NOSPACE %s (the test's assumptions are wrong)", eh, eex)
			}
			em := mustScrape(t, etcdBase+"/metrics")
			waitFor(t, 10*time.Second, "health reflects the NOSPACE alarm", func() (bool, string) {
				h := readHealth(srv, base)
				same := func(a, b httpAnswer) bool {
					return a.code == b.code && strings.TrimSpace(a.body) == strings.TrimSpace(b.body)
				}
				ok := same(h.health, eh) && same(h.excl, eex) &&
					h.livez.code == 200 && h.readyz.code == 200 &&
					h.grpc == "NOT_SERVING"
				return ok, fmt.Sprintf("%s\n  etcd: /health %s, ?exclude=NOSPACE %s", h, eh, eex)
			})
			// has_leader is about the leader, not alarms: a NOSPACE alarm
			// must not fire etcd's "no leader" alert.
			h := readHealth(srv, base)
			if h.hasLeader != em["etcd_server_has_leader"] || h.hasLeader != 1 {
				t.Errorf("with NOSPACE raised, etcd_server_has_leader is %v on shimd and %v on etcd; want 1 on both", h.hasLeader, em["etcd_server_has_leader"])
			}
			if out, err := runShimdHealthcheck(t, base+"/health"); err == nil {
				t.Errorf("shimd healthcheck exited 0 with NOSPACE raised: %s", out)
			}
			if out, err := runShimdHealthcheck(t, base+"/health?exclude=NOSPACE"); err != nil {
				t.Errorf("shimd healthcheck --url .../health?exclude=NOSPACE: %v: %s", err, out)
			}

			out, err := runCtl(t, ctl, base, "", "alarm", "disarm")
			if err != nil || !strings.Contains(out, "alarm:NOSPACE") {
				t.Fatalf("etcdctl alarm disarm: %q, %v", out, err)
			}
			waitFor(t, 10*time.Second, "healthy after etcdctl alarm disarm", func() (bool, string) {
				h := readHealth(srv, base)
				ok := isHealthy(h.health) && isHealthy(h.excl) && h.livez.code == 200 && h.readyz.code == 200 &&
					h.grpc == "SERVING" && h.hasLeader == 1
				return ok, h.String()
			})
			if _, err := srv.cli.Put(ctx, "ops/alarm/after", "1"); err != nil {
				t.Errorf("put after disarm: %v", err)
			}
			if out, err := runShimdHealthcheck(t, base+"/health"); err != nil {
				t.Errorf("shimd healthcheck after disarm: %v: %s", err, out)
			}
		})
	}
}

// TestOpsHealthcheckLivez: `shimd healthcheck --url` with the /livez or
// /readyz endpoints (plain "ok", not etcd's JSON), as a container health
// check or probe would use them.
func TestOpsHealthcheckLivez(t *testing.T) {
	requireShimd(t, "shimd healthcheck")
	srv := startShimd(t, harness.Backend{Name: "sqlite", Kind: harness.KindSQLite}, harness.Options{})
	for _, path := range []string{"/health", "/livez", "/readyz"} {
		if out, err := runShimdHealthcheck(t, srv.proc.Endpoint+path); err != nil {
			t.Errorf("shimd healthcheck --url %s%s on a healthy shimd: %v: %s", srv.proc.Endpoint, path, err, strings.TrimSpace(out))
		}
	}
}

// TestOpsStopWhileDatabaseHangs: SIGTERM must stop shimd promptly even
// while its database hangs (a partition: connections accepted, nothing
// answered) and a write is waiting on it. A service manager kills what does
// not stop (deploy/shimd.service allows 30 s); shimd itself gives requests
// 5 s to finish.
func TestOpsStopWhileDatabaseHangs(t *testing.T) {
	requireShimd(t, "shutdown")
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			st := newStore(t, b)
			target, endpoint, err := viaProxyEndpoint(st.Backend)
			if err != nil {
				t.Fatal(err)
			}
			proxy := newProxy(t, target)
			u := freeURL(t)
			p := startRaw(t, tempDir(t, "shimd"), []string{"--listen-client-urls", u, "--endpoint", strings.Replace(endpoint, "PROXY", proxy.addr, 1)}, opsEnv(), u+"/health")
			cli := dialT(t, u)
			ctx := ctxT(t, time.Minute)
			if _, err := cli.Put(ctx, "ops/stop/before", "1"); err != nil {
				t.Fatal(err)
			}
			proxy.set(proxyBlackhole)
			go cli.Put(ctx, "ops/stop/during", "1") // waits on the database
			time.Sleep(2 * time.Second)
			start := time.Now()
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
				t.Logf("exited %v after SIGTERM (%v)", time.Since(start).Round(time.Millisecond), p.exit)
			case <-time.After(15 * time.Second):
				t.Errorf("still running 15 s after SIGTERM with the database hanging; killed\n%s", clip(p.out.String(), 2000))
				_ = p.cmd.Process.Kill()
				<-p.done
				p.exit = nil // reported here; not again by the cleanup
			}
			proxy.set(proxyForward)
		})
	}
}
