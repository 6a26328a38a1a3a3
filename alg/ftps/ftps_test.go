package ftps

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writePair(t *testing.T, dir string, names ...string) (cf, kf string, pool *x509.CertPool) {
	t.Helper()
	caPEM, certPEM, keyPEM, err := SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	cf, kf = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cf, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return cf, kf, pool
}

// TestCertReload: Reload presents the new certificate to new handshakes; a
// broken file keeps the old one.
func TestCertReload(t *testing.T) {
	dir := t.TempDir()
	cf, kf, _ := writePair(t, dir, "one.example")
	c, err := LoadCert(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Leaf().DNSNames; len(n) != 1 || n[0] != "one.example" {
		t.Fatalf("names %v", n)
	}
	writePair(t, dir, "two.example")
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if n := c.Leaf().DNSNames; len(n) != 1 || n[0] != "two.example" {
		t.Fatalf("after reload: names %v", n)
	}
	os.WriteFile(kf, []byte("garbage"), 0o600)
	if err := c.Reload(); err == nil {
		t.Fatal("Reload of a broken key succeeded")
	}
	if n := c.Leaf().DNSNames; n[0] != "two.example" {
		t.Fatalf("a failed reload changed the certificate: %v", n)
	}
	if _, err := LoadCert(cf, kf); err == nil {
		t.Fatal("LoadCert of a broken key succeeded")
	}
}

func TestParseUpstreamMode(t *testing.T) {
	for _, m := range []UpstreamMode{UpstreamPlain, UpstreamExplicit, UpstreamImplicit} {
		if got, err := ParseUpstreamMode(m.String()); err != nil || got != m {
			t.Errorf("ParseUpstreamMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseUpstreamMode("tls"); err == nil {
		t.Error("ParseUpstreamMode(tls) succeeded")
	}
}

// ftpsServer is a minimal FTPS server for SecureUpstream: greeting, AUTH
// TLS (explicit) or TLS first (implicit), PBSZ, PROT; it records the
// commands and then serves one data connection that must resume.
func ftpsServer(t *testing.T, ln net.Listener, srv *Session, implicit bool, cmds chan<- string) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	var conn net.Conn = c
	if implicit {
		if conn, err = srv.ServeControl(context.Background(), c); err != nil {
			cmds <- "handshake: " + err.Error()
			return
		}
	}
	io.WriteString(conn, "220-Welcome\r\n220 ready\r\n")
	rd := bufio.NewReader(conn)
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			close(cmds)
			return
		}
		line = strings.TrimSpace(line)
		cmds <- line
		switch {
		case line == "AUTH TLS":
			io.WriteString(conn, "234 go\r\n")
			if conn, err = srv.ServeControl(context.Background(), c); err != nil {
				cmds <- "handshake: " + err.Error()
				return
			}
			rd = bufio.NewReader(conn)
		case strings.HasPrefix(line, "PBSZ"), strings.HasPrefix(line, "PROT"):
			io.WriteString(conn, "200 ok\r\n")
		default:
			io.WriteString(conn, "500 ?\r\n")
		}
	}
}

// TestSecureUpstream: explicit and implicit, TLS 1.2 and 1.3: ftpalg
// negotiates TLS, PBSZ 0 and PROT P, the session then reads the server's
// greeting as if nothing happened, and a data connection resumes the
// control session (the server refuses one that does not).
func TestSecureUpstream(t *testing.T) {
	for _, implicit := range []bool{false, true} {
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			name := "explicit/" + tls.VersionName(v)
			if implicit {
				name = "implicit/" + tls.VersionName(v)
			}
			t.Run(name, func(t *testing.T) {
				cf, kf, pool := writePair(t, t.TempDir(), "127.0.0.1")
				cert, err := LoadCert(cf, kf)
				if err != nil {
					t.Fatal(err)
				}
				srvTerm, _ := New(Config{Cert: cert})
				srv, _ := srvTerm.NewSession(netip.AddrPort{})
				mode := UpstreamExplicit
				if implicit {
					mode = UpstreamImplicit
				}
				term, _ := New(Config{Cert: cert, Upstream: mode, RootCAs: pool, MaxUpstreamVersion: v})
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				cmds := make(chan string, 16)
				go ftpsServer(t, ln, srv, implicit, cmds)
				s, _ := term.NewSession(ln.Addr().(*net.TCPAddr).AddrPort())
				raw, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer raw.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				conn, err := s.SecureUpstream(ctx, raw, mode)
				if err != nil {
					t.Fatal(err)
				}
				greeting := make([]byte, len("220-Welcome\r\n220 ready\r\n"))
				if _, err := io.ReadFull(conn, greeting); err != nil || string(greeting) != "220-Welcome\r\n220 ready\r\n" {
					t.Fatalf("replayed greeting %q, %v", greeting, err)
				}
				var got []string
				want := []string{"AUTH TLS", "PBSZ 0", "PROT P"}
				if implicit {
					want = want[1:]
				}
				for range want {
					got = append(got, <-cmds)
				}
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Fatalf("server got %q, want %q", got, want)
				}
				if !s.Resumable() {
					t.Fatal("no session ticket from a server that issues them")
				}
				// A data connection: ftpalg's leg must resume.
				dln, _ := net.Listen("tcp", "127.0.0.1:0")
				defer dln.Close()
				res := make(chan error, 1)
				go func() {
					c, err := dln.Accept()
					if err != nil {
						res <- err
						return
					}
					defer c.Close()
					_, err = srv.ClientLeg(ctx, c)
					res <- err
				}()
				dc, _ := net.Dial("tcp", dln.Addr().String())
				defer dc.Close()
				if _, err := s.ServerLeg(ctx, dc); err != nil {
					t.Fatalf("server leg: %v", err)
				}
				if err := <-res; err != nil {
					t.Fatalf("the server refused ftpalg's data connection: %v", err)
				}
			})
		}
	}
}

// TestSecureUpstreamRefusal: a server that does not accept AUTH TLS, or
// whose certificate does not verify, is an error.
func TestSecureUpstreamRefusal(t *testing.T) {
	cf, kf, _ := writePair(t, t.TempDir(), "127.0.0.1")
	cert, _ := LoadCert(cf, kf)
	_, _, otherPool := writePair(t, t.TempDir(), "127.0.0.1")
	for name, cfg := range map[string]Config{
		"untrusted": {Cert: cert, Upstream: UpstreamExplicit, RootCAs: otherPool},
		"no AUTH":   {Cert: cert, Upstream: UpstreamExplicit},
	} {
		t.Run(name, func(t *testing.T) {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.WriteString(c, "220 hi\r\n")
				rd := bufio.NewReader(c)
				rd.ReadString('\n')
				if name == "no AUTH" {
					io.WriteString(c, "500 what\r\n")
					rd.ReadString('\n')
					return
				}
				io.WriteString(c, "234 go\r\n")
				srvTerm, _ := New(Config{Cert: cert})
				srv, _ := srvTerm.NewSession(netip.AddrPort{})
				srv.ServeControl(context.Background(), c)
			}()
			term, _ := New(cfg)
			s, _ := term.NewSession(ln.Addr().(*net.TCPAddr).AddrPort())
			raw, _ := net.Dial("tcp", ln.Addr().String())
			defer raw.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := s.SecureUpstream(ctx, raw, cfg.Upstream); err == nil {
				t.Fatal("SecureUpstream succeeded")
			}
		})
	}
}
