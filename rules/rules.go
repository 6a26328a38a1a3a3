// Package rules opens and closes pinholes: short-lived, narrow firewall openings
// for one FTP data connection.
//
// A Pinhole says who may connect (Src), where to (Dst, as the packet arrives),
// and optionally how the connection is translated (DNAT to another endpoint,
// SNAT to another source address). Backends make it live; they live beneath
// this leaf package so that the proxy (package alg) links none of them:
// rules/iptables (rules in chains ftpalg owns), rules/relay (userspace, for
// deployments without CAP_NET_ADMIN). Fake is the in-memory backend for tests.
//
// Every Backend method is safe for concurrent use. Open of a pinhole whose ID
// is already open replaces nothing and returns an error; Close is idempotent:
// closing a pinhole that is not open (or no longer open) returns nil, since
// that is the desired state anyway.
package rules

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// PinholeID names one pinhole: the Nth pinhole of control session Session.
// It is built in one place (the control-channel state machine in package
// alg) and travels typed: backends key on it, conntrack reports it back,
// the proxy routes it to its session with one map lookup. Its text form,
// String, is only for rule comments and logs; nothing parses it back.
type PinholeID struct {
	// Session is the number of the control session (the proxy counts
	// them from 1).
	Session uint64
	// N counts the pinholes of the session from 1.
	N uint32
}

// String is "s<session>.p<n>", e.g. "s12.p3".
func (id PinholeID) String() string {
	return SessionName(id.Session) + ".p" + strconv.FormatUint(uint64(id.N), 10)
}

// IsZero reports whether id names no pinhole.
func (id PinholeID) IsZero() bool { return id == PinholeID{} }

// SessionName is the text form of a session number in logs and rule
// comments: "s<n>".
func SessionName(n uint64) string { return "s" + strconv.FormatUint(n, 10) }

// Pinhole is one allowed data connection: TCP, first packet (SYN, conntrack
// state NEW) only, from exactly Src to exactly Dst. Once the connection is
// established it continues under conntrack; the pinhole itself can go.
type Pinhole struct {
	// ID is unique among the live pinholes of one process; its text form
	// (e.g. "s12.p3") appears in the firewall (rule comments) and in logs.
	// ID.Session is the control session the pinhole belongs to.
	ID PinholeID
	// Src is the only source address allowed to open the connection (any
	// source port: servers in active mode connect from port 20 or any port).
	Src netip.Addr
	// Dst is the destination address and port as the first packet arrives.
	Dst netip.AddrPort
	// DNAT, when valid, rewrites the destination to this endpoint.
	DNAT netip.AddrPort
	// SNAT, when valid, rewrites the source address to this address (the
	// source port is kept where possible).
	SNAT netip.Addr
	// TTL is how long the pinhole may stay unused. The session enforces it;
	// backends may use it as a backstop.
	TTL time.Duration
	// Passive says the client opens the data connection (PASV/EPSV); else
	// the server does (PORT/EPRT). For logs: which side is which.
	Passive bool
	// TLS, when set, says the data connection is an FTPS one that must be
	// carried by a backend that terminates TLS on it (the relay); a kernel
	// firewall cannot, and refuses such a pinhole.
	TLS DataTLS
}

// DataTLS secures the two legs of one relayed FTPS data connection. In
// FTPS the FTP client is the TLS client of every data connection whoever
// opens the TCP connection, so ftpalg is the TLS server on the client leg
// and the TLS client (or nothing, toward a plain server) on the server leg.
type DataTLS interface {
	// ClientLeg runs the TLS server handshake on the connection with the
	// FTP client and returns the secured connection. It refuses (an error)
	// a handshake that does not resume the control session's TLS session.
	ClientLeg(ctx context.Context, c net.Conn) (net.Conn, error)
	// ServerLeg secures the connection with the FTP server: a TLS client
	// handshake resuming the upstream control session, or c itself toward
	// a plain server.
	ServerLeg(ctx context.Context, c net.Conn) (net.Conn, error)
}

// Session is the text form of the session the pinhole belongs to, e.g.
// "s12", for logs and rule comments.
func (p Pinhole) Session() string { return SessionName(p.ID.Session) }

// Target is where the connection ends up: DNAT when set, else Dst.
func (p Pinhole) Target() netip.AddrPort {
	if p.DNAT.IsValid() {
		return p.DNAT
	}
	return p.Dst
}

// Is6 reports whether the pinhole is an IPv6 one.
func (p Pinhole) Is6() bool { return p.Dst.Addr().Is6() && !p.Dst.Addr().Is4In6() }

// Validate checks that the pinhole is narrow and consistent: exact addresses
// of one family, non-zero ports, no unspecified or multicast addresses.
func (p Pinhole) Validate() error {
	if p.ID.IsZero() {
		return errors.New("pinhole without ID")
	}
	if !p.Src.IsValid() || !p.Dst.IsValid() {
		return fmt.Errorf("pinhole %s: source and destination are required", p.ID)
	}
	var buf [4]netip.Addr // no allocation on the hot path
	addrs := append(buf[:0], p.Src, p.Dst.Addr())
	if p.DNAT.IsValid() {
		addrs = append(addrs, p.DNAT.Addr())
		if p.DNAT.Port() == 0 {
			return fmt.Errorf("pinhole %s: DNAT port 0", p.ID)
		}
	}
	if p.SNAT.IsValid() {
		addrs = append(addrs, p.SNAT)
	}
	six := p.Is6()
	for _, a := range addrs {
		if a.Zone() != "" || a.Is4In6() {
			return fmt.Errorf("pinhole %s: address %s must be plain IPv4 or IPv6", p.ID, a)
		}
		if a.Is6() != six {
			return fmt.Errorf("pinhole %s: mixes IPv4 and IPv6 (%s)", p.ID, a)
		}
		if a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("pinhole %s: address %s is not a single host", p.ID, a)
		}
	}
	if p.Dst.Port() == 0 {
		return fmt.Errorf("pinhole %s: destination port 0", p.ID)
	}
	return nil
}

func (p Pinhole) String() string {
	id := ""
	if !p.ID.IsZero() {
		id = p.ID.String()
	}
	s := fmt.Sprintf("%s tcp %s -> %s", id, p.Src, p.Dst)
	if p.DNAT.IsValid() {
		s += " dnat " + p.DNAT.String()
	}
	if p.SNAT.IsValid() {
		s += " snat " + p.SNAT.String()
	}
	if p.TLS != nil {
		s += " tls"
	}
	return s
}

// Backend makes pinholes live in some data path.
type Backend interface {
	// Open makes p live. When it returns nil, a connection matching p is
	// let through. It must not return before the pinhole is effective.
	Open(ctx context.Context, p Pinhole) error
	// Close removes p. It is idempotent: a pinhole that is not open is not
	// an error. Close does not disturb a connection already established
	// through p.
	Close(ctx context.Context, p Pinhole) error
}

// Connector is implemented by backends that carry the data connection
// themselves (the relay). A firewall pinhole needs no such wait: the kernel
// forwards the connection as it comes.
type Connector interface {
	// Connected waits until the data connection accepted through p has
	// reached its target. The Session holds the transfer's final reply
	// until then, so that a client never sees "226 Transfer complete"
	// before the data connection the server already finished with.
	Connected(ctx context.Context, p Pinhole) error
}
