package sqllog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Simple tokens are kept in the database so that a token issued by one
// process is accepted by every process on the store: each process caches
// what it has seen, and asks the table only about a token it has never
// seen. A token's row has an absolute expiry, pushed forward while it is
// used (see package auth).

// ErrAuthChanged is PutToken's refusal: the auth store is no longer at
// the revision the password was checked at (or auth was disabled).
var ErrAuthChanged = errors.New("auth store changed")

// PutToken records a simple token issued to user, valid until expires,
// if the auth store is still enabled at revision rev: a token is never
// stored after the change that deleted its user or disabled auth.
func (a *authTables) PutToken(ctx context.Context, token, user string, expires time.Time, rev int64) error {
	res, err := a.st.be.Write.ExecContext(ctx, a.st.q(`INSERT INTO `+authTokenTable+` (token_hash, token, user_name, expires_at) SELECT ?, ?, ?, ? FROM `+authTable+` WHERE id = 1 AND rev = ? AND enabled = ?`),
		nameHash(token), []byte(token), []byte(user), expires.UnixMilli(), rev, true)
	if err != nil {
		return fmt.Errorf("store token: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return ErrAuthChanged
	}
	return nil
}

// LookupToken returns the user and expiry of a simple token; ok is false
// for a token the table does not hold.
func (a *authTables) LookupToken(ctx context.Context, token string) (user string, expires time.Time, ok bool, err error) {
	var name []byte
	var ms int64
	err = a.st.be.Read.QueryRowContext(ctx, a.st.q(`SELECT user_name, expires_at FROM `+authTokenTable+` WHERE token_hash = ? AND token = ?`),
		nameHash(token), []byte(token)).Scan(&name, &ms)
	if errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, false, nil
	}
	if err != nil {
		return "", time.Time{}, false, fmt.Errorf("look up token: %w", err)
	}
	return string(name), time.UnixMilli(ms), true, nil
}

// TouchToken moves a simple token's expiry to expires (never back).
func (a *authTables) TouchToken(ctx context.Context, token string, expires time.Time) error {
	_, err := a.st.be.Write.ExecContext(ctx, a.st.q(`UPDATE `+authTokenTable+` SET expires_at = ? WHERE token_hash = ? AND token = ? AND expires_at < ?`),
		expires.UnixMilli(), nameHash(token), []byte(token), expires.UnixMilli())
	if err != nil {
		return fmt.Errorf("renew token: %w", err)
	}
	return nil
}

// ExpireTokens deletes the simple tokens that expired before now.
func (a *authTables) ExpireTokens(ctx context.Context, now time.Time) error {
	_, err := a.st.be.Write.ExecContext(ctx, a.st.q(`DELETE FROM `+authTokenTable+` WHERE expires_at < ?`), now.UnixMilli())
	if err != nil {
		return fmt.Errorf("expire tokens: %w", err)
	}
	return nil
}
