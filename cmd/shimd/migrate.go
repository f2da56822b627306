package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shimd/shimd"
	"github.com/shimd/shimd/sqllog"
)

// migratePage is how many keys are read, and written as one revision, at a time.
const migratePage = 500

// migrateCommand is `shimd migrate --from URL`: it copies the latest value
// of every key, and every lease with its remaining TTL, from a running etcd
// v3 endpoint (etcd itself, kine, another shimd) into an empty database.
// The copy reads one consistent revision of the source and starts the new
// log above that revision, so clients' remembered revisions stay valid.
// With --history it copies every retained revision instead, through a
// snapshot of the source (leases then get their full TTL, as in a restore).
func migrateCommand(args []string) error {
	fs := flag.NewFlagSet("shimd migrate", flag.ContinueOnError)
	cfg := shimd.Config{ValueCacheSize: -1} // no cache: each value is written once
	from := fs.String("from", "", "Client URL of the etcd v3 endpoint to copy from (http:// or https://).")
	caFile := fs.String("from-cacert", "", "CA certificate to verify the source with.")
	certFile := fs.String("from-cert", "", "Client certificate for the source.")
	keyFile := fs.String("from-key", "", "Client key for the source.")
	user := fs.String("from-user", "", "User name[:password] on the source, where its auth is enabled (as etcdctl's --user); --history needs the root role.")
	password := fs.String("from-password", "", "Password of --from-user (instead of after its colon).")
	fs.StringVar(&cfg.DataDir, "data-dir", "default.shimd", "Data directory to copy into (SQLite).")
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "Database to copy into; it must be empty.")
	history := fs.Bool("history", false, "Copy every retained revision, not only the latest values, through a snapshot of the source (etcd or shimd; kine has none).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" {
		return errors.New("--from is required")
	}
	conn, err := dial(*from, *caFile, *certFile, *keyFile)
	if err != nil {
		return err
	}
	defer conn.Close()

	ctx, err := login(context.Background(), conn, *user, *password)
	if err != nil {
		return err
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	log, err := shimd.OpenLog(ctx, cfg)
	if err != nil {
		return err
	}
	defer log.Close()
	if *history {
		return migrateHistory(ctx, conn, log, *from)
	}
	n, leases, rev, err := migrate(ctx, pb.NewKVClient(conn), pb.NewLeaseClient(conn), log)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "copied %d keys and %d leases from %s at revision %d\n", n, leases, *from, rev)
	return nil
}

func migrate(ctx context.Context, kv pb.KVClient, lc pb.LeaseClient, log *sqllog.Log) (keys, leases int, rev int64, err error) {
	// The first page fixes the revision every later page reads at.
	first, err := kv.Range(ctx, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: 1, CountOnly: true})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read source: %w", err)
	}
	rev = first.Header.Revision
	if err := sqllog.StartAt(ctx, log, rev); err != nil {
		return 0, 0, 0, err
	}

	// Leases first, so that keys can be attached; each keeps the time it had
	// left. kine has no lease API: there a key's lease id is its TTL in
	// seconds, and its leases are made as keys need them.
	ll, err := lc.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	kine := err != nil && (status.Code(err) == codes.Unimplemented || strings.Contains(err.Error(), "not supported"))
	if err != nil && !kine {
		return 0, 0, 0, fmt.Errorf("list source leases: %w", err)
	}
	if kine {
		ll = &pb.LeaseLeasesResponse{}
	}
	for _, l := range ll.Leases {
		ttl, err := lc.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: l.ID})
		if err != nil {
			return 0, 0, 0, fmt.Errorf("read source lease %x: %w", l.ID, err)
		}
		if ttl.TTL <= 0 {
			continue // expired meanwhile
		}
		err = log.Write(ctx, func(tw *sqllog.TxnWrite) error {
			tw.GrantLease(sqllog.Lease{ID: l.ID, TTL: ttl.GrantedTTL, Expiry: time.Now().Add(time.Duration(ttl.TTL) * time.Second)})
			return nil
		})
		if err != nil {
			return 0, 0, 0, err
		}
		leases++
	}

	key := []byte{0}
	for {
		page, err := kv.Range(ctx, &pb.RangeRequest{Key: key, RangeEnd: []byte{0}, Limit: migratePage, Revision: rev})
		if err != nil {
			return keys, leases, rev, fmt.Errorf("read source at revision %d: %w", rev, err)
		}
		if len(page.Kvs) > 0 {
			copied := 0
			err = log.Write(ctx, func(tw *sqllog.TxnWrite) error {
				copied = 0
				for _, kv := range page.Kvs {
					if kine && kv.Lease > 0 && !tw.LeaseExists(kv.Lease) {
						tw.GrantLease(sqllog.Lease{ID: kv.Lease, TTL: kv.Lease, Expiry: time.Now().Add(time.Duration(kv.Lease) * time.Second)})
					}
					// A key whose lease expired while copying is gone at the source too.
					if kv.Lease != 0 && !tw.LeaseExists(kv.Lease) {
						continue
					}
					tw.Put(kv.Key, kv.Value, kv.Lease)
					copied++
				}
				return nil
			})
			if err != nil {
				return keys, leases, rev, err
			}
			keys += copied
		}
		if !page.More {
			// Revisions up to here hold a partial copy, and those before the
			// source's are empty: compact them so reads there fail as
			// compacted instead of answering wrongly.
			if _, err := log.Compact(ctx, log.Rev()); err != nil && !errors.Is(err, sqllog.ErrCompacted) {
				return keys, leases, rev, err
			}
			return keys, leases, rev, nil
		}
		key = append(page.Kvs[len(page.Kvs)-1].Key, 0)
	}
}

// dial connects to an etcd v3 endpoint's client URL (http:// or https://,
// with an optional CA and client certificate).
func dial(from, caFile, certFile, keyFile string) (*grpc.ClientConn, error) {
	u, err := url.Parse(from)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not a URL", from)
	}
	creds := insecure.NewCredentials()
	if u.Scheme == "https" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, err
			}
			tc.RootCAs = x509.NewCertPool()
			tc.RootCAs.AppendCertsFromPEM(pem)
		}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	return grpc.NewClient(u.Host, grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
}

// migrateHistory copies the source's whole retained history: it takes a
// snapshot of the source into a temporary file and restores it.
func migrateHistory(ctx context.Context, conn *grpc.ClientConn, log *sqllog.Log, from string) error {
	dir, err := os.MkdirTemp("", "shimd-migrate-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "snapshot.db")
	if _, err := fetchSnapshot(ctx, conn, file); err != nil {
		return fmt.Errorf("snapshot of %s: %w", from, err)
	}
	ds, err := sqllog.StatusSnapshot(file)
	if err != nil {
		return err
	}
	if err := sqllog.Restore(ctx, log, file, sqllog.RestoreOptions{}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "copied the history of %s up to revision %d (%d keys live)\n", from, ds.Revision, ds.TotalKey)
	return nil
}
