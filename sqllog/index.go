package sqllog

import (
	"bytes"
	"sort"

	"github.com/google/btree"
)

// entry is one retained change of a key, as the index keeps it.
type entry struct {
	rev     int64 // main revision
	id      int64 // log row id; orders the changes within one revision
	create  int64 // create revision of the key's current life
	version int64 // 0 marks a tombstone (a delete)
	lease   int64
	size    int64 // bytes of key and value, for the in-use estimate
}

func (e entry) tombstone() bool { return e.version == 0 }

// valueSize is the length of the value of key's change e.
func (e entry) valueSize(key []byte) int { return max(int(e.size)-len(key), 0) }

// keyIndex lists the retained changes of one key, oldest first.
type keyIndex struct {
	key  []byte
	revs []entry
	// dropped accumulates the sizes removed by compact, for the caller.
	dropped int64
}

// at returns the change visible at rev and whether the key is live then.
func (ki *keyIndex) at(rev int64) (entry, bool) {
	// Most reads are at the current revision: the last change, found
	// without a search, so that their cost does not grow with history.
	if n := len(ki.revs); n > 0 && ki.revs[n-1].rev <= rev {
		return ki.revs[n-1], !ki.revs[n-1].tombstone()
	}
	i := sort.Search(len(ki.revs), func(i int) bool { return ki.revs[i].rev > rev }) - 1
	if i < 0 {
		return entry{}, false
	}
	return ki.revs[i], !ki.revs[i].tombstone()
}

// compact drops the changes no read at or after rev can see: everything before
// the last change at or before rev, and that one too when it is a tombstone
// older than rev. A tombstone at rev itself stays, as in etcd 3.6, so that a
// watch from the compact revision still sees that delete. It returns the row
// ids dropped.
func (ki *keyIndex) compact(rev int64, garbage []int64) []int64 {
	i := sort.Search(len(ki.revs), func(i int) bool { return ki.revs[i].rev > rev }) - 1
	if i < 0 {
		return garbage
	}
	keep := i
	if ki.revs[i].tombstone() && ki.revs[i].rev < rev {
		keep = i + 1
	}
	for _, e := range ki.revs[:keep] {
		garbage = append(garbage, e.id)
		ki.dropped += e.size
	}
	if keep > 0 {
		ki.revs = append(ki.revs[:0:0], ki.revs[keep:]...)
	}
	return garbage
}

// index maps keys, in byte order, to their retained changes.
type index struct {
	tree *btree.BTreeG[*keyIndex]
}

func newIndex() *index {
	return &index{tree: btree.NewG(32, func(a, b *keyIndex) bool { return bytes.Compare(a.key, b.key) < 0 })}
}

func (x *index) get(key []byte) *keyIndex {
	ki, _ := x.tree.Get(&keyIndex{key: key})
	return ki
}

// add appends a change to key's history.
func (x *index) add(key []byte, e entry) {
	ki := x.get(key)
	if ki == nil {
		ki = &keyIndex{key: key}
		x.tree.ReplaceOrInsert(ki)
	}
	ki.revs = append(ki.revs, e)
}

// removeLast undoes the latest add for key.
func (x *index) removeLast(key []byte) {
	ki := x.get(key)
	if ki == nil || len(ki.revs) == 0 {
		return
	}
	ki.revs = ki.revs[:len(ki.revs)-1]
	if len(ki.revs) == 0 {
		x.tree.Delete(ki)
	}
}

// ascend calls fn for each key in the etcd range [key, end): end nil means the
// single key, an empty non-nil end means every key from key on.
func (x *index) ascend(key, end []byte, fn func(ki *keyIndex) bool) {
	if end == nil {
		if ki := x.get(key); ki != nil {
			fn(ki)
		}
		return
	}
	if len(end) > 0 && bytes.Compare(key, end) >= 0 {
		return
	}
	pivot := &keyIndex{key: key}
	if len(end) == 0 {
		x.tree.AscendGreaterOrEqual(pivot, fn)
		return
	}
	x.tree.AscendRange(pivot, &keyIndex{key: end}, fn)
}

// compact compacts every key at rev, dropping keys left with no changes, and
// returns the row ids that no read can reach any more.
func (x *index) compact(rev int64) (garbage []int64, freed int64) {
	var empty []*keyIndex
	x.tree.Ascend(func(ki *keyIndex) bool {
		garbage = ki.compact(rev, garbage)
		freed += ki.dropped
		ki.dropped = 0
		if len(ki.revs) == 0 {
			empty = append(empty, ki)
		}
		return true
	})
	for _, ki := range empty {
		x.tree.Delete(ki)
	}
	return garbage, freed
}
