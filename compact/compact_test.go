package compact

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/shimd/shimd/sqllog"
)

// fakeClock fires After channels only when the test advances time.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	waiting chan struct{}
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1e9, 0), waiting: make(chan struct{}, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	c.mu.Unlock()
	c.waiting <- struct{}{}
	return ch
}

// step waits for the policy to block on the clock, then moves time on by d.
func (c *fakeClock) step(t *testing.T, d time.Duration) {
	t.Helper()
	for {
		c.mu.Lock()
		pending := len(c.waiters)
		c.mu.Unlock()
		if pending > 0 {
			break
		}
		select {
		case <-c.waiting:
		case <-time.After(5 * time.Second):
			t.Fatal("policy never waited on the clock")
		}
	}
	c.mu.Lock()
	c.now = c.now.Add(d)
	var rest []waiter
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			rest = append(rest, w)
		}
	}
	c.waiters = rest
	c.mu.Unlock()
}

// fakeTarget records compactions; its revision is set by the test.
type fakeTarget struct {
	mu        sync.Mutex
	rev       int64
	compacted []int64
	did       chan int64
}

func (f *fakeTarget) Rev() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

func (f *fakeTarget) setRev(r int64) {
	f.mu.Lock()
	f.rev = r
	f.mu.Unlock()
}

func (f *fakeTarget) Compact(ctx context.Context, rev int64) (<-chan struct{}, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.compacted); n > 0 && rev <= f.compacted[n-1] {
		return nil, sqllog.ErrCompacted
	}
	f.compacted = append(f.compacted, rev)
	f.did <- rev
	done := make(chan struct{})
	close(done)
	return done, nil
}

func expect(t *testing.T, f *fakeTarget, want int64) {
	t.Helper()
	select {
	case got := <-f.did:
		if got != want {
			t.Fatalf("compacted at %d, want %d", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no compaction, want one at %d", want)
	}
}

func expectNone(t *testing.T, f *fakeTarget) {
	t.Helper()
	select {
	case got := <-f.did:
		t.Fatalf("unexpected compaction at %d", got)
	default:
	}
}

func TestRevisionMode(t *testing.T) {
	clock, target := newFakeClock(), &fakeTarget{did: make(chan int64, 10)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, target, Config{Mode: ModeRevision, Revisions: 100, Clock: clock})

	target.setRev(50) // less than the retention: nothing to do
	clock.step(t, revisionInterval)
	clock.step(t, 0) // the policy is waiting again, so its pass is over
	expectNone(t, target)

	target.setRev(1000)
	clock.step(t, revisionInterval)
	expect(t, target, 900)

	clock.step(t, revisionInterval) // no new writes: no second compaction at 900
	clock.step(t, 0)
	expectNone(t, target)

	target.setRev(1500)
	clock.step(t, revisionInterval)
	expect(t, target, 1400)
}

func TestPeriodicMode(t *testing.T) {
	clock, target := newFakeClock(), &fakeTarget{did: make(chan int64, 10)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const retention = 10 * time.Minute // sampled every minute
	go Run(ctx, target, Config{Mode: ModePeriodic, Retention: retention, Clock: clock})

	// The revision grows by 100 a minute; the first sample is revision 100.
	rev := int64(100)
	target.setRev(rev)
	for i := 0; i < 10; i++ {
		clock.step(t, time.Minute)
		rev += 100
		target.setRev(rev)
		if i < 9 {
			expectNone(t, target)
		}
	}
	// A whole retention has passed: compact to what was current then.
	expect(t, target, 100)
	// From then on every window (the retention, under an hour), to the
	// oldest sample kept: at least a retention old, as etcd does.
	for i := 0; i < 10; i++ {
		clock.step(t, time.Minute)
		rev += 100
		target.setRev(rev)
	}
	expect(t, target, 1000)
}

func TestInactiveProcessDoesNotCompact(t *testing.T) {
	clock, target := newFakeClock(), &fakeTarget{did: make(chan int64, 10)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Run(ctx, target, Config{Mode: ModeRevision, Revisions: 10, Clock: clock, Active: func() bool { return false }})
	target.setRev(1000)
	clock.step(t, revisionInterval)
	clock.step(t, 0)
	expectNone(t, target)
}

func TestParseRetention(t *testing.T) {
	for _, c := range []struct {
		mode, in string
		d        time.Duration
		n        int64
		bad      bool
	}{
		{ModePeriodic, "1", time.Hour, 0, false},
		{ModePeriodic, "30m", 30 * time.Minute, 0, false},
		{ModePeriodic, "0", 0, 0, false},
		{ModePeriodic, "soon", 0, 0, true},
		{ModeRevision, "1000", 0, 1000, false},
		{ModeRevision, "1h", 0, 0, true},
		{"hourly", "1", 0, 0, true},
	} {
		d, n, err := ParseRetention(c.mode, c.in)
		if (err != nil) != c.bad || d != c.d || n != c.n {
			t.Errorf("ParseRetention(%q, %q) = %v, %d, %v", c.mode, c.in, d, n, err)
		}
	}
}
