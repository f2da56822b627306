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
		return nil
	}
	_, err = mt.st.be.Write.ExecContext(ctx, mt.st.q(`INSERT INTO shimd_member (id, name, client_urls, heartbeat_at) VALUES (?, ?, ?, ?)`), int64(m.ID), m.Name, urls, now.UnixMilli())
	if err != nil {
		return fmt.Errorf("member heartbeat: %w", err)
	}
	return nil
}

// Members returns the members whose last heartbeat is after since, by id.
func (mt *members) Members(ctx context.Context, since time.Time) ([]Member, error) {
	rows, err := mt.st.be.Read.QueryContext(ctx, mt.st.q(`SELECT id, name, client_urls FROM shimd_member WHERE heartbeat_at > ? ORDER BY id`), since.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	defer rows.Close()
	var out []Member
	for rows.Next() {
		var id int64
		var m Member
		var urls string
		if err := rows.Scan(&id, &m.Name, &urls); err != nil {
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
