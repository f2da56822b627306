package auth

import (
	"bytes"
	"sort"

	"go.etcd.io/etcd/api/v3/authpb"
)

// An interval of keys [begin, end); an empty end is the end of the
// keyspace (etcd's BytesAffineComparable: "" sorts after every key).
type interval struct{ begin, end []byte }

// cmpAffine compares two bounds where an empty one is the largest.
func cmpAffine(a, b []byte) int {
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return 1
	case len(b) == 0:
		return -1
	}
	return bytes.Compare(a, b)
}

func (i interval) intersects(j interval) bool {
	return cmpAffine(i.begin, j.end) < 0 && cmpAffine(j.begin, i.end) < 0
}

// point is the interval of one key, [key, key+"\x00").
func point(key []byte) interval {
	end := make([]byte, len(key)+1)
	copy(end, key)
	return interval{key, end}
}

// isOpenEnded reports etcd's "to the end of the keyspace" range end, "\x00".
func isOpenEnded(end []byte) bool { return len(end) == 1 && end[0] == 0 }

// permInterval is the interval a permission grants.
func permInterval(p *authpb.Permission) interval {
	if len(p.RangeEnd) == 0 {
		return point(p.Key)
	}
	if isOpenEnded(p.RangeEnd) {
		return interval{p.Key, nil}
	}
	return interval{p.Key, p.RangeEnd}
}

// validPermRange is etcd's rule for a permission's key and range end: a
// key, then no end (one key), an end after the key, or "\x00".
func validPermRange(key, end []byte) bool {
	if len(key) == 0 {
		return false
	}
	if len(end) == 0 || isOpenEnded(end) {
		return true
	}
	return cmpAffine(key, end) < 0
}

// intervals is a set of granted intervals sorted by begin.
type intervals []interval

func (s intervals) sorted() intervals {
	sort.SliceStable(s, func(i, j int) bool { return cmpAffine(s[i].begin, s[j].begin) < 0 })
	return s
}

// any reports whether some interval holds key.
func (s intervals) any(key []byte) bool {
	p := point(key)
	for _, i := range s {
		if i.intersects(p) {
			return true
		}
	}
	return false
}

// covers reports whether the intervals meeting q, taken by ascending
// begin, are contiguous and reach from q's begin to its end: etcd's
// IntervalTree.Contains.
func (s intervals) covers(q interval) bool {
	var minBegin, maxEnd []byte
	found := false
	for _, i := range s {
		if !i.intersects(q) {
			continue
		}
		if !found {
			minBegin, maxEnd, found = i.begin, i.end, true
			continue
		}
		if cmpAffine(maxEnd, i.begin) < 0 {
			return false
		}
		if cmpAffine(i.end, maxEnd) > 0 {
			maxEnd = i.end
		}
	}
	return found && cmpAffine(maxEnd, q.end) >= 0 && cmpAffine(minBegin, q.begin) <= 0
}

// userPerms are a user's permissions merged over its roles.
type userPerms struct{ read, write intervals }

func (p *userPerms) allowed(key, end []byte, write bool) bool {
	set := p.read
	if write {
		set = p.write
	}
	if len(end) == 0 {
		return set.any(key)
	}
	if isOpenEnded(end) {
		end = nil
	}
	return set.covers(interval{key, end})
}
