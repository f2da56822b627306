// Command fakeshimd is a stand-in for shimd used by the self-test mode
// (CONFORMANCE_SELFTEST=1): it accepts shimd's command line and serves a real
// etcd 3.6, so the whole harness (launcher, lockstep diff, kill -9 test) can
// be validated against etcd itself.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/shimd/shimd/conformance/harness"
)

func main() {
	listen := flag.String("listen-client-urls", "http://127.0.0.1:2379", "client URL")
	dataDir := flag.String("data-dir", "", "data directory")
	endpoint := flag.String("endpoint", "", "ignored: etcd has no SQL backend")
	maxTxnOps := flag.Uint("max-txn-ops", 0, "max operations per txn (0 = default)")
	maxReq := flag.Uint("max-request-bytes", 0, "max request size (0 = default)")
	quota := flag.Int64("quota-backend-bytes", 0, "space quota (0 = default)")
	progressInterval := flag.Duration("watch-progress-notify-interval", 0, "period of watch progress notifications (0 = default)")
	logLevel := flag.String("log-level", "warn", "log level")
	authToken := flag.String("auth-token", "", "auth token options (\"\" = default)")
	bcryptCost := flag.Uint("bcrypt-cost", 0, "bcrypt cost (0 = default)")
	flag.Parse()
	_ = endpoint
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "fakeshimd: --data-dir is required")
		os.Exit(2)
	}

	lvl, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeshimd:", err)
		os.Exit(2)
	}
	lcfg := zap.NewProductionConfig()
	lcfg.Level = zap.NewAtomicLevelAt(lvl)
	lg, err := lcfg.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeshimd:", err)
		os.Exit(2)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	opts := harness.Options{MaxTxnOps: *maxTxnOps, MaxRequestBytes: *maxReq, QuotaBackendBytes: *quota, WatchProgressNotifyInterval: *progressInterval, AuthToken: *authToken, BcryptCost: *bcryptCost}
	if v := os.Getenv(harness.EnvElectionMs); v != "" {
		ms, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fakeshimd: %s: %v\n", harness.EnvElectionMs, err)
			os.Exit(2)
		}
		opts.ElectionMs = uint(ms)
	}
	e, err := harness.StartEtcd(harness.EtcdConfig{
		Dir:       *dataDir,
		ClientURL: *listen,
		Options:   opts,
		Logger:    lg,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeshimd:", err)
		os.Exit(1)
	}
	select {
	case <-sig:
	case err := <-e.Etcd.Err():
		fmt.Fprintln(os.Stderr, "fakeshimd: etcd error:", err)
		e.Close()
		os.Exit(1)
	}
	e.Close()
}
