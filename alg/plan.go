package alg

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/ftpalg/ftpalg/rules"
)

// Kind is the kind of a data-channel announcement.
type Kind int

// The four announcements ftpalg acts on. LPRT/LPSV (RFC 1639) are refused.
const (
	// PASV is a 227 reply answering PASV: "h1,h2,h3,h4,p1,p2" from the server.
	PASV Kind = iota + 1
	// EPSV is a 229 reply answering EPSV: "(|||port|)" from the server.
	EPSV
	// PORT is the client's "PORT h1,h2,h3,h4,p1,p2".
	PORT
	// EPRT is the client's "EPRT |af|addr|port|".
	EPRT
)

func (k Kind) String() string {
	switch k {
	case PASV:
		return "PASV"
	case EPSV:
		return "EPSV"
	case PORT:
		return "PORT"
	case EPRT:
		return "EPRT"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Passive reports whether the server announced the endpoint (PASV, EPSV).
func (k Kind) Passive() bool { return k == PASV || k == EPSV }

// Endpoints are the real addresses of one control session, as the sockets
// (not the payload) show them.
type Endpoints struct {
	// Client is the client's address on the control connection.
	Client netip.AddrPort
	// Dialled is the address the client dialled: the original destination in
	// gateway mode, the listener's address in reverse mode.
	Dialled netip.AddrPort
	// Upstream is the proxy's own address on the server connection.
	Upstream netip.AddrPort
	// Server is the server's address on the control connection.
	Server netip.AddrPort
}

// Announcement is one endpoint announced in the control channel.
type Announcement struct {
	Kind Kind
	// Addr is the announced endpoint. For EPSV, which carries only a port,
	// the address is the server's control address.
	Addr netip.AddrPort
}

// Plan is a planner's decision for one announcement.
type Plan struct {
	// Announce is the endpoint to write into the forwarded line in place of
	// the announced one (for EPSV only its port is used).
	Announce netip.AddrPort
	// Pinhole is the opening that lets the data connection through. The
	// Machine fills in ID, TTL and Passive.
	Pinhole rules.Pinhole
	// Release, when set, is called once after the pinhole is closed, e.g. to
	// return a port to its pool.
	Release func()
}

// Planner decides how an announcement is translated and which pinhole lets
// its data connection through. Package nat implements it for each mode.
// An error refuses the announcement: the Session answers the peer with a
// 425 reply that quotes it, so it should read well to a person.
type Planner interface {
	Plan(ctx context.Context, ep Endpoints, a Announcement) (Plan, error)
}

// checkPlan enforces the invariant that holds whatever the planner does:
// a pinhole only ever lets the other real peer of this control session reach
// the real peer that announced the endpoint, at the announced port, and the
// port is not below the floor. It is the last line of defence against a
// planner bug turning payload into a firewall opening.
func checkPlan(ep Endpoints, a Announcement, p Plan, minPort uint16) error {
	ph := p.Pinhole
	ph.ID = rules.PinholeID{N: 1} // named by the Machine after the check
	if err := ph.Validate(); err != nil {
		return err
	}
	client, server := ep.Client.Addr().Unmap(), ep.Server.Addr().Unmap()
	var src, dst netip.Addr
	var port uint16
	if a.Kind.Passive() {
		// The client connects to the server's real address, never to an
		// address from the payload.
		src, dst, port = client, server, a.Addr.Port()
	} else {
		src, dst, port = server, client, a.Addr.Port()
	}
	t := ph.Target()
	if ph.Src != src {
		return fmt.Errorf("plan for %v: pinhole source %s is not the peer %s", a.Kind, ph.Src, src)
	}
	if t.Addr() != dst || t.Port() != port {
		return fmt.Errorf("plan for %v: pinhole target %s is not %s", a.Kind, t, netip.AddrPortFrom(dst, port))
	}
	if port < minPort {
		return fmt.Errorf("plan for %v: port %d below %d", a.Kind, port, minPort)
	}
	if !p.Announce.IsValid() || p.Announce.Port() == 0 {
		return fmt.Errorf("plan for %v: no endpoint to announce", a.Kind)
	}
	return nil
}
