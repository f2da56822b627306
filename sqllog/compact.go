package sqllog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Compact makes rev the oldest readable revision: reads and watches before it
// fail with ErrCompacted from now on. The rows no read at or after rev can
// reach (superseded values and tombstones) are deleted in the background in
// small transactions, so writers and readers are never stalled for long; the
// returned channel is closed once they are gone. The latest version of every
// live key is always kept.
func (c *compactor) Compact(ctx context.Context, rev int64) (<-chan struct{}, error) {
	c.s.applyMu.Lock()
	defer c.s.applyMu.Unlock()
	tx, err := c.st.be.Dialect.BeginWrite(ctx, c.st.be.Write)
	if err != nil {
		return nil, fmt.Errorf("begin compaction: %w", err)
	}
	defer tx.Rollback()
	m, err := c.st.readMeta(ctx, tx, true)
	if err != nil {
		return nil, err
	}
	if err := c.f.catchUp(ctx, tx, m); err != nil {
		return nil, err
	}
	if rev <= c.s.CompactRev() {
		return nil, ErrCompacted
	}
	if rev > c.s.Rev() {
		return nil, ErrFutureRev
	}
	prev := c.s.CompactRev()
	if _, err := tx.ExecContext(ctx, c.st.q(`UPDATE shimd_meta SET compact_rev = ? WHERE id = 1`), rev); err != nil {
		return nil, fmt.Errorf("record compaction: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("record compaction: %w", err)
	}
	return c.compactIndex(rev, prev), nil
}

// compactIndex compacts the index at rev and queues its garbage rows for
// deletion, remembering the compaction's hash first when prev (the compact
// revision before) is known (not -1), which only the compacting process
// knows.
//
// Every process deletes the garbage of every compaction it applies, whoever
// ran it, in compaction order and, within one, each key's rows oldest
// first. So a key's tombstone is never gone while an older row of that key
// is still there, whichever deleter is paused or dead: a process rebuilding
// its index from the rows (see reload) never takes a superseded put for
// the latest. Deleting a row twice costs an index probe. A crash before the
// rows are gone is harmless: the next start finds the same garbage.
func (c *compactor) compactIndex(rev, prev int64) <-chan struct{} {
	job := compactJob{ids: c.s.compact(rev)}
	if prev >= 0 {
		job.rev, job.prev = rev, prev
	}
	return c.enqueue(job)
}

// deleteChunk bounds the rows deleted in one transaction, and compactPause
// is the pause between two such transactions: etcd's compaction batch
// limit and sleep interval (1000 keys, 10 ms), which keep a large
// compaction from stalling writes (BenchmarkCompactionStall).
const (
	deleteChunk  = 1000
	compactPause = 10 * time.Millisecond
)

type compactJob struct {
	ids []int64
	// rev and prev, when set, ask for the compaction's hash to be
	// remembered before its rows go.
	rev, prev int64
	done      chan struct{}
}

// compactor records compactions and deletes their garbage rows in the
// background, oldest job first.
type compactor struct {
	s     *state
	st    *store
	f     *follower
	maint *maintenance
	lg    *slog.Logger

	mu   sync.Mutex
	jobs []compactJob
	wake chan struct{}
	quit chan struct{}
	wg   sync.WaitGroup
}

func (c *compactor) start() {
	c.wake = make(chan struct{}, 1)
	c.quit = make(chan struct{})
	c.wg.Add(1)
	go c.run()
}

func (c *compactor) stop() {
	close(c.quit)
	c.wg.Wait()
}

func (c *compactor) enqueue(job compactJob) <-chan struct{} {
	done := make(chan struct{})
	job.done = done
	c.mu.Lock()
	c.jobs = append(c.jobs, job)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return done
}

func (c *compactor) run() {
	defer c.wg.Done()
	for {
		c.mu.Lock()
		if len(c.jobs) == 0 {
			c.mu.Unlock()
			select {
			case <-c.wake:
				continue
			case <-c.quit:
				return
			}
		}
		job := c.jobs[0]
		c.mu.Unlock()
		if job.rev > 0 {
			c.maint.rememberCompactHash(context.Background(), job.rev, job.prev)
		}
		for len(job.ids) > 0 {
			select {
			case <-c.quit:
				return
			default:
			}
			n := min(len(job.ids), deleteChunk)
			ctx, cancel := c.st.bound(context.Background())
			err := c.st.deleteRows(ctx, job.ids[:n])
			cancel()
			if err != nil {
				c.lg.Error("compaction: deleting superseded rows failed; retrying", "err", err)
				select {
				case <-c.quit:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			job.ids = job.ids[n:]
			if len(job.ids) > 0 {
				select {
				case <-c.quit:
					return
				case <-time.After(compactPause):
				}
			}
		}
		close(job.done)
		c.mu.Lock()
		c.jobs = c.jobs[1:]
		c.mu.Unlock()
	}
}
