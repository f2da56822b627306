// Package sqllog is shimd's revision log: an append-only table in which every
// change is one row, and etcd's cluster revision is the position in it.
//
// A write request gets exactly one main revision; the rows it appends share
// that revision and are ordered by their row id, which plays the role of
// etcd's sub-revision. Revisions and ids are allocated from a single meta row
// locked inside the writing transaction, so they are gapless and become
// visible in order, also when several processes write one database.
//
// Like etcd's mvcc store, the log keeps an in-memory index from each key to
// the revisions that wrote it (with create revision, version and lease), and
// reads only values from the database, by row id. A read at any retained
// revision therefore costs in proportion to the keys it returns, never to the
// history behind them, and a count reads no rows at all.
package sqllog
