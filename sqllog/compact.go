package sqllog

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Compact makes rev the oldest readable revision: reads and watches before it
// fail with ErrCompacted from now on. The rows no read at or after rev can
// reach (superseded values and tombstones) are deleted in the background in
// small transactions, so writers and readers are never stalled for long; the
// returned channel is closed once they are gone. The latest version of every
// live key is always kept.
func (l *Log) Compact(ctx context.Context, rev int64) (<-chan struct{}, error) {
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	tx, err := l.be.Dialect.BeginWrite(ctx, l.be.Write)
	if err != nil {
		return nil, fmt.Errorf("begin compaction: %w", err)
	}
	defer tx.Rollback()
	m, err := l.readMeta(ctx, tx, true)
	if err != nil {
		return nil, err
	}
	if err := l.catchUp(ctx, tx, m); err != nil {
		return nil, err
	}
	if rev <= l.CompactRev() {
		return nil, ErrCompacted
	}
	if rev > l.Rev() {
		return nil, ErrFutureRev
	}
	prev := l.CompactRev()
	if _, err := tx.ExecContext(ctx, l.q(`UPDATE shimd_meta SET compact_rev = ? WHERE id = 1`), rev); err != nil {
		return nil, fmt.Errorf("record compaction: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("record compaction: %w", err)
	}
	return l.compactIndex(rev, prev), nil
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
func (l *Log) compactIndex(rev, prev int64) <-chan struct{} {
	l.mu.Lock()
	garbage, freed := l.idx.compact(rev)
	l.compactRev = rev
	l.liveBytes -= freed
	l.liveRows -= int64(len(garbage))
	l.mu.Unlock()
	compactRevGauge.Set(float64(rev))
	job := compactJob{ids: garbage}
	if prev >= 0 {
		job.rev, job.prev = rev, prev
	}
	return l.compactor.enqueue(job)
}

// deleteChunk bounds the rows deleted in one transaction.
const deleteChunk = 1000

type compactJob struct {
	ids []int64
	// rev and prev, when set, ask for the compaction's hash to be
	// remembered before its rows go.
	rev, prev int64
	done      chan struct{}
}

// compactor deletes garbage rows in the background, oldest job first.
type compactor struct {
	l    *Log
	mu   sync.Mutex
	jobs []compactJob
	wake chan struct{}
	quit chan struct{}
	wg   sync.WaitGroup
}

func (c *compactor) start(l *Log) {
	c.l = l
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
			c.l.rememberCompactHash(context.Background(), job.rev, job.prev)
		}
		for len(job.ids) > 0 {
			select {
			case <-c.quit:
				return
			default:
			}
			n := min(len(job.ids), deleteChunk)
			if err := c.delete(job.ids[:n]); err != nil {
				c.l.lg.Error("compaction: deleting superseded rows failed; retrying", "err", err)
				select {
				case <-c.quit:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			job.ids = job.ids[n:]
		}
		close(job.done)
		c.mu.Lock()
		c.jobs = c.jobs[1:]
		c.mu.Unlock()
	}
}

func (c *compactor) delete(ids []int64) error {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	query := c.l.q(`DELETE FROM shimd_log WHERE id IN (?` + strings.Repeat(",?", len(ids)-1) + `)`)
	defer observe("compact_delete", time.Now())
	_, err := c.l.be.Write.ExecContext(context.Background(), query, args...)
	return err
}
