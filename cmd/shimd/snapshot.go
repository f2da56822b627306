package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/shimd/shimd"
	"github.com/shimd/shimd/sqllog"
)

// snapshotCommand is `shimd snapshot restore FILE`: it loads a snapshot
// (taken with `etcdctl snapshot save` from any shimd) into a fresh database
// named by --endpoint, or SQLite in --data-dir.
func snapshotCommand(args []string) error {
	out := os.Stderr
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			fmt.Fprintln(os.Stderr, "usage: shimd snapshot restore FILE [--data-dir DIR | --endpoint DSN]")
			return flag.ErrHelp
		}
	}
	if len(args) < 2 || args[0] != "restore" || strings.HasPrefix(args[1], "-") {
		return errors.New("usage: shimd snapshot restore FILE [--data-dir DIR | --endpoint DSN]")
	}
	file := args[1]
	fs := flag.NewFlagSet("shimd snapshot restore", flag.ContinueOnError)
	fs.SetOutput(out)
	cfg := shimd.Config{ValueCacheSize: -1} // no cache: each value is written once
	fs.StringVar(&cfg.DataDir, "data-dir", "default.shimd", "Data directory to restore into (SQLite).")
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "Database to restore into; it must be empty.")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx := context.Background()
	cfg.Logger = slog.New(slog.DiscardHandler)
	log, err := shimd.OpenLog(ctx, cfg)
	if err != nil {
		return err
	}
	defer log.Close()
	if err := sqllog.Restore(ctx, log, f); err != nil {
		return fmt.Errorf("restore %s: %w", file, err)
	}
	fmt.Fprintf(out, "restored %s\n", file)
	return nil
}
