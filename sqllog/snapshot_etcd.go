package sqllog

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A snapshot is an etcd v3 backend file: a bbolt database with etcd's
// buckets and encodings, which etcdutl restores and etcd serves. The key
// bucket maps each change's revision (8 bytes main, '_', 8 bytes sub,
// big-endian; a trailing 't' marks a delete) to its marshalled KeyValue, a
// delete's holding only the key. The stream of Maintenance.Snapshot adds
// the file's SHA-256 after it, as etcd's does.

// Bucket and meta key names of etcd's schema (server/storage/schema).
var (
	bucketKey            = []byte("key")
	bucketMeta           = []byte("meta")
	bucketLease          = []byte("lease")
	bucketAlarm          = []byte("alarm")
	bucketCluster        = []byte("cluster")
	bucketMembers        = []byte("members")
	bucketMembersRemoved = []byte("members_removed")
	bucketAuth           = []byte("auth")
	bucketAuthUsers      = []byte("authUsers")
	bucketAuthRoles      = []byte("authRoles")
	etcdBuckets          = [][]byte{bucketKey, bucketMeta, bucketLease, bucketAlarm, bucketCluster,
		bucketMembers, bucketMembersRemoved, bucketAuth, bucketAuthUsers, bucketAuthRoles}

	metaConsistentIndex = []byte("consistent_index")
	metaTerm            = []byte("term")
	metaScheduledCompct = []byte("scheduledCompactRev")
	metaFinishedCompact = []byte("finishedCompactRev")
	metaStorageVersion  = []byte("storageVersion")
	clusterVersionKey   = []byte("clusterVersion")
	authEnabledKey      = []byte("authEnabled")
	authRevisionKey     = []byte("authRevision")
)

// etcdStorageVersion is the storage version a snapshot declares: 3.6, the
// oldest that etcd 3.6 and 3.7 both open without a migration (3.7 changed
// nothing in the schema, and upgrades the version itself).
const etcdStorageVersion = "3.6.0"

// snapshotTxBytes bounds what one bbolt transaction of the writer holds in
// memory before it commits to the file.
const snapshotTxBytes = 8 << 20

// SnapshotInfo describes a written snapshot.
type SnapshotInfo struct {
	Revision        int64
	CompactRevision int64
	Rows            int64 // changes in the key bucket, deletes included
	Leases          int64
}

// revBytes encodes an etcd revision key; a tombstone gets the 't' mark.
func revBytes(main, sub int64, tombstone bool) []byte {
	b := make([]byte, 17, 18)
	binary.BigEndian.PutUint64(b[0:8], uint64(main))
	b[8] = '_'
	binary.BigEndian.PutUint64(b[9:17], uint64(sub))
	if tombstone {
		b = append(b, 't')
	}
	return b
}

func u64(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

// WriteSnapshotDB writes a consistent snapshot of the store as an etcd
// backend file at path (which must not exist). It reads in one read-only
// transaction of the database, so writers go on meanwhile, and commits the
// file every few MiB, so that memory stays bounded whatever the store's size.
func (mt *maintenance) WriteSnapshotDB(ctx context.Context, path string) (SnapshotInfo, error) {
	var info SnapshotInfo
	tx, err := mt.st.be.Dialect.BeginSnapshot(ctx, mt.st.be.Read)
	if err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	defer tx.Rollback()
	var lastID, clusterID int64
	if err := tx.QueryRowContext(ctx, `SELECT rev, last_id, compact_rev, cluster_id FROM shimd_meta WHERE id = 1`).Scan(&info.Revision, &lastID, &info.CompactRevision, &clusterID); err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	defer db.Close()
	if err := db.Update(func(btx *bolt.Tx) error {
		for _, name := range etcdBuckets {
			if _, err := btx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		m := btx.Bucket(bucketMeta)
		// etcdutl restore rewrites the consistent index and term for the
		// new cluster; these are what a single member at this revision has.
		puts := [][2][]byte{
			{metaConsistentIndex, u64(info.Revision)},
			{metaTerm, u64(1)},
			{metaStorageVersion, []byte(etcdStorageVersion)},
		}
		if info.CompactRevision > 0 {
			puts = append(puts, [2][]byte{metaScheduledCompct, revBytes(info.CompactRevision, 0, false)},
				[2][]byte{metaFinishedCompact, revBytes(info.CompactRevision, 0, false)})
		}
		for _, p := range puts {
			if err := m.Put(p[0], p[1]); err != nil {
				return err
			}
		}
		if err := btx.Bucket(bucketCluster).Put(clusterVersionKey, []byte(etcdStorageVersion)); err != nil {
			return err
		}
		return writeAuthBuckets(ctx, mt.st, tx, btx)
	}); err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}

	rows, err := tx.QueryContext(ctx, `SELECT rev, sub, create_rev, version, lease, deleted, kv_key, value FROM shimd_log ORDER BY id`)
	if err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	defer rows.Close()
	var btx *bolt.Tx
	var bucket *bolt.Bucket
	pending := 0
	commit := func() error {
		if btx == nil {
			return nil
		}
		err := btx.Commit()
		btx, bucket, pending = nil, nil, 0
		return err
	}
	defer func() {
		if btx != nil {
			btx.Rollback()
		}
	}()
	for rows.Next() {
		var kv mvccpb.KeyValue
		var sub int64
		var deleted bool
		if err := rows.Scan(&kv.ModRevision, &sub, &kv.CreateRevision, &kv.Version, &kv.Lease, &deleted, &kv.Key, &kv.Value); err != nil {
			return info, fmt.Errorf("snapshot: %w", err)
		}
		stored := &kv
		if deleted {
			stored = &mvccpb.KeyValue{Key: kv.Key}
		}
		v, err := proto.Marshal(stored)
		if err != nil {
			return info, err
		}
		if btx == nil {
			if btx, err = db.Begin(true); err != nil {
				return info, fmt.Errorf("snapshot: %w", err)
			}
			bucket = btx.Bucket(bucketKey)
			bucket.FillPercent = 0.9 // appended in order, as etcd's sequential puts
		}
		if err := bucket.Put(revBytes(kv.ModRevision, sub, deleted), v); err != nil {
			return info, fmt.Errorf("snapshot: %w", err)
		}
		info.Rows++
		if pending += len(v) + 18; pending >= snapshotTxBytes {
			if err := commit(); err != nil {
				return info, fmt.Errorf("snapshot: %w", err)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	rows.Close()
	if err := commit(); err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}

	lrows, err := tx.QueryContext(ctx, `SELECT id, ttl FROM shimd_lease ORDER BY id`)
	if err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	defer lrows.Close()
	if err := db.Update(func(btx *bolt.Tx) error {
		b := btx.Bucket(bucketLease)
		for lrows.Next() {
			var id, ttl int64
			if err := lrows.Scan(&id, &ttl); err != nil {
				return err
			}
			// leasepb.Lease{ID, TTL}: the remaining TTL is etcd's
			// checkpoint, absent unless checkpointing is on.
			var v []byte
			for _, f := range []struct {
				num protowire.Number
				val int64
			}{{1, id}, {2, ttl}} {
				if f.val != 0 {
					v = protowire.AppendTag(v, f.num, protowire.VarintType)
					v = protowire.AppendVarint(v, uint64(f.val))
				}
			}
			if err := b.Put(u64(id), v); err != nil {
				return err
			}
			info.Leases++
		}
		return lrows.Err()
	}); err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	if err := db.Sync(); err != nil {
		return info, fmt.Errorf("snapshot: %w", err)
	}
	return info, db.Close()
}
