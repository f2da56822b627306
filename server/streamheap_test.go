package server

import (
	"runtime/debug"
	"testing"
)

// currentLimit reads the memory limit without changing it.
func currentLimit() int64 { return debug.SetMemoryLimit(-1) }

func TestStreamHeapLimitsWhileStreamsRun(t *testing.T) {
	const before = int64(1) << 40
	old := debug.SetMemoryLimit(before)
	defer debug.SetMemoryLimit(old)

	var h streamHeap
	h.begin()
	inUse, _, _ := readMem()
	got := currentLimit()
	if got >= before || got < int64(h.base)+streamHeapHeadroom || got > int64(inUse)+2*streamHeapHeadroom {
		t.Fatalf("limit while streaming = %d MiB, want about the runtime's %d MiB + %d MiB", got>>20, inUse>>20, streamHeapHeadroom>>20)
	}
	h.begin() // a second stream shares the limit
	h.chunk()
	h.end()
	if l := currentLimit(); l >= before {
		t.Fatalf("limit lifted while a stream still runs: %d", l)
	}
	h.end()
	if l := currentLimit(); l != before {
		t.Fatalf("limit after the last stream = %d, want the one before (%d)", l, before)
	}
}

func TestStreamHeapKeepsALowerLimit(t *testing.T) {
	inUse, _, _ := readMem()
	lower := int64(inUse) + 1<<20 // below base + headroom
	old := debug.SetMemoryLimit(lower)
	defer debug.SetMemoryLimit(old)

	var h streamHeap
	h.begin()
	if l := currentLimit(); l != lower {
		t.Errorf("limit while streaming = %d, want GOMEMLIMIT's %d kept", l, lower)
	}
	h.end()
	if l := currentLimit(); l != lower {
		t.Errorf("limit after = %d, want %d", l, lower)
	}
}
