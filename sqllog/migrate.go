package sqllog

import (
	"context"
	"fmt"
)

// StartAt moves an empty log's revision to rev, so that what is written
// next gets revisions above those a migrated-from store handed out:
// clients that remember revisions (a kube-apiserver's resourceVersions)
// never see them go backwards.
func StartAt(ctx context.Context, l *Log, rev int64) error {
	s, st := l.state, l.store
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if p := s.position(); p.rev != 1 || p.lastID != 0 {
		return ErrNotEmpty
	}
	if rev <= 1 {
		return nil
	}
	if _, err := st.be.Write.ExecContext(ctx, st.q(`UPDATE shimd_meta SET rev = ? WHERE id = 1`), rev); err != nil {
		return fmt.Errorf("set revision: %w", err)
	}
	s.mu.Lock()
	s.rev = rev
	s.mu.Unlock()
	l.hub.mu.Lock()
	l.hub.rev = rev
	l.hub.mu.Unlock()
	return nil
}
