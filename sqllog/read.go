package sqllog

import (
	"cmp"
	"context"
	"slices"

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
	// Buf, if large enough, is where the values are read into, in place of
	// a new buffer (see RangeResult.Buf): a range in chunks reuses the
	// buffer of a chunk it has sent.
	Buf []byte
}

// RangeResult is the answer of a Range. Rev is the view's current revision,
// not the revision read at, as in etcd.
type RangeResult struct {
	KVs   []*mvccpb.KeyValue
	Rev   int64
	Count int64
	// Buf holds the values of KVs read from the cache or the database: one
	// buffer for them all, rather than an allocation per value.
	Buf []byte
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
	if v.r.f.Resyncing() {
		// Memory may hold commits the database lost: never served.
		return nil, ErrDBBehind
	}
	return v.r.rangeKeys(ctx, key, end, v.rev, ro, nil)
}

// maxPrealloc bounds the hits allocated ahead for a limited range.
const maxPrealloc = 4096

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
	if limit > 0 && !countOnly {
		hits = make([]hit, 0, min(limit, maxPrealloc))
	}
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
	buf, err := r.fillValues(ctx, hits, kvs, pending, !ro.NoCache, ro.Buf)
	if err != nil {
		return nil, err
	}
	res.Buf = buf
	return res, nil
}

// fillValues reads the values of hits from pending, the cache or the
// database into kvs. Those not pending are copied into one buffer (buf if it
// is large enough), each at a place sized from its index entry, so that a
// large range costs one allocation instead of one per value. A read of more
// than one chunk runs its chunks in parallel, on as many connections: a
// large page's values arrive in the time of the slowest chunk rather than of
// all of them.
func (r *reader) fillValues(ctx context.Context, hits []hit, kvs []mvccpb.KeyValue, pending map[int64][]byte, cache bool, buf []byte) ([]byte, error) {
	total := 0
	for _, h := range hits {
		if _, ok := pending[h.e.id]; !ok {
			total += h.e.valueSize(h.key)
		}
	}
	if cap(buf) < total {
		buf = make([]byte, total)
	}
	buf = buf[:total]
	var want []idPos
	off := 0
	for i, h := range hits {
		if v, ok := pending[h.e.id]; ok {
			kvs[i].Value = v
			continue
		}
		n := h.e.valueSize(h.key)
		// Zero length, capacity n: the value is appended in place.
		kvs[i].Value = buf[off : off : off+n]
		off += n
		if v, ok := r.st.values.appendTo(kvs[i].Value, h.e.id); ok {
			kvs[i].Value = v
			continue
		}
		want = append(want, idPos{h.e.id, i})
	}
	if len(want) == 0 {
		return buf, nil
	}
	var chunks [][]idPos
	for len(want) > 0 {
		n := min(len(want), fetchChunk)
		chunk := want[:n]
		slices.SortFunc(chunk, func(a, b idPos) int { return cmp.Compare(a.id, b.id) })
		chunks = append(chunks, chunk)
		want = want[n:]
	}
	if len(chunks) == 1 {
		return buf, r.st.fetchValues(ctx, chunks[0], kvs, cache)
	}
	errs := make(chan error, len(chunks))
	for _, chunk := range chunks {
		go func() { errs <- r.st.fetchValues(ctx, chunk, kvs, cache) }()
	}
	var err error
	for range chunks {
		if e := <-errs; err == nil {
			err = e
		}
	}
	return buf, err
}

// idPos is a row id to read and the place of its value in a result.
type idPos struct {
	id int64
	i  int
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
