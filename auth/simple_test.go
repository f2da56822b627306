package auth

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// tokenTable is the token table of a fake backend, shared by "processes".
type tokenTable struct {
	mu     sync.Mutex
	tokens map[string]tokenRow
}

type tokenRow struct {
	user string
	exp  time.Time
}

type fakeBackend struct {
	Backend // the auth store's methods are not used here
	t       *tokenTable
}

func (f fakeBackend) PutToken(_ context.Context, token, user string, exp time.Time, _ int64) error {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	f.t.tokens[token] = tokenRow{user, exp}
	return nil
}

func (f fakeBackend) LookupToken(_ context.Context, token string) (string, time.Time, bool, error) {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	r, ok := f.t.tokens[token]
	return r.user, r.exp, ok, nil
}

func (f fakeBackend) TouchToken(_ context.Context, token string, exp time.Time) error {
	f.t.mu.Lock()
	defer f.t.mu.Unlock()
	if r, ok := f.t.tokens[token]; ok && r.exp.Before(exp) {
		r.exp = exp
		f.t.tokens[token] = r
	}
	return nil
}

func TestSimpleTokensAcrossProcesses(t *testing.T) {
	table := &tokenTable{tokens: map[string]tokenRow{}}
	ctx := context.Background()
	ttl := 400 * time.Millisecond
	a := newSimpleTokens(fakeBackend{t: table}, ttl, slog.Default())
	b := newSimpleTokens(fakeBackend{t: table}, ttl, slog.Default())
	tok, err := a.assign(ctx, "u", 3, 42)
	if err != nil || !simpleTokenForm(tok) {
		t.Fatalf("assign: %q %v", tok, err)
	}
	for _, bad := range []string{"", "x", "a.b", "a.1.2", ".1", "unknown.1"} {
		if _, ok, _ := b.info(ctx, bad, 3); ok {
			t.Errorf("token %q accepted", bad)
		}
	}
	// Issued by a, accepted by b, at the revision b gives.
	info, ok, err := b.info(ctx, tok, 7)
	if err != nil || !ok || info.Username != "u" || info.Revision != 7 {
		t.Fatalf("b.info: %+v %v %v", info, ok, err)
	}
	// Kept alive by use on a alone, the token stays valid on b, whose own
	// memory of it has expired: the table's expiry was pushed forward.
	for i := 0; i < 6; i++ {
		time.Sleep(ttl / 4)
		if _, ok, _ := a.info(ctx, tok, 3); !ok {
			t.Fatalf("a.info after %d uses: expired", i)
		}
	}
	time.Sleep(50 * time.Millisecond) // the asynchronous renewal
	if _, ok, _ := b.info(ctx, tok, 3); !ok {
		t.Fatal("b.info of a token kept alive through a: expired")
	}
	// Unused for a TTL: dead everywhere.
	time.Sleep(ttl + 100*time.Millisecond)
	a.expire(time.Now())
	for name, p := range map[string]*simpleTokens{"a": a, "b": b} {
		if _, ok, _ := p.info(ctx, tok, 3); ok {
			t.Errorf("%s accepted a token unused for its TTL", name)
		}
	}
}

func simpleTokenForm(s string) bool {
	if len(s) < 18 || s[16] != '.' {
		return false
	}
	for _, c := range s[:16] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return s[17:] == "42"
}
