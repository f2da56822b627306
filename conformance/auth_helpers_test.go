package conformance

import (
	"context"
	"regexp"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/metadata"
)

// Helpers of the auth tests: each server issues its own tokens, so a
// scenario keeps, per user, the token each server gave, and sends each
// server its own. Tokens are compared by form, not by value.

// authScenario is a scenario with the tokens each server issued, by user.
type authScenario struct {
	*sc
	tokens map[string]map[string]string // user -> server name -> token
}

func newAuthScenario(c *sc) *authScenario {
	return &authScenario{sc: c, tokens: map[string]map[string]string{}}
}

func authClient(s *server) pb.AuthClient { return pb.NewAuthClient(s.cli.ActiveConnection()) }

// bogusUser sends a token neither server issued.
const bogusUser = "<bogus>"

// as returns ctx carrying user's token on s ("" for no token).
func (a *authScenario) as(ctx context.Context, s *server, user string) context.Context {
	switch user {
	case "":
		return ctx
	case bogusUser:
		return metadata.AppendToOutgoingContext(ctx, "token", "notAToken.1")
	}
	return metadata.AppendToOutgoingContext(ctx, "token", a.tokens[user][s.name])
}

var (
	simpleTokenRE = regexp.MustCompile(`^[A-Za-z]{16}\.[0-9]+$`)
	jwtRE         = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)
)

// login authenticates user on both servers and keeps the tokens.
func (a *authScenario) login(user, password string) error {
	a.t.Helper()
	r := &pb.AuthenticateRequest{Name: user, Password: password}
	_, err := a.do("Authenticate "+user, func(ctx context.Context, s *server) (any, error) {
		resp, err := authClient(s).Authenticate(ctx, r)
		if err != nil {
			return nil, err
		}
		if a.tokens[user] == nil {
			a.tokens[user] = map[string]string{}
		}
		a.tokens[user][s.name] = resp.Token
		switch {
		case simpleTokenRE.MatchString(resp.Token):
			resp.Token = "<simple token>"
		case jwtRE.MatchString(resp.Token):
			resp.Token = "<jwt>"
		}
		return resp, nil
	})
	return err
}

// auth runs one Auth RPC as user on both servers.
func (a *authScenario) auth(user, desc string, fn func(ctx context.Context, c pb.AuthClient) (any, error)) (any, error) {
	a.t.Helper()
	return a.do(desc+" as "+strings.TrimSpace(user), func(ctx context.Context, s *server) (any, error) {
		return fn(a.as(ctx, s, user), authClient(s))
	})
}

// kv runs one KV RPC as user on both servers.
func (a *authScenario) kv(user, desc string, fn func(ctx context.Context, c pb.KVClient) (any, error)) (any, error) {
	a.t.Helper()
	return a.do(desc+" as "+user, func(ctx context.Context, s *server) (any, error) {
		return fn(a.as(ctx, s, user), s.kv)
	})
}

// errOnly runs an RPC whose responses differ between the servers by
// nature (Status, Hash, Defragment): only success or the error counts.
func (a *authScenario) errOnly(user, desc string, fn func(ctx context.Context, s *server) error) error {
	a.t.Helper()
	_, err := a.do(desc+" as "+user, func(ctx context.Context, s *server) (any, error) {
		if err := fn(a.as(ctx, s, user), s); err != nil {
			return nil, err
		}
		return "ok", nil
	})
	return err
}

// watchCreate opens a watch as user and returns its first response.
func (a *authScenario) watchCreate(user string, r *pb.WatchCreateRequest) (any, error) {
	a.t.Helper()
	return a.do("Watch create "+oneLine(r)+" as "+user, func(ctx context.Context, s *server) (any, error) {
		ctx, cancel := context.WithCancel(a.as(ctx, s, user))
		defer cancel()
		w, err := pb.NewWatchClient(s.cli.ActiveConnection()).Watch(ctx)
		if err != nil {
			return nil, err
		}
		if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: r}}); err != nil {
			return nil, err
		}
		return w.Recv()
	})
}

func perm(t authpb.Permission_Type, key, end string) *authpb.Permission {
	p := &authpb.Permission{PermType: t, Key: []byte(key)}
	if end != "" {
		p.RangeEnd = []byte(end)
	}
	return p
}

func rangeReq(key, end string) *pb.RangeRequest {
	r := &pb.RangeRequest{Key: []byte(key)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return r
}
