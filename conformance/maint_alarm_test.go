package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// maintOtherMember is a member id neither server has: etcd stores alarms for any
// id it is given, and an alarm of any member affects the whole cluster.
const maintOtherMember = 0x1234

var (
	alarmGet     = pb.AlarmRequest_GET
	alarmOn      = pb.AlarmRequest_ACTIVATE
	alarmOff     = pb.AlarmRequest_DEACTIVATE
	alarmNoSpace = pb.AlarmType_NOSPACE
	alarmCorrupt = pb.AlarmType_CORRUPT
	alarmNone    = pb.AlarmType_NONE
)

// TestMaintAlarm: the Alarm API (list, activate, deactivate; NOSPACE and
// CORRUPT) and what each alarm does to the other requests.
func TestMaintAlarm(t *testing.T) {
	forEachBackend(t, harness.Options{}, func(s *suite) {
		s.run("list-activate-deactivate", func(c *sc) {
			c.ok(c.Alarm(alarmGet, alarmNone, 0))
			c.ok(c.Alarm(alarmGet, alarmNoSpace, 0))
			c.ok(c.MaintStatus())
			c.ok(c.Alarm(alarmOn, alarmNone, maintOtherMember)) // no-op
			c.ok(c.Alarm(alarmOn, alarmNoSpace, maintOtherMember))
			c.ok(c.Alarm(alarmOn, alarmNoSpace, -1))
			c.ok(c.Alarm(alarmOn, alarmCorrupt, maintOtherMember))
			c.ok(c.Alarm(alarmOn, alarmCorrupt, 0))
			c.ok(c.Alarm(alarmGet, alarmNone, 0))
			c.ok(c.Alarm(alarmGet, alarmNoSpace, 0))
			c.ok(c.Alarm(alarmGet, alarmCorrupt, 12345)) // the member id of a GET is ignored
			c.ok(c.MaintStatus())
			c.ok(c.Alarm(alarmOff, alarmNoSpace, maintOtherMember))
			c.ok(c.Alarm(alarmOff, alarmNoSpace, maintOtherMember)) // no longer active
			c.ok(c.Alarm(alarmOff, alarmCorrupt, -1))               // never active
			c.ok(c.Alarm(alarmOff, alarmNone, 0))
			c.ok(c.Alarm(alarmGet, alarmNone, 0))
			c.ok(c.Alarm(alarmOff, alarmNoSpace, -1))
			c.ok(c.Alarm(alarmOff, alarmCorrupt, maintOtherMember))
			c.ok(c.Alarm(alarmOff, alarmCorrupt, 0))
			c.ok(c.Alarm(alarmGet, alarmNone, 0))
			c.ok(c.MaintStatus())
		})

		// etcd answers an ACTIVATE of an active alarm with that alarm.
		s.run("activate-twice", func(c *sc) {
			c.ok(c.Alarm(alarmOn, alarmNoSpace, maintOtherMember))
			c.ok(c.Alarm(alarmOn, alarmNoSpace, maintOtherMember))
			c.ok(c.Alarm(alarmOn, alarmCorrupt, -1))
			c.ok(c.Alarm(alarmOn, alarmCorrupt, -1))
			c.ok(c.Alarm(alarmGet, alarmNone, 0))
			c.ok(c.Alarm(alarmOff, alarmNoSpace, maintOtherMember))
			c.ok(c.Alarm(alarmOff, alarmCorrupt, -1))
			c.ok(c.Alarm(alarmGet, alarmNone, 0))
		})

		// With NOSPACE raised (by anyone), puts, txns with puts (in either
		// branch) and lease grants fail; reads, deletes, compaction and
		// lease revocation go on.
		s.run("nospace-effects", func(c *sc) {
			p := "ma/ns/"
			const lease = 0x6e6f7370
			c.LeaseGrant(lease, 3600)
			c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			c.ok(c.Alarm(alarmOn, alarmNoSpace, maintOtherMember))
			maintCapped(c, p, lease, rpctypes.ErrGRPCNoSpace)
			c.ok(c.Alarm(alarmOff, alarmNoSpace, maintOtherMember))
			c.mustPut(p+"a", "after")
			c.ok(c.MaintStatus())
		})

		// With CORRUPT raised, every write, compaction and lease grant or
		// revoke fails; serializable and linearizable reads (and read-only
		// txns) go on.
		s.run("corrupt-effects", func(c *sc) {
			p := "ma/co/"
			const lease = 0x636f7272
			c.LeaseGrant(lease, 3600)
			r := c.mustPut(p+"a", "1")
			c.mustPut(p+"b", "1")
			c.ok(c.Alarm(alarmOn, alarmCorrupt, maintOtherMember))
			c.ok(c.MaintStatus())
			c.ok(c.Get(p, withPrefix))
			c.ok(c.Get(p, withPrefix, withSerializable))
			c.ok(c.Get(p+"a", withRev(r)))
			c.mustTxn(&pb.TxnRequest{Compare: cmps(cmpValue(p+"a", pb.Compare_EQUAL, "1")), Success: ops(get(p + "a"))})
			_, err := c.CPut(p+"a", "2")
			c.wantErr(err, rpctypes.ErrGRPCCorrupt)
			_, err = c.CDelete(p + "b")
			c.wantErr(err, rpctypes.ErrGRPCCorrupt)
			_, err = c.Txn(&pb.TxnRequest{Success: ops(del(p+"b", ""))})
			c.wantErr(err, rpctypes.ErrGRPCCorrupt)
			_, err = c.CCompact(r, false)
			c.wantErr(err, rpctypes.ErrGRPCCorrupt)
			_, err = c.do("LeaseGrant {TTL:60}", func(ctx context.Context, s *server) (any, error) {
				return s.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
			})
			c.wantErr(err, rpctypes.ErrGRPCCorrupt)
			_, err = c.do(fmt.Sprintf("LeaseRevoke {ID:%#x}", lease), func(ctx context.Context, s *server) (any, error) {
				return s.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lease})
			})
			c.wantErr(err, rpctypes.ErrGRPCCorrupt)
			c.check(c.rev() == r+1, "a write went through under CORRUPT")
			c.ok(c.Alarm(alarmOff, alarmCorrupt, maintOtherMember))
			c.mustPut(p+"a", "after")
			c.ok(c.MaintStatus())
		})
	})
}

// maintCapped checks, with NOSPACE raised, that everything that adds data fails
// with want and everything else works. Responses are compared by shape
// only, so it also serves when the two servers' histories differ (the
// quota test).
func maintCapped(c *sc, p string, lease int64, want error) {
	c.t.Helper()
	_, err := c.doShape("Put {small value}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Put(ctx, &pb.PutRequest{Key: b(p + "a"), Value: b("x")})
	})
	c.wantErr(err, want)
	_, err = c.doShape("Put {new key, empty value}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Put(ctx, &pb.PutRequest{Key: b(p + "new")})
	})
	c.wantErr(err, want)
	_, err = c.doShape("Put {ignore_value}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Put(ctx, &pb.PutRequest{Key: b(p + "a"), IgnoreValue: true})
	})
	c.wantErr(err, want)
	_, err = c.doShape("Txn {success:[put]}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Txn(ctx, &pb.TxnRequest{Success: ops(put(p+"a", "y"))})
	})
	c.wantErr(err, want)
	_, err = c.doShape("Txn {compare true, success:[range], failure:[put]} (the put is never run)", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Txn(ctx, &pb.TxnRequest{Compare: cmps(cmpVersion(p+"zz", pb.Compare_EQUAL, 0)), Success: ops(get(p + "a")), Failure: ops(put(p+"a", "z"))})
	})
	c.wantErr(err, want)
	_, err = c.doShape("Txn {success:[txn{success:[put]}]}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Txn(ctx, &pb.TxnRequest{Success: ops(opTxn(&pb.TxnRequest{Success: ops(put(p+"n", "1"))}))})
	})
	c.wantErr(err, want)
	_, err = c.doShape("LeaseGrant {TTL:60}", func(ctx context.Context, s *server) (any, error) {
		return s.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
	})
	c.wantErr(err, want)

	c.ok(c.doShape("Alarm GET", func(ctx context.Context, s *server) (any, error) {
		return maint(s).Alarm(ctx, &pb.AlarmRequest{Action: alarmGet})
	}))
	c.ok(c.doShape("Range prefix keys-only", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Range(ctx, &pb.RangeRequest{Key: b(p), RangeEnd: b(prefixEnd(p)), KeysOnly: true})
	}))
	c.ok(c.doShape("Txn {success:[range]} (read-only)", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Txn(ctx, &pb.TxnRequest{Success: ops(get(p + "a"))})
	}))
	c.ok(c.doShape("DeleteRange b", func(ctx context.Context, s *server) (any, error) {
		return s.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: b(p + "b")})
	}))
	c.ok(c.doShape("Txn {success:[delete nothing, range]}", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Txn(ctx, &pb.TxnRequest{Success: ops(del(p+"none", ""), get(p+"b"))})
	}))
	c.ok(c.doShape(fmt.Sprintf("LeaseRevoke {ID:%#x}", lease), func(ctx context.Context, s *server) (any, error) {
		return s.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: lease})
	}))
	c.ok(c.doShape("Compact {revision: current} (physical)", func(ctx context.Context, s *server) (any, error) {
		g, err := s.kv.Range(ctx, &pb.RangeRequest{Key: b(p)})
		if err != nil {
			return nil, err
		}
		return s.kv.Compact(ctx, &pb.CompactionRequest{Revision: g.Header.Revision, Physical: true})
	}))
	_, err = c.doShape("Put after the compaction", func(ctx context.Context, s *server) (any, error) {
		return s.kv.Put(ctx, &pb.PutRequest{Key: b(p + "a"), Value: b("x")})
	})
	c.wantErr(err, want)
}

// quotaBytes is the --quota-backend-bytes of the quota tests: above what a
// fresh etcd (bbolt) or shimd database takes, and small enough to fill in a
// few seconds with quotaValue-sized values.
const (
	quotaBytes = 4 << 20
	quotaValue = 100 << 10
	quotaMax   = 800 // puts before giving up: 80 MiB
)

// TestQuotaDifferential: both servers run with the same small quota. Each
// is filled (by overwriting one key) until it refuses a put; the point of
// refusal differs (etcd measures its bbolt file, shimd its tables), so only
// the error is compared. Then both are in the same state, NOSPACE raised,
// and everything else is compared by outcome: the refusals, the reads,
// deletes, compaction and Status, and that disarming without defragmenting
// does not help (the database is still over the quota).
func TestQuotaDifferential(t *testing.T) {
	forEachBackend(t, harness.Options{QuotaBackendBytes: quotaBytes}, func(s *suite) {
		s.run("nospace", func(c *sc) {
			p := "quota/"
			const lease = 0x71756f74
			c.LeaseGrant(lease, 3600)
			c.mustPut(p+"b", "1")
			c.mustPut(p+"a", "1")
			var errs [2]error
			for i, srv := range []*server{c.p.ref, c.p.sut} {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				st0, _ := maint(srv).Status(ctx, &pb.StatusRequest{})
				n, err := fillUntilNoSpace(ctx, srv.cli, p+"fill", quotaValue, quotaMax, 1)
				st1, _ := maint(srv).Status(ctx, &pb.StatusRequest{})
				cancel()
				c.t.Logf("%s: dbSize %d before the fill; %d puts of %d KiB accepted; then %v; dbSize %d, quota %d, errors %v",
					srv.name, st0.GetDbSize(), n, quotaValue>>10, err, st1.GetDbSize(), st1.GetDbSizeQuota(), st1.GetErrors())
				if err == nil {
					c.t.Fatalf("%s accepted %d puts of %d KiB (%d MiB) with --quota-backend-bytes %d: no NOSPACE%s",
						srv.name, n, quotaValue>>10, n*quotaValue>>20, quotaBytes, srv.crashInfo())
				}
				errs[i] = err
			}
			if d := diffOutcomes(nil, errs[0], nil, errs[1]); d != "" {
				c.t.Fatalf("MISMATCH: the put that exceeds the quota:\n  %s", d)
			}
			c.wantErr(errs[0], rpctypes.ErrGRPCNoSpace)
			c.ok(c.doShape("Status", func(ctx context.Context, s *server) (any, error) {
				return maint(s).Status(ctx, &pb.StatusRequest{})
			}))
			c.ok(c.doShape("Alarm GET NOSPACE", func(ctx context.Context, s *server) (any, error) {
				return maint(s).Alarm(ctx, &pb.AlarmRequest{Action: alarmGet, Alarm: alarmNoSpace})
			}))
			maintCapped(c, p, lease, rpctypes.ErrGRPCNoSpace)

			// Disarming without a defragmentation: the next put finds the
			// database still over the quota and raises the alarm again.
			c.ok(c.doShape("clientv3.AlarmDisarm(all)", func(ctx context.Context, s *server) (any, error) {
				st, err := maint(s).Status(ctx, &pb.StatusRequest{})
				if err != nil {
					return nil, err
				}
				r, err := s.cli.AlarmDisarm(ctx, &clientv3.AlarmMember{})
				if err != nil {
					return nil, err
				}
				// clientv3 merges the per-alarm answers without a header.
				v := maintViewAlarms(&pb.AlarmResponse{Header: st.Header, Alarms: r.Alarms})
				v.Revision = 0
				return v, nil
			}))
			c.ok(c.doShape("Alarm GET", func(ctx context.Context, s *server) (any, error) {
				return maint(s).Alarm(ctx, &pb.AlarmRequest{Action: alarmGet})
			}))
			// shimd re-measures its size every second: wait for it, so
			// that the comparison is of the steady state.
			time.Sleep(1500 * time.Millisecond)
			// A put as large as the fill's: the one that failed fits in
			// neither database, and compaction alone frees no file space.
			big := maintRandValue(newRand(2), quotaValue)
			_, err := c.doShape(fmt.Sprintf("Put {%d KiB} after disarming, not defragmented", quotaValue>>10), func(ctx context.Context, s *server) (any, error) {
				return s.kv.Put(ctx, &pb.PutRequest{Key: b(p + "a"), Value: b(big)})
			})
			c.wantErr(err, rpctypes.ErrGRPCNoSpace)
			c.ok(c.doShape("Alarm GET", func(ctx context.Context, s *server) (any, error) {
				return maint(s).Alarm(ctx, &pb.AlarmRequest{Action: alarmGet})
			}))
			_, err = c.doShape("LeaseGrant {TTL:60}", func(ctx context.Context, s *server) (any, error) {
				return s.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 60})
			})
			c.wantErr(err, rpctypes.ErrGRPCNoSpace)
		})
	})
}
