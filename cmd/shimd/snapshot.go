package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/shimd/shimd"
	"github.com/shimd/shimd/sqllog"
)

const snapshotUsage = `usage:
  shimd snapshot save FILE [--endpoints URL] [--cacert F --cert F --key F]
  shimd snapshot status FILE [-w table|json]
  shimd snapshot restore FILE [--data-dir DIR | --endpoint DSN] [--skip-hash-check]`

// snapshotCommand is `shimd snapshot save|status|restore FILE`, mirroring
// etcdutl: snapshots are etcd v3 backend files (from shimd or etcd), and
// restore also reads shimd's older SHIMD-SNAPSHOT-1 files.
func snapshotCommand(args []string) error {
	for _, a := range args {
		if a == "-h" || a == "--help" || a == "-help" {
			fmt.Fprintln(os.Stderr, snapshotUsage)
			return flag.ErrHelp
		}
	}
	if len(args) < 2 || strings.HasPrefix(args[1], "-") {
		return errors.New(snapshotUsage)
	}
	switch args[0] {
	case "restore":
		return snapshotRestore(args[1], args[2:])
	case "status":
		return snapshotStatus(args[1], args[2:])
	case "save":
		return snapshotSave(args[1], args[2:])
	}
	return errors.New(snapshotUsage)
}

// snapshotRestore loads a snapshot into a fresh database named by
// --endpoint, or SQLite in --data-dir.
func snapshotRestore(file string, args []string) error {
	out := os.Stderr
	fs := flag.NewFlagSet("shimd snapshot restore", flag.ContinueOnError)
	fs.SetOutput(out)
	cfg := shimd.Config{ValueCacheSize: -1} // no cache: each value is written once
	fs.StringVar(&cfg.DataDir, "data-dir", "default.shimd", "Data directory to restore into (SQLite).")
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "Database to restore into; it must be empty.")
	skip := fs.Bool("skip-hash-check", false, "Restore a file without the SHA-256 trailer (a db file copied from an etcd data directory).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := os.Stat(file); err != nil {
		return err
	}
	ctx := context.Background()
	cfg.Logger = slog.New(slog.DiscardHandler)
	log, err := shimd.OpenLog(ctx, cfg)
	if err != nil {
		return err
	}
	defer log.Close()
	start, last := time.Now(), time.Now()
	opts := sqllog.RestoreOptions{SkipHashCheck: *skip, Progress: func(done, total int64) {
		if time.Since(last) >= 2*time.Second {
			last = time.Now()
			fmt.Fprintf(out, "restoring %s: revision %d of %d (%.0f%%)\n", file, done, total, 100*float64(done)/float64(max(total, 1)))
		}
	}}
	if err := sqllog.Restore(ctx, log, file, opts); err != nil {
		return fmt.Errorf("restore %s: %w", file, err)
	}
	fmt.Fprintf(out, "restored %s in %s\n", file, time.Since(start).Round(time.Millisecond))
	return nil
}

// snapshotStatus prints what etcdutl snapshot status prints.
func snapshotStatus(file string, args []string) error {
	fs := flag.NewFlagSet("shimd snapshot status", flag.ContinueOnError)
	format := fs.String("w", "table", "Output format: table, json or simple.")
	fs.StringVar(format, "write-out", "table", "Output format: table, json or simple.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ds, err := sqllog.StatusSnapshot(file)
	if err != nil {
		return fmt.Errorf("status %s: %w", file, err)
	}
	switch *format {
	case "json":
		return json.NewEncoder(os.Stdout).Encode(ds)
	case "simple":
		fmt.Printf("%x, %d, %d, %d B, %s\n", ds.Hash, ds.Revision, ds.TotalKey, ds.TotalSize, ds.Version)
	default:
		fmt.Printf("%-10s %-10s %-10s %-12s %-8s %s\n", "HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "VERSION", "FORMAT")
		fmt.Printf("%-10x %-10d %-10d %-12d %-8s %s\n", ds.Hash, ds.Revision, ds.TotalKey, ds.TotalSize, ds.Version, ds.Format)
	}
	return nil
}

// snapshotSave fetches a snapshot from a running shimd or etcd, checks its
// trailing SHA-256, and renames it into place only then.
func snapshotSave(file string, args []string) error {
	fs := flag.NewFlagSet("shimd snapshot save", flag.ContinueOnError)
	ep := fs.String("endpoints", "http://127.0.0.1:2379", "Client URL of the shimd or etcd to snapshot (one).")
	caFile := fs.String("cacert", "", "CA certificate to verify the server with.")
	certFile := fs.String("cert", "", "Client certificate.")
	keyFile := fs.String("key", "", "Client key.")
	user := fs.String("user", "", "User name[:password], where the server's auth is enabled (a snapshot needs the root role).")
	password := fs.String("password", "", "Password of --user (instead of after its colon).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !strings.Contains(*ep, "://") {
		*ep = "http://" + *ep
	}
	conn, err := dial(*ep, *caFile, *certFile, *keyFile)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, err := login(context.Background(), conn, *user, *password)
	if err != nil {
		return err
	}
	start := time.Now()
	size, err := fetchSnapshot(ctx, conn, file)
	if err != nil {
		return err
	}
	fmt.Printf("Snapshot saved at %s (%d bytes in %s)\n", file, size, time.Since(start).Round(time.Millisecond))
	return nil
}

// fetchSnapshot streams a snapshot from a server (Maintenance.Snapshot) into
// file.part, checks its trailing SHA-256, and renames it to file only then.
func fetchSnapshot(ctx context.Context, conn *grpc.ClientConn, file string) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewMaintenanceClient(conn).Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		return 0, err
	}
	part := file + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer os.Remove(part)
	defer f.Close()
	h := sha256.New()
	var tail []byte // the last sha256.Size bytes seen: the trailer, at the end
	var size int64
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return size, err
		}
		if _, err := f.Write(resp.Blob); err != nil {
			return size, err
		}
		size += int64(len(resp.Blob))
		tail = append(tail, resp.Blob...)
		if n := len(tail) - sha256.Size; n > 0 {
			h.Write(tail[:n])
			tail = append(tail[:0], tail[n:]...)
		}
	}
	if size%512 != sha256.Size || !bytes.Equal(h.Sum(nil), tail) {
		return size, fmt.Errorf("the snapshot received (%d bytes) does not end with its SHA-256: incomplete or damaged", size)
	}
	if err := f.Sync(); err != nil {
		return size, err
	}
	if err := f.Close(); err != nil {
		return size, err
	}
	return size, os.Rename(part, file)
}
