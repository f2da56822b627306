package sqllog

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// RangeOptions shape a Range.
type RangeOptions struct {
	// Limit caps the KVs returned (0: no cap); Count still counts them all.
	Limit int64
	// Rev reads as of this revision (0: the view's revision).
	Rev int64
	// Count returns only the count.
	Count bool
	// KeysOnly skips reading values from the database.
	KeysOnly bool
	// NoTotal stops at Limit: Count is then only the keys returned, and a
	// range in chunks costs what its chunk does, not what the rest holds.
	NoTotal bool
	// NoCache leaves the values read out of the value cache: a read of a
	// whole large range would only push the recent values out.
	NoCache bool
}

// RangeResult is the answer of a Range. Rev is the view's current revision,
// not the revision read at, as in etcd.
type RangeResult struct {
	KVs   []*mvccpb.KeyValue
	Rev   int64
	Count int64
}

// ReadView reads the key space at a fixed current revision.
type ReadView interface {
	// Rev is the view's current revision.
	Rev() int64
	// FirstRev is the oldest revision that can still be read.
	FirstRev() int64
	// Range returns the live keys in the etcd range [key, end) at ro.Rev:
	// end nil is the single key, an empty non-nil end is every key >= key.
	Range(ctx context.Context, key, end []byte, ro RangeOptions) (*RangeResult, error)
}

// reader answers reads from the index, and values from the store.
type reader struct {
	s  *state
	st *store
	f  *follower
}

type readView struct {
	r   *reader
	rev int64
	ops int
}

// View returns a read view at the latest revision. On a shared database it
// first catches up with what other processes committed, so that a read never
// misses a write acknowledged before it started.
func (r *reader) View(ctx context.Context) (ReadView, error) {
	if err := r.f.Barrier(ctx); err != nil {
		return nil, err
	}
	return &readView{r: r, rev: r.s.Rev()}, nil
}

// SerializableView returns a read view at the latest revision this process
// has applied, without asking the database for newer ones: etcd's
// serializable read, which may miss writes acknowledged by other processes
// in the last poll interval.
func (r *reader) SerializableView() ReadView {
	return &readView{r: r, rev: r.s.Rev()}
}

func (v *readView) Rev() int64      { return v.rev }
func (v *readView) FirstRev() int64 { return v.r.s.CompactRev() }
func (v *readView) Range(ctx context.Context, key, end []byte, ro RangeOptions) (*RangeResult, error) {
	rangeCounter.Inc()
	if v.ops++; v.ops == 2 {
		txnCounter.Inc()
	}
	return v.r.rangeKeys(ctx, key, end, v.rev, ro, nil)
}

type hit struct {
	key []byte
	e   entry
}

// lookup walks the index for the keys live at rev in [key, end).
func (r *reader) lookup(key, end []byte, rev, limit int64, countOnly, noTotal bool) ([]hit, int64, error) {
	s := r.s
	s.mu.RLock()
	defer s.mu.RUnlock()
	if rev < s.compactRev {
		return nil, 0, ErrCompacted
	}
	var hits []hit
	var count int64
	s.idx.ascend(key, end, func(ki *keyIndex) bool {
		if noTotal && limit > 0 && int64(len(hits)) >= limit {
			return false
		}
		e, live := ki.at(rev)
		if !live {
			return true
		}
		count++
		if !countOnly && (limit <= 0 || int64(len(hits)) < limit) {
			hits = append(hits, hit{key: ki.key, e: e})
		}
		return true
	})
	return hits, count, nil
}

// rangeKeys is Range for any view whose current revision is curRev. pending
// holds values written by the batch in progress, not yet in the database.
func (r *reader) rangeKeys(ctx context.Context, key, end []byte, curRev int64, ro RangeOptions, pending map[int64][]byte) (*RangeResult, error) {
	rev := ro.Rev
	if rev > curRev {
		return &RangeResult{Count: -1, Rev: curRev}, ErrFutureRev
	}
	if rev <= 0 {
		rev = curRev
	}
	hits, count, err := r.lookup(key, end, rev, ro.Limit, ro.Count, ro.NoTotal && !ro.Count)
	if err != nil {
		return &RangeResult{Count: -1}, err
	}
	res := &RangeResult{Rev: curRev, Count: count}
	if ro.Count || len(hits) == 0 {
		return res, nil
	}
	res.KVs = make([]*mvccpb.KeyValue, len(hits))
	kvs := make([]mvccpb.KeyValue, len(hits))
	for i, h := range hits {
		kvs[i] = mvccpb.KeyValue{Key: h.key, CreateRevision: h.e.create, ModRevision: h.e.rev, Version: h.e.version, Lease: h.e.lease}
		res.KVs[i] = &kvs[i]
	}
	if ro.KeysOnly {
		return res, nil
	}
	if err := r.fillValues(ctx, hits, kvs, pending, !ro.NoCache); err != nil {
		return nil, err
	}
	return res, nil
}

// fillValues reads the values of hits from pending, the cache or the
// database. A read of more than one chunk runs its chunks in parallel, on as
// many connections: a large page's values arrive in the time of the slowest
// chunk rather than of all of them.
func (r *reader) fillValues(ctx context.Context, hits []hit, kvs []mvccpb.KeyValue, pending map[int64][]byte, cache bool) error {
	var want map[int64]int
	var ids []int64
	for i, h := range hits {
		if v, ok := pending[h.e.id]; ok {
			kvs[i].Value = v
			continue
		}
		if v, ok := r.st.values.get(h.e.id); ok {
			kvs[i].Value = v
			continue
		}
		if want == nil {
			want = make(map[int64]int)
		}
		want[h.e.id] = i
		ids = append(ids, h.e.id)
	}
	if len(ids) == 0 {
		return nil
	}
	var chunks [][]int64
	for len(ids) > 0 {
		n := min(len(ids), fetchChunk)
		chunks = append(chunks, ids[:n])
		ids = ids[n:]
	}
	if len(chunks) == 1 {
		return r.st.fetchValues(ctx, chunks[0], want, kvs, cache)
	}
	errs := make(chan error, len(chunks))
	for _, chunk := range chunks {
		go func() { errs <- r.st.fetchValues(ctx, chunk, want, kvs, cache) }()
	}
	var err error
	for range chunks {
		if e := <-errs; err == nil {
			err = e
		}
	}
	return err
}

// KVAt returns key as it was at rev, or nil if it was absent then. Unlike a
// view it may read the revision being fanned out to watchers, which readers
// cannot see yet; a watcher asking for prev_kv reads just before it.
func (r *reader) KVAt(ctx context.Context, key []byte, rev int64) (*mvccpb.KeyValue, error) {
	rr, err := r.rangeKeys(ctx, key, nil, max(rev, r.s.Rev()), RangeOptions{Rev: rev}, nil)
	if err != nil || len(rr.KVs) == 0 {
		return nil, err
	}
	return rr.KVs[0], nil
}
