package sqllog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// FuzzLogAgainstModel runs a random program of writes, reads and
// compactions (decoded from the fuzz input) on a fresh SQLite log and on a
// tiny in-memory model of etcd's revisioned key space, and compares every
// read: keys (binary, "\x00", "\xff" runs), range ends (single key, every key
// from, empty and inverted ranges), limits (none, negative, huge), reads at
// past, compacted and future revisions, count-only and keys-only. At the end
// the log is closed and reopened (the keys make the round trip through the
// database) and every readable revision is compared again.
func FuzzLogAgainstModel(f *testing.F) {
	for _, seed := range fuzzLogSeeds() {
		f.Add(seed)
	}
	f.Fuzz(runLogProgram)
}

// runLogProgram runs one program (see FuzzLogAgainstModel).
func runLogProgram(t *testing.T, prog []byte) {
	path := fuzzDBPath(t)
	l := openAt(t, path)
	m := newRefModel()
	r := &progReader{b: prog}
	ctx := context.Background()
	for step := 0; step < 48 && !r.done(); step++ {
		switch op := r.next() % 8; op {
		case 0, 1, 2: // put one key
			key, val := r.key(), r.value()
			var rev int64
			if err := l.Write(ctx, func(tw *TxnWrite) error { rev = tw.Put(key, val, 0); return nil }); err != nil {
				t.Fatalf("step %d: put %q: %v", step, key, err)
			}
			m.apply(func(s refState) { s.put(key, val, m.rev+1) })
			if rev != m.rev {
				t.Fatalf("step %d: put %q got revision %d, model %d", step, key, rev, m.rev)
			}
		case 3: // several distinct keys in one request
			keys := map[string]bool{}
			var order [][]byte
			for n := 1 + int(r.next()%3); n > 0; n-- {
				if k := r.key(); !keys[string(k)] {
					keys[string(k)] = true
					order = append(order, k)
				}
			}
			val := r.value()
			var rev int64
			if err := l.Write(ctx, func(tw *TxnWrite) error {
				for _, k := range order {
					rev = tw.Put(k, val, 0)
				}
				return nil
			}); err != nil {
				t.Fatalf("step %d: multi-put: %v", step, err)
			}
			m.apply(func(s refState) {
				for _, k := range order {
					s.put(k, val, m.rev+1)
				}
			})
			if rev != m.rev {
				t.Fatalf("step %d: multi-put got revision %d, model %d", step, rev, m.rev)
			}
		case 4, 5: // delete a range, then maybe put a key outside it (a txn)
			key, end := r.key(), r.end()
			var putKey []byte
			if op == 5 {
				if k := r.key(); !inRange(k, key, end) {
					putKey = k
				}
			}
			var n, rev int64
			if err := l.Write(ctx, func(tw *TxnWrite) error {
				n, rev = tw.DeleteRange(key, end)
				if putKey != nil {
					rev = tw.Put(putKey, []byte("after-delete"), 0)
				}
				return nil
			}); err != nil {
				t.Fatalf("step %d: delete [%q, %q): %v", step, key, end, err)
			}
			want := int64(len(m.cur().rangeKeys(key, end)))
			if want > 0 || putKey != nil {
				m.apply(func(s refState) {
					for _, k := range s.rangeKeys(key, end) {
						delete(s, k)
					}
					if putKey != nil {
						s.put(putKey, []byte("after-delete"), m.rev+1)
					}
				})
			}
			if n != want || rev != m.rev {
				t.Fatalf("step %d: delete [%q, %q) (then put %q): deleted %d at revision %d, model %d at %d", step, key, end, putKey, n, rev, want, m.rev)
			}
		case 6: // read
			key, end := r.key(), r.end()
			ro := RangeOptions{Limit: r.limit(), Rev: r.rev(m), Count: r.next()%5 == 0, KeysOnly: r.next()%3 == 0}
			checkRead(t, fmt.Sprintf("step %d", step), l, m, key, end, ro)
		case 7: // compact
			if r.next()%3 != 0 || m.rev <= m.compact {
				continue
			}
			rev := m.compact + 1 + int64(r.next())%(m.rev-m.compact)
			done, err := l.Compact(ctx, rev)
			if err != nil {
				t.Fatalf("step %d: compact at %d (log at %d, compacted at %d): %v", step, rev, m.rev, m.compact, err)
			}
			<-done
			m.compact = rev
		}
	}
	// Every readable revision, whole key space, then again after a reopen.
	checkAll := func(when string, l *Log) {
		if l.Rev() != m.rev || l.CompactRev() != m.compact {
			t.Fatalf("%s: log at revision %d compacted at %d, model %d/%d", when, l.Rev(), l.CompactRev(), m.rev, m.compact)
		}
		for rev := max(m.compact, 1); rev <= m.rev; rev++ {
			checkRead(t, fmt.Sprintf("%s, revision %d", when, rev), l, m, []byte{0}, []byte{}, RangeOptions{Rev: rev})
		}
		if m.compact > 1 {
			checkRead(t, when+", below the compaction", l, m, []byte{0}, []byte{}, RangeOptions{Rev: m.compact - 1})
		}
	}
	checkAll("end of program", l)
	l.Close()
	l2 := openAt(t, path)
	defer l2.Close()
	checkAll("after reopen", l2)
}

// FuzzKeyRoundTrip puts an arbitrary key (and its neighbours key+"\x00" and
// key+"\xff") and reads it back through every kind of range, before and
// after reopening the log: keys and values must survive the database
// byte for byte and sort as bytes.
func FuzzKeyRoundTrip(f *testing.F) {
	for _, k := range []string{"a", "\x00", "\xff", "\xff\xff\xff", "a\x00b", "\x00\xff\x00", "/registry/pods/default/p", "é", "\x80"} {
		f.Add([]byte(k), []byte("v-"+k))
	}
	f.Add(bytes.Repeat([]byte{0xff}, 300), []byte{})
	f.Fuzz(func(t *testing.T, key, value []byte) {
		if len(key) == 0 {
			return // etcd refuses empty keys before the log
		}
		path := fuzzDBPath(t)
		l := openAt(t, path)
		m := newRefModel()
		ctx := context.Background()
		keys := [][]byte{key, append(append([]byte(nil), key...), 0), append(append([]byte(nil), key...), 0xff)}
		for _, k := range keys {
			if err := l.Write(ctx, func(tw *TxnWrite) error { tw.Put(k, value, 0); return nil }); err != nil {
				t.Fatalf("put %q: %v", k, err)
			}
			m.apply(func(s refState) { s.put(k, value, m.rev+1) })
		}
		check := func(when string, l *Log) {
			for _, k := range keys {
				for _, end := range [][]byte{nil, {}, append(append([]byte(nil), k...), 0), prefixEnd(k), {0xff, 0xff, 0xff, 0xff}} {
					checkRead(t, when, l, m, k, end, RangeOptions{})
					checkRead(t, when, l, m, k, end, RangeOptions{Limit: 1})
					checkRead(t, when, l, m, k, end, RangeOptions{Rev: 2})
				}
			}
			checkRead(t, when, l, m, []byte{0}, []byte{}, RangeOptions{KeysOnly: true})
		}
		check("before reopen", l)
		l.Close()
		l2 := openAt(t, path)
		defer l2.Close()
		check("after reopen", l2)
	})
}

// prefixEnd is the end of the range of keys starting with p ("" when p is
// all 0xff: every key from p).
func prefixEnd(p []byte) []byte {
	e := append([]byte(nil), p...)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] < 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	return []byte{}
}

func checkRead(t *testing.T, when string, l *Log, m *refModel, key, end []byte, ro RangeOptions) {
	t.Helper()
	ctx := context.Background()
	v, err := l.View(ctx)
	if err != nil {
		t.Fatalf("%s: view: %v", when, err)
	}
	got, err := v.Range(ctx, key, end, ro)
	rev := ro.Rev
	if rev <= 0 {
		rev = m.rev
	}
	switch {
	case ro.Rev > m.rev:
		if !errors.Is(err, ErrFutureRev) {
			t.Fatalf("%s: read [%q, %q) at future revision %d (log at %d): %v, want ErrFutureRev", when, key, end, ro.Rev, m.rev, err)
		}
		return
	case rev < m.compact:
		if !errors.Is(err, ErrCompacted) {
			t.Fatalf("%s: read [%q, %q) at compacted revision %d (compacted at %d): %v, want ErrCompacted", when, key, end, rev, m.compact, err)
		}
		return
	case err != nil:
		t.Fatalf("%s: read [%q, %q) %+v: %v", when, key, end, ro, err)
	}
	state := m.at(rev)
	keys := state.rangeKeys(key, end)
	if got.Count != int64(len(keys)) || got.Rev != m.rev {
		t.Fatalf("%s: read [%q, %q) %+v: count %d at header revision %d, model %d at %d (%q)", when, key, end, ro, got.Count, got.Rev, len(keys), m.rev, keys)
	}
	if ro.Count {
		if len(got.KVs) != 0 {
			t.Fatalf("%s: count-only read returned %d kvs", when, len(got.KVs))
		}
		return
	}
	if ro.Limit > 0 && int64(len(keys)) > ro.Limit {
		keys = keys[:ro.Limit]
	}
	if len(got.KVs) != len(keys) {
		t.Fatalf("%s: read [%q, %q) %+v: %d kvs, model %d (%q)", when, key, end, ro, len(got.KVs), len(keys), keys)
	}
	for i, kv := range got.KVs {
		want := state[keys[i]]
		if string(kv.Key) != keys[i] || kv.CreateRevision != want.create || kv.ModRevision != want.mod || kv.Version != want.ver || kv.Lease != 0 {
			t.Fatalf("%s: read [%q, %q) %+v: kv #%d is %q c%d m%d v%d, model %q c%d m%d v%d", when, key, end, ro, i,
				kv.Key, kv.CreateRevision, kv.ModRevision, kv.Version, keys[i], want.create, want.mod, want.ver)
		}
		if ro.KeysOnly && len(kv.Value) != 0 {
			t.Fatalf("%s: keys-only read returned a value for %q", when, kv.Key)
		}
		if !ro.KeysOnly && !bytes.Equal(kv.Value, want.value) {
			t.Fatalf("%s: read %q at %d: value %q, model %q", when, kv.Key, rev, kv.Value, want.value)
		}
	}
}

// refModel is every revision's key space.
type refModel struct {
	rev     int64
	compact int64
	states  []refState // states[i] is revision i+1
}

type refKV struct {
	value            []byte
	create, mod, ver int64
}

type refState map[string]refKV

func newRefModel() *refModel { return &refModel{rev: 1, states: []refState{{}}} }

func (m *refModel) cur() refState         { return m.states[len(m.states)-1] }
func (m *refModel) at(rev int64) refState { return m.states[rev-1] }

func (m *refModel) apply(fn func(s refState)) {
	next := refState{}
	for k, v := range m.cur() {
		next[k] = v
	}
	fn(next)
	m.states = append(m.states, next)
	m.rev++
}

func (s refState) put(key, value []byte, rev int64) {
	kv := refKV{value: append([]byte(nil), value...), create: rev, mod: rev, ver: 1}
	if old, ok := s[string(key)]; ok {
		kv.create, kv.ver = old.create, old.ver+1
	}
	s[string(key)] = kv
}

// rangeKeys lists the keys in the etcd range [key, end), sorted: end nil is
// the key alone, empty is every key from key on.
func (s refState) rangeKeys(key, end []byte) []string {
	var out []string
	for k := range s {
		if inRange([]byte(k), key, end) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func inRange(k, key, end []byte) bool {
	switch {
	case end == nil:
		return bytes.Equal(k, key)
	case len(end) == 0:
		return bytes.Compare(k, key) >= 0
	}
	return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
}

// progReader decodes a program; past the input's end it reads zeros.
type progReader struct {
	b []byte
	i int
}

func (r *progReader) done() bool { return r.i >= len(r.b) }

func (r *progReader) next() byte {
	if r.i >= len(r.b) {
		r.i++
		return 0
	}
	c := r.b[r.i]
	r.i++
	return c
}

// Keys that stress byte ordering and range ends.
var fuzzKeys = [][]byte{
	{0}, {0, 0}, {0xff}, {0xff, 0xff}, {0xff, 0xff, 0xff}, []byte("a"), []byte("a\x00"), []byte("a\xff"),
	[]byte("ab"), []byte("b"), []byte("/registry/pods/x"), []byte("a\x00b"),
}

func (r *progReader) key() []byte {
	c := r.next()
	if int(c)%16 < len(fuzzKeys) {
		return fuzzKeys[int(c)%16]
	}
	n := 1 + int(r.next()%6)
	k := make([]byte, n)
	for i := range k {
		k[i] = r.next()
	}
	return k
}

func (r *progReader) end() []byte {
	switch c := r.next() % 4; c {
	case 0:
		return nil // the key alone
	case 1:
		return []byte{} // every key from
	}
	return r.key()
}

func (r *progReader) value() []byte {
	switch c := r.next(); {
	case c == 0:
		return nil
	case c == 1:
		return []byte{}
	case c == 2:
		return bytes.Repeat([]byte{0xff}, 70000) // over one SQLite page
	default:
		v := make([]byte, int(c)%9)
		for i := range v {
			v[i] = r.next()
		}
		return v
	}
}

func (r *progReader) limit() int64 {
	switch c := r.next() % 6; c {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return math.MaxInt64
	case 3:
		return math.MinInt64
	default:
		return int64(r.next() % 4)
	}
}

func (r *progReader) rev(m *refModel) int64 {
	switch c := r.next() % 6; c {
	case 0, 1:
		return 0
	case 2:
		return m.rev + 1 + int64(r.next()%3) // future
	case 3:
		return -int64(r.next())
	default:
		return 1 + int64(r.next())%m.rev
	}
}

// fuzzDBPath is a database path on tmpfs when there is one (fsyncs are
// free there), removed when t ends.
func fuzzDBPath(t *testing.T) string {
	dir := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "sqllog-fuzz-"); err == nil {
			dir = d
			t.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	if dir == "" {
		dir = t.TempDir()
	}
	return filepath.Join(dir, "shimd.db")
}

// fuzzLogSeeds are hand-written programs (see FuzzLogAgainstModel's decoder):
// binary keys, "\x00" and "\xff" runs, from-key and inverted ranges,
// compaction, limits.
func fuzzLogSeeds() [][]byte {
	return [][]byte{
		{},
		{0, 0, 5, 'x', 'y', 'z', 1, 1, 6, 0, 1, 0, 0, 0, 0},
		// put \xff, put \xff\xff, put a\x00, read from \x00 to every key
		{0, 2, 3, 1, 0, 3, 3, 2, 0, 6, 3, 2, 0, 2, 0, 1, 1},
		// put several, delete [a, b), read, compact, read old
		{3, 2, 5, 6, 9, 4, 'v', 'v', 'v', 'v', 4, 5, 2, 9, 6, 0, 1, 1, 4, 0, 0, 7, 0, 1, 6, 5, 1, 4, 1, 0, 0},
		// big value, then keys-only and count-only reads with huge limits
		{0, 11, 2, 0, 12, 3, 7, 1, 2, 3, 4, 5, 6, 7, 6, 0, 1, 2, 0, 1, 0, 6, 0, 1, 3, 0, 0, 0},
		// raw binary keys of several bytes
		{0, 15, 4, 0, 0xff, 0, 0xff, 0, 9, 0, 15, 4, 0, 0xff, 0, 0xfe, 0, 9, 6, 15, 2, 0, 0xff, 0, 0xff, 0, 1, 0, 0, 0, 0},
		// delete everything from \x00, put after, read at each revision
		{3, 3, 1, 2, 3, 5, 'a', 'b', 'c', 'd', 'e', 5, 0, 1, 4, 6, 0, 1, 0, 0, 0, 4, 6, 0, 1, 0, 5, 1, 0},
	}
}
