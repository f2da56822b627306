package sqllog

import (
	"context"
	"database/sql"
)

// TxnWrite is one write request's view of the log inside a write batch. It
// reads the state left by the requests before it and stages changes that all
// share the revision Rev()+1. It is only valid inside the function passed to
// Log.Write.
type TxnWrite struct {
	w        *writer
	b        *batch
	beginRev int64
	mark     int // first of this request's changes in b.changes
	opsMark  int // first of this request's lease ops in b.leaseOps
	ops      int // ranges, puts and deletes, for etcd's txn metric
}

// batch is a group of write requests committed in one database transaction;
// each request still gets its own revision.
type batch struct {
	rev      int64 // revision after the last request so far
	lastID   int64
	changes  []Change
	values   map[int64][]byte // staged values by row id
	leaseOps []leaseOp
	leaseGen int64
	// authGen is the auth generation the batch commits under: requests
	// checked at another one fail with ErrAuthStale.
	authGen int64
	// tx is the locked write transaction, nil while the batch runs against
	// memory first.
	tx *sql.Tx
	// needTx is set by a request that must read the database under the
	// lock; the batch then runs again there.
	needTx bool
}

// Change is one row appended to the log.
type Change struct {
	Key   []byte
	Value []byte
	sub   int64 // etcd's sub-revision: the change's place in its request
	e     entry
}

// Rev is the revision before this request.
func (tw *TxnWrite) Rev() int64 { return tw.beginRev }

// FirstRev is the oldest revision that can still be read.
func (tw *TxnWrite) FirstRev() int64 { return tw.w.s.CompactRev() }

// Changes is the number of changes this request has staged.
func (tw *TxnWrite) Changes() int { return len(tw.b.changes) - tw.mark }

// curRev is the revision reads inside the request see: its own writes are
// visible once it has made any.
func (tw *TxnWrite) curRev() int64 {
	if tw.Changes() > 0 {
		return tw.beginRev + 1
	}
	return tw.beginRev
}

// Range reads as etcd's write transaction does, including staged changes.
func (tw *TxnWrite) Range(ctx context.Context, key, end []byte, ro RangeOptions) (*RangeResult, error) {
	tw.ops++
	rangeCounter.Inc()
	return tw.w.r.rangeKeys(ctx, key, end, tw.curRev(), ro, tw.b.values)
}

// Put stages key=value with lease and returns the request's revision.
func (tw *TxnWrite) Put(key, value []byte, lease int64) int64 {
	tw.ops++
	putCounter.Inc()
	rev := tw.beginRev + 1
	e := entry{rev: rev, create: rev, version: 1, lease: lease}
	if ki := tw.w.s.idx.get(key); ki != nil {
		key = ki.key
		if prev, live := ki.at(rev); live {
			e.create = prev.create
			e.version = prev.version + 1
		}
	} else {
		key = append([]byte(nil), key...)
	}
	if value == nil {
		value = []byte{}
	}
	tw.stage(key, value, e)
	return rev
}

// DeleteRange stages tombstones for the live keys in [key, end) and returns
// how many, with the revision the response reports.
func (tw *TxnWrite) DeleteRange(key, end []byte) (n, rev int64) {
	tw.ops++
	deleteCounter.Inc()
	var keys [][]byte
	readRev := tw.curRev()
	s := tw.w.s
	s.mu.RLock()
	s.idx.ascend(key, end, func(ki *keyIndex) bool {
		if _, live := ki.at(readRev); live {
			keys = append(keys, ki.key)
		}
		return true
	})
	s.mu.RUnlock()
	for _, k := range keys {
		tw.stage(k, []byte{}, entry{rev: tw.beginRev + 1})
	}
	if len(keys) != 0 || tw.Changes() > 0 {
		return int64(len(keys)), tw.beginRev + 1
	}
	return 0, tw.beginRev
}

func (tw *TxnWrite) stage(key, value []byte, e entry) {
	tw.b.lastID++
	e.id = tw.b.lastID
	e.size = int64(len(key) + len(value))
	tw.b.changes = append(tw.b.changes, Change{Key: key, Value: value, sub: int64(tw.Changes()), e: e})
	tw.b.values[e.id] = value
	// Readers only look at committed revisions, so a staged entry is invisible
	// to them until the batch commits and the revision moves past it.
	tw.w.s.mu.Lock()
	tw.w.s.idx.add(key, e)
	tw.w.s.mu.Unlock()
}

// unstage removes the changes staged after position mark.
func (b *batch) unstage(s *state, mark int) {
	s.mu.Lock()
	for i := len(b.changes) - 1; i >= mark; i-- {
		c := b.changes[i]
		s.idx.removeLast(c.Key)
		delete(b.values, c.e.id)
	}
	s.mu.Unlock()
	b.changes = b.changes[:mark]
	if mark > 0 {
		b.lastID = b.changes[mark-1].e.id
	}
}
