// Package peerwake lets shimd processes sharing a database without
// LISTEN/NOTIFY (MySQL, MariaDB) wake each other after a commit, so that a
// watcher on one process sees another's write within milliseconds instead of
// at its next poll.
//
// Each process listens on a UDP address and records it beside its member row
// (sqllog's members). After each commit its writer hands the revision to
// Announce, which sends it, as decimal text, in one datagram to every other
// live member; a receiver hands the payload to the log's follower, which
// reads the database as a poll would (sqllog skips revisions it has
// applied). Nothing depends on a datagram arriving: polling goes on as the
// fallback, so a lost, late or forged datagram costs at most one poll.
package peerwake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Hello is the payload a process sends once its own address is listed, so
// that the others re-read the member list at once instead of at their next
// refresh.
const Hello = "hello"

// maxDatagram bounds a datagram read: payloads are a revision or Hello.
const maxDatagram = 64

// minRefresh spaces out member-list reads that Hello datagrams ask for, so
// that a flood of them cannot turn into a flood of queries.
const minRefresh = 100 * time.Millisecond

var (
	sent = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "shimd", Subsystem: "peer_wake", Name: "sent_total",
		Help: "Wake-up datagrams sent to other shimd processes on the database."})
	received = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "shimd", Subsystem: "peer_wake", Name: "received_total",
		Help: "Wake-up datagrams received from other shimd processes on the database."})
	peerGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "shimd", Subsystem: "peer_wake", Name: "peers",
		Help: "Other shimd processes on the database that this one wakes after its commits."})
)

func init() { prometheus.MustRegister(sent, received, peerGauge) }

// Waker is one process's wake-up endpoint.
type Waker struct {
	conn      *net.UDPConn
	advertise string
	lg        *slog.Logger

	latest  atomic.Int64  // highest revision announced
	pending chan struct{} // a revision awaits sending
	refresh chan struct{} // re-read the member list now

	mu    sync.Mutex
	peers []*net.UDPAddr

	closeOnce sync.Once
}

// Listen opens the UDP socket at addr (host:port; port 0 picks one).
// advertise is the address other processes are told to send to; "" means
// the one listened on, which must then name a host (not 0.0.0.0 or ::).
func Listen(addr, advertise string, lg *slog.Logger) (*Waker, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("--peer-wake-addr %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("--peer-wake-addr %q: %w", addr, err)
	}
	if advertise == "" {
		local := conn.LocalAddr().(*net.UDPAddr)
		if local.IP.IsUnspecified() {
			conn.Close()
			return nil, fmt.Errorf("--peer-wake-addr %q listens on every interface: set --advertise-peer-wake-addr to the address other processes reach", addr)
		}
		advertise = local.String()
	}
	return &Waker{
		conn: conn, advertise: advertise, lg: lg,
		pending: make(chan struct{}, 1), refresh: make(chan struct{}, 1),
	}, nil
}

// Addr is the address to record in the member list.
func (w *Waker) Addr() string { return w.advertise }

// Listen reads datagrams until ctx ends and hands each payload to wake
// (drivers.Backend.Listen's contract). It closes the socket when it returns.
func (w *Waker) Listen(ctx context.Context, wake func(payload string)) {
	stop := context.AfterFunc(ctx, w.close)
	defer stop()
	defer w.close()
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := w.conn.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			w.lg.Warn("peer wake: read failed", "err", err)
			continue
		}
		received.Inc()
		payload := string(buf[:n])
		if payload == Hello {
			signal(w.refresh)
			payload = "" // a new member may have written already
		}
		wake(payload)
	}
}

// Close closes the socket; Listen does when its context ends.
func (w *Waker) Close() { w.close() }

func (w *Waker) close() { w.closeOnce.Do(func() { w.conn.Close() }) }

// Announce tells the other members that this process committed rev. It
// never blocks: the sender goroutine (Run) sends the highest revision
// announced since its last send, so a burst of commits costs one datagram
// per peer.
func (w *Waker) Announce(rev int64) {
	for {
		cur := w.latest.Load()
		if rev <= cur || w.latest.CompareAndSwap(cur, rev) {
			break
		}
	}
	signal(w.pending)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Members lists the advertised wake addresses of the live members, this
// process's own included.
type Members func(ctx context.Context) ([]string, error)

// Run sends announced revisions and keeps the peer list up to date (every
// refresh interval, and at once when another process says hello) until ctx
// ends.
func (w *Waker) Run(ctx context.Context, members Members, refresh time.Duration) {
	go w.refreshLoop(ctx, members, refresh)
	var sentRev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.pending:
		}
		rev := w.latest.Load()
		if rev <= sentRev {
			continue
		}
		sentRev = rev
		payload := []byte(strconv.FormatInt(rev, 10))
		w.mu.Lock()
		peers := w.peers
		w.mu.Unlock()
		w.send(peers, payload)
	}
}

// send writes payload to each peer. A peer that is gone answers with an
// ICMP error at most; the datagram is then simply lost.
func (w *Waker) send(peers []*net.UDPAddr, payload []byte) {
	for _, p := range peers {
		if _, err := w.conn.WriteToUDP(payload, p); err == nil {
			sent.Inc()
		}
	}
}

func (w *Waker) refreshLoop(ctx context.Context, members Members, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	greeted := false
	for {
		listed, err := w.load(ctx, members)
		if err != nil && ctx.Err() == nil {
			w.lg.Warn("peer wake: reading the member list failed; will retry", "err", err)
		}
		if listed && !greeted {
			// The others may have read the list before this process was in
			// it: ask them to read it again.
			greeted = true
			w.mu.Lock()
			peers := w.peers
			w.mu.Unlock()
			w.send(peers, []byte(Hello))
		}
		next := t.C
		if !greeted {
			// Until its own heartbeat is in the list, look again soon.
			next = time.After(minRefresh)
		}
		select {
		case <-ctx.Done():
			return
		case <-next:
		case <-w.refresh:
			select {
			case <-ctx.Done():
				return
			case <-time.After(minRefresh):
			}
		}
	}
}

// load replaces the peer list with the live members' addresses other than
// this process's own; listed reports whether its own was among them.
func (w *Waker) load(ctx context.Context, members Members) (listed bool, err error) {
	addrs, err := members(ctx)
	if err != nil {
		return false, err
	}
	var peers []*net.UDPAddr
	for _, a := range addrs {
		if a == w.advertise {
			listed = true
			continue
		}
		if a == "" {
			continue // a member that listens for no wake-ups
		}
		ua, err := net.ResolveUDPAddr("udp", a)
		if err != nil {
			continue // not an address: nothing to wake
		}
		peers = append(peers, ua)
	}
	w.mu.Lock()
	w.peers = peers
	w.mu.Unlock()
	peerGauge.Set(float64(len(peers)))
	return listed, nil
}
