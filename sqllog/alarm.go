package sqllog

import (
	"context"
	"fmt"
)

// Alarm is a raised alarm: of a type (etcd's AlarmType numbers) on a member.
// Alarms are stored in the database, so every process sharing it sees them
// and they survive restarts, as etcd's do.
type Alarm struct {
	MemberID uint64
	Type     int32
}

// Alarms returns the raised alarms.
func (l *Log) Alarms() []Alarm {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return append([]Alarm(nil), l.alarms...)
}

// SetAlarm raises (active) or clears an alarm and reports whether that
// changed anything.
func (l *Log) SetAlarm(ctx context.Context, a Alarm, active bool) (bool, error) {
	var query string
	if active {
		for _, x := range l.Alarms() {
			if x == a {
				return false, nil
			}
		}
		query = `INSERT INTO shimd_alarm (member_id, alarm) VALUES (?, ?)`
	} else {
		query = `DELETE FROM shimd_alarm WHERE member_id = ? AND alarm = ?`
	}
	res, err := l.be.Write.ExecContext(ctx, l.q(query), int64(a.MemberID), a.Type)
	if err != nil {
		if active {
			// Raised meanwhile by another process.
			if lerr := l.loadAlarms(ctx); lerr == nil {
				return false, nil
			}
		}
		return false, fmt.Errorf("set alarm: %w", err)
	}
	n, _ := res.RowsAffected()
	return n > 0, l.loadAlarms(ctx)
}

// loadAlarms re-reads the alarm table.
func (l *Log) loadAlarms(ctx context.Context) error {
	rows, err := l.be.Read.QueryContext(ctx, `SELECT member_id, alarm FROM shimd_alarm ORDER BY member_id, alarm`)
	if err != nil {
		return fmt.Errorf("read alarms: %w", err)
	}
	defer rows.Close()
	var out []Alarm
	for rows.Next() {
		var id int64
		var a Alarm
		if err := rows.Scan(&id, &a.Type); err != nil {
			return fmt.Errorf("read alarms: %w", err)
		}
		a.MemberID = uint64(id)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read alarms: %w", err)
	}
	l.mu.Lock()
	l.alarms = out
	l.mu.Unlock()
	return nil
}
