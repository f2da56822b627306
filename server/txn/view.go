package txn

import "github.com/shimd/shimd/sqllog"

// WriteView is what a write request is applied on: in the server, the
// *sqllog.TxnWrite of one request in the log's writer; for a read-only txn,
// a read view wrapped by ReadOnly.
type WriteView interface {
	sqllog.ReadView
	Put(key, value []byte, lease int64) int64
	DeleteRange(key, end []byte) (n, rev int64)
	Changes() int
	LeaseExists(id int64) bool
}

var _ WriteView = (*sqllog.TxnWrite)(nil)

// ReadOnly lets a read-only txn (see IsReadOnly) run on a ReadView; it never
// writes.
func ReadOnly(v sqllog.ReadView) WriteView { return readOnly{v} }

type readOnly struct{ sqllog.ReadView }

func (readOnly) Put([]byte, []byte, int64) int64           { panic("write in a read-only txn") }
func (readOnly) DeleteRange([]byte, []byte) (int64, int64) { panic("write in a read-only txn") }
func (readOnly) Changes() int                              { return 0 }
func (readOnly) LeaseExists(int64) bool                    { return false }
