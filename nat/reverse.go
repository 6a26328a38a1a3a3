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
	// Public is the address announced to clients. If invalid, the address
	// the client dialled is used. It must be of the client's family to be
	// used; otherwise the dialled address is.
	Public netip.Addr
}

// Plan implements alg.Planner.
func (r *Reverse) Plan(ctx context.Context, ep alg.Endpoints, a alg.Announcement) (alg.Plan, error) {
	public := ep.Dialled.Addr()
	if r.Public.IsValid() && r.Public.Is4() == ep.Client.Addr().Is4() {
		public = r.Public
	}
	if err := sameFamily(ep.Client.Addr(), public, ep.Server.Addr(), ep.Upstream.Addr()); err != nil {
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
			Announce: netip.AddrPortFrom(public, port),
			Pinhole: rules.Pinhole{
				Src:  ep.Client.Addr(),
				Dst:  netip.AddrPortFrom(public, port),
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
			SNAT: public,
		},
		Release: release,
	}, nil
}
