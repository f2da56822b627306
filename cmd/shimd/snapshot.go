package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

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
	cfg := &config{name: "default"}
	fs.StringVar(&cfg.dataDir, "data-dir", "default.shimd", "Data directory to restore into (SQLite).")
	fs.StringVar(&cfg.endpoint, "endpoint", "", "Database to restore into; it must be empty.")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	ctx := context.Background()
	log, err := openLog(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
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
