// Command shimd serves etcd's v3 gRPC API from a SQL database.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/shimd/shimd"
)

func main() {
	if len(os.Args) > 1 {
		var sub func([]string) error
		switch os.Args[1] {
		case "snapshot":
			sub = snapshotCommand
		case "migrate":
			sub = migrateCommand
		case "healthcheck":
			sub = healthcheckCommand
		}
		if sub != nil {
			if err := sub(os.Args[2:]); err != nil && !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(os.Stderr, "shimd %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "shimd: %v\n", err)
		os.Exit(2)
	}
	cfg.Logger = newLogger(cfg, os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := shimd.Run(ctx, cfg.Config)
	if err == nil {
		<-srv.Done()
		err = srv.Err()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "shimd: %v\n", err)
		os.Exit(1)
	}
}
