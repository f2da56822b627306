package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shimd/shimd/conformance/harness"
)

// Helpers shared by the lease tests (lease_*_test.go).

// leaseOpts runs the reference etcd with etcd's default election timeout
// (1 s). etcd's minimum lease TTL is ceil(1.5 × election timeout): 2 s with
// the defaults, but 1 s with the harness's fast 100 ms elections, which would
// make every TTL-1 grant differ for a reason that is not shimd's.
var leaseOpts = harness.Options{ElectionMs: 1000}

// etcdMaxLeaseTTL is etcd's lease.MaxLeaseTTL.
const etcdMaxLeaseTTL = 9000000000

// lsc is a scenario that also tracks lease IDs chosen by the servers: etcd's
// ID is the scenario's name for a lease; ops send each server its own ID and
// the other server's IDs in responses are rewritten to etcd's before diffing.
type lsc struct {
	*sc
	toSUT   map[int64]int64 // etcd's ID -> the other server's
	fromSUT map[int64]int64 // the other server's ID -> etcd's
}

func leaseScenario(c *sc) *lsc {
	return &lsc{sc: c, toSUT: map[int64]int64{}, fromSUT: map[int64]int64{}}
}

// id is the lease to send to s for etcd's lease id.
func (c *lsc) id(s *server, id int64) int64 {
	if s != c.p.ref {
		if m, ok := c.toSUT[id]; ok {
			return m
		}
	}
	return id
}

// fixFunc adjusts the two successful responses before they are compared
// (tolerances, order-insensitive fields). It may modify both.
type fixFunc func(c *lsc, ref, sut any)

// doFix is sc.do with server-chosen lease IDs mapped back to etcd's and
// optional fixes applied before the comparison.
func (c *lsc) doFix(desc string, fn opFunc, fixes ...fixFunc) (any, error) {
	c.t.Helper()
	c.n++
	refResp, refErr := call(c.p.ref, fn)
	sutResp, sutErr := call(c.p.sut, fn)
	if sutErr == nil {
		remapLeaseIDs(sutResp, c.fromSUT)
	}
	if refErr == nil && sutErr == nil {
		for _, f := range fixes {
			f(c, refResp, sutResp)
		}
	}
	if d := diffOutcomes(refResp, refErr, sutResp, sutErr); d != "" {
		c.t.Fatalf("%s%s", mismatchReport(c.name, c.n, desc, c.p.sut.name, refResp, refErr, sutResp, sutErr, d), c.p.sut.crashInfo())
	}
	return refResp, refErr
}

var (
	kvType        = reflect.TypeOf(mvccpb.KeyValue{})
	leaseIDFields = map[reflect.Type]bool{
		reflect.TypeOf(pb.LeaseGrantResponse{}):      true,
		reflect.TypeOf(pb.LeaseKeepAliveResponse{}):  true,
		reflect.TypeOf(pb.LeaseTimeToLiveResponse{}): true,
		reflect.TypeOf(pb.LeaseStatus{}):             true,
	}
)

// remapLeaseIDs rewrites lease IDs found through m, in place: KeyValue.lease
// and the ID of lease responses, at any depth.
func remapLeaseIDs(v any, m map[int64]int64) {
	if len(m) != 0 && v != nil {
		remapValue(reflect.ValueOf(v), m)
	}
}

func remapValue(v reflect.Value, m map[int64]int64) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			remapValue(v.Elem(), m)
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return
		}
		for i := 0; i < v.Len(); i++ {
			remapValue(v.Index(i), m)
		}
	case reflect.Struct:
		var f reflect.Value
		switch {
		case v.Type() == kvType:
			f = v.FieldByName("Lease")
		case leaseIDFields[v.Type()]:
			f = v.FieldByName("ID")
		}
		if f.IsValid() && f.CanSet() {
			if to, ok := m[f.Int()]; ok {
				f.SetInt(to)
			}
		}
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				remapValue(v.Field(i), m)
			}
		}
	}
}

// ---- lease operations ------------------------------------------------------

// grant sends a raw LeaseGrant. With id 0 each server picks the ID: they are
// recorded (the other server's must be positive, as etcd's are, and new) and
// everything else is compared.
func (c *lsc) grant(id, ttl int64) (*pb.LeaseGrantResponse, error) {
	c.t.Helper()
	r := &pb.LeaseGrantRequest{ID: id, TTL: ttl}
	resp, err := c.doFix("LeaseGrant "+oneLine(r), func(ctx contextT, s *server) (any, error) {
		return s.lease.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: id, TTL: ttl})
	}, fixChosenID(id))
	out, _ := resp.(*pb.LeaseGrantResponse)
	return out, err
}

// mustGrant grants a lease that etcd must accept and returns etcd's ID.
func (c *lsc) mustGrant(id, ttl int64) int64 {
	c.t.Helper()
	resp, err := c.grant(id, ttl)
	c.ok(resp, err)
	return resp.ID
}

// cgrant grants through clientv3 (server-chosen ID).
func (c *lsc) cgrant(ttl int64) (*pb.LeaseGrantResponse, error) {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("clientv3.Grant(ttl=%d)", ttl), func(ctx contextT, s *server) (any, error) {
		r, err := s.cli.Grant(ctx, ttl)
		if err != nil {
			return nil, err
		}
		return &pb.LeaseGrantResponse{Header: r.ResponseHeader, ID: int64(r.ID), TTL: r.TTL, Error: r.Error}, nil
	}, fixChosenID(0))
	out, _ := resp.(*pb.LeaseGrantResponse)
	return out, err
}

// fixChosenID records the servers' IDs of a grant that asked for id 0.
// fixExpiryRace forgives a header revision that differs by the revision of
// a lease expiring meanwhile: the two servers' expiry loops cannot be made to
// fire at the same instant, so one may answer just before and the other just
// after it.
func fixExpiryRace(ref, sut any) {
	r, ok1 := ref.(*pb.LeaseKeepAliveResponse)
	s, ok2 := sut.(*pb.LeaseKeepAliveResponse)
	if ok1 && ok2 && r.Header != nil && s.Header != nil {
		if d := r.Header.Revision - s.Header.Revision; d == 1 || d == -1 {
			s.Header.Revision = r.Header.Revision
		}
	}
}

func fixChosenID(asked int64) fixFunc {
	return func(c *lsc, ref, sut any) {
		r, s := ref.(*pb.LeaseGrantResponse), sut.(*pb.LeaseGrantResponse)
		if asked != 0 {
			return
		}
		c.check(r.ID > 0, "etcd chose lease ID %d, expected a positive ID", r.ID)
		if s.ID <= 0 {
			c.t.Fatalf("%s chose lease ID %d (%#x); etcd only hands out positive IDs", c.p.sut.name, s.ID, s.ID)
		}
		if old, ok := c.fromSUT[s.ID]; ok {
			c.t.Fatalf("%s chose lease ID %#x again (already granted in this scenario, as etcd's %#x)", c.p.sut.name, s.ID, old)
		}
		c.t.Logf("server-chosen lease: etcd %#x, %s %#x", r.ID, c.p.sut.name, s.ID)
		c.toSUT[r.ID], c.fromSUT[s.ID] = s.ID, r.ID
		s.ID = r.ID
	}
}

func (c *lsc) revoke(id int64) (*pb.LeaseRevokeResponse, error) {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("LeaseRevoke {ID:%#x}", id), func(ctx contextT, s *server) (any, error) {
		return s.lease.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: c.id(s, id)})
	})
	out, _ := resp.(*pb.LeaseRevokeResponse)
	return out, err
}

// crevoke revokes through clientv3.
func (c *lsc) crevoke(id int64) (*pb.LeaseRevokeResponse, error) {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("clientv3.Revoke(%#x)", id), func(ctx contextT, s *server) (any, error) {
		r, err := s.cli.Revoke(ctx, clientv3.LeaseID(c.id(s, id)))
		if err != nil {
			return nil, err
		}
		return (*pb.LeaseRevokeResponse)(r), nil
	})
	out, _ := resp.(*pb.LeaseRevokeResponse)
	return out, err
}

// ttl sends a raw LeaseTimeToLive. The remaining TTL may differ by one second
// (it is timing-dependent); attached keys are compared as a set.
func (c *lsc) ttl(id int64, keys bool) (*pb.LeaseTimeToLiveResponse, error) {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("LeaseTimeToLive {ID:%#x keys:%v}", id, keys), func(ctx contextT, s *server) (any, error) {
		return s.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: c.id(s, id), Keys: keys})
	}, fixTTL)
	out, _ := resp.(*pb.LeaseTimeToLiveResponse)
	return out, err
}

// cttl is ttl through clientv3 (WithAttachedKeys when keys).
func (c *lsc) cttl(id int64, keys bool) (*pb.LeaseTimeToLiveResponse, error) {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("clientv3.TimeToLive(%#x, attachedKeys=%v)", id, keys), func(ctx contextT, s *server) (any, error) {
		var o []clientv3.LeaseOption
		if keys {
			o = append(o, clientv3.WithAttachedKeys())
		}
		r, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(c.id(s, id)), o...)
		if err != nil {
			return nil, err
		}
		return &pb.LeaseTimeToLiveResponse{Header: r.ResponseHeader, ID: int64(r.ID), TTL: r.TTL, GrantedTTL: r.GrantedTTL, Keys: r.Keys}, nil
	}, fixTTL)
	out, _ := resp.(*pb.LeaseTimeToLiveResponse)
	return out, err
}

// mustTTL is ttl for a lease etcd must know, returning etcd's response.
func (c *lsc) mustTTL(id int64, keys bool) *pb.LeaseTimeToLiveResponse {
	c.t.Helper()
	resp, err := c.ttl(id, keys)
	c.ok(resp, err)
	return resp
}

// wantKeys checks etcd's attached keys (a scenario invariant).
func (c *lsc) wantKeys(id int64, want ...string) {
	c.t.Helper()
	resp := c.mustTTL(id, true)
	got := make([]string, len(resp.Keys))
	for i, k := range resp.Keys {
		got[i] = string(k)
	}
	sort.Strings(got)
	sort.Strings(want)
	c.check(slices.Equal(got, want), "etcd: lease %#x has keys %q, scenario expects %q", id, got, want)
}

// fixTTL tolerates a one-second difference in the remaining TTL of a live
// lease and sorts the attached keys (etcd lists them in map order).
func fixTTL(c *lsc, ref, sut any) {
	r, s := ref.(*pb.LeaseTimeToLiveResponse), sut.(*pb.LeaseTimeToLiveResponse)
	sortKeys(r.Keys)
	sortKeys(s.Keys)
	if r.TTL >= 0 && s.TTL >= 0 && r.TTL != s.TTL && absDiff(r.TTL, s.TTL) <= 1 {
		c.t.Logf("op #%d: remaining TTL etcd %d, %s %d (within the 1 s tolerance)", c.n, r.TTL, c.p.sut.name, s.TTL)
		s.TTL = r.TTL
	}
}

func sortKeys(k [][]byte) {
	sort.Slice(k, func(i, j int) bool { return bytes.Compare(k[i], k[j]) < 0 })
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

func (c *lsc) leases() (*pb.LeaseLeasesResponse, error) {
	c.t.Helper()
	resp, err := c.doFix("LeaseLeases {}", func(ctx contextT, s *server) (any, error) {
		return s.lease.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	}, fixLeases)
	out, _ := resp.(*pb.LeaseLeasesResponse)
	return out, err
}

func (c *lsc) cleases() (*pb.LeaseLeasesResponse, error) {
	c.t.Helper()
	resp, err := c.doFix("clientv3.Leases()", func(ctx contextT, s *server) (any, error) {
		r, err := s.cli.Leases(ctx)
		if err != nil {
			return nil, err
		}
		out := &pb.LeaseLeasesResponse{Header: r.ResponseHeader}
		for _, l := range r.Leases {
			out.Leases = append(out.Leases, &pb.LeaseStatus{ID: int64(l.ID)})
		}
		return out, nil
	}, fixLeases)
	out, _ := resp.(*pb.LeaseLeasesResponse)
	return out, err
}

// fixLeases compares leases as a set: etcd lists them by expiry, and leases
// expiring at the same moment in no particular order.
func fixLeases(c *lsc, ref, sut any) {
	for _, r := range []*pb.LeaseLeasesResponse{ref.(*pb.LeaseLeasesResponse), sut.(*pb.LeaseLeasesResponse)} {
		sort.Slice(r.Leases, func(i, j int) bool { return r.Leases[i].ID < r.Leases[j].ID })
	}
}

// leaseIDs lists etcd's lease IDs from a LeaseLeases response, sorted.
func leaseIDs(r *pb.LeaseLeasesResponse) []int64 {
	ids := make([]int64, len(r.Leases))
	for i, l := range r.Leases {
		ids[i] = l.ID
	}
	slices.Sort(ids)
	return ids
}

// keepAliveOnce uses clientv3's KeepAliveOnce, which turns a TTL ≤ 0 reply
// into ErrLeaseNotFound.
func (c *lsc) keepAliveOnce(id int64, fixes ...fixFunc) (*pb.LeaseKeepAliveResponse, error) {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("clientv3.KeepAliveOnce(%#x)", id), func(ctx contextT, s *server) (any, error) {
		r, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(c.id(s, id)))
		if err != nil {
			return nil, err
		}
		return &pb.LeaseKeepAliveResponse{Header: r.ResponseHeader, ID: int64(r.ID), TTL: r.TTL}, nil
	}, fixes...)
	out, _ := resp.(*pb.LeaseKeepAliveResponse)
	return out, err
}

// keepAliveRun is what one raw LeaseKeepAlive stream returned.
type keepAliveRun struct {
	Responses []*pb.LeaseKeepAliveResponse
	Err       string // error of a Send/Recv, if any
	End       string // what Recv returned after CloseSend
}

// keepAliveStream opens one raw LeaseKeepAlive stream, sends a request for
// each id (waiting for each reply), half-closes and reads the end.
func (c *lsc) keepAliveStream(ids ...int64) *keepAliveRun {
	c.t.Helper()
	desc := make([]string, len(ids))
	for i, id := range ids {
		desc[i] = fmt.Sprintf("%#x", id)
	}
	resp, err := c.doFix("LeaseKeepAlive stream: IDs "+strings.Join(desc, ", ")+", then CloseSend", func(ctx contextT, s *server) (any, error) {
		st, err := s.lease.LeaseKeepAlive(ctx)
		if err != nil {
			return nil, err
		}
		run := &keepAliveRun{}
		for _, id := range ids {
			if err := st.Send(&pb.LeaseKeepAliveRequest{ID: c.id(s, id)}); err != nil {
				run.Err = "Send: " + errString(err)
				return run, nil
			}
			r, err := st.Recv()
			if err != nil {
				run.Err = "Recv: " + errString(err)
				return run, nil
			}
			run.Responses = append(run.Responses, normalize(r).(*pb.LeaseKeepAliveResponse))
		}
		if err := st.CloseSend(); err != nil {
			run.End = "CloseSend: " + errString(err)
			return run, nil
		}
		r, err := st.Recv()
		switch {
		case errors.Is(err, io.EOF):
			run.End = "EOF"
		case err != nil:
			run.End = errString(err)
		default:
			run.End = "unexpected response " + oneLine(r)
		}
		return run, nil
	})
	c.ok(resp, err)
	return resp.(*keepAliveRun)
}

// ---- KV operations with lease IDs mapped ----------------------------------

// putL puts key (with prev_kv) under etcd's lease id, mapped per server.
func (c *lsc) putL(key, val string, id int64) (*pb.PutResponse, error) {
	c.t.Helper()
	r := &pb.PutRequest{Key: b(key), Value: b(val), Lease: id, PrevKv: true}
	resp, err := c.doFix("Put "+oneLine(r), func(ctx contextT, s *server) (any, error) {
		return s.kv.Put(ctx, &pb.PutRequest{Key: b(key), Value: b(val), Lease: c.id(s, id), PrevKv: true})
	})
	out, _ := resp.(*pb.PutResponse)
	return out, err
}

// mustPutL is putL that etcd must accept; it returns the new revision.
func (c *lsc) mustPutL(key, val string, id int64) int64 {
	c.t.Helper()
	resp, err := c.putL(key, val, id)
	c.ok(resp, err)
	return resp.Header.Revision
}

// put sends a raw Put (lease IDs inside are etcd's: only for client-chosen IDs).
func (c *lsc) put(r *pb.PutRequest) (*pb.PutResponse, error) {
	c.t.Helper()
	resp, err := c.doFix("Put "+oneLine(r), func(ctx contextT, s *server) (any, error) { return s.kv.Put(ctx, r) })
	out, _ := resp.(*pb.PutResponse)
	return out, err
}

// rng sends a raw Range; lease IDs in the result are mapped.
func (c *lsc) rng(r *pb.RangeRequest) (*pb.RangeResponse, error) {
	c.t.Helper()
	resp, err := c.doFix("Range "+oneLine(r), func(ctx contextT, s *server) (any, error) { return s.kv.Range(ctx, r) })
	out, _ := resp.(*pb.RangeResponse)
	return out, err
}

// prefix reads every key under p (at rev, 0 = current).
func (c *lsc) prefix(p string, rev int64) *pb.RangeResponse {
	c.t.Helper()
	resp, err := c.rng(&pb.RangeRequest{Key: b(p), RangeEnd: b(clientv3.GetPrefixRangeEnd(p)), Revision: rev})
	c.ok(resp, err)
	return resp
}

func (c *lsc) txn(r *pb.TxnRequest) (*pb.TxnResponse, error) {
	c.t.Helper()
	resp, err := c.doFix("Txn "+oneLine(r), func(ctx contextT, s *server) (any, error) { return s.kv.Txn(ctx, r) })
	out, _ := resp.(*pb.TxnResponse)
	return out, err
}

func putLease(k, v string, lease int64) *pb.RequestOp {
	return opPut(&pb.PutRequest{Key: b(k), Value: b(v), Lease: lease})
}

func rangeKeys(r *pb.RangeResponse) []string {
	out := make([]string, len(r.Kvs))
	for i, kv := range r.Kvs {
		out[i] = string(kv.Key)
	}
	return out
}

// ---- watches ------------------------------------------------------------

// leaseWatch is one watch opened on both servers.
type leaseWatch struct {
	chans  map[*server]clientv3.WatchChan
	cancel context.CancelFunc
}

// watch opens a prefix watch with prev_kv from rev on both servers.
func (c *lsc) watch(p string, rev int64) *leaseWatch {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &leaseWatch{chans: map[*server]clientv3.WatchChan{}, cancel: cancel}
	for _, s := range []*server{c.p.ref, c.p.sut} {
		w.chans[s] = s.cli.Watch(clientv3.WithRequireLeader(ctx), p, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV())
	}
	c.t.Cleanup(cancel)
	return w
}

// watchRun is the watch responses that carried events, in order, reduced to
// their header revision and events.
type watchRun struct {
	Batches []*pb.WatchResponse
}

func (w *watchRun) events() []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, b := range w.Batches {
		out = append(out, b.Events...)
	}
	return out
}

// collect reads w on each server until n events have arrived (or timeout)
// and compares what each server sent, batch by batch.
func (c *lsc) collect(desc string, w *leaseWatch, n int, timeout time.Duration) *watchRun {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("watch: %s (read %d events, up to %v)", desc, n, timeout), func(ctx contextT, s *server) (any, error) {
		return readWatch(w.chans[s], n, timeout)
	})
	c.ok(resp, err)
	return resp.(*watchRun)
}

func readWatch(ch clientv3.WatchChan, n int, timeout time.Duration) (*watchRun, error) {
	run := &watchRun{}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	got := 0
	for got < n {
		select {
		case wr, ok := <-ch:
			if !ok {
				return nil, fmt.Errorf("watch channel closed after %d of %d events", got, n)
			}
			if err := wr.Err(); err != nil {
				return nil, fmt.Errorf("watch error after %d of %d events: %w", got, n, err)
			}
			if len(wr.Events) == 0 {
				continue
			}
			batch := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: wr.Header.Revision}}
			for _, ev := range wr.Events {
				batch.Events = append(batch.Events, (*mvccpb.Event)(ev))
			}
			run.Batches = append(run.Batches, batch)
			got += len(wr.Events)
		case <-timer.C:
			return nil, fmt.Errorf("timed out after %v with %d of %d events: %s", timeout, got, n, oneLine(run))
		}
	}
	return run, nil
}

// ---- waiting ------------------------------------------------------------

// waitEach polls cond on each server independently (its timing is
// server-specific, so it is not compared) until it holds or timeout passes.
func (c *lsc) waitEach(what string, timeout time.Duration, cond func(ctx contextT, s *server) (bool, error)) {
	c.t.Helper()
	for _, s := range []*server{c.p.ref, c.p.sut} {
		if err := pollUntil(timeout, func(ctx contextT) (bool, error) { return cond(ctx, s) }); err != nil {
			if s == c.p.ref {
				c.t.Fatalf("scenario bug after op #%d: etcd: %s: %v", c.n, what, err)
			}
			c.t.Fatalf("after op #%d: %s: %s: %v%s", c.n, s.name, what, err, s.crashInfo())
		}
	}
}

// pollUntil calls cond every 50 ms until it returns true or timeout passes.
func pollUntil(timeout time.Duration, cond func(ctx contextT) (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok, err := cond(ctx)
		cancel()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("not reached within %v (last error: %v)", timeout, last)
			}
			return fmt.Errorf("not reached within %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leaseGone is a waitEach condition: TimeToLive reports the lease unknown.
func (c *lsc) leaseGone(id int64) func(ctx contextT, s *server) (bool, error) {
	return func(ctx contextT, s *server) (bool, error) {
		r, err := s.lease.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: c.id(s, id)})
		if err != nil {
			return false, err
		}
		return r.TTL == -1, nil
	}
}

// keepAlivePipelined is keepAliveStream without waiting for each reply: all
// requests are sent, then all replies read.
func (c *lsc) keepAlivePipelined(ids ...int64) *keepAliveRun {
	c.t.Helper()
	desc := make([]string, len(ids))
	for i, id := range ids {
		desc[i] = fmt.Sprintf("%#x", id)
	}
	resp, err := c.doFix("LeaseKeepAlive stream, pipelined: send IDs "+strings.Join(desc, ", ")+", CloseSend, then read", func(ctx contextT, s *server) (any, error) {
		st, err := s.lease.LeaseKeepAlive(ctx)
		if err != nil {
			return nil, err
		}
		run := &keepAliveRun{}
		for _, id := range ids {
			if err := st.Send(&pb.LeaseKeepAliveRequest{ID: c.id(s, id)}); err != nil {
				run.Err = "Send: " + errString(err)
				return run, nil
			}
		}
		if err := st.CloseSend(); err != nil {
			run.Err = "CloseSend: " + errString(err)
			return run, nil
		}
		for {
			r, err := st.Recv()
			if errors.Is(err, io.EOF) {
				run.End = "EOF"
				return run, nil
			}
			if err != nil {
				run.End = errString(err)
				return run, nil
			}
			run.Responses = append(run.Responses, normalize(r).(*pb.LeaseKeepAliveResponse))
		}
	})
	c.ok(resp, err)
	return resp.(*keepAliveRun)
}

// keepAliveChanRun is what clientv3's KeepAlive channel delivered first.
type keepAliveChanRun struct {
	First  *pb.LeaseKeepAliveResponse
	Closed bool // the channel was closed before delivering anything
}

// keepAliveChan starts clientv3's KeepAlive, takes what the channel delivers
// first (a response, or closure: clientv3 closes it when the server answers
// TTL ≤ 0) and stops.
func (c *lsc) keepAliveChan(id int64) *keepAliveChanRun {
	c.t.Helper()
	resp, err := c.doFix(fmt.Sprintf("clientv3.KeepAlive(%#x): first delivery", id), func(ctx contextT, s *server) (any, error) {
		kctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch, err := s.cli.KeepAlive(kctx, clientv3.LeaseID(c.id(s, id)))
		if err != nil {
			return nil, err
		}
		select {
		case r, ok := <-ch:
			if !ok {
				return &keepAliveChanRun{Closed: true}, nil
			}
			return &keepAliveChanRun{First: normalize(&pb.LeaseKeepAliveResponse{Header: r.ResponseHeader, ID: int64(r.ID), TTL: r.TTL}).(*pb.LeaseKeepAliveResponse)}, nil
		case <-time.After(10 * time.Second):
			return nil, errors.New("KeepAlive channel: nothing within 10s")
		}
	})
	c.ok(resp, err)
	return resp.(*keepAliveChanRun)
}
