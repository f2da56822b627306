package postgres

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// TestHangingFirstHost: the first host of a multi-host DSN accepts TCP
// connections and never answers (a frozen server). With the default 5 s
// connect timeout, a connection attempt under a 2 s deadline (the health
// check's) must still reach the second host.
func TestHangingFirstHost(t *testing.T) {
	hang := serveTCP(t, func(c net.Conn) {}) // accepted, never answered
	reached := make(chan time.Time, 8)
	second := serveTCP(t, func(c net.Conn) { reached <- time.Now(); c.Close() })
	dsn := fmt.Sprintf("postgres://u@%s,%s/db?sslmode=disable&target_session_attrs=read-write", hang, second)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnectTimeout = 5 * time.Second
	cfg.DialFunc = keepaliveDialer().DialContext
	connector := stdlib.GetConnector(*cfg, stdlib.OptionBeforeConnect(fitConnectTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if c, err := connector.Connect(ctx); err == nil {
		c.Close()
		t.Fatal("connected to a server that closes every connection")
	}
	select {
	case at := <-reached:
		t.Logf("second host tried %v after the start", at.Sub(start).Round(time.Millisecond))
	default:
		t.Fatalf("the second host was never tried within the 2 s deadline: the hanging first host took it all")
	}
}

func TestFitConnectTimeout(t *testing.T) {
	cfg, err := pgx.ParseConfig("postgres://u@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/db?sslmode=prefer")
	if err != nil {
		t.Fatal(err)
	}
	if n := hostCount(cfg); n != 3 {
		t.Fatalf("hostCount = %d, want 3 (sslmode=prefer lists each host twice)", n)
	}
	for _, tc := range []struct {
		configured, left, wantMax, wantMin time.Duration
	}{
		{5 * time.Second, 3 * time.Second, time.Second, 900 * time.Millisecond},
		{500 * time.Millisecond, 30 * time.Second, 500 * time.Millisecond, 500 * time.Millisecond},
		{5 * time.Second, 100 * time.Millisecond, minHostTimeout, minHostTimeout},
	} {
		c := *cfg
		c.ConnectTimeout = tc.configured
		ctx, cancel := context.WithTimeout(context.Background(), tc.left)
		fitConnectTimeout(ctx, &c)
		cancel()
		if c.ConnectTimeout > tc.wantMax || c.ConnectTimeout < tc.wantMin {
			t.Errorf("configured %v, %v left for 3 hosts: per-host timeout %v, want in [%v, %v]", tc.configured, tc.left, c.ConnectTimeout, tc.wantMin, tc.wantMax)
		}
	}
	// No deadline: the configured timeout stands.
	c := *cfg
	c.ConnectTimeout = 5 * time.Second
	fitConnectTimeout(context.Background(), &c)
	if c.ConnectTimeout != 5*time.Second {
		t.Errorf("without a deadline the per-host timeout became %v", c.ConnectTimeout)
	}
}

// serveTCP serves handle on a loopback port until the test ends.
func serveTCP(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		open []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			handle(c)
		}
	}()
	return ln.Addr().String()
}
