package auth

import (
	"context"
	"crypto/x509"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/shimd/shimd/sqllog"
)

// Backend is where the auth store lives: sqllog's auth tables.
type Backend interface {
	LoadAuth(ctx context.Context) (*sqllog.AuthData, error)
	UpdateAuth(ctx context.Context, change func(*sqllog.AuthData) (sqllog.AuthChange, error)) (*sqllog.AuthData, error)
	// AuthGen is the generation (sqllog.AuthData.Gen) last read from the
	// database, at this process's changes, barriers and polls.
	AuthGen() int64
	PutToken(ctx context.Context, token, user string, expires time.Time, rev int64) error
	LookupToken(ctx context.Context, token string) (user string, expires time.Time, ok bool, err error)
	TouchToken(ctx context.Context, token string, expires time.Time) error
	ExpireTokens(ctx context.Context, now time.Time) error
}

// Config is the auth store's settings: etcd's --auth-token,
// --auth-token-ttl, --bcrypt-cost and --client-cert-auth.
type Config struct {
	// Token is "simple" (the default), "jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…]".
	Token string
	// TokenTTL is how long an unused simple token lives (0: 300 s).
	TokenTTL time.Duration
	// BcryptCost hashes passwords (0 or out of bcrypt's range: 10).
	BcryptCost int
	// ClientCertAuth makes a verified client certificate's common name
	// the user of a request without a token.
	ClientCertAuth bool
	Logger         *slog.Logger
}

// DefaultTokenTTL is etcd's --auth-token-ttl default.
const DefaultTokenTTL = 300 * time.Second

// Info is who a request is from, and the auth revision its credentials
// were issued or resolved at.
type Info struct {
	Username string
	Revision uint64
}

type tokenProvider interface {
	assign(ctx context.Context, user string, rev uint64, index int64) (string, error)
	info(ctx context.Context, token string, rev uint64) (*Info, bool, error)
	forget()
	expire(now time.Time)
}

// Store is the auth store of one process.
type Store struct {
	be   Backend
	cfg  Config
	lg   *slog.Logger
	tp   tokenProvider
	cost int

	cur      atomic.Pointer[model]
	reloadMu sync.Mutex
	stop     context.CancelFunc
	wg       sync.WaitGroup
}

// ParseTokenOptions checks an --auth-token value.
func ParseTokenOptions(s string) (kind string, opts map[string]string, err error) {
	parts := strings.Split(s, ",")
	opts = map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || strings.Contains(v, "=") {
			return "", nil, ErrInvalidAuthOpts
		}
		if _, dup := opts[k]; dup {
			return "", nil, ErrInvalidAuthOpts
		}
		opts[k] = v
	}
	switch parts[0] {
	case "simple", "jwt":
		return parts[0], opts, nil
	}
	return "", nil, ErrInvalidAuthOpts
}

// Open loads the auth store from be.
func Open(ctx context.Context, be Backend, cfg Config) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Token == "" {
		cfg.Token = "simple"
	}
	s := &Store{be: be, cfg: cfg, lg: cfg.Logger, cost: cfg.BcryptCost}
	if s.cost < bcrypt.MinCost || s.cost > bcrypt.MaxCost {
		if s.cost != 0 {
			s.lg.Warn("use default bcrypt cost instead of the invalid given cost", "given-cost", s.cost, "default-cost", bcrypt.DefaultCost)
		}
		s.cost = bcrypt.DefaultCost
	}
	kind, opts, err := ParseTokenOptions(cfg.Token)
	if err != nil {
		return nil, err
	}
	if kind == "jwt" {
		if s.tp, err = newJWTTokens(opts); err != nil {
			return nil, err
		}
	} else {
		s.tp = newSimpleTokens(be, cfg.TokenTTL, s.lg)
	}
	d, err := be.LoadAuth(ctx)
	if err != nil {
		return nil, err
	}
	s.cur.Store(newModel(d))
	ctx, s.stop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.expireTokens(ctx)
	return s, nil
}

// Close stops the token expiry.
func (s *Store) Close() {
	s.stop()
	s.wg.Wait()
}

// expireTokens drops unused simple tokens from memory each second, and
// from the table every 10 s.
func (s *Store) expireTokens(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.tp.expire(now)
			if _, simple := s.tp.(*simpleTokens); simple && i%10 == 0 && s.current().enabled() {
				if err := s.be.ExpireTokens(ctx, now); err != nil && ctx.Err() == nil {
					s.lg.Warn("deleting expired tokens failed", "err", err)
				}
			}
		}
	}
}

func (s *Store) current() *model { return s.cur.Load() }

// fresh returns the model of the auth generation the log last read from
// the database, loading it if this process has not yet: a single atomic
// comparison when nothing changed.
func (s *Store) fresh(ctx context.Context) (*model, error) {
	m := s.cur.Load()
	if m.data.Gen() == s.be.AuthGen() {
		return m, nil
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if m = s.cur.Load(); m.data.Gen() >= s.be.AuthGen() {
		return m, nil
	}
	d, err := s.be.LoadAuth(ctx)
	if err != nil {
		return nil, err
	}
	s.install(d)
	return s.cur.Load(), nil
}

// reload reads the auth store from the database and installs it.
func (s *Store) reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	d, err := s.be.LoadAuth(ctx)
	if err != nil {
		return err
	}
	s.install(d)
	return nil
}

// install makes d the current model unless a newer one is.
func (s *Store) install(d *sqllog.AuthData) {
	for {
		m := s.cur.Load()
		if m.data.Gen() >= d.Gen() {
			return
		}
		if s.cur.CompareAndSwap(m, newModel(d)) {
			s.tp.forget()
			return
		}
	}
}

// Enabled reports whether authentication is on, as of the last auth
// generation the log read.
func (s *Store) Enabled(ctx context.Context) (bool, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return false, err
	}
	return m.enabled(), nil
}

// Caller returns the checker of a request: nil when auth is off (every
// check passes). An invalid token fails with ErrInvalidAuthToken.
func (s *Store) Caller(ctx context.Context) (*Checker, error) {
	c, _, err := s.CallerAt(ctx)
	return c, err
}

// CallerAt is Caller, with the auth generation (sqllog.AuthData.Gen) the
// checker judges by, auth off included: what a write passes to
// sqllog.CheckedAt.
func (s *Store) CallerAt(ctx context.Context) (*Checker, int64, error) {
	m, err := s.fresh(ctx)
	if err != nil {
		return nil, 0, err
	}
	c, err := s.caller(ctx, m)
	return c, m.data.Gen(), err
}

// caller is Caller against model m.
func (s *Store) caller(ctx context.Context, m *model) (*Checker, error) {
	if !m.enabled() {
		return nil, nil
	}
	c := &Checker{m: m}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		ts, ok := md[rpctypes.TokenFieldNameGRPC]
		if !ok {
			ts, ok = md[rpctypes.TokenFieldNameSwagger]
		}
		if ok && len(ts) > 0 {
			info, valid, err := s.tp.info(ctx, strings.TrimPrefix(ts[0], "Bearer "), m.rev())
			if err != nil {
				return nil, err
			}
			if !valid {
				return nil, ErrInvalidAuthToken
			}
			c.Info = info
			return c, nil
		}
	}
	if s.cfg.ClientCertAuth {
		c.Info = infoFromTLS(ctx, m.rev())
	}
	return c, nil
}

// infoFromTLS is etcd's: the common name of the first verified chain's
// leaf, unless the request came through the gRPC gateway.
func infoFromTLS(ctx context.Context, rev uint64) *Info {
	p, ok := peer.FromContext(ctx)
	if !ok || p == nil || p.AuthInfo == nil {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	for _, chain := range ti.State.VerifiedChains {
		if len(chain) < 1 {
			continue
		}
		md, ok := metadata.FromIncomingContext(ctx)
		if !ok || len(md["grpcgateway-accept"]) > 0 {
			return nil
		}
		return &Info{Username: commonName(chain[0]), Revision: rev}
	}
	return nil
}

func commonName(c *x509.Certificate) string { return c.Subject.CommonName }

// Stale is etcd's check after a serialized read: the credentials' auth
// revision must still be the current one, with the model reloaded if the
// read's barrier saw the database move.
func (s *Store) Stale(ctx context.Context, c *Checker) error {
	if c == nil || c.Info == nil || c.Info.Revision == 0 {
		return nil
	}
	m, err := s.fresh(ctx)
	if err != nil {
		return err
	}
	if c.Info.Revision != m.rev() {
		return ErrAuthOldRevision
	}
	return nil
}
