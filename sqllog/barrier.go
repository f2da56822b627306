package sqllog

import (
	"context"
	"sync"
)

// barriers coalesces concurrent Barrier calls into shared reads of the
// database, as etcd's linearizable read loop serves every read waiting on
// it with one ReadIndex. A call joins the next read to start, never one
// already in flight (which may have read the meta row before the call
// began, and so missed a commit that completed before it): one read is in
// flight at a time, and all the calls that arrived meanwhile share the one
// after it. Under load a read costs each caller at most two round trips
// of the meta row instead of a query each.
type barriers struct {
	mu      sync.Mutex
	next    *barrierRound // collecting calls; starts when the read in flight ends
	running bool
}

// barrierRound is one shared read and the calls waiting on it.
type barrierRound struct {
	done chan struct{}
	err  error
}

// wait returns once a call of read that started after wait was called has
// returned, with its error; or with ctx's, if ctx ends first. read runs on
// its own goroutine, not bound by any caller's ctx (it bounds itself).
func (b *barriers) wait(ctx context.Context, read func(context.Context) error) error {
	b.mu.Lock()
	r := b.next
	if r == nil {
		r = &barrierRound{done: make(chan struct{})}
		b.next = r
	}
	if !b.running {
		b.running = true
		go b.run(read)
	}
	b.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run serves rounds until none is waiting.
func (b *barriers) run(read func(context.Context) error) {
	b.mu.Lock()
	for b.next != nil {
		r := b.next
		b.next = nil
		b.mu.Unlock()
		r.err = read(context.Background())
		close(r.done)
		b.mu.Lock()
	}
	b.running = false
	b.mu.Unlock()
}
