package server

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/shimd/shimd/sqllog"
)

// DefaultProgressNotifyInterval is etcd's --watch-progress-notify-interval.
const DefaultProgressNotifyInterval = 10 * time.Minute

// minProgressNotifyInterval is the shortest interval etcd accepts.
const minProgressNotifyInterval = 100 * time.Millisecond

// ctrlBuffer bounds the control responses (created, canceled) queued per stream.
const ctrlBuffer = 16

// watchServer is etcd's Watch service over the log's watch streams.
type watchServer struct {
	pb.UnimplementedWatchServer
	s *Server
}

// watchStream serves one gRPC Watch stream. Its receive loop turns requests
// into watchers; its send loop writes control responses and events in the
// order etcd guarantees: a watcher's created response before any of its
// events, and a progress response after every event it covers.
type watchStream struct {
	s       *Server
	grpc    pb.Watch_WatchServer
	ws      *sqllog.WatchStream
	ctrl    chan ctrlMsg
	closec  chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	prog    map[int64]bool   // progress_notify watchers: true while idle
	seq     map[int64]uint64 // the live watcher of each id (see sqllog.WatchResponse.Seq)
	prevKV  map[int64]bool
	fragOK  map[int64]bool
	maxSize int
	// sendErr ends the stream when an event cannot be sent whole.
	sendErr chan error
}

func (w *watchServer) Watch(stream pb.Watch_WatchServer) error {
	sws := &watchStream{
		s:       w.s,
		grpc:    stream,
		ws:      w.s.log.NewWatchStream(),
		ctrl:    make(chan ctrlMsg, ctrlBuffer),
		closec:  make(chan struct{}),
		prog:    make(map[int64]bool),
		seq:     make(map[int64]uint64),
		prevKV:  make(map[int64]bool),
		fragOK:  make(map[int64]bool),
		maxSize: w.s.cfg.MaxRequestBytes + grpcOverheadBytes,
		sendErr: make(chan error, 1),
	}
	sws.wg.Add(1)
	go func() {
		defer sws.wg.Done()
		sws.sendLoop()
	}()
	errc := make(chan error, 1)
	go func() {
		if err := sws.recvLoop(); err != nil {
			errc <- err
		}
	}()
	var err error
	select {
	case err = <-errc:
		close(sws.ctrl)
	case err = <-sws.sendErr:
	case <-stream.Context().Done():
		err = stream.Context().Err()
	}
	if errors.Is(err, context.Canceled) {
		err = rpctypes.ErrGRPCWatchCanceled
	}
	sws.ws.Close()
	close(sws.closec)
	sws.wg.Wait()
	return err
}

func (sws *watchStream) header(rev int64) *pb.ResponseHeader {
	h := &pb.ResponseHeader{Revision: rev}
	sws.s.fill(h)
	h.Revision = rev // fill would replace a zero revision; etcd sends it as is
	return h
}

// ctrlMsg is a created or canceled response, with the seq of the watcher it
// is about (0 for a refused create).
type ctrlMsg struct {
	wr  *pb.WatchResponse
	seq uint64
}

// heldResp is a watcher's response held back until its created response
// has gone out.
type heldResp struct {
	wr  *pb.WatchResponse
	seq uint64
}

func (sws *watchStream) control(wr *pb.WatchResponse, seq uint64) bool {
	select {
	case sws.ctrl <- ctrlMsg{wr, seq}:
		return true
	case <-sws.closec:
		return false
	}
}

func (sws *watchStream) recvLoop() error {
	for {
		req, err := sws.grpc.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		// Answers carry the store's revision, and a progress response must
		// follow every event up to it: first catch up with other processes.
		if err := sws.s.log.Barrier(sws.grpc.Context()); err != nil && sws.grpc.Context().Err() == nil {
			sws.s.lg.Warn("watch: catching up with the database failed", "err", err)
		}
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			if r.CreateRequest != nil && !sws.create(r.CreateRequest) {
				return nil
			}
		case *pb.WatchRequest_CancelRequest:
			if r.CancelRequest == nil {
				continue
			}
			id := r.CancelRequest.WatchId
			sws.mu.Lock()
			seq := sws.seq[id]
			sws.mu.Unlock()
			if err := sws.ws.Cancel(id); err == nil {
				if !sws.control(&pb.WatchResponse{Header: sws.header(sws.ws.Rev()), WatchId: id, Canceled: true}, seq) {
					return nil
				}
				sws.mu.Lock()
				delete(sws.seq, id)
				delete(sws.prog, id)
				delete(sws.prevKV, id)
				delete(sws.fragOK, id)
				sws.mu.Unlock()
			}
		case *pb.WatchRequest_ProgressRequest:
			if r.ProgressRequest != nil {
				sws.ws.RequestProgressAll()
			}
		}
	}
}

// create adds a watcher and queues its created (or refused) response.
func (sws *watchStream) create(c *pb.WatchCreateRequest) bool {
	if len(c.Key) == 0 {
		c.Key = []byte{0}
	}
	if c.StartRevision < 0 {
		return sws.control(&pb.WatchResponse{
			Header: sws.header(sws.ws.Rev()), WatchId: sqllog.InvalidWatchID,
			Created: true, Canceled: true, CancelReason: rpctypes.ErrCompacted.Error(),
		}, 0)
	}
	if reason := sws.s.watchDenied(sws.grpc.Context(), c); reason != "" {
		return sws.control(&pb.WatchResponse{
			Header: sws.header(sws.ws.Rev()), WatchId: sqllog.InvalidWatchID,
			Created: true, Canceled: true, CancelReason: reason,
		}, 0)
	}
	end := c.RangeEnd
	switch {
	case len(end) == 0:
		end = nil
	case len(end) == 1 && end[0] == 0:
		end = []byte{}
	}
	var filters []sqllog.FilterFunc
	for _, f := range c.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			filters = append(filters, func(ev *mvccpb.Event) bool { return ev.Type == mvccpb.PUT })
		case pb.WatchCreateRequest_NODELETE:
			filters = append(filters, func(ev *mvccpb.Event) bool { return ev.Type == mvccpb.DELETE })
		}
	}
	// The watcher's options are in place before the send loop can turn its
	// first events into a response (it reads them under the same lock): a
	// watcher from a past revision gets events as soon as it is added.
	sws.mu.Lock()
	id, seq, err := sws.ws.Watch(c.WatchId, c.Key, end, c.StartRevision, filters...)
	if err == nil {
		sws.seq[id] = seq
		if c.ProgressNotify {
			sws.prog[id] = true
		}
		if c.PrevKv {
			sws.prevKV[id] = true
		}
		if c.Fragment {
			sws.fragOK[id] = true
		}
	}
	sws.mu.Unlock()
	wr := &pb.WatchResponse{Header: sws.header(sws.ws.Rev()), WatchId: id, Created: true, Canceled: err != nil}
	if err != nil {
		wr.CancelReason = err.Error()
	}
	return sws.control(wr, seq)
}

func (sws *watchStream) sendLoop() {
	// created holds, for each id, the seq of the watcher whose created
	// response has gone out: the id may have had another watcher before.
	created := make(map[int64]uint64)
	pending := make(map[int64][]heldResp)
	// A stream-wide progress response must not overtake events held back
	// for a watch whose created response has not gone out yet.
	var heldProgress *pb.WatchResponse
	interval := sws.s.cfg.ProgressNotifyInterval
	ticker := time.NewTicker(interval + time.Duration(rand.Int64N(int64(interval)/10+1)))
	defer ticker.Stop()
	for {
		select {
		case wresp, ok := <-sws.ws.Chan():
			if !ok {
				return
			}
			start := time.Now()
			wr, err := sws.response(wresp)
			if wr == nil && err == nil {
				continue // a canceled watcher's, whose id may be in use again
			}
			if err != nil {
				// The client resumes from its last revision and gets whole events.
				sws.sendErr <- err
				return
			}
			if wresp.WatchID == sqllog.InvalidWatchID && len(pending) > 0 {
				heldProgress = wr
				continue
			}
			if wresp.WatchID != sqllog.InvalidWatchID && created[wresp.WatchID] != wresp.Seq {
				pending[wresp.WatchID] = append(pending[wresp.WatchID], heldResp{wr, wresp.Seq})
				continue
			}
			if !sws.send(wresp.WatchID, wr) {
				return
			}
			observeSend(start, len(wr.Events))
		case m, ok := <-sws.ctrl:
			if !ok {
				return
			}
			start := time.Now()
			c := m.wr
			if err := sws.grpc.Send(c); err != nil {
				return
			}
			if c.Canceled && c.WatchId != sqllog.InvalidWatchID {
				delete(created, c.WatchId)
				keepHeld(pending, c.WatchId, func(h heldResp) bool { return h.seq > m.seq })
				continue
			}
			if c.Created {
				created[c.WatchId] = m.seq
				for _, h := range pending[c.WatchId] {
					if h.seq == m.seq && !sws.send(c.WatchId, h.wr) {
						return
					}
				}
				keepHeld(pending, c.WatchId, func(h heldResp) bool { return h.seq > m.seq })
				if heldProgress != nil && len(pending) == 0 {
					if !sws.send(sqllog.InvalidWatchID, heldProgress) {
						return
					}
					heldProgress = nil
				}
			}
			watchSendControlSec.Observe(time.Since(start).Seconds())
		case <-ticker.C:
			start := time.Now()
			sws.mu.Lock()
			for id, idle := range sws.prog {
				if idle {
					sws.ws.RequestProgress(id)
				}
				sws.prog[id] = true
			}
			sws.mu.Unlock()
			watchSendProgressSec.Observe(time.Since(start).Seconds())
		case <-sws.closec:
			return
		}
	}
}

// keepHeld keeps the held responses of id that keep says to.
func keepHeld(pending map[int64][]heldResp, id int64, keep func(heldResp) bool) {
	var kept []heldResp
	for _, h := range pending[id] {
		if keep(h) {
			kept = append(kept, h)
		}
	}
	if len(kept) == 0 {
		delete(pending, id)
		return
	}
	pending[id] = kept
}

// prevKVAttempts bounds the lookups of one prev_kv before the stream is
// ended (a database connection just died, say).
const prevKVAttempts = 3

// response turns a log watch response into the wire form, adding prev_kv
// where asked: the key as it was one revision before the event. As in etcd
// an event whose previous revision is compacted goes without; one whose
// lookup fails otherwise is not sent incomplete. A response of a watcher
// canceled since gives nil and no error: it is dropped, also when a new
// watcher has taken its id.
func (sws *watchStream) response(wresp sqllog.WatchResponse) (*pb.WatchResponse, error) {
	sws.mu.Lock()
	needPrev := sws.prevKV[wresp.WatchID]
	stale := wresp.WatchID != sqllog.InvalidWatchID && sws.seq[wresp.WatchID] != wresp.Seq
	sws.mu.Unlock()
	if stale {
		return nil, nil
	}
	events := make([]*mvccpb.Event, len(wresp.Events))
	for i, ev := range wresp.Events {
		if needPrev && !(ev.Type == mvccpb.PUT && ev.Kv.CreateRevision == ev.Kv.ModRevision) {
			// Events are shared by every watcher of the revision: this
			// watcher's prev_kv goes on its own copy.
			ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
			var kv *mvccpb.KeyValue
			var err error
			for attempt := 0; attempt < prevKVAttempts; attempt++ {
				if kv, err = sws.s.log.KVAt(sws.grpc.Context(), ev.Kv.Key, ev.Kv.ModRevision-1); err == nil || errors.Is(err, sqllog.ErrCompacted) {
					break
				}
				time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
			}
			switch {
			case err == nil:
				ev.PrevKv = kv
			case !errors.Is(err, sqllog.ErrCompacted):
				return nil, toGRPC(err)
			}
		}
		events[i] = ev
	}
	return &pb.WatchResponse{
		Header:          sws.header(wresp.Revision),
		WatchId:         wresp.WatchID,
		Events:          events,
		CompactRevision: wresp.CompactRevision,
		Canceled:        wresp.CompactRevision != 0,
	}, nil
}

// send writes wr, split into fragments if the watcher allows it and it is
// too large, and marks the watcher busy for progress notification.
func (sws *watchStream) send(id int64, wr *pb.WatchResponse) bool {
	sws.mu.Lock()
	frag := sws.fragOK[id]
	sws.mu.Unlock()
	var err error
	if frag {
		err = sendFragments(wr, sws.maxSize, sws.grpc.Send)
	} else {
		err = sws.grpc.Send(wr)
	}
	if err != nil {
		return false
	}
	if len(wr.Events) > 0 {
		sws.mu.Lock()
		if sws.prog[id] {
			sws.prog[id] = false
		}
		sws.mu.Unlock()
	}
	return true
}

// sendFragments splits a response whose events exceed limit into several,
// each with at least one event, all but the last marked as fragments.
func sendFragments(wr *pb.WatchResponse, limit int, send func(*pb.WatchResponse) error) error {
	if proto.Size(wr) < limit || len(wr.Events) < 2 {
		return send(wr)
	}
	// Each fragment is a new message with the response's fields, as etcd's.
	fragment := func() *pb.WatchResponse {
		return &pb.WatchResponse{Header: wr.Header, WatchId: wr.WatchId, Created: wr.Created, Canceled: wr.Canceled,
			CompactRevision: wr.CompactRevision, CancelReason: wr.CancelReason, Fragment: true}
	}
	idx := 0
	for {
		cur := fragment()
		cur.Events = make([]*mvccpb.Event, 0, len(wr.Events)-idx)
		for _, ev := range wr.Events[idx:] {
			cur.Events = append(cur.Events, ev)
			if len(cur.Events) > 1 && proto.Size(cur) >= limit {
				cur.Events = cur.Events[:len(cur.Events)-1]
				break
			}
			idx++
		}
		if idx == len(wr.Events) {
			cur.Fragment = false
		}
		if err := send(cur); err != nil {
			return err
		}
		if !cur.Fragment {
			return nil
		}
	}
}
