// Command shimdprof is shimd (package shimd, as cmd/shimd runs it, with
// cmd/shimd's defaults for the flags it does not take) plus a CPU profiler
// the benchmark switches on and off per phase:
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
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"

	"github.com/shimd/shimd"
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

	if *cacheSize == 0 {
		*cacheSize = -1 // as cmd/shimd: the flag's 0 disables the cache
	}
	srv, err := shimd.Run(ctx, shimd.Config{
		DataDir:            *dataDir,
		Endpoint:           *endpoint,
		ListenClientURLs:   []string{*listen},
		PostgresVacuumFull: *vacuumFull,
		ValueCacheSize:     *cacheSize,
		Logger:             lg,
	})
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
	<-srv.Done()
	if err := srv.Err(); err != nil {
		fail(err)
	}
}

func fail(v any) {
	fmt.Fprintln(os.Stderr, "shimdprof:", v)
	os.Exit(1)
}
