package auth

import (
	"context"
	"crypto/rand"
	"log/slog"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"
)

// simpleTokens are etcd's simple tokens, "<16 random letters>.<index>",
// valid until unused for the TTL. etcd keeps them in each member's memory;
// shimd keeps them in the database too (sqllog's token table), so that a
// token issued by one process works on every process of the store. Each
// process caches the tokens it has seen: a token costs one SQL lookup on
// the first request a process sees it in, then none. Use pushes a token's
// expiry forward in memory at once and in the table (asynchronously) when
// the stored expiry is less than half a TTL away, so that other processes
// and restarts honour a token kept alive by use.
type simpleTokens struct {
	be  Backend
	ttl time.Duration
	lg  *slog.Logger

	mu     sync.Mutex
	tokens map[string]*simpleToken
}

type simpleToken struct {
	user             string
	expires, storedE time.Time
}

const simpleTokenLetters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func newSimpleTokens(be Backend, ttl time.Duration, lg *slog.Logger) *simpleTokens {
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	return &simpleTokens{be: be, ttl: ttl, lg: lg, tokens: map[string]*simpleToken{}}
}

func (t *simpleTokens) assign(ctx context.Context, user string, rev uint64, index int64) (string, error) {
	var b [16]byte
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(simpleTokenLetters))))
		if err != nil {
			return "", err
		}
		b[i] = simpleTokenLetters[n.Int64()]
	}
	token := string(b[:]) + "." + strconv.FormatInt(index, 10)
	exp := time.Now().Add(t.ttl)
	if err := t.be.PutToken(ctx, token, user, exp, int64(rev)); err != nil {
		return "", err
	}
	t.mu.Lock()
	t.tokens[token] = &simpleToken{user: user, expires: exp, storedE: exp}
	t.mu.Unlock()
	return token, nil
}

// info returns the user of a valid token; rev is the current auth
// revision, which a simple token always carries (it dies instead when its
// user is deleted or changes password).
func (t *simpleTokens) info(ctx context.Context, token string, rev uint64) (*Info, bool, error) {
	prefix, index, ok := strings.Cut(token, ".")
	if !ok || prefix == "" || strings.Contains(index, ".") {
		return nil, false, nil
	}
	if _, err := strconv.ParseUint(index, 10, 64); err != nil {
		return nil, false, nil
	}
	now := time.Now()
	t.mu.Lock()
	tk := t.tokens[token]
	if tk != nil && !tk.expires.After(now) {
		// Unused here for a TTL, but maybe kept alive through another
		// process: the table knows.
		delete(t.tokens, token)
		tk = nil
	}
	if tk == nil {
		t.mu.Unlock()
		user, exp, found, err := t.be.LookupToken(ctx, token)
		if err != nil {
			return nil, false, err
		}
		if !found || !exp.After(now) {
			return nil, false, nil
		}
		t.mu.Lock()
		if tk = t.tokens[token]; tk == nil {
			tk = &simpleToken{user: user, expires: exp, storedE: exp}
			t.tokens[token] = tk
		}
	}
	// One critical section on the common path: a token seen before.
	tk.expires = now.Add(t.ttl)
	touch := tk.storedE.Sub(now) < t.ttl/2
	if touch {
		tk.storedE = tk.expires
	}
	user, exp := tk.user, tk.expires
	t.mu.Unlock()
	if touch {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := t.be.TouchToken(ctx, token, exp); err != nil {
				t.lg.Warn("renewing a simple token failed", "err", err)
			}
		}()
	}
	return &Info{Username: user, Revision: rev}, true, nil
}

// forget drops every cached token: after an auth change, tokens are looked
// up again, and those the change deleted are gone.
func (t *simpleTokens) forget() {
	t.mu.Lock()
	clear(t.tokens)
	t.mu.Unlock()
}

// expire drops tokens unused for the TTL from memory.
func (t *simpleTokens) expire(now time.Time) {
	t.mu.Lock()
	for k, tk := range t.tokens {
		if !tk.expires.After(now) {
			delete(t.tokens, k)
		}
	}
	t.mu.Unlock()
}
