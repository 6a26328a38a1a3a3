// Package nat makes the translation decisions of ftpalg: for one data-channel
// announcement and the real endpoints of its control session, the endpoint to
// announce instead and the pinhole that lets the data connection through.
// Decisions are pure functions of their inputs plus a port pool; the
// addresses come from the sockets of the control session (which the kernel
// chose by route lookup), never from the payload.
package nat

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/rules"
)

// Gateway plans for gateway mode: ftpalg on a router between clients and the
// servers they dial, its upstream control connection leaving from the
// router's own address toward the server.
//
// Passive (227/229): the client connects to the server's real control
// address at the announced port; the pinhole admits exactly that and SNATs
// it to the proxy's upstream address, so the server sees one peer address on
// both channels. The reply is rewritten only where it names another address.
//
// Active (PORT/EPRT): the announcement is rewritten to the router's address
// toward the server and a port from Pool; the pinhole admits the server
// there and DNATs it to the client's announced endpoint.
type Gateway struct {
	// Pool supplies the router's ports for active mode. Required for it.
	Pool *Pool
}

// Plan implements alg.Planner.
func (g *Gateway) Plan(ctx context.Context, ep alg.Endpoints, a alg.Announcement) (alg.Plan, error) {
	if err := sameFamily(ep.Client.Addr(), ep.Server.Addr(), ep.Upstream.Addr()); err != nil {
		return alg.Plan{}, err
	}
	if a.Kind.Passive() {
		dialled := ep.Dialled.Addr()
		if !dialled.IsValid() || dialled.Is4() != ep.Server.Addr().Is4() {
			dialled = ep.Server.Addr()
		}
		return alg.Plan{
			Announce: netip.AddrPortFrom(dialled, a.Addr.Port()),
			Pinhole: rules.Pinhole{
				Src:  ep.Client.Addr(),
				Dst:  netip.AddrPortFrom(ep.Server.Addr(), a.Addr.Port()),
				SNAT: ep.Upstream.Addr(),
			},
		}, nil
	}
	if g.Pool == nil {
		return alg.Plan{}, fmt.Errorf("no data port pool for active mode")
	}
	port, err := g.Pool.Get()
	if err != nil {
		return alg.Plan{}, err
	}
	return alg.Plan{
		Announce: netip.AddrPortFrom(ep.Upstream.Addr(), port),
		Pinhole: rules.Pinhole{
			Src:  ep.Server.Addr(),
			Dst:  netip.AddrPortFrom(ep.Upstream.Addr(), port),
			DNAT: netip.AddrPortFrom(ep.Client.Addr(), a.Addr.Port()),
		},
		Release: func() { g.Pool.Put(port) },
	}, nil
}

func sameFamily(addrs ...netip.Addr) error {
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("session endpoint unknown")
		}
		if a.Is4() != addrs[0].Is4() {
			return fmt.Errorf("session mixes IPv4 and IPv6 endpoints (%s, %s)", addrs[0], a)
		}
	}
	return nil
}
