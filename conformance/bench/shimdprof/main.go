// Command shimdprof is shimd's server (the same sqllog, server and driver
// packages, wired as cmd/shimd wires them with its default flags, minus TLS,
// the HTTP endpoints and auto-compaction, which the benchmark does not use)
// plus a CPU profiler the benchmark switches on and off per phase:
//
//	GET http://<--pprof-addr>/prof/start?path=FILE   starts writing a CPU profile to FILE
//	GET http://<--pprof-addr>/prof/stop              stops it
//
// net/http/pprof is served there too. The benchmark uses it instead of
// cmd/shimd when run with --profile DIR.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/drivers/mysql"
	"github.com/shimd/shimd/drivers/postgres"
	"github.com/shimd/shimd/drivers/sqlite"
	"github.com/shimd/shimd/server"
	"github.com/shimd/shimd/sqllog"
)

func main() {
	listen := flag.String("listen-client-urls", "http://127.0.0.1:2379", "client URL")
	dataDir := flag.String("data-dir", "", "data directory")
	endpoint := flag.String("endpoint", "", "database (as shimd's --endpoint)")
	logLevel := flag.String("log-level", "warn", "log level")
	vacuumFull := flag.Bool("postgres-vacuum-full", false, "as shimd's flag")
	cacheSize := flag.Int64("value-cache-size", sqllog.DefaultValueCacheBytes, "as shimd's flag")
	pprofAddr := flag.String("pprof-addr", "127.0.0.1:0", "address of the profiling endpoints")
	flag.Parse()

	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		fail(err)
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	var be *drivers.Backend
	var err error
	opts := drivers.Options{MaxOpenConns: 16, ConnectTimeout: 5 * time.Second} // shimd's flag defaults
	switch ep := *endpoint; {
	case ep == "":
		be, err = sqlite.Open(filepath.Join(*dataDir, sqlite.FileName))
	case strings.HasPrefix(ep, "postgres://"), strings.HasPrefix(ep, "postgresql://"):
		opts.PostgresVacuumFull = *vacuumFull
		be, err = postgres.Open(ctx, ep, opts)
	case strings.HasPrefix(ep, "mysql://"):
		be, err = mysql.Open(ctx, ep, opts)
	default:
		err = fmt.Errorf("unsupported --endpoint %q", ep)
	}
	if err != nil {
		fail(err)
	}
	if *cacheSize == 0 {
		*cacheSize = -1 // as cmd/shimd: the flag's 0 disables the cache
	}
	log, err := sqllog.Open(ctx, be, sqllog.Options{Logger: lg, PollInterval: sqllog.DefaultPollInterval, ValueCacheBytes: *cacheSize})
	if err != nil {
		fail(err)
	}
	defer log.Close()
	srv := server.New(log, server.Config{Name: "default", ClientURLs: []string{*listen}, Logger: lg})
	defer srv.Close()
	g := grpc.NewServer(srv.GRPCOptions()...)
	srv.Register(g)

	u, err := url.Parse(*listen)
	if err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		fail(err)
	}
	pl, err := net.Listen("tcp", *pprofAddr)
	if err != nil {
		fail(err)
	}
	fmt.Fprintf(os.Stderr, "shimdprof: pprof on http://%s\n", pl.Addr())
	var mu sync.Mutex
	var cur *os.File
	http.HandleFunc("/prof/start", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil {
			http.Error(w, "already profiling", http.StatusConflict)
			return
		}
		f, err := os.Create(r.URL.Query().Get("path"))
		if err == nil {
			if err = pprof.StartCPUProfile(f); err != nil {
				f.Close()
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		cur = f
	})
	http.HandleFunc("/prof/stop", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil {
			pprof.StopCPUProfile()
			cur.Close()
			cur = nil
		}
	})
	go http.Serve(pl, nil)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		fail(err)
	}
	g.Stop()
}

func fail(v any) {
	fmt.Fprintln(os.Stderr, "shimdprof:", v)
	os.Exit(1)
}
