package shimd

import (
	"context"

	"github.com/shimd/shimd/drivers"
	"github.com/shimd/shimd/peerwake"
	"github.com/shimd/shimd/server"
)

// openPeerWake listens for wake-ups from other processes where the
// database itself wakes no one: a shared database without Listen (MySQL).
// It hooks the waker into be; nil when there is nothing to do.
func openPeerWake(cfg *Config, be *drivers.Backend) (*peerwake.Waker, error) {
	if !be.Shared || be.Listen != nil || cfg.PeerWakeAddr == peerWakeOff {
		return nil, nil
	}
	w, err := peerwake.Listen(cfg.PeerWakeAddr, cfg.AdvertisePeerWakeAddr, cfg.Logger)
	if err != nil {
		return nil, err
	}
	be.Listen = w.Listen
	be.Announce = w.Announce
	return w, nil
}

// runPeerWake sends this process's commits to the live members until ctx
// ends, re-reading them as often as they record their heartbeats.
func runPeerWake(ctx context.Context, w *peerwake.Waker, srv *server.Server) {
	w.Run(ctx, srv.WakeAddrs, server.HeartbeatInterval)
}

// wakeAddr is the address w advertises, "" without one.
func wakeAddr(w *peerwake.Waker) string {
	if w == nil {
		return ""
	}
	return w.Addr()
}
