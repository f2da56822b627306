package sqllog

import (
	"context"
	"errors"
	"testing"
	"time"
)

func writeLease(t *testing.T, l *Log, fn func(tw *TxnWrite)) {
	t.Helper()
	if err := l.Write(context.Background(), func(tw *TxnWrite) error { fn(tw); return nil }); err != nil {
		t.Fatal(err)
	}
}

func rowExpiry(t *testing.T, l *Log, id int64) time.Time {
	t.Helper()
	var ms int64
	if err := l.be.Read.QueryRow(`SELECT expires_at FROM shimd_lease WHERE id = ?`, id).Scan(&ms); err != nil {
		t.Fatal(err)
	}
	return time.UnixMilli(ms)
}

func mapLease(l *Log, id int64) (Lease, bool) {
	l.state.mu.RLock()
	defer l.state.mu.RUnlock()
	if ls := l.state.leases.byID[id]; ls != nil {
		return *ls, true
	}
	return Lease{}, false
}

func epochNow(l *Log) int64 {
	l.state.mu.RLock()
	defer l.state.mu.RUnlock()
	return l.state.leases.epoch
}

// TestRenewLease checks renewal against the expiry: a live lease's row and
// map entry move to now+TTL; an expired one is refused with ErrLeaseExpired
// and its row left for the revocation; an unknown one is not found.
func TestRenewLease(t *testing.T) {
	l, _ := openTemp(t)
	ctx := context.Background()
	t0 := time.UnixMilli(time.Now().UnixMilli())
	writeLease(t, l, func(tw *TxnWrite) { tw.GrantLease(Lease{ID: 7, TTL: 10, Expiry: t0.Add(10 * time.Second)}) })

	now := t0.Add(9 * time.Second)
	if ttl, err := l.RenewLease(ctx, 7, now); err != nil || ttl != 10 {
		t.Fatalf("renew a live lease: TTL %d, err %v", ttl, err)
	}
	want := now.Add(10 * time.Second)
	if got := rowExpiry(t, l, 7); !got.Equal(want) {
		t.Errorf("row expires at %v after the renewal, want %v", got, want)
	}
	if ls, _ := mapLease(l, 7); !ls.Expiry.Equal(want) {
		t.Errorf("map: expiry %v after the renewal, want %v", ls.Expiry, want)
	}

	if _, err := l.RenewLease(ctx, 7, want); !errors.Is(err, ErrLeaseExpired) {
		t.Errorf("renew at the expiry: err %v, want ErrLeaseExpired", err)
	}
	if got := rowExpiry(t, l, 7); !got.Equal(want) {
		t.Errorf("a refused renewal moved the row's expiry to %v", got)
	}
	if _, err := l.RenewLease(ctx, 8, now); !errors.Is(err, ErrLeaseNotFound) {
		t.Errorf("renew an unknown lease: err %v, want ErrLeaseNotFound", err)
	}
}

// TestLearnLease checks what a lease read from the table does to the map:
// it moves a known lease's expiry forward only, and adds an unknown lease
// only if no lease left the map since the read began, so that a row read
// just before its revocation was applied cannot bring the lease back.
func TestLearnLease(t *testing.T) {
	l, _ := openTemp(t)
	t0 := time.UnixMilli(time.Now().UnixMilli())
	ls := Lease{ID: 7, TTL: 10, Expiry: t0.Add(10 * time.Second)}
	writeLease(t, l, func(tw *TxnWrite) { tw.GrantLease(ls) })

	epoch := epochNow(l)
	later := ls
	later.Expiry = ls.Expiry.Add(time.Second)
	l.learnLease(later, epoch)
	l.learnLease(ls, epoch)
	if got, _ := mapLease(l, 7); !got.Expiry.Equal(later.Expiry) {
		t.Errorf("expiry %v, want the later one read, %v", got.Expiry, later.Expiry)
	}

	writeLease(t, l, func(tw *TxnWrite) { tw.RevokeLease(7) })
	l.learnLease(later, epoch) // read before the revocation was applied
	if _, ok := mapLease(l, 7); ok {
		t.Error("a lease read before its revocation was applied is back in the map")
	}

	other := Lease{ID: 8, TTL: 5, Expiry: t0.Add(5 * time.Second)}
	l.learnLease(other, epochNow(l))
	if got, ok := mapLease(l, 8); !ok || got != other {
		t.Errorf("a lease read with no revocation since: map has %v (%v), want %v", got, ok, other)
	}
}
