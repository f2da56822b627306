package shimd

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/drivers/mysql"
	"github.com/shimd/shimd/drivers/postgres"
	"github.com/shimd/shimd/drivers/sqlite"
	"github.com/shimd/shimd/sqllog"
)

// OpenLog opens the database cfg names and the log in it, creating its
// tables if needed, without serving it (for tools such as snapshot restore
// and migrate). Only the Config fields about the database and Logger are
// used. The caller closes the log, which closes the database.
func OpenLog(ctx context.Context, cfg Config) (*sqllog.Log, error) {
	return openLog(ctx, cfg, nil)
}

// openLog is OpenLog, with prepare (if not nil) given the backend before
// the log opens on it, to set its hooks.
func openLog(ctx context.Context, cfg Config, prepare func(*drivers.Backend) error) (*sqllog.Log, error) {
	cfg = cfg.withDefaults()
	if err := checkEndpoint(cfg.Endpoint); err != nil {
		return nil, err
	}
	be, err := openBackend(ctx, &cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if prepare != nil {
		if err := prepare(be); err != nil {
			be.Close()
			return nil, err
		}
	}
	log, err := sqllog.Open(ctx, be, sqllog.Options{
		Logger:          cfg.Logger,
		PollInterval:    cfg.DBPollInterval,
		DBTimeout:       cfg.DBTimeout,
		ValueCacheBytes: cfg.ValueCacheSize,
	})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("open database: %w", err)
	}
	return log, nil
}

// openBackend opens the database cfg.Endpoint names (checked already).
func openBackend(ctx context.Context, cfg *Config) (*drivers.Backend, error) {
	ep := cfg.Endpoint
	opts := drivers.Options{MaxOpenConns: cfg.DBMaxConns, ConnectTimeout: cfg.DBConnectTimeout, PostgresVacuumFull: cfg.PostgresVacuumFull}
	switch {
	case ep == "":
		return sqlite.Open(filepath.Join(cfg.DataDir, sqlite.FileName))
	case strings.HasPrefix(ep, "sqlite://"), strings.HasPrefix(ep, "file:"):
		return sqlite.Open(ep)
	case strings.HasPrefix(ep, "postgres://"), strings.HasPrefix(ep, "postgresql://"):
		return postgres.Open(ctx, ep, opts)
	default: // mysql://, as checkEndpoint allows nothing else
		return mysql.Open(ctx, ep, opts)
	}
}
