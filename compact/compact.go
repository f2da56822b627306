// Package compact runs etcd's automatic compaction policies
// (--auto-compaction-mode and --auto-compaction-retention) against the log.
package compact

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/shimd/shimd/sqllog"
)

// Modes, as etcd names them.
const (
	ModePeriodic = "periodic"
	ModeRevision = "revision"
)

// revisionInterval is how often revision mode looks at the log, as etcd's.
const revisionInterval = 5 * time.Minute

// Target is what a policy compacts.
type Target interface {
	Rev() int64
	Compact(ctx context.Context, rev int64) (<-chan struct{}, error)
}

// Clock lets tests drive time.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config selects a policy.
type Config struct {
	Mode string
	// Retention: for periodic mode the history to keep; for revision mode
	// the number of revisions to keep.
	Retention time.Duration
	Revisions int64
	// Active reports whether this process should compact now; with several
	// processes on one database only one does (nil: always).
	Active func() bool
	Clock  Clock
	Logger *slog.Logger
}

// ParseRetention reads --auto-compaction-retention for mode: in periodic
// mode a duration, or a bare number of hours; in revision mode a count.
func ParseRetention(mode, s string) (time.Duration, int64, error) {
	switch mode {
	case ModePeriodic:
		if h, err := strconv.ParseInt(s, 10, 64); err == nil {
			if h < 0 {
				return 0, 0, fmt.Errorf("--auto-compaction-retention %q must not be negative", s)
			}
			return time.Duration(h) * time.Hour, 0, nil
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return 0, 0, fmt.Errorf("--auto-compaction-retention %q is neither hours nor a duration", s)
		}
		return d, 0, nil
	case ModeRevision:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, fmt.Errorf("--auto-compaction-retention %q is not a revision count", s)
		}
		return 0, n, nil
	}
	return 0, 0, fmt.Errorf("--auto-compaction-mode %q is not periodic or revision", mode)
}

// Run applies the policy to t until ctx ends. A zero retention disables it.
func Run(ctx context.Context, t Target, cfg Config) {
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Active == nil {
		cfg.Active = func() bool { return true }
	}
	switch {
	case cfg.Mode == ModeRevision && cfg.Revisions > 0:
		runRevision(ctx, t, cfg)
	case cfg.Mode == ModePeriodic && cfg.Retention > 0:
		runPeriodic(ctx, t, cfg)
	}
}

// compact compacts at rev and reports whether rev is now compacted (by this
// call or an earlier one).
func compact(ctx context.Context, t Target, rev int64, cfg Config) bool {
	start := cfg.Clock.Now()
	_, err := t.Compact(ctx, rev)
	switch {
	case err == nil:
		cfg.Logger.Info("auto compaction done", "revision", rev, "took", cfg.Clock.Now().Sub(start))
		return true
	case errors.Is(err, sqllog.ErrCompacted):
		return true
	}
	if ctx.Err() == nil {
		cfg.Logger.Warn("auto compaction failed; will retry", "revision", rev, "err", err)
	}
	return false
}

// runRevision keeps the last cfg.Revisions revisions, looking every five
// minutes.
func runRevision(ctx context.Context, t Target, cfg Config) {
	var last int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-cfg.Clock.After(revisionInterval):
		}
		rev := t.Rev() - cfg.Revisions
		if rev <= 0 || rev == last || !cfg.Active() {
			continue
		}
		if compact(ctx, t, rev, cfg) {
			last = rev
		}
	}
}

// runPeriodic keeps cfg.Retention of history. It samples the revision ten
// times per window (windows are capped at an hour) and compacts to the
// sample taken a retention ago: first once a whole retention has passed,
// then every window.
func runPeriodic(ctx context.Context, t Target, cfg Config) {
	window := min(cfg.Retention, time.Hour)
	step := window / 10
	keep := int(cfg.Retention/step) + 1
	samples := make([]int64, 0, keep+1)
	lastOK := cfg.Clock.Now()
	wait := cfg.Retention // the first compaction waits a whole retention
	var last int64
	for {
		samples = append(samples, t.Rev())
		if len(samples) > keep {
			samples = samples[1:]
		}
		select {
		case <-ctx.Done():
			return
		case <-cfg.Clock.After(step):
		}
		rev := samples[0]
		if cfg.Clock.Now().Sub(lastOK) < wait || rev == last || !cfg.Active() {
			continue
		}
		wait = window
		if compact(ctx, t, rev, cfg) {
			lastOK = cfg.Clock.Now()
			last = rev
		}
	}
}
