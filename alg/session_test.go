package alg_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

var (
	ep4 = alg.Endpoints{
		Client:   netip.MustParseAddrPort("192.0.2.2:50000"),
		Dialled:  netip.MustParseAddrPort("203.0.113.2:21"),
		Upstream: netip.MustParseAddrPort("203.0.113.1:41000"),
		Server:   netip.MustParseAddrPort("203.0.113.2:21"),
	}
	ep6 = alg.Endpoints{
		Client:   netip.MustParseAddrPort("[2001:db8:1::2]:50000"),
		Dialled:  netip.MustParseAddrPort("[2001:db8:2::2]:21"),
		Upstream: netip.MustParseAddrPort("[2001:db8:2::1]:41000"),
		Server:   netip.MustParseAddrPort("[2001:db8:2::2]:21"),
	}
)

// syncBuf collects what one side of the session receives.
type syncBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	eof  bool
	cond *sync.Cond
}

func newSyncBuf() *syncBuf {
	b := &syncBuf{}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *syncBuf) fill(r io.Reader) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		b.mu.Lock()
		b.b.Write(buf[:n])
		if err != nil {
			b.eof = true
		}
		b.cond.Broadcast()
		b.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// take waits until n bytes are there (or EOF, or the deadline) and removes
// them.
func (b *syncBuf) take(n int, d time.Duration) string {
	deadline := time.Now().Add(d)
	t := time.AfterFunc(d, func() { b.mu.Lock(); b.cond.Broadcast(); b.mu.Unlock() })
	defer t.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.b.Len() < n && !b.eof && time.Now().Before(deadline) {
		b.cond.Wait()
	}
	if n > b.b.Len() {
		n = b.b.Len()
	}
	return string(b.b.Next(n))
}

func (b *syncBuf) rest() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b.Next(b.b.Len()))
}

func (b *syncBuf) waitEOF(d time.Duration) bool {
	deadline := time.Now().Add(d)
	t := time.AfterFunc(d, func() { b.mu.Lock(); b.cond.Broadcast(); b.mu.Unlock() })
	defer t.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	for !b.eof && time.Now().Before(deadline) {
		b.cond.Wait()
	}
	return b.eof
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the log records, decoded.
func (l *logBuf) lines(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, ln := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if ln == "" {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal([]byte(ln), &m); err != nil {
			t.Fatalf("log line %q: %v", ln, err)
		}
		out = append(out, m)
	}
	return out
}

// refusals returns the log records of refusals.
func (l *logBuf) refusals(t *testing.T) []map[string]any {
	var out []map[string]any
	for _, m := range l.lines(t) {
		if m["msg"] == "refused" {
			out = append(out, m)
		}
	}
	return out
}

type harness struct {
	t              *testing.T
	client, server net.Conn // the test's ends
	atClient       *syncBuf // what the client receives
	atServer       *syncBuf // what the server receives
	fake           *rules.Fake
	pool           *nat.Pool
	logs           *logBuf
	sess           *alg.Session
	clk            *fakeClock // the session's timers run on it
	done           chan error
}

type option func(*alg.Session)

func withPolicy(f func(*alg.Policy)) option {
	return func(s *alg.Session) {
		p := alg.DefaultPolicy()
		f(&p)
		s.Policy = p
	}
}

func start(t *testing.T, ep alg.Endpoints, opts ...option) *harness {
	t.Helper()
	cc, cp := net.Pipe()
	sc, sp := net.Pipe()
	pool, err := nat.NewPool(40000, 40009)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t: t, client: cc, server: sc,
		atClient: newSyncBuf(), atServer: newSyncBuf(),
		fake: &rules.Fake{}, pool: pool, logs: &logBuf{},
		clk: newFakeClock(), done: make(chan error, 1),
	}
	h.sess = &alg.Session{
		ID: 1, Client: cp, Server: sp, Endpoints: ep,
		Planner: &nat.Gateway{Pool: pool}, Backend: h.fake,
		Log: slog.New(slog.NewJSONHandler(h.logs, nil)), Clock: h.clk,
	}
	for _, o := range opts {
		o(h.sess)
	}
	go h.atClient.fill(cc)
	go h.atServer.fill(sc)
	go func() { h.done <- h.sess.Run(context.Background()) }()
	if !h.clk.waitArmed(wait) {
		t.Fatal("session did not start its timers")
	}
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			t.Error("session did not end")
		}
	})
	return h
}

const wait = 2 * time.Second

// c sends bytes from the client, s from the server.
func (h *harness) c(s string) {
	h.t.Helper()
	if _, err := h.client.Write([]byte(s)); err != nil {
		h.t.Fatalf("client write %q: %v", s, err)
	}
}

func (h *harness) s(s string) {
	h.t.Helper()
	if _, err := h.server.Write([]byte(s)); err != nil {
		h.t.Fatalf("server write %q: %v", s, err)
	}
}

// toServer and toClient assert the exact bytes forwarded next.
func (h *harness) toServer(want string) {
	h.t.Helper()
	if got := h.atServer.take(len(want), wait); got != want {
		h.t.Fatalf("server received %q, want %q", got, want)
	}
}

func (h *harness) toClient(want string) {
	h.t.Helper()
	if got := h.atClient.take(len(want), wait); got != want {
		h.t.Fatalf("client received %q, want %q", got, want)
	}
}

// quiet asserts that nothing more was forwarded either way.
func (h *harness) quiet() {
	h.t.Helper()
	time.Sleep(50 * time.Millisecond)
	if r := h.atServer.rest(); r != "" {
		h.t.Fatalf("server received unexpected %q", r)
	}
	if r := h.atClient.rest(); r != "" {
		h.t.Fatalf("client received unexpected %q", r)
	}
}

// greet passes the server's greeting.
func (h *harness) greet() {
	h.t.Helper()
	h.s("220 ready\r\n")
	h.toClient("220 ready\r\n")
}

// exchange passes one command and its reply untouched.
func (h *harness) exchange(cmd, reply string) {
	h.t.Helper()
	h.c(cmd)
	h.toServer(cmd)
	h.s(reply)
	h.toClient(reply)
}

func (h *harness) calls() []string {
	var out []string
	for _, c := range h.fake.Calls() {
		out = append(out, c.String())
	}
	return out
}

func (h *harness) wantCalls(want ...string) {
	h.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		got := h.calls()
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("pinhole calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// end closes both peers and waits for the session.
func (h *harness) end() error {
	h.t.Helper()
	h.client.Close()
	h.server.Close()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(wait):
		h.t.Fatal("session did not end")
	}
	return nil
}

func (h *harness) wantRefusals(whats ...string) {
	h.t.Helper()
	var got []string
	for _, m := range h.logs.refusals(h.t) {
		got = append(got, fmt.Sprint(m["what"]))
		for _, k := range []string{"session", "client", "server", "why", "reply"} {
			if m[k] == nil || m[k] == "" {
				h.t.Errorf("refusal log %v lacks %q", m, k)
			}
		}
	}
	if strings.Join(got, ",") != strings.Join(whats, ",") {
		h.t.Fatalf("refusals logged %v, want %v", got, whats)
	}
}

func TestPASVGateway(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.exchange("USER anonymous\r\n", "331 Please specify the password.\r\n")
	h.c("PASV\r\n")
	h.toServer("PASV\r\n")
	// The server names its real address: forwarded as is.
	h.s("227 Entering Passive Mode (203,0,113,2,156,64).\r\n")
	h.toClient("227 Entering Passive Mode (203,0,113,2,156,64).\r\n")
	h.wantCalls("open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1")
	h.c("RETR f\r\n")
	h.toServer("RETR f\r\n")
	h.s("150 Opening BINARY mode data connection.\r\n226 Transfer complete.\r\n")
	h.toClient("150 Opening BINARY mode data connection.\r\n226 Transfer complete.\r\n")
	h.sess.PinholeUsed(rules.PinholeID{Session: 1, N: 1})
	h.wantCalls("open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
		"close s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1")
	h.quiet()
	h.wantRefusals()
}

func TestPASVRewritesForeignAddress(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("pasv\r\n")
	h.toServer("pasv\r\n")
	// A server behind its own NAT names another address; the client gets
	// the address it dialled, the pinhole targets the real server.
	h.s("227 =198,51,100,7,156,65 and more\r\n")
	h.toClient("227 =203,0,113,2,156,65 and more\r\n")
	h.wantCalls("open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40001 snat 203.0.113.1")
}

func TestEPSV(t *testing.T) {
	for _, ep := range []alg.Endpoints{ep4, ep6} {
		h := start(t, ep)
		h.greet()
		h.c("EPSV\r\n")
		h.toServer("EPSV\r\n")
		h.s("229 Entering Extended Passive Mode (|||40002|)\r\n")
		h.toClient("229 Entering Extended Passive Mode (|||40002|)\r\n")
		h.wantCalls(fmt.Sprintf("open s1.p1 tcp %s -> %s snat %s", ep.Client.Addr(),
			netip.AddrPortFrom(ep.Server.Addr(), 40002), ep.Upstream.Addr()))
		if err := h.end(); err != nil {
			t.Fatal(err)
		}
		if n := len(h.fake.OpenPinholes()); n != 0 {
			t.Fatalf("%d pinholes left open after the session", n)
		}
	}
}

func TestPORT(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("PORT 192,0,2,2,195,80\r\n")
	// The pinhole is live before the command reaches the server.
	h.toServer("PORT 203,0,113,1,156,64\r\n")
	h.wantCalls("open s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000")
	h.s("200 PORT command successful. Consider using PASV.\r\n")
	h.toClient("200 PORT command successful. Consider using PASV.\r\n")
	h.c("LIST\r\n")
	h.toServer("LIST\r\n")
	h.s("425 Failed to establish connection.\r\n")
	h.toClient("425 Failed to establish connection.\r\n")
	h.wantCalls("open s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000",
		"close s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000")
	// The closer releases the port after the backend's Close returned
	// (the fake records the call within it): wait for it.
	for deadline := time.Now().Add(wait); h.pool.InUseCount() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pool port not released after the pinhole closed")
		}
	}
}

func TestEPRT(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("EPRT |1|192.0.2.2|50001|\r\n")
	h.toServer("EPRT |1|203.0.113.1|40000|\r\n")
	h.wantCalls("open s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50001")

	h6 := start(t, ep6)
	h6.greet()
	h6.c("EPRT !2!2001:db8:1::2!50001!\r\n")
	h6.toServer("EPRT |2|2001:db8:2::1|40000|\r\n")
	h6.wantCalls("open s1.p1 tcp 2001:db8:2::2 -> [2001:db8:2::1]:40000 dnat [2001:db8:1::2]:50001")
	h6.s("200 EPRT command successful.\r\n")
	h6.toClient("200 EPRT command successful.\r\n")
	// The unspecified address stands for the client's own.
	h6.c("EPRT |2|::|50002|\r\n")
	h6.toServer("EPRT |2|2001:db8:2::1|40001|\r\n")
	h6.s("200 EPRT command successful.\r\n")
	h6.toClient("200 EPRT command successful.\r\n")
	// PORT cannot carry an IPv6 address.
	h6.c("PORT 192,0,2,2,195,80\r\n")
	h6.toClient("501 ftpalg: PORT cannot name an IPv4 address on an IPv6 connection; use EPRT\r\n")
	h6.c("EPRT |1|192.0.2.2|50001|\r\n")
	h6.toClient("522 ftpalg: network protocol not supported, use (2)\r\n")
	h6.quiet()
}

func TestSplitCommandsOneBytePerWrite(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	for _, c := range []byte("PORT 192,0,2,2,195,80\r\n") {
		h.c(string(c))
	}
	h.toServer("PORT 203,0,113,1,156,64\r\n")
	h.s("2")
	h.s("00 ok\r")
	h.s("\n")
	h.toClient("200 ok\r\n")
}

func TestPipelinedCommands(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("USER a\r\nPASS b\r\nTYPE I\r\nPASV\r\nRETR x\r\n")
	h.toServer("USER a\r\nPASS b\r\nTYPE I\r\nPASV\r\nRETR x\r\n")
	// The replies come back in order; only the fourth answers PASV.
	h.s("331 pw\r\n230 in\r\n227 Entering Passive Mode (198,51,100,9,1,2)\r\n" +
		"227 Entering Passive Mode (198,51,100,7,156,64)\r\n150 go\r\n226 done\r\n")
	h.toClient("331 pw\r\n230 in\r\n227 Entering Passive Mode (198,51,100,9,1,2)\r\n" +
		"227 Entering Passive Mode (203,0,113,2,156,64)\r\n150 go\r\n226 done\r\n")
	h.wantCalls("open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1")
}

func TestRefusalsKeepReplyOrder(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	// The refusal of the second command must not overtake the reply to the
	// first.
	h.c("NOOP\r\nPORT 198,51,100,7,195,80\r\nNOOP\r\n")
	h.toServer("NOOP\r\n")
	h.toServer("NOOP\r\n")
	h.quiet()
	h.s("200 one\r\n")
	h.s("200 two\r\n")
	h.toClient("200 one\r\n500 ftpalg: PORT address must be your own (192.0.2.2); refused\r\n200 two\r\n")
	h.wantCalls()
	h.wantRefusals("PORT")
}

func TestMultilineReplyWith227IsText(t *testing.T) {
	h := start(t, ep4)
	h.s("220-Welcome\r\n227 Entering Passive Mode (198,51,100,7,156,64)\r\n220 ready\r\n")
	h.toClient("220-Welcome\r\n227 Entering Passive Mode (198,51,100,7,156,64)\r\n220 ready\r\n")
	h.exchange("STAT\r\n", "211-status\r\n227 Entering Passive Mode (198,51,100,7,156,64)\r\n 229 (|||40000|)\r\n211 End\r\n")
	// A multi-line final 227 to PASV cannot be honoured safely.
	h.c("PASV\r\n")
	h.toServer("PASV\r\n")
	h.s("227-Entering Passive Mode (203,0,113,2,156,64)\r\n227 ok\r\n")
	h.toClient("425 ftpalg: cannot use a multi-line passive reply\r\n")
	h.wantCalls()
	h.wantRefusals("PASV reply")
}

func TestUnsolicited227IsText(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.s("227 Entering Passive Mode (198,51,100,7,156,64)\r\n")
	h.toClient("227 Entering Passive Mode (198,51,100,7,156,64)\r\n")
	h.exchange("NOOP\r\n", "227 Entering Passive Mode (198,51,100,7,156,64)\r\n")
	h.exchange("EPSV\r\n", "227 Entering Passive Mode (198,51,100,7,156,64)\r\n")
	h.exchange("PASV\r\n", "229 Entering Extended Passive Mode (|||40000|)\r\n")
	// A client sending reply-shaped lines gets a 500; nothing is opened.
	h.c("227 Entering Passive Mode (198,51,100,7,156,64)\r\n")
	h.toClient("500 ftpalg: syntax error, not an FTP command\r\n")
	h.quiet()
	h.wantCalls()
	h.wantRefusals("syntax")
}

func TestActiveRefusals(t *testing.T) {
	cases := []struct {
		line, reply string
	}{
		{"PORT 198,51,100,7,195,80\r\n", "500 ftpalg: PORT address must be your own (192.0.2.2); refused"},
		{"EPRT |1|203.0.113.3|50000|\r\n", "500 ftpalg: EPRT address must be your own (192.0.2.2); refused"},
		{"PORT 192,0,2,2,0,25\r\n", "504 ftpalg: data port 25 is below 1024; refused"},
		{"EPRT |1|192.0.2.2|22|\r\n", "504 ftpalg: data port 22 is below 1024; refused"},
		{"PORT 192,0,2,256,195,80\r\n", "501 ftpalg: malformed PORT argument"},
		{"PORT 192,0,2,2,195,80,1\r\n", "501 ftpalg: malformed PORT argument"},
		{"PORT 192,0,2,-2,195,80\r\n", "501 ftpalg: malformed PORT argument"},
		{"PORT 192,0,2,2,99999999999999999999,80\r\n", "501 ftpalg: malformed PORT argument"},
		{"EPRT |1|192.0.2.2|70000|\r\n", "501 ftpalg: malformed EPRT argument"},
		{"EPRT |2|192.0.2.2|50000|\r\n", "501 ftpalg: malformed EPRT argument"},
		{"LPRT 4,4,192,0,2,2,2,195,80\r\n", "502 ftpalg: LPRT not supported; use EPRT/EPSV or PORT/PASV"},
		{"LPSV\r\n", "502 ftpalg: LPSV not supported; use EPRT/EPSV or PORT/PASV"},
		{"AUTH TLS\r\n", "534 ftpalg: AUTH refused by policy; continue without TLS"},
		{"auth ssl\r\n", "534 ftpalg: AUTH refused by policy; continue without TLS"},
	}
	for _, tc := range cases {
		t.Run(strings.TrimSpace(tc.line), func(t *testing.T) {
			h := start(t, ep4)
			h.greet()
			h.c(tc.line)
			h.toClient(tc.reply + "\r\n")
			// The session stays usable.
			h.exchange("NOOP\r\n", "200 NOOP ok.\r\n")
			h.quiet()
			h.wantCalls()
			if len(h.logs.refusals(t)) != 1 {
				t.Fatalf("want one refusal log line, got %v", h.logs.refusals(t))
			}
		})
	}
}

func TestPassiveRefusals(t *testing.T) {
	cases := []struct {
		cmd, reply, want string
	}{
		{"PASV\r\n", "227 Entering Passive Mode (203,0,113,2,0,25)\r\n", "425 ftpalg: server offered data port 25, below 1024; refused"},
		{"EPSV\r\n", "229 Entering Extended Passive Mode (|||22|)\r\n", "425 ftpalg: server offered data port 22, below 1024; refused"},
		{"PASV\r\n", "227 Entering Passive Mode (203,0,113,300,156,64)\r\n", "425 ftpalg: malformed 227 reply from server"},
		{"EPSV\r\n", "229 Entering Extended Passive Mode (|||99999|)\r\n", "425 ftpalg: malformed 229 reply from server"},
	}
	for _, tc := range cases {
		t.Run(strings.TrimSpace(tc.reply), func(t *testing.T) {
			h := start(t, ep4)
			h.greet()
			h.c(tc.cmd)
			h.toServer(tc.cmd)
			h.s(tc.reply)
			h.toClient(tc.want + "\r\n")
			h.exchange("NOOP\r\n", "200 ok\r\n")
			h.wantCalls()
			h.wantRefusals(strings.TrimSpace(tc.cmd) + " reply")
		})
	}
}

func TestFEATHidesAUTH(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("FEAT\r\n")
	h.toServer("FEAT\r\n")
	h.s("211-Features:\r\n AUTH TLS\r\n EPSV\r\n PBSZ\r\n211 End\r\n")
	h.toClient("211-Features:\r\n EPSV\r\n PBSZ\r\n211 End\r\n")
}

func TestEndingRefusals(t *testing.T) {
	cases := []struct {
		name, send, reply string
	}{
		{"long", "NOOP " + strings.Repeat("x", 5000) + "\r\n", "500 ftpalg: command line too long (limit 4096 bytes); closing the connection\r\n"},
		{"nul", "USER a\x00b\r\n", "500 ftpalg: NUL byte in command; closing the connection\r\n"},
		{"tls hello", "\x16\x03\x01\x02\x05\x01\x07\x01\xfc\x03\x03\r\n", "500 ftpalg: not an FTP command; closing the connection\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, ep4)
			h.greet()
			go h.client.Write([]byte(tc.send))
			h.toClient(tc.reply)
			if !h.atClient.waitEOF(wait) {
				t.Fatal("session did not close the client connection")
			}
			if r := h.atServer.rest(); r != "" {
				t.Fatalf("server received %q", r)
			}
			if len(h.logs.refusals(t)) != 1 {
				t.Fatalf("want one refusal log line, got %v", h.logs.refusals(t))
			}
		})
	}
}

func TestServerGarbageEndsSession(t *testing.T) {
	h := start(t, ep4)
	h.s("HTTP/1.1 400 Bad Request\r\n")
	h.toClient("421 ftpalg: the server sent an invalid reply; closing the connection\r\n")
	if !h.atClient.waitEOF(wait) {
		t.Fatal("client connection not closed")
	}
	h.wantRefusals("server reply")
}

func TestOnePendingPinholeAndTTL(t *testing.T) {
	h := start(t, ep4, withPolicy(func(p *alg.Policy) { p.PinholeTTL = 300 * time.Millisecond }))
	h.greet()
	h.exchange("NOOP\r\n", "200 ok\r\n")
	h.c("EPSV\r\n")
	h.toServer("EPSV\r\n")
	h.s("229 (|||40000|)\r\n")
	h.toClient("229 (|||40000|)\r\n")
	h.c("EPSV\r\n")
	h.toServer("EPSV\r\n")
	h.s("229 (|||40001|)\r\n")
	h.toClient("229 (|||40001|)\r\n")
	h.clk.Advance(300 * time.Millisecond)
	// The second announcement replaced the unused first; the TTL closes
	// the second.
	h.wantCalls(
		"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
		"close s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
		"open s1.p2 tcp 192.0.2.2 -> 203.0.113.2:40001 snat 203.0.113.1",
		"close s1.p2 tcp 192.0.2.2 -> 203.0.113.2:40001 snat 203.0.113.1",
	)
	var reasons []string
	for _, m := range h.logs.lines(t) {
		if m["msg"] == "pinhole closed" {
			reasons = append(reasons, fmt.Sprint(m["reason"]))
		}
	}
	if strings.Join(reasons, ",") != "replaced,ttl" {
		t.Fatalf("close reasons %v", reasons)
	}
}

func TestPreliminaryReplyStartsGrace(t *testing.T) {
	h := start(t, ep4, withPolicy(func(p *alg.Policy) { p.UseGrace = 100 * time.Millisecond }))
	h.greet()
	h.exchange("TYPE I\r\n", "200 ok\r\n")
	h.c("PASV\r\n")
	h.toServer("PASV\r\n")
	h.s("227 (203,0,113,2,156,64)\r\n")
	h.toClient("227 (203,0,113,2,156,64)\r\n")
	h.c("STOR f\r\n")
	h.toServer("STOR f\r\n")
	h.s("150 Ok to send data.\r\n")
	h.toClient("150 Ok to send data.\r\n")
	h.clk.Advance(99 * time.Millisecond)
	h.wantCalls("open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1")
	h.clk.Advance(time.Millisecond) // the grace is over; the TTL (30s) is not
	h.wantCalls(
		"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
		"close s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
	)
}

func TestQUITEndsSessionAndClosesPinholes(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("EPSV\r\n")
	h.toServer("EPSV\r\n")
	h.s("229 (|||40000|)\r\n")
	h.toClient("229 (|||40000|)\r\n")
	h.c("QUIT\r\n")
	h.toServer("QUIT\r\n")
	h.s("221 Goodbye.\r\n")
	h.toClient("221 Goodbye.\r\n")
	h.server.Close()
	if !h.atClient.waitEOF(wait) {
		t.Fatal("client not closed after the server ended")
	}
	select {
	case err := <-h.done:
		h.done <- err
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("session did not end")
	}
	if n := len(h.fake.OpenPinholes()); n != 0 {
		t.Fatalf("%d pinholes open after the session", n)
	}
}

func TestREINClosesPinhole(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.c("PORT 192,0,2,2,195,80\r\n")
	h.toServer("PORT 203,0,113,1,156,64\r\n")
	h.c("REIN\r\n")
	h.toServer("REIN\r\n")
	h.wantCalls("open s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000",
		"close s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000")
}

func TestTelnetIACBeforeABORPassesThrough(t *testing.T) {
	h := start(t, ep4)
	h.greet()
	h.exchange("\xff\xf4\xff\xf2ABOR\r\n", "226 ABOR successful.\r\n")
}

func TestBackendFailureIs425(t *testing.T) {
	h := start(t, ep4)
	h.fake.OpenErr = fmt.Errorf("iptables: exit status 4")
	h.greet()
	h.c("PASV\r\n")
	h.toServer("PASV\r\n")
	h.s("227 (203,0,113,2,156,64)\r\n")
	h.toClient("425 ftpalg: cannot open data connection: firewall error\r\n")
	h.c("PORT 192,0,2,2,195,80\r\n")
	h.toClient("425 ftpalg: cannot open data connection: firewall error\r\n")
	// The failed pinhole is closed (and its port returned) off the
	// reply path: wait for it.
	for deadline := time.Now().Add(wait); h.pool.InUseCount() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pool port leaked after a failed open")
		}
	}
}

func TestLoginTimeout(t *testing.T) {
	// A server that never answers: the client is told, the session ends.
	h := start(t, ep4, withPolicy(func(p *alg.Policy) { p.LoginTimeout = 200 * time.Millisecond }))
	h.clk.Advance(199 * time.Millisecond)
	h.quiet()
	h.clk.Advance(time.Millisecond)
	h.toClient("421 ftpalg: not logged in after 200ms; closing the connection\r\n")
	if !h.atClient.waitEOF(wait) {
		t.Fatal("session did not end")
	}
	h.wantRefusals("login timeout")
}

func TestIdleTimeoutSparesTransfers(t *testing.T) {
	h := start(t, ep4, withPolicy(func(p *alg.Policy) { p.IdleTimeout = 300 * time.Millisecond }))
	h.greet()
	h.exchange("USER a\r\n", "230 in\r\n")
	h.c("RETR big\r\n")
	h.toServer("RETR big\r\n")
	h.s("150 here it comes\r\n")
	h.toClient("150 here it comes\r\n")
	// A long transfer: the control channel is silent, the session lives.
	h.clk.Advance(time.Second)
	h.quiet()
	h.s("226 done\r\n")
	h.toClient("226 done\r\n")
	h.clk.Advance(299 * time.Millisecond)
	h.quiet()
	h.clk.Advance(time.Millisecond)
	h.toClient("421 ftpalg: idle for 300ms; closing the connection\r\n")
	if !h.atClient.waitEOF(wait) {
		t.Fatal("idle session did not end")
	}
	h.wantRefusals("idle timeout")
}

func TestPoolExhaustionIs425(t *testing.T) {
	// Ten pool ports, all held by other sessions' pinholes.
	h := start(t, ep4)
	var held []uint16
	for range 10 {
		p, err := h.pool.Get()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	h.greet()
	h.c("PORT 192,0,2,2,195,80\r\n")
	h.toClient("425 ftpalg: cannot open data connection: data port pool exhausted (40000-40009)\r\n")
	h.wantRefusals("PORT")
	// A port coming free makes the next one work; replacing the session's
	// own unused pinhole reuses its port.
	h.pool.Put(held[0])
	h.c("PORT 192,0,2,2,195,80\r\n")
	h.toServer("PORT 203,0,113,1,156,64\r\n")
	h.s("200 ok\r\n")
	h.toClient("200 ok\r\n")
	h.c("EPRT |1|192.0.2.2|50001|\r\n")
	h.toServer("EPRT |1|203.0.113.1|40000|\r\n")
}

func TestEndlessReplyEndsSession(t *testing.T) {
	h := start(t, ep4)
	go func() {
		h.server.Write([]byte("220-welcome\r\n"))
		for range 2000 {
			if _, err := h.server.Write([]byte(" more and more text\r\n")); err != nil {
				return
			}
		}
	}()
	h.toClient("421 ftpalg: the server sent an invalid reply; closing the connection\r\n")
	if !h.atClient.waitEOF(wait) {
		t.Fatal("session did not end")
	}
	h.wantRefusals("server reply")
}

func TestIdleTimeoutWithClientNotReading(t *testing.T) {
	// A client that stops reading while the server talks: the session
	// still ends at the idle timeout instead of hanging on a write.
	cc, cp := net.Pipe()
	sc, sp := net.Pipe()
	pol := alg.DefaultPolicy()
	pol.IdleTimeout = 200 * time.Millisecond
	s := &alg.Session{ID: 1, Client: cp, Server: sp, Endpoints: ep4,
		Planner: &nat.Gateway{}, Backend: &rules.Fake{}, Policy: pol,
		Log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	go sc.Write([]byte("230 logged in already\r\n220 never read\r\n"))
	go io.Copy(io.Discard, sc)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("session hung on a client that does not read")
	}
	cc.Close()
	sc.Close()
}

func TestAllowTLSServerDiesBeforeAUTHReply(t *testing.T) {
	h := start(t, ep4, withPolicy(func(p *alg.Policy) { p.AllowTLS = true }))
	h.greet()
	h.c("AUTH TLS\r\n")
	h.toServer("AUTH TLS\r\n")
	h.server.Close()
	select {
	case err := <-h.done:
		h.done <- err
	case <-time.After(wait):
		t.Fatal("session hung waiting for the AUTH reply of a server that is gone")
	}
}

func TestAllowTLSBlindSessionHasNoTimeouts(t *testing.T) {
	h := start(t, ep4, withPolicy(func(p *alg.Policy) {
		p.AllowTLS = true
		p.LoginTimeout = 100 * time.Millisecond
		p.IdleTimeout = 100 * time.Millisecond
	}))
	h.greet()
	h.exchange("AUTH TLS\r\n", "234 Proceed with negotiation.\r\n")
	h.clk.Advance(400 * time.Millisecond)
	// Opaque bytes still flow both ways; no 421 was injected.
	h.c("\x16\x03\x01hello")
	h.toServer("\x16\x03\x01hello")
	h.s("\x16\x03\x03world")
	h.toClient("\x16\x03\x03world")
	h.wantCalls()
}

func TestTooManyRefusalsEndSession(t *testing.T) {
	h := start(t, ep4, withPolicy(func(p *alg.Policy) { p.MaxRefusals = 3 }))
	h.greet()
	for range 3 {
		h.c("PORT 198,51,100,7,195,80\r\n")
		h.toClient("500 ftpalg: PORT address must be your own (192.0.2.2); refused\r\n")
	}
	h.c("PORT 198,51,100,7,195,80\r\n")
	h.toClient("421 ftpalg: too many refused commands; closing the connection\r\n")
	if !h.atClient.waitEOF(wait) {
		t.Fatal("session did not end")
	}
	h.wantRefusals("PORT", "PORT", "PORT", "too many refusals")
}
