package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwtTokens are etcd's JWT tokens: signed claims of the user name, the
// auth revision at issue and an expiry. Any process with the key verifies
// them without state; a token older than the auth revision fails with
// ErrAuthOldRevision.
type jwtTokens struct {
	method     jwt.SigningMethod
	key        any
	ttl        time.Duration
	verifyOnly bool
}

// DefaultJWTTTL is etcd's JWT lifetime when the ttl option is not given.
const DefaultJWTTTL = 5 * time.Minute

func newJWTTokens(opts map[string]string) (*jwtTokens, error) {
	t := &jwtTokens{ttl: DefaultJWTTTL}
	if s := opts["ttl"]; s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, ErrInvalidAuthOpts
		}
		t.ttl = d
	}
	var pub, priv []byte
	var err error
	if f := opts["pub-key"]; f != "" {
		if pub, err = os.ReadFile(f); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidAuthOpts, err)
		}
	}
	if f := opts["priv-key"]; f != "" {
		if priv, err = os.ReadFile(f); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidAuthOpts, err)
		}
	}
	t.method = jwt.GetSigningMethod(opts["sign-method"])
	if t.method == nil {
		return nil, ErrInvalidAuthMethod
	}
	switch t.method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(priv) == 0 {
			return nil, ErrMissingKey
		}
		t.key = priv
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
		t.key, t.verifyOnly, err = keyPair(priv, pub, jwt.ParseRSAPrivateKeyFromPEM, jwt.ParseRSAPublicKeyFromPEM,
			func(k *rsa.PrivateKey, p *rsa.PublicKey) bool { return p.Equal(k.Public()) })
	case *jwt.SigningMethodECDSA:
		t.key, t.verifyOnly, err = keyPair(priv, pub, jwt.ParseECPrivateKeyFromPEM, jwt.ParseECPublicKeyFromPEM,
			func(k *ecdsa.PrivateKey, p *ecdsa.PublicKey) bool { return p.Equal(k.Public()) })
	case *jwt.SigningMethodEd25519:
		t.key, t.verifyOnly, err = keyPair(priv, pub,
			func(b []byte) (ed25519.PrivateKey, error) {
				k, err := jwt.ParseEdPrivateKeyFromPEM(b)
				if err != nil {
					return nil, err
				}
				return k.(ed25519.PrivateKey), nil
			},
			func(b []byte) (ed25519.PublicKey, error) {
				k, err := jwt.ParseEdPublicKeyFromPEM(b)
				if err != nil {
					return nil, err
				}
				return k.(ed25519.PublicKey), nil
			},
			func(k ed25519.PrivateKey, p ed25519.PublicKey) bool { return p.Equal(k.Public()) })
	default:
		return nil, fmt.Errorf("unsupported signing method: %T", t.method)
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

// keyPair parses a private and/or public key: the private one signs (and
// must match the public one if both are given); a public one alone only
// verifies.
func keyPair[K, P any](priv, pub []byte, parseK func([]byte) (K, error), parseP func([]byte) (P, error), match func(K, P) bool) (any, bool, error) {
	var k K
	var p P
	var err error
	if len(priv) > 0 {
		if k, err = parseK(priv); err != nil {
			return nil, false, err
		}
	}
	if len(pub) > 0 {
		if p, err = parseP(pub); err != nil {
			return nil, false, err
		}
	}
	switch {
	case len(priv) == 0 && len(pub) == 0:
		return nil, false, ErrMissingKey
	case len(priv) == 0:
		return p, true, nil
	case len(pub) > 0 && !match(k, p):
		return nil, false, ErrKeyMismatch
	}
	return k, false, nil
}

func (t *jwtTokens) assign(_ context.Context, user string, rev uint64, _ int64) (string, error) {
	if t.verifyOnly {
		return "", ErrVerifyOnly
	}
	tk := jwt.NewWithClaims(t.method, jwt.MapClaims{
		"username": user,
		"revision": rev,
		"exp":      time.Now().Add(t.ttl).Unix(),
	})
	return tk.SignedString(t.key)
}

func (t *jwtTokens) info(_ context.Context, token string, _ uint64) (*Info, bool, error) {
	parsed, err := jwt.Parse(token, func(tk *jwt.Token) (any, error) {
		if tk.Method.Alg() != t.method.Alg() {
			return nil, errors.New("invalid signing method")
		}
		switch k := t.key.(type) {
		case *rsa.PrivateKey:
			return &k.PublicKey, nil
		case *ecdsa.PrivateKey:
			return &k.PublicKey, nil
		case ed25519.PrivateKey:
			return k.Public(), nil
		}
		return t.key, nil
	})
	if err != nil || !parsed.Valid {
		return nil, false, nil
	}
	claims, ok := parsed.Claims.(jwt.MapClaims)
	if !ok {
		return nil, false, nil
	}
	user, ok := claims["username"].(string)
	if !ok {
		return nil, false, nil
	}
	rev, ok := claims["revision"].(float64)
	if !ok {
		return nil, false, nil
	}
	return &Info{Username: user, Revision: uint64(rev)}, true, nil
}

func (t *jwtTokens) forget()          {}
func (t *jwtTokens) expire(time.Time) {}
