package sqllog

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// writer is the log's single writer: it queues write requests, groups
// those arriving together into one batch (group commit) and commits each
// batch (see commit.go). Every change of this process goes through it.
type writer struct {
	s    *state
	st   *store
	r    *reader
	f    *follower
	hub  *hub
	auth *authTables

	writes   chan *writeReq
	maxBatch int
	// fastCooldown counts the batches that skip the one-statement append
	// after it found another process's write. unsure is set when a
	// commit's outcome is unknown.
	fastCooldown int
	unsure       bool
	// For readiness (stalled): whether a batch is in flight, and since when
	// (UnixNano) writes have not completed, counted across batches that ran
	// out of time: after a commit hung on a frozen primary, the next one may
	// first wait for a connection to it.
	inFlight   atomic.Bool
	stallSince atomic.Int64

	quit    chan struct{}
	stopped chan struct{}
	closeMu sync.RWMutex
	closed  bool
}

type writeReq struct {
	ctx context.Context
	fn  func(tw *TxnWrite) error
	// authGen is the auth generation the request was checked at
	// (CheckedAt), 0 for none.
	authGen int64
	err     error
	done    chan struct{}
}

// Write runs fn as one write request and returns once its changes are
// durable. fn sees every earlier write; if it returns an error its changes
// are discarded and no revision is used. Requests arriving together are
// committed in one database transaction (group commit).
func (w *writer) Write(ctx context.Context, fn func(tw *TxnWrite) error) error {
	r := &writeReq{ctx: ctx, fn: fn, authGen: checkedAt(ctx), done: make(chan struct{})}
	w.closeMu.RLock()
	if w.closed {
		w.closeMu.RUnlock()
		return ErrClosed
	}
	select {
	case w.writes <- r:
	case <-ctx.Done():
		w.closeMu.RUnlock()
		return ctx.Err()
	}
	w.closeMu.RUnlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		// The request may still commit, as an etcd proposal may still apply.
		return ctx.Err()
	}
}

// stalled is how long a batch in flight, and the ones before it that ran out
// of time, have been committing (0 if none is in flight).
func (w *writer) stalled() time.Duration {
	if t := w.stallSince.Load(); w.inFlight.Load() && t != 0 {
		return time.Since(time.Unix(0, t))
	}
	return 0
}

func (w *writer) start() {
	w.writes = make(chan *writeReq, 1024)
	w.quit = make(chan struct{})
	w.stopped = make(chan struct{})
	go w.loop()
}

// stop refuses new requests and returns after the batch in flight; it
// reports whether the writer was running.
func (w *writer) stop() bool {
	w.closeMu.Lock()
	if w.closed {
		w.closeMu.Unlock()
		return false
	}
	w.closed = true
	w.closeMu.Unlock()
	close(w.quit)
	<-w.stopped
	return true
}

func (w *writer) loop() {
	defer close(w.stopped)
	for {
		var reqs []*writeReq
		select {
		case <-w.quit:
			for {
				select {
				case r := <-w.writes:
					r.err = ErrClosed
					close(r.done)
				default:
					return
				}
			}
		case r := <-w.writes:
			reqs = append(reqs, r)
		}
	gather:
		for len(reqs) < w.maxBatch {
			select {
			case r := <-w.writes:
				reqs = append(reqs, r)
			default:
				break gather
			}
		}
		w.commit(reqs)
		for _, r := range reqs {
			close(r.done)
		}
	}
}

// run runs each request's function against b, undoing the changes of those
// that fail. A request checked at an auth generation other than b's fails
// with ErrAuthStale without running.
func (w *writer) run(reqs []*writeReq, b *batch) {
	for _, r := range reqs {
		if r.ctx.Err() != nil {
			r.err = r.ctx.Err()
			continue
		}
		if r.authGen != 0 && r.authGen != b.authGen {
			r.err = ErrAuthStale
			continue
		}
		tw := &TxnWrite{w: w, b: b, beginRev: b.rev, mark: len(b.changes), opsMark: len(b.leaseOps)}
		err := r.fn(tw)
		if tw.ops > 1 {
			txnCounter.Inc()
		}
		if err != nil {
			b.unstage(w.s, tw.mark)
			b.leaseOps = b.leaseOps[:tw.opsMark]
			r.err = err
			if b.needTx {
				return // the batch runs again under the lock
			}
			continue
		}
		if tw.Changes() > 0 {
			b.rev++
		}
	}
}

// fail sets err on the requests that have none.
func fail(reqs []*writeReq, err error) {
	for _, r := range reqs {
		if r.err == nil {
			r.err = err
		}
	}
}
