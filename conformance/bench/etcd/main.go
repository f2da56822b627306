// Command etcd is the benchmark's reference: a single-member etcd 3.7 (the
// conformance module's version) with etcd's default settings — fsync on,
// 100 ms heartbeat, 1 s election, 2 GiB quota — run as its own process so
// that its CPU time and memory can be measured like shimd's. It takes the
// flags of shimd the benchmark passes (--listen-client-urls, --data-dir,
// --log-level); --endpoint and the other shimd-only flags are rejected.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	listen := flag.String("listen-client-urls", "http://127.0.0.1:2379", "client URL")
	dataDir := flag.String("data-dir", "", "data directory")
	logLevel := flag.String("log-level", "warn", "log level")
	flag.Parse()
	if *dataDir == "" {
		fail("--data-dir is required")
	}
	lvl, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		fail(err)
	}
	lcfg := zap.NewProductionConfig()
	lcfg.Level = zap.NewAtomicLevelAt(lvl)
	lg, err := lcfg.Build()
	if err != nil {
		fail(err)
	}
	cu, err := url.Parse(*listen)
	if err != nil {
		fail(err)
	}
	// The peer port is never used by a single member, but etcd binds it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	pu, _ := url.Parse(fmt.Sprintf("http://%s", l.Addr()))
	l.Close()

	cfg := embed.NewConfig() // etcd's defaults, as the etcd binary has them
	cfg.Name = "bench"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fail(err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		fail(err)
	case <-time.After(60 * time.Second):
		fail("not ready after 60s")
	}
	select {
	case <-sig:
	case err := <-e.Err():
		e.Close()
		fail(err)
	}
	e.Close()
}

func fail(v any) {
	fmt.Fprintln(os.Stderr, "bench/etcd:", v)
	os.Exit(1)
}
