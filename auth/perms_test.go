package auth

import "testing"

func iv(b, e string) interval { return interval{[]byte(b), []byte(e)} }

// The cases of etcd's range permission cache tests, on our intervals.
func TestCovers(t *testing.T) {
	for i, tt := range []struct {
		perms intervals
		q     interval
		want  bool
	}{
		{intervals{iv("a", "c"), iv("x", "z")}, iv("a", "z"), false},
		{intervals{iv("a", "f"), iv("c", "d"), iv("f", "z")}, iv("a", "z"), true},
		{intervals{iv("a", "d"), iv("a", "b"), iv("c", "f")}, iv("a", "f"), true},
		{intervals{iv("a", "d"), iv("a", "b"), iv("c", "f")}, iv("a", ""), false},
		{intervals{iv("a", "")}, iv("a", ""), true},
		{intervals{iv("\x00", "")}, iv("a", ""), true},
		{intervals{iv("\x00", "")}, iv("\x00", ""), true},
	} {
		if got := tt.perms.sorted().covers(tt.q); got != tt.want {
			t.Errorf("#%d: covers = %v, want %v", i, got, tt.want)
		}
	}
}

func TestAny(t *testing.T) {
	for i, tt := range []struct {
		perms intervals
		key   string
		want  bool
	}{
		{intervals{iv("a", "c"), iv("x", "z")}, "f", false},
		{intervals{iv("a", "f"), iv("c", "d"), iv("f", "z")}, "b", true},
		{intervals{iv("a", "d"), iv("a", "b"), iv("c", "f")}, "d", true},
		{intervals{iv("a", "d"), iv("a", "b"), iv("c", "f")}, "f", false},
		{intervals{iv("a", "d"), iv("a", "b"), iv("c", "")}, "f", true},
		{intervals{iv("a", "d"), iv("a", "b"), iv("\x00", "")}, "f", true},
		{intervals{point([]byte("k"))}, "k", true},
		{intervals{point([]byte("k"))}, "k\x00", false},
	} {
		if got := tt.perms.sorted().any([]byte(tt.key)); got != tt.want {
			t.Errorf("#%d: any = %v, want %v", i, got, tt.want)
		}
	}
}

func TestValidPermRange(t *testing.T) {
	for _, tt := range []struct {
		key, end string
		want     bool
	}{
		{"", "", false}, {"a", "", true}, {"a", "b", true}, {"b", "a", false},
		{"a", "a", false}, {"a", "\x00", true}, {"\x00", "\x00", true},
	} {
		if got := validPermRange([]byte(tt.key), []byte(tt.end)); got != tt.want {
			t.Errorf("validPermRange(%q, %q) = %v, want %v", tt.key, tt.end, got, tt.want)
		}
	}
}
