package sqllog

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBarrierNeverSharesAReadInFlight: a call that arrives while a read is
// in flight is answered by the read after it, not by that one.
func TestBarrierNeverSharesAReadInFlight(t *testing.T) {
	var b barriers
	var started atomic.Int64
	release := make(chan struct{})
	inFlight := make(chan int64, 4)
	read := func(context.Context) error {
		n := started.Add(1)
		inFlight <- n
		<-release
		return nil
	}
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { first <- b.wait(ctx, read) }()
	if n := <-inFlight; n != 1 {
		t.Fatalf("first read is number %d", n)
	}
	second := make(chan error, 1)
	go func() { second <- b.wait(ctx, read) }()
	// Let the second call reach wait while read 1 is in flight: it must not
	// return when read 1 ends.
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.next != nil })
	release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if n := <-inFlight; n != 2 {
		t.Fatalf("second read is number %d", n)
	}
	select {
	case <-second:
		t.Fatal("a call returned on a read that had started before it")
	default:
	}
	release <- struct{}{}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

// TestBarrierCoalesces: many concurrent calls cost far fewer reads, every
// call gets its read's error, and a call whose context ends returns then.
func TestBarrierCoalesces(t *testing.T) {
	var b barriers
	var reads atomic.Int64
	fail := errors.New("database down")
	read := func(context.Context) error {
		reads.Add(1)
		time.Sleep(2 * time.Millisecond) // a round trip
		return fail
	}
	const calls = 200
	var wg sync.WaitGroup
	var wrong atomic.Int64
	for range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.wait(context.Background(), read); !errors.Is(err, fail) {
				wrong.Add(1)
			}
		}()
	}
	wg.Wait()
	if wrong.Load() != 0 {
		t.Fatalf("%d calls did not get their read's error", wrong.Load())
	}
	if n := reads.Load(); n >= calls/2 {
		t.Fatalf("%d calls made %d reads; want them shared", calls, n)
	}
	t.Logf("%d concurrent calls, %d reads", calls, reads.Load())

	block := make(chan struct{})
	defer close(block)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.wait(ctx, func(context.Context) error { <-block; return nil }) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("call with an ended context: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}
