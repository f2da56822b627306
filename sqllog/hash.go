package sqllog

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// KVHash is the answer of HashKV.
type KVHash struct {
	Hash            uint32
	CompactRevision int64
	Revision        int64
}

// HashKV hashes the key-value history up to rev (0: the current revision)
// exactly as etcd 3.6 does: CRC-32C over each retained revision's key in
// etcd's storage encoding and its marshalled KeyValue, so that shimd on any
// database and etcd agree for the same history. It returns the current
// revision too.
func (mt *maintenance) HashKV(ctx context.Context, rev int64) (KVHash, int64, error) {
	// A compaction's own hash is remembered, as etcd does for its last ten:
	// it covers the history up to the compact revision as it was before.
	if rev > 0 {
		mt.hashMu.Lock()
		for _, h := range mt.compactHashes {
			if h.Revision == rev {
				mt.hashMu.Unlock()
				return h, mt.s.Rev(), nil
			}
		}
		mt.hashMu.Unlock()
	}
	mt.s.mu.RLock()
	compactRev, curRev := mt.s.compactRev, mt.s.rev
	if rev > 0 && rev < compactRev {
		mt.s.mu.RUnlock()
		return KVHash{}, 0, ErrCompacted
	}
	if rev > curRev {
		mt.s.mu.RUnlock()
		return KVHash{}, curRev, ErrFutureRev
	}
	if rev == 0 {
		rev = curRev
	}
	h, err := mt.hashKV(ctx, rev, compactRev, 0)
	return h, curRev, err
}

// maxCompactHashes is how many compactions' hashes are remembered.
const maxCompactHashes = 10

// rememberCompactHash records the hash of the history up to rev as it is
// before the compaction at rev removes anything (prev is the compact
// revision before it). The compactor calls it before deleting rows.
func (mt *maintenance) rememberCompactHash(ctx context.Context, rev, prev int64) {
	mt.s.mu.RLock()
	h, err := mt.hashKV(ctx, rev, prev, compactPause)
	if err != nil {
		mt.lg.Warn("hashing the compacted history failed", "revision", rev, "err", err)
		return
	}
	mt.hashMu.Lock()
	mt.compactHashes = append(mt.compactHashes, h)
	if len(mt.compactHashes) > maxCompactHashes {
		mt.compactHashes = mt.compactHashes[1:]
	}
	mt.hashMu.Unlock()
}

// hashPage is how many rows a paced hash reads at a time.
const hashPage = 1000

// hashKV hashes as etcd does with compactRev as the compact revision; the
// caller holds the state's mu for reading, which hashKV releases. With pace
// (the compactor's), it reads hashPage rows at a time and pauses pace
// between pages, as etcd hashes a compaction's keys batch by batch while it
// deletes them: a background hash of a long history must not starve
// writers of the database and the CPU.
func (mt *maintenance) hashKV(ctx context.Context, rev, compactRev int64, pace time.Duration) (KVHash, error) {
	// keep: each key's latest revision at rev, unless that is a delete.
	keep := make(map[int64]struct{})
	mt.s.idx.tree.Ascend(func(ki *keyIndex) bool {
		if e, live := ki.at(rev); live {
			keep[e.id] = struct{}{}
		}
		return true
	})
	mt.s.mu.RUnlock()

	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	h.Write([]byte("key"))
	var q queryer = mt.st.be.Read
	query := `SELECT id, rev, sub, kv_key, value, create_rev, version, lease, deleted FROM shimd_log WHERE rev <= ? AND id > ? ORDER BY id`
	if pace > 0 {
		// Pages of one snapshot, so that rows another process deletes
		// meanwhile (applying the same compaction) are still seen.
		tx, err := mt.st.be.Dialect.BeginSnapshot(ctx, mt.st.be.Read)
		if err != nil {
			return KVHash{}, fmt.Errorf("hash: %w", err)
		}
		defer tx.Rollback()
		q = tx
		query += ` LIMIT ` + strconv.Itoa(hashPage)
	}
	var revBytes [17]byte
	after := int64(math.MinInt64)
	for {
		rows, err := q.QueryContext(ctx, mt.st.q(query), rev, after)
		if err != nil {
			return KVHash{}, fmt.Errorf("hash: %w", err)
		}
		n := 0
		for rows.Next() {
			var id, sub int64
			var kv mvccpb.KeyValue
			var deleted bool
			if err := rows.Scan(&id, &kv.ModRevision, &sub, &kv.Key, &kv.Value, &kv.CreateRevision, &kv.Version, &kv.Lease, &deleted); err != nil {
				rows.Close()
				return KVHash{}, fmt.Errorf("hash: %w", err)
			}
			after = id
			n++
			if kv.ModRevision <= compactRev {
				if _, ok := keep[id]; !ok && len(keep) > 0 {
					continue
				}
				if deleted && kv.ModRevision == compactRev {
					continue
				}
			}
			binary.BigEndian.PutUint64(revBytes[0:8], uint64(kv.ModRevision))
			revBytes[8] = '_'
			binary.BigEndian.PutUint64(revBytes[9:17], uint64(sub))
			k := revBytes[:]
			stored := &kv
			if deleted {
				k = append(k, 't')
				stored = &mvccpb.KeyValue{Key: kv.Key}
			}
			v, err := proto.Marshal(stored)
			if err != nil {
				rows.Close()
				return KVHash{}, err
			}
			h.Write(k)
			h.Write(v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return KVHash{}, fmt.Errorf("hash: %w", err)
		}
		if pace == 0 || n < hashPage {
			break
		}
		select {
		case <-ctx.Done():
			return KVHash{}, ctx.Err()
		case <-time.After(pace):
		}
	}
	// etcd's compact revision is -1 until the first compaction.
	reported := compactRev
	if reported == 0 {
		reported = -1
	}
	return KVHash{Hash: h.Sum32(), CompactRevision: reported, Revision: rev}, nil
}

// Hash hashes every row of the log and the lease table: a check that two
// databases hold the same data (etcd's Hash covers its whole file, which
// shimd does not have, so the values differ from etcd's).
func (mt *maintenance) Hash(ctx context.Context) (uint32, int64, error) {
	curRev := mt.s.Rev()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	rows, err := mt.st.be.Read.QueryContext(ctx, `SELECT rev, sub, kv_key, value, create_rev, version, lease, deleted FROM shimd_log ORDER BY id`)
	if err != nil {
		return 0, 0, fmt.Errorf("hash: %w", err)
	}
	var buf [8]byte
	put := func(v int64) {
		binary.BigEndian.PutUint64(buf[:], uint64(v))
		h.Write(buf[:])
	}
	for rows.Next() {
		var rev, sub, create, version, lease int64
		var key, value []byte
		var deleted bool
		if err := rows.Scan(&rev, &sub, &key, &value, &create, &version, &lease, &deleted); err != nil {
			rows.Close()
			return 0, 0, fmt.Errorf("hash: %w", err)
		}
		put(rev)
		put(sub)
		put(int64(len(key)))
		h.Write(key)
		put(int64(len(value)))
		h.Write(value)
		put(create)
		put(version)
		put(lease)
		if deleted {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, fmt.Errorf("hash: %w", err)
	}
	lrows, err := mt.st.be.Read.QueryContext(ctx, `SELECT id, ttl FROM shimd_lease ORDER BY id`)
	if err != nil {
		return 0, 0, fmt.Errorf("hash: %w", err)
	}
	defer lrows.Close()
	for lrows.Next() {
		var id, ttl int64
		if err := lrows.Scan(&id, &ttl); err != nil {
			return 0, 0, fmt.Errorf("hash: %w", err)
		}
		put(id)
		put(ttl)
	}
	return h.Sum32(), curRev, lrows.Err()
}
