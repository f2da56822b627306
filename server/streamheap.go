package server

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// streamHeapHeadroom is how far the Go runtime's memory may grow while
// RangeStreams run before the collector is made to run.
const streamHeapHeadroom = 12 << 20

// streamHeap bounds the memory RangeStreams cost. A stream's values pass
// through the Go heap a chunk at a time, and left to GOGC the collector
// lets that garbage pile up to the size of the live heap (mostly the index:
// tens of MiB for a few hundred thousand keys, more for more) before it
// collects; a list of the whole store would grow the process by that much.
// While any stream runs, a soft memory limit (debug.SetMemoryLimit) of what
// the runtime held when the first began plus streamHeapHeadroom makes the
// collector run as soon as the streams' garbage reaches the headroom. The
// limit rises by what the live heap grows if other work grows it meanwhile
// (so that the collector never runs back to back), never exceeds the limit
// set before (GOMEMLIMIT), and is restored when the last stream ends.
type streamHeap struct {
	mu       sync.Mutex
	active   int
	saved    int64  // the memory limit before the first stream
	base     uint64 // the runtime's memory when the first began
	cycles   uint64 // collections completed then
	baseLive uint64 // the live heap at the first collection since (0: none yet)
	limit    int64  // the limit set
}

// memSamples are the runtime's mapped memory, what it has returned to the
// OS, the collections completed, and the live heap as of the last one.
var memSamples = []string{"/memory/classes/total:bytes", "/memory/classes/heap/released:bytes", "/gc/cycles/total:gc-cycles", "/gc/heap/live:bytes"}

// readMem returns the memory the runtime holds, the collections completed,
// and the live heap as of the last.
func readMem() (inUse, cycles, live uint64) {
	s := make([]metrics.Sample, len(memSamples))
	for i, name := range memSamples {
		s[i].Name = name
	}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64(), s[2].Value.Uint64(), s[3].Value.Uint64()
}

// begin is called as a stream starts; end must follow.
func (h *streamHeap) begin() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.active++; h.active == 1 {
		h.saved = debug.SetMemoryLimit(-1)
		h.base, h.cycles, _ = readMem()
		h.baseLive, h.limit = 0, 0
	}
	h.adjust()
}

// chunk is called after each chunk a stream sends: it moves the limit up
// if the live heap has grown.
func (h *streamHeap) chunk() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.adjust()
}

func (h *streamHeap) end() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.active--; h.active == 0 {
		debug.SetMemoryLimit(h.saved)
	}
}

func (h *streamHeap) adjust() {
	limit := h.base + streamHeapHeadroom
	// The live heap measured before the first stream began can be old; the
	// first collection since gives the reference.
	if _, cycles, live := readMem(); cycles > h.cycles {
		if h.baseLive == 0 {
			h.baseLive = live
		}
		limit += live - min(live, h.baseLive)
	}
	l := int64(min(limit, math.MaxInt64))
	if h.saved > 0 {
		l = min(l, h.saved)
	}
	if l != h.limit {
		h.limit = l
		debug.SetMemoryLimit(l)
	}
}
