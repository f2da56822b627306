package sqllog

import (
	"bytes"
	"fmt"
	"testing"
)

func TestValueCache(t *testing.T) {
	c := newValueCache(minCachedBytes)
	defer c.close()
	val := func(id int64, n int) []byte { return bytes.Repeat([]byte{byte(id)}, n) }
	const n = 4000 // a ring of 1 MiB holds 262 of these
	for id := int64(1); id <= 1000; id++ {
		c.put(id, val(id, n))
		v, ok := c.get(id)
		if !ok || !bytes.Equal(v, val(id, n)) {
			t.Fatalf("get(%d) right after put: ok=%v, %d bytes", id, ok, len(v))
		}
	}
	// The newest entries are all there, intact; the oldest have gone.
	hits := 0
	for id := int64(1); id <= 1000; id++ {
		v, ok := c.get(id)
		if !ok {
			if id > 1000-(minCachedBytes/n)+1 {
				t.Fatalf("recent entry %d evicted", id)
			}
			continue
		}
		hits++
		if !bytes.Equal(v, val(id, n)) {
			t.Fatalf("entry %d corrupted by later writes", id)
		}
	}
	if want := minCachedBytes / n; hits < want-1 || hits > want {
		t.Fatalf("%d entries cached, a ring of %d bytes holds %d", hits, minCachedBytes, want)
	}
	// A copy is returned: changing it does not change the cache.
	v, _ := c.get(1000)
	v[0]++
	if w, _ := c.get(1000); w[0] != byte(1000%256) {
		t.Fatal("get returned the ring's own bytes")
	}
	// Too large for the ring: not cached, nothing evicted.
	c.put(5000, make([]byte, minCachedBytes/4))
	if _, ok := c.get(5000); ok {
		t.Fatal("a value over an eighth of the ring was cached")
	}
	if _, ok := c.get(1000); !ok {
		t.Fatal("an uncacheable value evicted others")
	}
	// Empty values are values.
	c.put(6000, nil)
	if v, ok := c.get(6000); !ok || len(v) != 0 {
		t.Fatalf("empty value: ok=%v len=%d", ok, len(v))
	}
	if len(c.order)-c.first != len(c.byID) {
		t.Fatalf("order has %d live entries, byID %d", len(c.order)-c.first, len(c.byID))
	}
	c.close()
	c.put(7000, val(7, 10))
	if _, ok := c.get(7000); ok {
		t.Fatal("closed cache kept a value")
	}
}

func TestValueCacheBoundsEntries(t *testing.T) {
	c := newValueCache(minCachedBytes)
	defer c.close()
	for id := int64(0); id < 100000; id++ {
		c.put(id, []byte(fmt.Sprint(id)))
	}
	if max := minCachedBytes / 128; len(c.byID) > max {
		t.Fatalf("%d tiny entries kept, bound %d", len(c.byID), max)
	}
	if v, ok := c.get(99999); !ok || string(v) != "99999" {
		t.Fatalf("newest tiny entry: %q %v", v, ok)
	}
}

func TestValueCacheDisabled(t *testing.T) {
	for _, size := range []int64{-1, 0, minCachedBytes - 1} {
		c := newValueCache(size)
		c.put(1, []byte("x"))
		if _, ok := c.get(1); ok {
			t.Fatalf("size %d: cached", size)
		}
		c.close()
	}
}

// get returns a copy of the cached value of row id.
func (c *valueCache) get(id int64) ([]byte, bool) { return c.appendTo(nil, id) }

// TestValueCacheClear: after clear (a resync: row ids may come to name other
// values) nothing is served, and new entries are cached again.
func TestValueCacheClear(t *testing.T) {
	c := newValueCache(minCachedBytes)
	defer c.close()
	for id := int64(1); id <= 10; id++ {
		c.put(id, []byte(fmt.Sprint("lost-", id)))
	}
	c.clear()
	for id := int64(1); id <= 10; id++ {
		if v, ok := c.get(id); ok {
			t.Fatalf("entry %d served after clear: %q", id, v)
		}
	}
	c.put(3, []byte("new-3"))
	if v, ok := c.get(3); !ok || string(v) != "new-3" {
		t.Fatalf("entry 3 after clear and put: %q, %v", v, ok)
	}
}
