package auth

import (
	"context"
	"errors"

	"github.com/shimd/shimd/sqllog"

	"golang.org/x/crypto/bcrypt"
)

// Authenticate checks a user's password and issues a token; index is the
// number after the dot of a simple token (etcd's raft index; shimd's
// revision). The password is compared with the hash outside any lock and
// never kept, logged or returned in an error.
func (s *Store) Authenticate(ctx context.Context, name, password string, index int64) (string, error) {
	for {
		m, err := s.fresh(ctx)
		if err != nil {
			return "", err
		}
		if !m.enabled() {
			return "", ErrAuthNotEnabled
		}
		u := m.data.Users[name]
		if u == nil {
			return "", ErrAuthFailed
		}
		if u.NoPassword {
			return "", ErrNoPasswordUser
		}
		if bcrypt.CompareHashAndPassword(u.Password, []byte(password)) != nil {
			s.lg.Info("invalid password", "user-name", name)
			return "", ErrAuthFailed
		}
		token, err := s.tp.assign(ctx, name, m.rev(), index)
		if errors.Is(err, sqllog.ErrAuthChanged) {
			// Changed meanwhile, maybe by another process: check again
			// against the store as it is now.
			if err := s.reload(ctx); err != nil {
				return "", err
			}
			continue
		}
		if err != nil {
			return "", err
		}
		// As etcd: if the store changed while the password was checked,
		// check again against the new one.
		if now, err := s.fresh(ctx); err != nil || now.rev() == m.rev() {
			return token, err
		}
	}
}
