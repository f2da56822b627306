package harness

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EtcdConfig describes one embedded etcd member.
type EtcdConfig struct {
	Dir       string
	ClientURL string // "" picks a free loopback port
	Options   Options
	Logger    *zap.Logger // nil = silent
	// NoFsync speeds up the in-process reference, whose durability is not
	// under test.
	NoFsync bool
}

// Embedded is a running single-member etcd.
type Embedded struct {
	Etcd     *embed.Etcd
	Endpoint string
}

// StartEtcd starts a single-member etcd and waits until it serves requests.
// Free ports are picked by binding :0 first, so a start may race with
// another process; it is retried a few times on bind errors.
func StartEtcd(c EtcdConfig) (*Embedded, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		e, err := startEtcdOnce(c)
		if err == nil {
			return e, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func startEtcdOnce(c EtcdConfig) (*Embedded, error) {
	clientURL := c.ClientURL
	if clientURL == "" {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		clientURL = fmt.Sprintf("http://127.0.0.1:%d", p)
	}
	peerPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, err
	}
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))

	cfg := embed.NewConfig()
	cfg.Name = "ref"
	cfg.Dir = c.Dir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Short ticks: a single member elects itself quickly.
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	if c.Options.ElectionMs != 0 {
		cfg.ElectionMs = c.Options.ElectionMs
	}
	cfg.UnsafeNoFsync = c.NoFsync
	if c.Options.MaxTxnOps != 0 {
		cfg.MaxTxnOps = c.Options.MaxTxnOps
	}
	if c.Options.MaxRequestBytes != 0 {
		cfg.MaxRequestBytes = c.Options.MaxRequestBytes
	}
	if c.Options.QuotaBackendBytes != 0 {
		cfg.QuotaBackendBytes = c.Options.QuotaBackendBytes
	}
	// etcd keeps the interval in a process-wide variable that every server
	// started with a non-zero value overwrites, so always set it: the
	// embedded references of later tests must not inherit a short one.
	cfg.WatchProgressNotifyInterval = 10 * time.Minute
	if c.Options.WatchProgressNotifyInterval != 0 {
		cfg.WatchProgressNotifyInterval = c.Options.WatchProgressNotifyInterval
	}
	if c.Options.AuthToken != "" {
		cfg.AuthToken = c.Options.AuthToken
	}
	if c.Options.BcryptCost != 0 {
		cfg.BcryptCost = c.Options.BcryptCost
	}
	lg := c.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
	return &Embedded{Etcd: e, Endpoint: clientURL}, nil
}

// Close stops the member.
func (e *Embedded) Close() { e.Etcd.Close() }

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
