package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/rules"
)

// tlsFixture is one FTPS control session seen from all three parties: the
// FTP client (Go's TLS client with a session cache), ftpalg (an
// ftps.Session, terminating the client's TLS and speaking TLS or plain
// upstream) and an FTPS server that, like vsftpd's require_ssl_reuse,
// accepts only data connections resuming its control session (itself an
// ftps.Session).
type tlsFixture struct {
	pool      *x509.CertPool
	alg       *ftps.Session
	server    *ftps.Session // nil: a plain upstream
	clientCfg *tls.Config   // with the session cache of the control connection
}

func writeCert(t *testing.T) (*ftps.Cert, *x509.CertPool) {
	t.Helper()
	caPEM, certPEM, keyPEM, err := ftps.SelfSigned("127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cf, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := ftps.LoadCert(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return cert, pool
}

// controlPair runs a TLS control connection between dial and serve, and
// has the server write one line after the handshake that the client reads,
// so that a TLS 1.3 ticket reaches the client with it.
func controlPair(t *testing.T, dial, serve func(context.Context, net.Conn) (net.Conn, error)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		t.Cleanup(func() { c.Close() })
		tc, err := serve(context.Background(), c)
		if err == nil {
			_, err = tc.Write([]byte("200 ready\r\n"))
		}
		errc <- err
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	c, err := dial(context.Background(), raw)
	if err != nil {
		t.Fatalf("control handshake: %v", err)
	}
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatalf("reading the control line: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("control server: %v", err)
	}
}

// clientDial is the FTP client's side of a TLS handshake with cfg.
func clientDial(cfg *tls.Config) func(context.Context, net.Conn) (net.Conn, error) {
	return func(ctx context.Context, c net.Conn) (net.Conn, error) {
		tc := tls.Client(c, cfg)
		return tc, tc.HandshakeContext(ctx)
	}
}

func newTLSFixture(t *testing.T, maxVersion uint16, upstreamTLS bool) *tlsFixture {
	t.Helper()
	cert, pool := writeCert(t)
	return newTLSFixtureCert(t, cert, pool, maxVersion, upstreamTLS)
}

// newTLSFixtureCert is newTLSFixture with a given certificate: two
// fixtures with one certificate are two control sessions of one ftpalg.
func newTLSFixtureCert(t *testing.T, cert *ftps.Cert, pool *x509.CertPool, maxVersion uint16, upstreamTLS bool) *tlsFixture {
	t.Helper()
	f := &tlsFixture{pool: pool}
	mode := ftps.UpstreamPlain
	if upstreamTLS {
		mode = ftps.UpstreamExplicit
		srvTerm, err := ftps.New(ftps.Config{Cert: cert})
		if err != nil {
			t.Fatal(err)
		}
		if f.server, err = srvTerm.NewSession(netip.AddrPort{}); err != nil {
			t.Fatal(err)
		}
	}
	term, err := ftps.New(ftps.Config{Cert: cert, Upstream: mode, RootCAs: pool, MaxUpstreamVersion: maxVersion})
	if err != nil {
		t.Fatal(err)
	}
	if f.alg, err = term.NewSession(netip.MustParseAddrPort("127.0.0.1:21")); err != nil {
		t.Fatal(err)
	}
	f.clientCfg = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MaxVersion: maxVersion,
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	controlPair(t, clientDial(f.clientCfg), f.alg.ServeControl)
	if upstreamTLS {
		controlPair(t, f.alg.DialControl, f.server.ServeControl)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := f.alg.WaitTicket(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// upstreamData accepts one data connection on the server side: TLS (that
// must resume) toward an FTPS server, plain otherwise.
func (f *tlsFixture) upstreamData(t *testing.T, c net.Conn) net.Conn {
	t.Helper()
	if f.server == nil {
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tc, err := f.server.ClientLeg(ctx, c)
	if err != nil {
		t.Fatalf("server's data handshake: %v", err)
	}
	return tc
}

// TestRelayTLSData: a passive FTPS download relayed with TLS on the client
// leg and TLS (resuming ftpalg's own control session) or plain on the
// server leg, for TLS 1.2 and 1.3; every byte checked, close_notify at the
// end (the client reads a clean EOF).
func TestRelayTLSData(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, up := range []bool{false, true} {
			name := tls.VersionName(v) + "/plain"
			if up {
				name = tls.VersionName(v) + "/ftps"
			}
			t.Run(name, func(t *testing.T) {
				f := newTLSFixture(t, v, up)
				r, _ := newTestRelay(t, Config{})
				srv := newTestServer(t, "127.0.0.1")
				p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
				p.Passive, p.TLS = true, f.alg
				ctx := context.Background()
				if err := r.Open(ctx, p); err != nil {
					t.Fatal(err)
				}
				raw, err := dialFrom(t, "127.0.0.1", p.Dst)
				if err != nil {
					t.Fatal(err)
				}
				data, sum := randomBytes(t, 3<<20+17)
				go func() {
					c := f.upstreamData(t, srv.accept(t))
					c.Write(data)
					if cw, ok := c.(interface{ CloseWrite() error }); ok {
						cw.CloseWrite()
					}
					c.Read(make([]byte, 1)) // until the relay closes
					c.Close()
				}()
				c := tls.Client(raw, f.clientCfg)
				if err := c.Handshake(); err != nil {
					t.Fatalf("client data handshake: %v", err)
				}
				if !c.ConnectionState().DidResume {
					t.Fatal("the client's data connection did not resume")
				}
				n, got, err := readAllHash(c)
				if err != nil || n != int64(len(data)) || got != sum {
					t.Fatalf("read %d bytes (want %d), hash match %v, err %v", n, len(data), got == sum, err)
				}
				c.Close()
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				if err := r.Connected(cctx, p); err != nil {
					t.Fatalf("Connected: %v", err)
				}
			})
		}
	}
}

// TestRelayTLSActiveUpload: active mode (the server connects to the relay,
// the relay connects to the client), an upload from client to server.
func TestRelayTLSActiveUpload(t *testing.T) {
	f := newTLSFixture(t, 0, true)
	r, _ := newTestRelay(t, Config{})
	cl := newTestServer(t, "127.0.0.1") // the client's PORT listener
	p := pinholeTo(t, "s1.p2", "127.0.0.1", "127.0.0.1", cl.addr())
	p.TLS = f.alg
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	data, sum := randomBytes(t, 1<<20+3)
	go func() {
		c := tls.Client(cl.accept(t), f.clientCfg)
		c.Write(data)
		c.CloseWrite()
		c.Read(make([]byte, 1))
		c.Close()
	}()
	raw, err := dialFrom(t, "127.0.0.1", p.Dst)
	if err != nil {
		t.Fatal(err)
	}
	c := f.upstreamData(t, raw)
	n, got, err := readAllHash(c)
	if err != nil || n != int64(len(data)) || got != sum {
		t.Fatalf("server read %d bytes (want %d), hash match %v, err %v", n, len(data), got == sum, err)
	}
	c.Close()
}

// TestRelayTLSNotResumed: a data connection whose handshake does not
// resume the control session (a fresh client, or a ticket of another
// control session) is refused: the handshake fails, the server's data
// connection is reset (not ended cleanly: an upload must not look
// complete), and Connected reports ftps.ErrNotResumed for the session to
// answer on the control channel.
func TestRelayTLSNotResumed(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cert, pool := writeCert(t)
		f := newTLSFixtureCert(t, cert, pool, v, false)
		other := newTLSFixtureCert(t, cert, pool, v, false) // another control session of the same ftpalg
		// The other session's client holds a ticket it can resume with
		// (at its own session): what the relay refuses below is a real
		// resumption attempt.
		if !resumes(t, other.alg, other.clientCfg) {
			t.Fatalf("%s: the other session's client does not resume its own session", tls.VersionName(v))
		}
		for name, cfg := range map[string]*tls.Config{
			"fresh":         {RootCAs: f.pool, ServerName: "127.0.0.1", MaxVersion: v},
			"other session": other.clientCfg,
		} {
			testNotResumed(t, tls.VersionName(v)+"/"+name, f, cfg)
		}
	}
}

// resumes reports whether a data handshake by a client with cfg resumes
// the control session of s.
func resumes(t *testing.T, s *ftps.Session, cfg *tls.Config) bool {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		c, err := s.ClientLeg(ctx, b)
		if err == nil {
			_, err = c.Write([]byte("x")) // a TLS 1.3 ticket goes with it
		}
		errc <- err
	}()
	c := tls.Client(a, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		t.Logf("handshake: %v", err)
		return false
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Logf("read: %v", err)
		return false
	}
	if err := <-errc; err != nil {
		t.Logf("data leg: %v", err)
		return false
	}
	return c.ConnectionState().DidResume
}

func testNotResumed(t *testing.T, name string, f *tlsFixture, cfg *tls.Config) {
	{
		t.Run(name, func(t *testing.T) {
			r, _ := newTestRelay(t, Config{})
			srv := newTestServer(t, "127.0.0.1")
			p := pinholeTo(t, "s1.p3", "127.0.0.1", "127.0.0.1", srv.addr())
			p.Passive, p.TLS = true, f.alg
			if err := r.Open(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			raw, err := dialFrom(t, "127.0.0.1", p.Dst)
			if err != nil {
				t.Fatal(err)
			}
			raw.SetDeadline(time.Now().Add(10 * time.Second))
			c := tls.Client(raw, cfg)
			if err := c.Handshake(); err == nil {
				// TLS 1.3: the client finishes first; the refusal
				// arrives as an alert on the first read (a relayed
				// connection waits for the server's data instead).
				if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("a data connection that did not resume was relayed")
				}
			}
			s := srv.accept(t)
			s.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := s.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("server leg: read %d bytes, err %v; want a reset", n, err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := r.Connected(ctx, p); !errors.Is(err, ftps.ErrNotResumed) {
				t.Fatalf("Connected = %v, want ErrNotResumed", err)
			}
		})
	}
}

var _ rules.DataTLS = (*ftps.Session)(nil)

// TestThrough: the firewall half of a relayed pinhole lets the expected
// peer reach the relay's own address, untranslated and without the TLS
// wrapping; both halves open together and close together, and a relay
// that cannot bind leaves no firewall half behind.
func TestThrough(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	fw := &rules.Fake{}
	b := r.Through(fw)
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p9", "127.0.0.1", "127.0.0.1", srv.addr())
	p.Passive = true
	p.SNAT = netip.MustParseAddr("127.0.0.1")
	ctx := context.Background()
	if err := b.Open(ctx, p); err != nil {
		t.Fatal(err)
	}
	open := fw.OpenPinholes()
	if len(open) != 1 || open[0].Dst != p.Dst || open[0].Src != p.Src || open[0].DNAT.IsValid() || open[0].SNAT.IsValid() || open[0].TLS != nil {
		t.Fatalf("firewall half = %v, want %v -> %v untranslated", open, p.Src, p.Dst)
	}
	if err := b.Close(ctx, p); err != nil {
		t.Fatal(err)
	}
	if open := fw.OpenPinholes(); len(open) != 0 {
		t.Fatalf("firewall half left open: %v", open)
	}
	expectRefused(t, "127.0.0.1", p.Dst)

	// The relay cannot bind (the port is taken): nothing stays open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	q := p
	q.ID, q.Dst = rules.PinholeID{Session: 1, N: 10}, ln.Addr().(*net.TCPAddr).AddrPort()
	if err := b.Open(ctx, q); err == nil {
		t.Fatal("Open on a taken port succeeded")
	}
	if open := fw.OpenPinholes(); len(open) != 0 {
		t.Fatalf("firewall half left open after a failed Open: %v", open)
	}
}
