package peerwake

import (
	"context"
	"log/slog"
	"testing"
	"time"
)

func listen(t *testing.T) *Waker {
	t.Helper()
	w, err := Listen("127.0.0.1:0", "", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

// receive returns the next payload b's Listen hands over.
func receive(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no datagram within 5s")
		return ""
	}
}

// A joining process says hello once listed; a peer hearing it re-reads the
// member list; announced revisions reach the peers, the highest of a burst
// last, and never one at or below a revision already sent.
func TestWakeUps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := listen(t), listen(t)
	both := func(context.Context) ([]string, error) { return []string{a.Addr(), b.Addr()}, nil }
	bLoads := make(chan struct{}, 100)
	countB := func(ctx context.Context) ([]string, error) { bLoads <- struct{}{}; return both(ctx) }
	loaded := func(what string) {
		t.Helper()
		select {
		case <-bLoads:
		case <-time.After(5 * time.Second):
			t.Fatalf("b did not read the member list %s", what)
		}
	}

	got := make(chan string, 100)
	go b.Listen(ctx, func(p string) { got <- p })
	go b.Run(ctx, countB, time.Hour)
	loaded("at start") // before a says hello
	go a.Run(ctx, both, time.Hour)
	if p := receive(t, got); p != "" {
		t.Fatalf("a's hello reached b's follower as %q, want \"\" (catch up on anything)", p)
	}
	loaded("again after a's hello")

	a.Announce(5)
	if p := receive(t, got); p != "5" {
		t.Fatalf("got %q, want \"5\"", p)
	}
	for rev := int64(6); rev <= 100; rev++ {
		a.Announce(rev)
	}
	a.Announce(3) // older than what was sent: nothing to say
	for {
		if p := receive(t, got); p == "100" {
			break
		} else if p == "3" || p == "" {
			t.Fatalf("got %q", p)
		}
	}
	select {
	case p := <-got:
		t.Fatalf("after the burst's highest revision, got %q", p)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestListenEverywhereNeedsAdvertise(t *testing.T) {
	if w, err := Listen("0.0.0.0:0", "", slog.Default()); err == nil {
		w.Close()
		t.Fatal("listening on 0.0.0.0 without an advertised address: want an error")
	}
	w, err := Listen("0.0.0.0:0", "127.0.0.1:9", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Addr() != "127.0.0.1:9" {
		t.Fatalf("Addr() = %q", w.Addr())
	}
}
