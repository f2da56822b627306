package sqllog

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Member is a shimd process serving the database.
type Member struct {
	ID         uint64
	Name       string
	ClientURLs []string
	// WakeAddr is where the member listens for wake-ups after other
	// members' commits (package peerwake), "" if it does not.
	WakeAddr string
}

// members is the list of processes serving the database.
type members struct{ st *store }

// Heartbeat records that member m is alive now. Processes sharing a
// database list each other from these rows.
func (mt *members) Heartbeat(ctx context.Context, m Member, now time.Time) error {
	ctx, cancel := mt.st.bound(ctx)
	defer cancel()
	urls := strings.Join(m.ClientURLs, ",")
	res, err := mt.st.be.Write.ExecContext(ctx, mt.st.q(`UPDATE shimd_member SET name = ?, client_urls = ?, heartbeat_at = ? WHERE id = ?`), m.Name, urls, now.UnixMilli(), int64(m.ID))
	if err != nil {
		return fmt.Errorf("member heartbeat: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return mt.recordWake(ctx, m)
	}
	_, err = mt.st.be.Write.ExecContext(ctx, mt.st.q(`INSERT INTO shimd_member (id, name, client_urls, heartbeat_at) VALUES (?, ?, ?, ?)`), int64(m.ID), m.Name, urls, now.UnixMilli())
	if err != nil {
		return fmt.Errorf("member heartbeat: %w", err)
	}
	return mt.recordWake(ctx, m)
}

// recordWake records m's wake address with every heartbeat, so that a row
// lost or changed (a restart on another port) is put right within one. A
// member without one leaves any older row be: it is only read while the
// member's heartbeat is current, and a stray wake-up costs a poll at most.
func (mt *members) recordWake(ctx context.Context, m Member) error {
	if m.WakeAddr == "" {
		return nil
	}
	res, err := mt.st.be.Write.ExecContext(ctx, mt.st.q(`UPDATE `+memberWakeTable+` SET addr = ? WHERE member_id = ?`), m.WakeAddr, int64(m.ID))
	if err != nil {
		return fmt.Errorf("member wake address: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return nil
	}
	if _, err := mt.st.be.Write.ExecContext(ctx, mt.st.q(`INSERT INTO `+memberWakeTable+` (member_id, addr) VALUES (?, ?)`), int64(m.ID), m.WakeAddr); err != nil {
		return fmt.Errorf("member wake address: %w", err)
	}
	return nil
}

// Members returns the members whose last heartbeat is after since, by id.
func (mt *members) Members(ctx context.Context, since time.Time) ([]Member, error) {
	rows, err := mt.st.be.Read.QueryContext(ctx, mt.st.q(`SELECT m.id, m.name, m.client_urls, COALESCE(w.addr, '') FROM shimd_member m
		LEFT JOIN `+memberWakeTable+` w ON w.member_id = m.id WHERE m.heartbeat_at > ? ORDER BY m.id`), since.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	defer rows.Close()
	var out []Member
	for rows.Next() {
		var id int64
		var m Member
		var urls string
		if err := rows.Scan(&id, &m.Name, &urls, &m.WakeAddr); err != nil {
			return nil, fmt.Errorf("list members: %w", err)
		}
		m.ID = uint64(id)
		if urls != "" {
			m.ClientURLs = strings.Split(urls, ",")
		}
		out = append(out, m)
	}
	return out, rows.Err()
}
