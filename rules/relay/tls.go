package relay

import (
	"context"
	"net"

	"github.com/ftpalg/ftpalg/rules"
)

// secure runs the TLS handshakes of an FTPS data connection (p.TLS set):
// the client leg first. peer is the accepted connection, target the
// dialled one; which of them is the client's follows p.Passive. It returns
// the secured peer and target.
//
// A client leg that fails (a client that did not resume its control
// session) is an error, and the caller resets both connections. Before
// that, the server leg's handshake is still made toward an FTPS server: a
// server whose data handshake is cut may end the whole control session
// (vsftpd does), whereas a reset transfer only fails that transfer.
func (r *Backend) secure(p rules.Pinhole, peer, target net.Conn) (net.Conn, net.Conn, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.dialTimeout)
	defer cancel()
	client, server := peer, target
	if !p.Passive {
		client, server = target, peer
	}
	c, err := p.TLS.ClientLeg(ctx, client)
	if err != nil {
		p.TLS.ServerLeg(ctx, server)
		return nil, nil, err
	}
	s, err := p.TLS.ServerLeg(ctx, server)
	if s == nil {
		return nil, nil, err
	}
	if err != nil {
		// Still usable: the server decides (the transfer reply says).
		r.log.Warn("relay server leg", "session", p.Session, "pinhole", p.String(), "err", err)
	}
	if !p.Passive {
		return s, c, nil
	}
	return c, s, nil
}
