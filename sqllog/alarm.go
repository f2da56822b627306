package sqllog

import (
	"context"
	"fmt"
	"sync"
)

// Alarm is a raised alarm: of a type (etcd's AlarmType numbers) on a member.
// Alarms are stored in the database, so every process sharing it sees them
// and they survive restarts, as etcd's do.
type Alarm struct {
	MemberID uint64
	Type     int32
}

// alarmSet is the alarm table and this process's copy of it, re-read when
// an alarm changes here and on every poll of a shared database.
type alarmSet struct {
	st   *store
	mu   sync.RWMutex
	list []Alarm
}

// Alarms returns the raised alarms.
func (as *alarmSet) Alarms() []Alarm {
	as.mu.RLock()
	defer as.mu.RUnlock()
	return append([]Alarm(nil), as.list...)
}

// SetAlarm raises (active) or clears an alarm and reports whether that
// changed anything.
func (as *alarmSet) SetAlarm(ctx context.Context, a Alarm, active bool) (bool, error) {
	var query string
	if active {
		for _, x := range as.Alarms() {
			if x == a {
				return false, nil
			}
		}
		query = `INSERT INTO shimd_alarm (member_id, alarm) VALUES (?, ?)`
	} else {
		query = `DELETE FROM shimd_alarm WHERE member_id = ? AND alarm = ?`
	}
	res, err := as.st.be.Write.ExecContext(ctx, as.st.q(query), int64(a.MemberID), a.Type)
	if err != nil {
		if active {
			// Raised meanwhile by another process.
			if lerr := as.load(ctx); lerr == nil {
				return false, nil
			}
		}
		return false, fmt.Errorf("set alarm: %w", err)
	}
	n, _ := res.RowsAffected()
	return n > 0, as.load(ctx)
}

// load re-reads the alarm table.
func (as *alarmSet) load(ctx context.Context) error {
	rows, err := as.st.be.Read.QueryContext(ctx, `SELECT member_id, alarm FROM shimd_alarm ORDER BY member_id, alarm`)
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
	as.mu.Lock()
	as.list = out
	as.mu.Unlock()
	return nil
}
