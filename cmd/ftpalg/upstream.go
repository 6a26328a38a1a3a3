package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/ftpalg/ftpalg/nat"
)

// originalDst returns the gateway's Upstream: the destination the client
// dialled before the firewall redirected it. A connection made to the
// listener directly is refused (proxying it would make an open relay or a
// loop), and so is one to the router itself (local tells its addresses):
// the proxy's own connection would reach local services that the INPUT
// policy keeps from the client.
func originalDst(local *localAddrs) func(c net.Conn) (netip.AddrPort, error) {
	return func(c net.Conn) (netip.AddrPort, error) {
		dst, err := nat.OriginalDst(c)
		if err != nil {
			return netip.AddrPort{}, err
		}
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		la := c.LocalAddr().(*net.TCPAddr).AddrPort()
		if dst.Addr() == la.Addr().Unmap() && dst.Port() == la.Port() {
			return netip.AddrPort{}, errors.New("connection was not intercepted (dialled the listener itself)")
		}
		if a := dst.Addr(); a.IsLoopback() || a.IsUnspecified() || local.has(a) {
			return netip.AddrPort{}, fmt.Errorf("destination %s is this router itself", dst)
		}
		return dst, nil
	}
}

// resolveUpstream resolves HOST:PORT once, at start.
func resolveUpstream(ctx context.Context, s string) ([]netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, usagef("--upstream %q: want HOST:PORT", s)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving --upstream %q: %w", s, err)
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil || p == 0 {
		return nil, usagef("--upstream %q: bad port", s)
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(p)))
	}
	return out, nil
}

// upstreamFor picks the upstream address of the client's family, so that
// both channels keep one family; else the first.
func upstreamFor(up []netip.AddrPort) func(net.Conn) (netip.AddrPort, error) {
	return func(c net.Conn) (netip.AddrPort, error) {
		client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		for _, a := range up {
			if a.Addr().Is4() == client.Is4() {
				return a, nil
			}
		}
		return up[0], nil
	}
}

// portBusy reports whether a TCP port is bound on this host (any address).
func portBusy(port uint16) bool {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return true
	}
	l.Close()
	return false
}
