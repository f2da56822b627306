package postgres

import (
	"context"
	"net"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Connecting to a multi-host DSN (postgres://u@h1,h2/db?target_session_attrs=read-write)
// when a host hangs.
//
// pgx gives each host the whole ConnectTimeout, but within the caller's
// context: with the default 5 s and a health check's 2 s, a first host that
// accepts TCP connections and never answers (a frozen server; a SYN that
// gets no answer behaves the same) uses all of the caller's time, and the
// second host, the new primary, is never tried. So each connection attempt
// shares the time the caller has left between the hosts.

// minHostTimeout is the least time a host is given, however close the
// caller's deadline: a healthy server on a LAN answers well within it.
const minHostTimeout = 250 * time.Millisecond

// fitConnectTimeout is the connector's BeforeConnect hook: it lowers the
// per-host connect timeout of cfg, a copy for this one connection, so that
// every host of the DSN gets a share of the time left before ctx's deadline.
func fitConnectTimeout(ctx context.Context, cfg *pgx.ConnConfig) error {
	dl, ok := ctx.Deadline()
	if !ok {
		return nil
	}
	n := hostCount(cfg)
	if n < 2 {
		return nil
	}
	share := max(time.Until(dl)/time.Duration(n), minHostTimeout)
	if cfg.ConnectTimeout == 0 || share < cfg.ConnectTimeout {
		cfg.ConnectTimeout = share
	}
	return nil
}

// hostCount is the number of distinct addresses pgx tries (it lists a host
// twice when sslmode=prefer allows TLS and plain).
func hostCount(cfg *pgx.ConnConfig) int {
	seen := map[string]bool{net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))): true}
	for _, fb := range cfg.Fallbacks {
		seen[net.JoinHostPort(fb.Host, strconv.Itoa(int(fb.Port)))] = true
	}
	return len(seen)
}

// keepaliveDialer dials with TCP keepalives that notice a dead or cut-off
// server in about 20 s (Linux's default is two hours), for the connections
// that sit idle waiting on the server: LISTEN, and pooled ones.
func keepaliveDialer() *net.Dialer {
	return &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3}}
}
