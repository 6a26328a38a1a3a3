package nat

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/rules"
)

// Reverse plans for reverse (and sidecar) mode: ftpalg publishes one FTP
// server that sits on a private address. The client dialled ftpalg's public
// address; the proxy's upstream connection leaves from its inside address.
//
// Passive (227/229): the server names its private endpoint. The client is
// told the public address and a port from Pool; the pinhole admits the client
// there, DNATs it to the server's real address at the announced port and
// SNATs it to the proxy's inside address, so the server sees one peer address
// on both channels (servers such as vsftpd check this). A 229 carries only a
// port: only the port is rewritten.
//
// Active (PORT/EPRT): the server is told the proxy's inside address and a
// pool port; the pinhole admits the server there, DNATs it to the client's
// announced endpoint and SNATs it to the public address.
type Reverse struct {
	// Pool supplies this host's ports for translated endpoints. Required.
	Pool *Pool
	// Public is the address announced to clients in 227 replies, when a
	// NAT in front of this host publishes it under another address. If
	// invalid, or not of the client's family, the address the client
	// dialled is announced. The pinholes always use the dialled (local)
	// address.
	Public netip.Addr
}

// Plan implements alg.Planner.
func (r *Reverse) Plan(ctx context.Context, ep alg.Endpoints, a alg.Announcement) (alg.Plan, error) {
	// The data connections arrive at (and leave from) the address the
	// client dialled, a local address; Public only changes what is
	// announced in a 227 (an address of a NAT in front of this host).
	// EPSV clients ignore it and use the control connection's address.
	local := ep.Dialled.Addr()
	announce := local
	if r.Public.IsValid() && r.Public.Is4() == ep.Client.Addr().Is4() {
		announce = r.Public
	}
	if err := sameFamily(ep.Client.Addr(), local, ep.Server.Addr(), ep.Upstream.Addr()); err != nil {
		return alg.Plan{}, fmt.Errorf("%w; publish the server with an upstream of the client's address family", err)
	}
	if r.Pool == nil {
		return alg.Plan{}, fmt.Errorf("no data port pool")
	}
	port, err := r.Pool.Get()
	if err != nil {
		return alg.Plan{}, err
	}
	release := func() { r.Pool.Put(port) }
	if a.Kind.Passive() {
		return alg.Plan{
			Announce: netip.AddrPortFrom(announce, port),
			Pinhole: rules.Pinhole{
				Src:  ep.Client.Addr(),
				Dst:  netip.AddrPortFrom(local, port),
				DNAT: netip.AddrPortFrom(ep.Server.Addr(), a.Addr.Port()),
				SNAT: ep.Upstream.Addr(),
			},
			Release: release,
		}, nil
	}
	return alg.Plan{
		Announce: netip.AddrPortFrom(ep.Upstream.Addr(), port),
		Pinhole: rules.Pinhole{
			Src:  ep.Server.Addr(),
			Dst:  netip.AddrPortFrom(ep.Upstream.Addr(), port),
			DNAT: netip.AddrPortFrom(ep.Client.Addr(), a.Addr.Port()),
			SNAT: local,
		},
		Release: release,
	}, nil
}
