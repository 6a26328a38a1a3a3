package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// localAddrs answers "is this an address of this host?" for every accepted
// control connection (originalDst) from a copy of the host's addresses
// that is read again after netlink reports an address change, instead of
// dumping the interface tables per connection (two netlink dumps each, a
// visible share of ftpalg's CPU per session under load). Without the
// subscription (it failed, or ended: ENOBUFS after an event burst) every
// question reads the tables, as before.
type localAddrs struct {
	read func() (map[netip.Addr]bool, error) // the host's addresses

	gen  atomic.Uint64 // bumped by every address event
	live atomic.Bool   // the subscription runs: the cache may be used

	mu     sync.Mutex
	set    map[netip.Addr]bool // nil: not read yet
	setGen uint64              // gen when set was read
}

// newLocalAddrs subscribes to the address changes of ftpalg's network
// namespace until ctx ends.
func newLocalAddrs(ctx context.Context, log *slog.Logger) *localAddrs {
	l := &localAddrs{read: interfaceAddrs}
	ch := make(chan netlink.AddrUpdate, 64)
	err := netlink.AddrSubscribeWithOptions(ch, ctx.Done(), netlink.AddrSubscribeOptions{
		// A message it could not use may have been a change: read again.
		ErrorCallback: func(error) { l.gen.Add(1) },
	})
	if err != nil {
		log.Warn("watching the host's addresses; reading them per connection instead", "err", err)
		return l
	}
	l.follow(ch)
	return l
}

// follow uses the cache while updates delivers events; once it is closed
// (the subscription ended), every question reads the tables.
func (l *localAddrs) follow(updates <-chan netlink.AddrUpdate) {
	l.live.Store(true)
	go func() {
		for range updates {
			l.gen.Add(1)
		}
		l.live.Store(false)
	}()
}

// has reports whether a is an address of this host.
func (l *localAddrs) has(a netip.Addr) bool {
	if !l.live.Load() {
		set, err := l.read()
		return err == nil && set[a]
	}
	g := l.gen.Load()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.set == nil || l.setGen != g {
		set, err := l.read()
		if err != nil {
			return false
		}
		l.set, l.setGen = set, g
	}
	return l.set[a]
}

// interfaceAddrs reads the addresses of every interface of the host.
func interfaceAddrs() (map[netip.Addr]bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	set := make(map[netip.Addr]bool, len(addrs))
	for _, ia := range addrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			set[p.Addr().Unmap()] = true
		}
	}
	return set, nil
}
