package alg_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// tlsHarness is a terminating session with a plain server behind it
// (offload): the test drives the client's control connection itself
// (plain, then TLS) and sees what reaches the server.
type tlsHarness struct {
	t        *testing.T
	raw      net.Conn // the client's end of the control connection
	conn     net.Conn // raw, or the TLS conn after AUTH TLS
	rd       *bufio.Reader
	server   net.Conn
	atServer *syncBuf
	plain    *rules.Fake // Backend
	relayed  *rules.Fake // TLSBackend
	logs     *logBuf
	pool     *x509.CertPool
}

func startTLS(t *testing.T, pol func(*alg.Policy)) *tlsHarness {
	t.Helper()
	caPEM, certPEM, keyPEM, err := ftps.SelfSigned("ftpalg.example")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cf, certPEM, 0o600)
	os.WriteFile(kf, keyPEM, 0o600)
	cert, err := ftps.LoadCert(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	term, err := ftps.New(ftps.Config{Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	tsess, err := term.NewSession(ep4.Server)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cc, cp := net.Pipe()
	sc, sp := net.Pipe()
	np, err := nat.NewPool(40000, 40009)
	if err != nil {
		t.Fatal(err)
	}
	h := &tlsHarness{t: t, raw: cc, conn: cc, rd: bufio.NewReader(cc), server: sc, atServer: newSyncBuf(),
		plain: &rules.Fake{}, relayed: &rules.Fake{}, logs: &logBuf{}, pool: pool}
	p := alg.DefaultPolicy()
	p.TLS = alg.TLSTerminate
	if pol != nil {
		pol(&p)
	}
	s := &alg.Session{ID: 1, Client: cp, Server: sp, Endpoints: ep4, Planner: &nat.Gateway{Pool: np},
		Backend: h.plain, Policy: p,
		TLSTermination: alg.TLSTermination{TLS: tsess, TLSBackend: h.relayed},
		Log:            slog.New(slog.NewJSONHandler(h.logs, nil))}
	go h.atServer.fill(sc)
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end")
		}
	})
	h.s("220 ready\r\n")
	h.expect("220 ready")
	return h
}

func (h *tlsHarness) s(line string) {
	h.t.Helper()
	if _, err := h.server.Write([]byte(line)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *tlsHarness) c(line string) {
	h.t.Helper()
	h.conn.SetWriteDeadline(time.Now().Add(tlsWait))
	if _, err := h.conn.Write([]byte(line + "\r\n")); err != nil {
		h.t.Fatal(err)
	}
}

// expect reads the client's next reply line and checks its start.
func (h *tlsHarness) expect(prefix string) string {
	h.t.Helper()
	h.conn.SetReadDeadline(time.Now().Add(tlsWait))
	l, err := h.rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(l, prefix) {
		h.t.Fatalf("client got %q (%v), want %q...", l, err, prefix)
	}
	return l
}

func (h *tlsHarness) toServer(want string) {
	h.t.Helper()
	if got := h.atServer.take(len(want), tlsWait); got != want {
		h.t.Fatalf("server received %q, want %q", got, want)
	}
}

// auth runs AUTH TLS and the handshake.
func (h *tlsHarness) auth() {
	h.t.Helper()
	h.c("AUTH TLS")
	h.expect("234 ")
	tc := tls.Client(h.raw, &tls.Config{ServerName: "ftpalg.example", RootCAs: h.pool})
	tc.SetDeadline(time.Now().Add(tlsWait))
	if err := tc.Handshake(); err != nil {
		h.t.Fatalf("handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	h.conn, h.rd = tc, bufio.NewReader(tc)
}

// TestTLSTerminate: ftpalg answers AUTH TLS, PBSZ and PROT itself (the
// plain server sees none of them), rewrites FEAT to offer AUTH TLS, keeps
// reading the control channel inside TLS, and opens the pinhole of a
// protected data connection in TLSBackend with the data TLS attached; an
// unprotected one (PROT C) stays in the kernel backend.
func TestTLSTerminate(t *testing.T) {
	h := startTLS(t, nil)
	h.c("FEAT")
	h.toServer("FEAT\r\n")
	h.s("211-Features:\r\n EPSV\r\n AUTH SSL\r\n211 End\r\n")
	h.expect("211-")
	h.expect(" EPSV")
	h.expect(" AUTH TLS")
	h.expect(" PBSZ")
	h.expect(" PROT")
	h.expect("211 End")
	h.auth()
	h.c("USER anonymous")
	h.toServer("USER anonymous\r\n")
	h.s("230 ok\r\n")
	h.expect("230 ok")
	h.c("PBSZ 0")
	h.expect("200 ")
	h.c("PROT P")
	h.expect("200 ")
	h.c("PASV")
	h.toServer("PASV\r\n")
	h.s("227 Entering Passive Mode (203,0,113,2,156,64)\r\n")
	h.expect("227 ")
	if got := h.relayed.OpenPinholes(); len(got) != 1 || got[0].TLS == nil {
		t.Fatalf("TLS backend pinholes = %v, want one carrying TLS", got)
	}
	if got := h.plain.OpenPinholes(); len(got) != 0 {
		t.Fatalf("kernel backend pinholes = %v, want none", got)
	}
	h.c("PROT C")
	h.expect("200 ")
	h.c("EPSV")
	h.toServer("EPSV\r\n")
	h.s("229 Entering Extended Passive Mode (|||40001|)\r\n")
	h.expect("229 ")
	if got := h.plain.OpenPinholes(); len(got) != 1 || got[0].TLS != nil {
		t.Fatalf("kernel backend pinholes = %v, want one plain", got)
	}
	h.c("CCC")
	h.expect("534 ")
	h.c("AUTH TLS")
	h.expect("503 ")
	h.c("NOOP")
	h.toServer("NOOP\r\n") // nothing of PBSZ/PROT/CCC/AUTH went upstream
}

// TestTLSRequire: with RequireTLS, USER before AUTH TLS is refused; with
// RequireProtP, PROT C and a data announcement before PROT P are refused.
// Each refusal is a reply and one log line, and nothing reaches the server.
func TestTLSRequire(t *testing.T) {
	h := startTLS(t, func(p *alg.Policy) { p.RequireTLS, p.RequireProtP = true, true })
	h.c("USER anonymous")
	h.expect("530 ")
	h.c("PBSZ 0")
	h.expect("503 ")
	h.auth()
	h.c("PBSZ 0")
	h.expect("200 ")
	h.c("PROT C")
	h.expect("534 ")
	h.c("EPSV")
	h.expect("521 ")
	h.c("PROT P")
	h.expect("200 ")
	h.c("NOOP")
	h.toServer("NOOP\r\n")
	if n := len(h.logs.refusals(t)); n != 4 {
		t.Fatalf("%d refusal log lines, want 4", n)
	}
}

// TestTLSHandshakeFails: a client that sends a command instead of a TLS
// handshake after 234 ends the session (the connection closes), with one
// log line, and nothing reaches the server.
func TestTLSHandshakeFails(t *testing.T) {
	h := startTLS(t, nil)
	h.c("AUTH TLS")
	h.expect("234 ")
	h.c("USER not-tls")
	h.raw.SetReadDeadline(time.Now().Add(tlsWait))
	var err error
	for err == nil {
		_, err = h.rd.ReadByte() // an alert, then the end
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the session did not end after a failed handshake")
	}
	if n := len(h.logs.refusals(t)); n != 1 {
		t.Fatalf("%d refusal log lines, want 1", n)
	}
	if r := h.atServer.rest(); r != "" {
		t.Fatalf("server received %q", r)
	}
}

// tlsWait bounds each step of the TLS tests: generous, for a handshake
// under the race detector on a busy machine.
const tlsWait = 15 * time.Second

// TestTLSAuthAfterUser: RFC 2228 has an accepted AUTH require a new login;
// the server never sees ftpalg's AUTH and would keep the USER it got in
// the clear, so AUTH TLS after USER is refused (one reply, one log line)
// and the session goes on in the clear.
func TestTLSAuthAfterUser(t *testing.T) {
	h := startTLS(t, nil)
	h.c("USER anonymous")
	h.toServer("USER anonymous\r\n")
	h.s("331 password\r\n")
	h.expect("331 ")
	h.c("AUTH TLS")
	h.expect("503 ")
	h.c("NOOP")
	h.toServer("NOOP\r\n") // the AUTH did not go upstream
	h.s("200 ok\r\n")
	h.expect("200 ok")
	if n := len(h.logs.refusals(t)); n != 1 {
		t.Fatalf("%d refusal log lines, want 1", n)
	}
}

// TestTLSRein: REIN would reset a security state ftpalg cannot reset on
// the server's side; under TLS termination it is refused with 502 (REIN
// is optional in RFC 959) and never reaches the server.
func TestTLSRein(t *testing.T) {
	h := startTLS(t, nil)
	h.auth()
	h.c("PBSZ 0")
	h.expect("200 ")
	h.c("PROT P")
	h.expect("200 ")
	h.c("REIN")
	h.expect("502 ")
	h.c("NOOP")
	h.toServer("NOOP\r\n")
	if n := len(h.logs.refusals(t)); n != 1 {
		t.Fatalf("%d refusal log lines, want 1", n)
	}
}

// TestTLSPipelinedAfterAuth: commands the client sends behind AUTH TLS,
// before the 234 (STARTTLS command injection), are never read as if they
// had come inside TLS: the session ends, nothing reaches the server, and
// one log line says why.
func TestTLSPipelinedAfterAuth(t *testing.T) {
	h := startTLS(t, nil)
	h.c("AUTH TLS\r\nUSER injected")
	h.expect("234 ")
	h.raw.SetReadDeadline(time.Now().Add(tlsWait))
	var err error
	for err == nil {
		_, err = h.rd.ReadByte()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the session did not end after commands pipelined behind AUTH TLS")
	}
	if n := len(h.logs.refusals(t)); n != 1 {
		t.Fatalf("%d refusal log lines, want 1", n)
	}
	if r := h.atServer.rest(); r != "" {
		t.Fatalf("server received %q", r)
	}
}

// TestTLSServerLineDuringHandshake: a reply the server sends while the
// client's handshake is under way (after the 234) waits for TLS: written
// in the clear, it would break the handshake (and would reach the client
// outside the protection it asked for).
func TestTLSServerLineDuringHandshake(t *testing.T) {
	h := startTLS(t, nil)
	h.c("AUTH TLS")
	h.expect("234 ")
	h.s("421 server going down\r\n")
	time.Sleep(200 * time.Millisecond) // the session has it: it must not write it yet
	tc := tls.Client(h.raw, &tls.Config{ServerName: "ftpalg.example", RootCAs: h.pool})
	tc.SetDeadline(time.Now().Add(tlsWait))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	h.conn, h.rd = tc, bufio.NewReader(tc)
	h.expect("421 server going down")
}

// TestTLSHandshakeTimeout: a client that never starts its handshake after
// the 234 does not hold the session: it ends within the handshake's bound
// (OpenTimeout), with one log line, and nothing reaches the server.
func TestTLSHandshakeTimeout(t *testing.T) {
	h := startTLS(t, func(p *alg.Policy) { p.OpenTimeout = 300 * time.Millisecond })
	h.c("AUTH TLS")
	h.expect("234 ")
	h.raw.SetReadDeadline(time.Now().Add(tlsWait))
	var err error
	for err == nil {
		_, err = h.rd.ReadByte()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the session did not end while the client never started its handshake")
	}
	// The handshake's deadline closes the conn, then the line is logged.
	for end := time.Now().Add(tlsWait); len(h.logs.refusals(t)) == 0 && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(h.logs.refusals(t)); n != 1 {
		t.Fatalf("%d refusal log lines, want 1", n)
	}
	if r := h.atServer.rest(); r != "" {
		t.Fatalf("server received %q", r)
	}
}

// TestTLSProtLevels: PROT S and E name levels TLS does not provide (536);
// any other argument is no protection level at all (504, RFC 2228).
func TestTLSProtLevels(t *testing.T) {
	h := startTLS(t, nil)
	h.auth()
	h.c("PBSZ 0")
	h.expect("200 ")
	h.c("PROT S")
	h.expect("536 ")
	h.c("PROT X")
	h.expect("504 ")
	if n := len(h.logs.refusals(t)); n != 2 {
		t.Fatalf("%d refusal log lines, want 2", n)
	}
}
