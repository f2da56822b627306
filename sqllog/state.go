package sqllog

import "sync"

// state is what one process knows of the log: the in-memory index and the
// positions and totals it reflects. Every part of the log shares it; only
// the writer, the follower and the compactor change it, each holding
// applyMu, so that rows are never applied twice or out of order.
type state struct {
	// applyMu is held by whoever advances the index: the writer for a whole
	// batch, the follower for the rows of other processes, the compactor.
	applyMu sync.Mutex

	// mu guards the fields below. Readers hold it only while walking the index.
	mu         sync.RWMutex
	idx        *index
	rev        int64 // committed revision the index reflects
	compactRev int64
	lastID     int64
	leases     leases
	leaseGen   int64 // meta.lease_gen the lease map reflects
	liveBytes  int64 // keys and values of the retained rows
	liveRows   int64 // retained rows
}

func newState() *state {
	return &state{idx: newIndex(), leases: newLeases(), leaseGen: -1} // lease table loaded on the first catch-up
}

// Rev returns the latest committed revision.
func (s *state) Rev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// CompactRev returns the revision the log has been compacted to (0 if never).
func (s *state) CompactRev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.compactRev
}

// position returns the meta row as this process believes it is.
func (s *state) position() meta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return meta{rev: s.rev, lastID: s.lastID, compactRev: s.compactRev, leaseGen: s.leaseGen}
}

// applyChanges adds committed changes to the index and the totals, up to
// revision rev and row id lastID; the caller holds mu.
func (s *state) applyChanges(changes []Change, rev, lastID int64) {
	for _, c := range changes {
		s.liveBytes += c.e.size
		s.attach(c)
	}
	s.liveRows += int64(len(changes))
	s.rev, s.lastID = rev, lastID
	currentRevGauge.Set(float64(rev))
}

// attach updates which lease c's key is attached to; the caller holds mu.
func (s *state) attach(c Change) {
	if c.e.tombstone() {
		s.leases.attach(c.Key, 0)
	} else {
		s.leases.attach(c.Key, c.e.lease)
	}
}

// compact compacts the index at rev and returns the rows it no longer needs.
func (s *state) compact(rev int64) []int64 {
	s.mu.Lock()
	garbage, freed := s.idx.compact(rev)
	s.compactRev = rev
	s.liveBytes -= freed
	s.liveRows -= int64(len(garbage))
	s.mu.Unlock()
	compactRevGauge.Set(float64(rev))
	return garbage
}

// applyLeaseOps makes committed grants and revokes visible; the caller holds mu.
func (s *state) applyLeaseOps(ops []leaseOp) {
	for _, op := range ops {
		if op.revoke {
			delete(s.leases.byID, op.lease.ID)
			s.leases.epoch++
			continue
		}
		ls := op.lease
		s.leases.byID[ls.ID] = &ls
	}
}
