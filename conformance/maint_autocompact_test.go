package conformance

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Automatic compaction (--auto-compaction-mode, --auto-compaction-retention).
//
// Periodic mode with a 2 s retention: shimd samples the revision every
// retention/10 and, once a retention has passed, compacts every retention
// to the revision sampled a retention earlier. While a writer puts
// continuously, an early revision must become unreadable (ErrCompacted)
// within a few retentions, the compaction revision must never be newer than
// the revision current 2 s before it is observed (the history of the last
// 2 s stays readable), must keep up (a revision that existed 5 retentions
// ago is compacted), and must advance repeatedly.
//
// Revision mode looks every 5 minutes (as etcd does), too slow for the
// suite: TestAutoCompactRevision runs only with MAINT_SLOW=1.

const (
	acRetention = 2 * time.Second
	acObserve   = 10 * time.Second
	acFirstWait = 20 * time.Second
	acKeepUp    = 5 * acRetention
)

func acArgs(mode, retention string) []string {
	return []string{"--auto-compaction-mode", mode, "--auto-compaction-retention", retention}
}

// maintLogProc is a shimd started with --log-level info (the harness starts it at
// warn), so that its compactions can be counted in its log.
type maintLogProc struct {
	Endpoint string
	cmd      *exec.Cmd
	mu       sync.Mutex
	out      strings.Builder
	done     chan struct{}
}

func (p *maintLogProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *maintLogProc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// maintStartLogged starts shimd on st with extra flags and info logging; it is
// stopped (SIGTERM, checked) when t ends.
func maintStartLogged(t *testing.T, st *harness.Store, name string, extra ...string) *maintLogProc {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		p := &maintLogProc{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan struct{})}
		args := []string{"--listen-client-urls", p.Endpoint, "--data-dir", tempDir(t, name)}
		if st.Backend.Endpoint != "" {
			args = append(args, "--endpoint", st.Backend.Endpoint)
		}
		args = append(append(args, extra...), "--log-level", "info")
		p.cmd = exec.Command(sutBin, args...)
		p.cmd.Stdout, p.cmd.Stderr = p, p
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.cmd.Wait(); close(p.done) }()
		if lastErr = maintWaitServing(p); lastErr == nil {
			t.Cleanup(func() {
				select {
				case <-p.done:
					t.Errorf("%s exited during the test: %v\n%s", name, p.cmd.ProcessState, clip(p.Output(), 4000))
					return
				default:
				}
				_ = p.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-p.done:
					if !p.cmd.ProcessState.Success() {
						t.Errorf("%s: exit after SIGTERM: %v", name, p.cmd.ProcessState)
					}
				case <-time.After(30 * time.Second):
					_ = p.cmd.Process.Kill()
					<-p.done
					t.Errorf("%s ignored SIGTERM for 30s", name)
				}
			})
			return p
		}
		_ = p.cmd.Process.Kill()
		<-p.done
		if !strings.Contains(p.Output(), "address already in use") {
			break
		}
	}
	t.Fatalf("start %s: %v", name, lastErr)
	return nil
}

func maintWaitServing(p *maintLogProc) error {
	cli, err := dial(p.Endpoint)
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(harness.ReadyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v\n%s", p.cmd.ProcessState, p.Output())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = cli.Get(ctx, "readiness")
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not serving after %v: %v\n%s", harness.ReadyTimeout, err, p.Output())
}

var compactionDoneRE = regexp.MustCompile(`msg="auto compaction done" revision=([0-9]+)`)

// maintBadLines are the WARN and ERROR lines of a log (minus slow-request
// warnings, which a busy test machine produces).
func maintBadLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if (strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR")) && !strings.Contains(l, "request took too long") {
			out = append(out, l)
		}
	}
	return out
}

// acWriter puts continuously to one server and records, for every put,
// when it started and the revision it got.
type acWriter struct {
	once   sync.Once
	mu     sync.Mutex
	starts []time.Time
	ends   []time.Time
	revs   []int64
	errs   []error
	stop   chan struct{}
	done   chan struct{}
}

func acStartWriter(cli *clientv3.Client, prefix string) *acWriter {
	w := &acWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			r, err := cli.Put(ctx, fmt.Sprintf("%s%02d", prefix, i%20), fmt.Sprint(i))
			cancel()
			w.mu.Lock()
			if err != nil {
				w.errs = append(w.errs, err)
			} else {
				w.starts = append(w.starts, start)
				w.ends = append(w.ends, time.Now())
				w.revs = append(w.revs, r.Header.Revision)
			}
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return w
}

func (w *acWriter) halt() []error {
	w.once.Do(func() { close(w.stop) })
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// before returns the highest revision of a put that started before t: no
// revision after it can have been committed before t by this writer.
func (w *acWriter) before(t time.Time) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var rev int64
	for i, s := range w.starts {
		if s.Before(t) && w.revs[i] > rev {
			rev = w.revs[i]
		}
	}
	return rev
}

// doneBefore returns the highest revision of a put that completed before t
// (0 if none): a revision that existed at t.
func (w *acWriter) doneBefore(t time.Time) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var rev int64
	for i, e := range w.ends {
		if e.Before(t) && w.revs[i] > rev {
			rev = w.revs[i]
		}
	}
	return rev
}

// maintCompactRevision reads the compaction revision (HashKV reports it).
func maintCompactRevision(ctx context.Context, cli *clientv3.Client) (int64, error) {
	r, err := pb.NewMaintenanceClient(cli.ActiveConnection()).HashKV(ctx, &pb.HashKVRequest{})
	if err != nil {
		return 0, err
	}
	return r.CompactRevision, nil
}

// maintWaitCompacted waits until a read at rev fails with ErrCompacted.
func maintWaitCompacted(t *testing.T, cli *clientv3.Client, key string, rev int64, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cli.Get(ctx, key, clientv3.WithRev(rev))
		cancel()
		switch {
		case errCode(err) == errCode(rpctypes.ErrGRPCCompacted) && rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(rpctypes.ErrGRPCCompacted):
			return time.Since(start)
		case errCode(err) == errCode(rpctypes.ErrGRPCFutureRev) && rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(rpctypes.ErrGRPCFutureRev):
			// Not written yet.
		case err != nil:
			t.Fatalf("get at revision %d: %v", rev, err)
		case time.Since(start) > timeout:
			t.Fatalf("revision %d still readable after %v: no automatic compaction", rev, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// acObserveRetention samples the compaction revision for acObserve and checks
// it against the writer's history; it returns the distinct revisions seen.
func acObserveRetention(t *testing.T, cli *clientv3.Client, w *acWriter, since time.Time) []int64 {
	t.Helper()
	var seen []int64
	end := time.Now().Add(acObserve)
	for time.Now().Before(end) {
		obs := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cr, err := maintCompactRevision(ctx, cli)
		cancel()
		if err != nil {
			t.Fatalf("HashKV: %v", err)
		}
		if len(seen) == 0 || seen[len(seen)-1] != cr {
			if len(seen) > 0 && cr < seen[len(seen)-1] {
				t.Errorf("the compaction revision went back from %d to %d", seen[len(seen)-1], cr)
			}
			seen = append(seen, cr)
		}
		if newest := w.before(obs.Add(-acRetention)); cr > newest {
			t.Errorf("compaction revision %d at %v: newer than any revision written %v earlier (at most %d): the retention is not kept",
				cr, obs.Sub(since).Round(time.Millisecond), acRetention, newest)
		}
		// Compactions come every retention, each to the revision sampled a
		// retention before: a revision that existed 5 retentions ago must
		// be compacted by now (generous: a loaded machine slows it all).
		if lag := obs.Add(-acKeepUp); lag.After(since) {
			if existed := w.doneBefore(lag); existed != 0 && cr < existed {
				t.Errorf("compaction revision %d at %v: older than revision %d, which existed %v before: compaction does not keep up",
					cr, obs.Sub(since).Round(time.Millisecond), existed, acKeepUp)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("compaction revisions observed over %v: %v", acObserve, seen)
	if len(seen) < 3 {
		t.Errorf("the compaction revision took only %d values in %v (retention %v): it should advance every retention", len(seen), acObserve, acRetention)
	}
	return seen
}

// TestAutoCompactPeriodic: one shimd per backend, periodic mode, 2 s.
func TestAutoCompactPeriodic(t *testing.T) {
	requireShimd(t, "--auto-compaction-*")
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			launched := time.Now()
			p := maintStartLogged(t, st, "shimd", acArgs("periodic", acRetention.String())...)
			cli := dialT(t, p.Endpoint)
			start := time.Now()
			w := acStartWriter(cli, "ac/k")
			defer w.halt()
			maintWaitCompacted(t, cli, "ac/k00", 2, acFirstWait)
			took := time.Since(launched)
			t.Logf("revision 2 compacted %v after the start of shimd", took.Round(time.Millisecond))
			if took < acRetention {
				t.Errorf("the first compaction came %v after the start, before a whole retention (%v)", took, acRetention)
			}
			acObserveRetention(t, cli, w, start)
			if errs := w.halt(); len(errs) > 0 {
				t.Errorf("%d puts failed during auto-compaction; first: %v", len(errs), errs[0])
			}
			if n := len(compactionDoneRE.FindAllString(p.Output(), -1)); n < 3 {
				t.Errorf("%d \"auto compaction done\" log lines, want ≥ 3", n)
			}
			if bad := maintBadLines(p.Output()); len(bad) > 0 {
				t.Errorf("warnings or errors in the log:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}

// TestAutoCompactShared: two shimd processes on one database, both with
// periodic auto-compaction: both keep serving writes and reads without
// errors, compaction happens (seen by both), and only one of them compacts.
func TestAutoCompactShared(t *testing.T) {
	requireShimd(t, "--auto-compaction-*")
	for _, b := range sharedBackends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			extra := append(acArgs("periodic", acRetention.String()), "--db-poll-interval", "50ms")
			p1 := maintStartLogged(t, st, "shimd-a", extra...)
			p2 := maintStartLogged(t, st, "shimd-b", extra...)
			ca, cb := dialT(t, p1.Endpoint), dialT(t, p2.Endpoint)
			start := time.Now()
			wa, wb := acStartWriter(ca, "ac/a/"), acStartWriter(cb, "ac/b/")
			defer wa.halt()
			defer wb.halt()
			for _, c := range []*clientv3.Client{ca, cb} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				ml, err := c.MemberList(ctx)
				cancel()
				if err != nil || len(ml.Members) != 2 {
					t.Errorf("member list: %v %v, want the two processes", ml, err)
				}
			}
			took := maintWaitCompacted(t, ca, "ac/a/00", 2, acFirstWait)
			maintWaitCompacted(t, cb, "ac/a/00", 2, 5*time.Second)
			t.Logf("revision 2 compacted after %v", took.Round(time.Millisecond))

			// Both writers together: check the retention against the
			// union of their histories, through either process.
			end := time.Now().Add(acObserve)
			var seen [2][]int64
			for time.Now().Before(end) {
				obs := time.Now()
				for i, c := range []*clientv3.Client{ca, cb} {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					cr, err := maintCompactRevision(ctx, c)
					cancel()
					if err != nil {
						t.Fatalf("process %d: HashKV: %v", i, err)
					}
					if s := seen[i]; len(s) == 0 || s[len(s)-1] != cr {
						seen[i] = append(seen[i], cr)
					}
					if newest := max(wa.before(obs.Add(-acRetention)), wb.before(obs.Add(-acRetention))); cr > newest {
						t.Errorf("process %d: compaction revision %d at %v: newer than any revision written %v earlier (%d)",
							i, cr, obs.Sub(start).Round(time.Millisecond), acRetention, newest)
					}
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("compaction revisions seen through a: %v, through b: %v", seen[0], seen[1])
			for i := range seen {
				if len(seen[i]) < 3 {
					t.Errorf("process %d saw only %d compaction revisions in %v", i, len(seen[i]), acObserve)
				}
			}
			for i, w := range []*acWriter{wa, wb} {
				if errs := w.halt(); len(errs) > 0 {
					t.Errorf("process %d: %d puts failed; first: %v", i, len(errs), errs[0])
				}
			}
			na := len(compactionDoneRE.FindAllString(p1.Output(), -1))
			nb := len(compactionDoneRE.FindAllString(p2.Output(), -1))
			t.Logf("\"auto compaction done\" log lines: a %d, b %d", na, nb)
			if (na == 0) == (nb == 0) {
				t.Errorf("compactions logged by a: %d, by b: %d; want exactly one process compacting", na, nb)
			}
			for name, p := range map[string]*maintLogProc{"a": p1, "b": p2} {
				if bad := maintBadLines(p.Output()); len(bad) > 0 {
					t.Errorf("process %s: warnings or errors in the log:\n%s", name, strings.Join(bad, "\n"))
				}
			}
		})
	}
}

// TestAutoCompactRevision: revision mode keeps the last 10 revisions, but
// checks only every 5 minutes, as etcd does; set MAINT_SLOW=1 to run it
// (about 6 minutes per backend).
func TestAutoCompactRevision(t *testing.T) {
	requireShimd(t, "--auto-compaction-*")
	if !harness.EnvBool("MAINT_SLOW") {
		t.Skip("revision-mode auto-compaction checks every 5 minutes; set MAINT_SLOW=1 to run this test")
	}
	for _, b := range harness.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			needBackend(t, b)
			st := newStore(t, b)
			p := maintStartLogged(t, st, "shimd", acArgs("revision", "10")...)
			cli := dialT(t, p.Endpoint)
			ctx := ctxT(t, 10*time.Minute)
			var last int64
			for i := 0; i < 100; i++ {
				r, err := cli.Put(ctx, "acr/k", fmt.Sprint(i))
				if err != nil {
					t.Fatal(err)
				}
				last = r.Header.Revision
			}
			maintWaitCompacted(t, cli, "acr/k", last-11, 7*time.Minute)
			cr, err := maintCompactRevision(ctx, cli)
			if err != nil || cr != last-10 {
				t.Errorf("compaction revision %d (%v), want %d (the last 10 revisions kept)", cr, err, last-10)
			}
			if _, err := cli.Get(ctx, "acr/k", clientv3.WithRev(last-10)); err != nil {
				t.Errorf("read at revision %d: %v", last-10, err)
			}
		})
	}
}
