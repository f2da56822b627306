package sqllog

import "errors"

var (
	// ErrCompacted means the requested revision has been compacted away.
	ErrCompacted = errors.New("sqllog: required revision has been compacted")
	// ErrFutureRev means the requested revision is newer than the log.
	ErrFutureRev = errors.New("sqllog: required revision is a future revision")
	// ErrClosed means the log has been closed.
	ErrClosed = errors.New("sqllog: log closed")
	// ErrDBTimeout means the database did not answer within
	// Options.DBTimeout. A write that fails with it may still have
	// committed, as an etcd proposal that timed out may still apply.
	ErrDBTimeout = errors.New("sqllog: the database did not answer in time")
	// ErrAuthStale means a write was permitted by an auth generation that
	// is no longer the database's (see CheckedAt): nothing was written, and
	// the caller checks the request again against the current auth store.
	ErrAuthStale = errors.New("sqllog: the auth store changed since the request was checked")
	// ErrDBBehind means the database lacks commits this process applied
	// (failover to a standby that had not received them, a restore): the
	// process refuses writes until it has resynchronised from the database
	// (see resync.go). Nothing of the request was written.
	ErrDBBehind = errors.New("sqllog: the database is behind this process's memory; resynchronising from it")
	// errNeedTx stops a request that runs against memory but must read the
	// database under the meta row's lock; it runs again there.
	errNeedTx = errors.New("sqllog: request needs the write transaction")
)
