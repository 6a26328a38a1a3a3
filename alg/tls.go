package alg

// TLS termination in the Session (the I/O side; the decisions are in
// machine_tls.go).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/rules"
)

// errTLSHandshake ends a session whose client failed the TLS handshake
// after AUTH TLS.
var errTLSHandshake = errors.New("TLS handshake with the client failed")

// switchConn is the client's control connection, whose transport changes
// from plain to TLS after AUTH TLS. Every method goes to the current one.
type switchConn struct {
	mu sync.RWMutex
	c  net.Conn
}

func (c *switchConn) cur() net.Conn {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.c
}

func (c *switchConn) swap(n net.Conn) {
	c.mu.Lock()
	c.c = n
	c.mu.Unlock()
}

func (c *switchConn) Read(b []byte) (int, error)         { return c.cur().Read(b) }
func (c *switchConn) Write(b []byte) (int, error)        { return c.cur().Write(b) }
func (c *switchConn) Close() error                       { return c.cur().Close() }
func (c *switchConn) LocalAddr() net.Addr                { return c.cur().LocalAddr() }
func (c *switchConn) RemoteAddr() net.Addr               { return c.cur().RemoteAddr() }
func (c *switchConn) SetDeadline(t time.Time) error      { return c.cur().SetDeadline(t) }
func (c *switchConn) SetReadDeadline(t time.Time) error  { return c.cur().SetReadDeadline(t) }
func (c *switchConn) SetWriteDeadline(t time.Time) error { return c.cur().SetWriteDeadline(t) }

func (c *switchConn) CloseWrite() error {
	if cw, ok := c.cur().(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// TLSTermination is the TLS side of a Session whose policy is
// TLSTerminate (see machine_tls.go for what it decides).
type TLSTermination struct {
	// TLS is the TLS state of the session (ftps.Terminator.NewSession).
	// The Server conn must already be what the session speaks to: plain,
	// or secured by TLS.SecureUpstream.
	TLS *ftps.Session
	// TLSBackend carries the data connections ftpalg terminates TLS on
	// (the relay, alone or Through the firewall). Required with TLS.
	TLSBackend rules.Backend
	// ClientTLS says the Client conn is TLS already (implicit FTPS).
	ClientTLS bool

	backend rules.Backend // Backend, or with TLS a dataMux
	sw      *switchConn   // the Client conn, with TLS
}

// initTLS checks the TLS fields against the policy and prepares the client
// connection for termination. Run has not started the loops.
func (s *Session) initTLS() error {
	s.backend = s.Backend
	term := s.pol.TLSMode() == TLSTerminate
	switch {
	case term && (s.TLS == nil || s.TLSBackend == nil):
		return errors.New("a TLS-terminating session needs TLS and TLSBackend")
	case !term && s.TLS != nil:
		return errors.New("TLS is set but the policy does not terminate TLS")
	case !term:
		return nil
	}
	s.sw = &switchConn{c: s.Client}
	s.Client = s.sw
	s.backend = dataMux{plain: s.Backend, relayed: s.TLSBackend}
	return nil
}

// startTLS runs the TLS handshake after the 234 to AUTH TLS: the 234 goes
// out first, then the handshake on the client's connection, which the
// session reads and writes inside TLS from then on. buffered is what the
// client sent after AUTH: nothing may come before the 234.
func (s *Session) startTLS(ctx context.Context, buffered int) error {
	// step held the writes queued after the 234 (see clientWriter.hold).
	defer s.w.release()
	if err := s.w.flush(); err != nil {
		return fmt.Errorf("writing to client: %w", err)
	}
	if buffered > 0 {
		return s.endTLS("the client sent more after AUTH TLS, before the 234 reply")
	}
	hctx, cancel := context.WithTimeout(ctx, s.pol.OpenTimeout)
	defer cancel()
	tc, err := s.TLS.ServeControl(hctx, s.sw.cur())
	if err != nil {
		return s.endTLS(err.Error())
	}
	s.sw.swap(tc)
	s.step(func(m *Machine) []Action { m.TLSStarted(); return nil })
	upstream := "plain"
	if s.TLS.UpstreamTLS() {
		upstream = "tls"
	}
	s.log.Info("client control connection secured", "tls", ftps.Describe(tc), "upstream", upstream,
		"upstream_resumable", s.TLS.Resumable())
	return nil
}

// endTLS ends the session after a failed start of TLS, with one log line.
func (s *Session) endTLS(why string) error {
	s.log.Warn("refused", "what", "TLS handshake", "why", why, "end", true)
	s.Client.Close()
	s.Server.Close()
	return fmt.Errorf("%w: %s", errTLSHandshake, why)
}

// dataMux sends the pinholes of data connections ftpalg terminates TLS on
// to the relay (alone, or Through the firewall), the others to the kernel
// backend.
type dataMux struct {
	plain, relayed rules.Backend
}

func (d dataMux) pick(p rules.Pinhole) rules.Backend {
	if p.TLS != nil {
		return d.relayed
	}
	return d.plain
}

func (d dataMux) Open(ctx context.Context, p rules.Pinhole) error  { return d.pick(p).Open(ctx, p) }
func (d dataMux) Close(ctx context.Context, p rules.Pinhole) error { return d.pick(p).Close(ctx, p) }

func (d dataMux) Connected(ctx context.Context, p rules.Pinhole) error {
	if c, ok := d.pick(p).(rules.Connector); ok {
		return c.Connected(ctx, p)
	}
	return nil
}

// notResumed is the reply that replaces the final reply of a transfer
// whose data connection was refused for not resuming the control
// connection's TLS session (the relay logged the refusal).
var notResumed = func() ftp.Reply {
	r, err := ftp.NewReplyReader(strings.NewReader(
		"425 ftpalg: data connection refused: its TLS session must resume the control connection's\r\n"), 0, 0).ReadReply()
	if err != nil {
		panic(err)
	}
	return r
}()

// refusedData reports whether the announced data connection whose
// transfer got no preliminary reply was refused by the relay (not
// resumed): asked without waiting.
func (s *Session) refusedData() bool {
	if s.TLS == nil {
		return false
	}
	s.mu.Lock()
	p, ok := s.m.Announced()
	s.mu.Unlock()
	if !ok || p.TLS == nil {
		return false
	}
	c, ok := s.backend.(rules.Connector)
	if !ok {
		return false
	}
	now, cancel := context.WithCancel(context.Background())
	cancel()
	return errors.Is(c.Connected(now, p), ftps.ErrNotResumed)
}

// ImplicitTLS marks the connections of ln as implicit FTPS (TLS from the
// first byte, port 990 style) for a Proxy with TLS.
func ImplicitTLS(ln net.Listener) net.Listener { return implicitListener{ln} }

type implicitListener struct{ net.Listener }

func (l implicitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return implicitConn{c}, nil
}

type implicitConn struct{ net.Conn }

// unwrapImplicit returns the conn an implicit listener accepted, and
// whether it was one.
func unwrapImplicit(c net.Conn) (net.Conn, bool) {
	if ic, ok := c.(implicitConn); ok {
		return ic.Conn, true
	}
	return c, false
}

// secure sets up TLS for one session of a Proxy with TLS (TLSTerminate):
// every session gets an ftps.Session; the client's handshake comes first on
// an implicit listener, then the upstream control connection is secured
// when the server speaks FTPS; TLSBackend carries the protected data
// connections. On an error the returned client conn is the one to answer
// on (in the clear if its handshake failed). Without TLS it does nothing.
func (p *Proxy) secure(ctx context.Context, c, u net.Conn, srv netip.AddrPort, implicit bool) (*ftps.Session, net.Conn, net.Conn, error) {
	if p.TLS == nil {
		return nil, c, u, nil
	}
	tsess, err := p.TLS.NewSession(srv)
	if err != nil {
		return nil, c, u, err
	}
	if implicit {
		tc, err := tsess.ServeControl(ctx, c)
		if err != nil {
			return nil, c, u, err
		}
		c = tc
	}
	su, err := tsess.SecureUpstream(ctx, u, p.TLS.Upstream())
	if err != nil {
		return nil, c, u, fmt.Errorf("securing the server connection: %w", err)
	}
	return tsess, c, su, nil
}
