// Package ftps is the TLS side of FTPS termination (the TLS policy
// "terminate"): the certificate ftpalg presents, re-read on reload; one
// Session per control connection whose TLS configurations bind every data
// connection to that control connection; and the configuration toward an
// upstream server that speaks FTPS itself.
//
// Typical usage:
//
//	cert, err := ftps.LoadCert(certFile, keyFile)
//	t, err := ftps.New(ftps.Config{Cert: cert, Upstream: ftps.UpstreamExplicit, RootCAs: pool})
//	s, err := t.NewSession(serverAddr)
//	client, err := s.ServeControl(ctx, clientConn)   // after "234" to AUTH TLS
//	server, err := s.DialControl(ctx, serverConn)    // after the server's 234
//	pinhole.TLS = s                                  // data legs: rules.DataTLS
//
// # Binding data connections to their control connection
//
// A data connection proves it comes from the client of the control
// connection by resuming the control connection's TLS session (what
// vsftpd's require_ssl_reuse demands). Every Session has its own random
// session-ticket key: a ticket issued on the control connection can be
// decrypted by no other Session, so a data handshake that resumed
// (ConnectionState.DidResume) resumed this control session, or a data
// connection of it that resumed it in turn. A full handshake on a data
// connection is refused with ErrNotResumed.
//
// # Upstream
//
// Toward an FTPS server ftpalg is the TLS client, verifying the server's
// certificate against the configured roots (system roots by default), and
// resumes its own control session on every data connection: each Session
// has its own ClientSessionCache. In TLS 1.3 the ticket arrives after the
// handshake, with the server's next record; WaitTicket waits for it before
// the first data connection.
package ftps

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// ErrNotResumed refuses a data connection whose TLS handshake did not
// resume the control connection's TLS session.
var ErrNotResumed = errors.New("data connection did not resume the control connection's TLS session")

// defaultHandshakeTimeout bounds one handshake when the context has no
// earlier deadline.
const defaultHandshakeTimeout = 10 * time.Second

// UpstreamMode is how ftpalg speaks to the FTP server.
type UpstreamMode int

const (
	// UpstreamPlain is plain FTP to a server that knows nothing of TLS
	// (TLS offload): AUTH, PBSZ and PROT are answered by ftpalg.
	UpstreamPlain UpstreamMode = iota
	// UpstreamExplicit is FTPS with AUTH TLS on the server's plain port.
	UpstreamExplicit
	// UpstreamImplicit is FTPS with TLS from the first byte (port 990 style).
	UpstreamImplicit
)

func (m UpstreamMode) String() string {
	switch m {
	case UpstreamPlain:
		return "plain"
	case UpstreamExplicit:
		return "explicit"
	case UpstreamImplicit:
		return "implicit"
	}
	return fmt.Sprintf("UpstreamMode(%d)", int(m))
}

// ParseUpstreamMode parses "plain", "explicit" or "implicit".
func ParseUpstreamMode(s string) (UpstreamMode, error) {
	for _, m := range []UpstreamMode{UpstreamPlain, UpstreamExplicit, UpstreamImplicit} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("upstream TLS mode %q: want plain, explicit or implicit", s)
}

// Cert is the certificate ftpalg presents to clients. Reload swaps it for
// new handshakes; handshakes in progress keep the one they started with.
type Cert struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// LoadCert reads a PEM certificate chain and its key.
func LoadCert(certFile, keyFile string) (*Cert, error) {
	c := &Cert{certFile: certFile, keyFile: keyFile}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload re-reads the files. On an error the previous certificate stays.
func (c *Cert) Reload() error {
	kp, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("loading TLS certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&kp)
	return nil
}

// Leaf returns the presented certificate, parsed.
func (c *Cert) Leaf() *x509.Certificate { return c.cur.Load().Leaf }

func (c *Cert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cur.Load(), nil }

// LoadRootCAs reads a PEM bundle of CA certificates to verify upstream
// servers with, instead of the system roots.
func LoadRootCAs(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("reading CA bundle %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// Config configures a Terminator.
type Config struct {
	// Cert is presented to clients. Required.
	Cert *Cert
	// Upstream is how the server is reached: plain (offload) or FTPS.
	Upstream UpstreamMode
	// ServerName is the name the upstream certificate must carry. If
	// empty, the upstream's IP address (the certificate then needs it as
	// an IP SAN).
	ServerName string
	// RootCAs verifies the upstream certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// InsecureSkipVerify accepts any upstream certificate. Only when the
	// operator asks; the caller logs a warning at start.
	InsecureSkipVerify bool
	// MinVersion is the lowest TLS version on either side; default TLS 1.2.
	MinVersion uint16
	// MaxUpstreamVersion, when set, caps the version toward the server.
	MaxUpstreamVersion uint16
}

// Terminator makes the TLS Sessions of one listener.
type Terminator struct {
	cfg Config
}

// New checks cfg and returns a Terminator.
func New(cfg Config) (*Terminator, error) {
	if cfg.Cert == nil {
		return nil, errors.New("TLS termination needs a certificate and key")
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return &Terminator{cfg: cfg}, nil
}

// Upstream reports how the server is reached.
func (t *Terminator) Upstream() UpstreamMode { return t.cfg.Upstream }

// Session is the TLS state of one control connection. Its methods are safe
// for concurrent use; it implements rules.DataTLS for the relay.
type Session struct {
	control *tls.Config // client side: ftpalg is the TLS server
	data    *tls.Config // the same, refusing a full handshake
	up      *tls.Config // server side: ftpalg is the TLS client; nil when plain

	ticket     chan struct{} // closed at the first upstream session stored
	ticketOnce sync.Once
	resumable  bool // SecureUpstream saw a ticket: data connections resume
}

// Resumable reports whether the FTPS server issued a session ticket on the
// control connection, so that data connections resume it.
func (s *Session) Resumable() bool { return s.resumable }

var _ rules.DataTLS = (*Session)(nil)

// NewSession returns the TLS state for one control connection to the
// server at upstream.
func (t *Terminator) NewSession(upstream netip.AddrPort) (*Session, error) {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, fmt.Errorf("making a session ticket key: %w", err)
	}
	s := &Session{ticket: make(chan struct{})}
	s.control = &tls.Config{
		GetCertificate: t.cfg.Cert.get,
		MinVersion:     t.cfg.MinVersion,
	}
	s.control.SetSessionTicketKeys([][32]byte{key})
	s.data = s.control.Clone()
	s.data.SetSessionTicketKeys([][32]byte{key})
	s.data.VerifyConnection = func(cs tls.ConnectionState) error {
		if !cs.DidResume {
			return ErrNotResumed
		}
		return nil
	}
	if t.cfg.Upstream != UpstreamPlain {
		name := t.cfg.ServerName
		if name == "" {
			name = upstream.Addr().Unmap().WithZone("").String()
		}
		s.up = &tls.Config{
			ServerName:         name,
			RootCAs:            t.cfg.RootCAs,
			InsecureSkipVerify: t.cfg.InsecureSkipVerify,
			MinVersion:         t.cfg.MinVersion,
			MaxVersion:         t.cfg.MaxUpstreamVersion,
			ClientSessionCache: &notifyCache{ClientSessionCache: tls.NewLRUClientSessionCache(4), put: s.stored},
		}
	}
	return s, nil
}

func (s *Session) stored() { s.ticketOnce.Do(func() { close(s.ticket) }) }

// ServeControl runs the TLS server handshake on the client's control
// connection (after the 234 reply to AUTH TLS, or at once on an implicit
// FTPS listener).
func (s *Session) ServeControl(ctx context.Context, c net.Conn) (net.Conn, error) {
	tc := tls.Server(c, s.control)
	if err := handshake(ctx, tc); err != nil {
		return nil, fmt.Errorf("TLS handshake with the client: %w", err)
	}
	return leg{tc, c}, nil
}

// DialControl runs the TLS client handshake on the server's control
// connection (after the server's 234, or at once toward implicit FTPS).
func (s *Session) DialControl(ctx context.Context, c net.Conn) (net.Conn, error) {
	if s.up == nil {
		return nil, errors.New("the upstream is plain FTP")
	}
	tc := tls.Client(c, s.up)
	if err := handshake(ctx, tc); err != nil {
		return nil, fmt.Errorf("TLS handshake with the server: %w", err)
	}
	return leg{tc, c}, nil
}

// UpstreamTLS reports whether the server leg of data connections is TLS.
func (s *Session) UpstreamTLS() bool { return s.up != nil }

// WaitTicket waits until the upstream control session can be resumed: a
// TLS 1.3 ticket arrives after the handshake and is stored when the control
// connection next reads. It returns at once toward a plain server.
func (s *Session) WaitTicket(ctx context.Context) error {
	if s.up == nil {
		return nil
	}
	select {
	case <-s.ticket:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the server's TLS session ticket: %w", ctx.Err())
	}
}

// ClientLeg secures a data connection with the client: ftpalg is the TLS
// server and the handshake must resume this control session's TLS session,
// else it fails with an error wrapping ErrNotResumed.
func (s *Session) ClientLeg(ctx context.Context, c net.Conn) (net.Conn, error) {
	tc := tls.Server(c, s.data)
	if err := handshake(ctx, tc); err != nil {
		return nil, fmt.Errorf("TLS handshake on the client's data connection: %w", err)
	}
	if !tc.ConnectionState().DidResume { // VerifyConnection already refused it
		return nil, ErrNotResumed
	}
	return leg{tc, c}, nil
}

// ServerLeg secures a data connection with the server: a TLS client
// handshake resuming the upstream control session, or c as it is toward a
// plain server.
func (s *Session) ServerLeg(ctx context.Context, c net.Conn) (net.Conn, error) {
	if s.up == nil {
		return c, nil
	}
	tc := tls.Client(c, s.up)
	if err := handshake(ctx, tc); err != nil {
		return nil, fmt.Errorf("TLS handshake on the server's data connection: %w", err)
	}
	if !tc.ConnectionState().DidResume && s.resumable {
		// A server that issued a ticket did not take it back. It
		// decides whether it minds (vsftpd require_ssl_reuse does); the
		// transfer reply will say. A server that issues none (pure-ftpd)
		// makes a full handshake every time: nothing to report.
		return leg{tc, c}, fmt.Errorf("server's data connection: %w", errUpstreamNotResumed)
	}
	return leg{tc, c}, nil
}

// errUpstreamNotResumed is returned, with the conn, by ServerLeg when the
// server did not resume ftpalg's session.
var errUpstreamNotResumed = errors.New("the server did not resume ftpalg's TLS session")

// IsUpstreamNotResumed reports whether err only says that the server made
// a full handshake on a data connection (the connection is still usable).
func IsUpstreamNotResumed(err error) bool { return errors.Is(err, errUpstreamNotResumed) }

func handshake(ctx context.Context, tc *tls.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultHandshakeTimeout)
		defer cancel()
	}
	return tc.HandshakeContext(ctx)
}

// notifyCache calls put when a session is stored.
type notifyCache struct {
	tls.ClientSessionCache
	put func()
}

func (c *notifyCache) Put(key string, cs *tls.ClientSessionState) {
	c.ClientSessionCache.Put(key, cs)
	if cs != nil {
		c.put()
	}
}

// Data returns the wrapping of one data connection: TLS on the client leg
// when the client protects its data (PROT P), else the client leg as it
// is; the server leg as the upstream mode says.
func (s *Session) Data(clientTLS bool) rules.DataTLS {
	if clientTLS {
		return s
	}
	return clearClient{s}
}

// clearClient is a data connection with a clear client leg (PROT C) toward
// an FTPS server.
type clearClient struct{ *Session }

func (clearClient) ClientLeg(_ context.Context, c net.Conn) (net.Conn, error) { return c, nil }
