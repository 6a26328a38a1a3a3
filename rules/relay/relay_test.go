package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"

	"github.com/ftpalg/ftpalg/rules"
)

// logBuffer collects log output for assertions; it is safe for concurrent
// use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines returns the log lines that contain every one of subs.
func (l *logBuffer) lines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// newTestRelay returns a relay logging into the returned buffer. At the end
// of the test it is shut down, and no transfer may be left.
func newTestRelay(t *testing.T, cfg Config) (*Backend, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := New(cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if n := r.Active(); n != 0 {
			t.Errorf("Active after Shutdown = %d", n)
		}
		if t.Failed() {
			t.Logf("relay log:\n%s", logs)
		}
	})
	return r, logs
}

// freePort returns a TCP port that was free on addr a moment ago.
func freePort(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// testServer is the real endpoint of a pinhole: it hands the connections
// it accepts to the test.
type testServer struct {
	ln    net.Listener
	conns chan net.Conn
}

func newTestServer(t testing.TB, addr string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatalf("test server: %v", err)
	}
	s := &testServer{ln: ln, conns: make(chan net.Conn, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(s.conns)
				return
			}
			s.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

func (s *testServer) addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

// accept returns the next connection the server got.
func (s *testServer) accept(t testing.TB) net.Conn {
	t.Helper()
	select {
	case c := <-s.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("the test server got no connection")
		return nil
	}
}

// expectNone checks that the server gets no connection for a short while.
func (s *testServer) expectNone(t testing.TB) {
	t.Helper()
	select {
	case c := <-s.conns:
		c.Close()
		t.Fatalf("the test server got an unexpected connection from %v", c.RemoteAddr())
	case <-time.After(100 * time.Millisecond):
	}
}

// pinholeTo returns a pinhole from src to a free port on dstAddr, relayed
// to target.
func pinholeTo(t testing.TB, id, src, dstAddr string, target netip.AddrPort) rules.Pinhole {
	t.Helper()
	var n uint32
	if _, err := fmt.Sscanf(id, "s1.p%d", &n); err != nil {
		t.Fatalf("test pinhole ID %q is not s1.p<n>", id)
	}
	return rules.Pinhole{
		ID:   rules.PinholeID{Session: 1, N: n},
		Src:  netip.MustParseAddr(src),
		Dst:  freePort(t, dstAddr),
		DNAT: target,
		TTL:  time.Minute,
	}
}

// dialFrom connects to dst from the local address from (any if empty).
func dialFrom(t testing.TB, from string, dst netip.AddrPort) (*net.TCPConn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", dst.String())
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), nil
}

// expectRefused checks that a connection from `from` to dst does not get
// through: the dial fails, or the connection is closed without data.
func expectRefused(t testing.TB, from string, dst netip.AddrPort) {
	t.Helper()
	c, err := dialFrom(t, from, dst)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection from %s to %v was kept open", from, dst)
	}
	if n != 0 || err == nil {
		t.Fatalf("connection from %s to %v: read %d bytes, err %v", from, dst, n, err)
	}
}

// waitFor polls cond until it holds, or fails the test.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// randomBytes returns n random bytes and their SHA-256.
func randomBytes(t testing.TB, n int) ([]byte, [32]byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b, sha256.Sum256(b)
}

// readAllHash reads c to EOF and returns the byte count and SHA-256.
func readAllHash(c net.Conn) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.Copy(h, c)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return n, sum, err
}

// exchange runs the half-close pattern of an FTP-like transfer through the
// relay: the peer sends up bytes and half-closes; the server reads them all,
// replies with down bytes and closes. Both ends check every byte.
func exchange(t *testing.T, peer *net.TCPConn, server net.Conn, up, down int) {
	t.Helper()
	upData, upSum := randomBytes(t, up)
	downData, downSum := randomBytes(t, down)

	serverErr := make(chan error, 1)
	go func() {
		n, sum, err := readAllHash(server)
		switch {
		case err != nil:
			serverErr <- fmt.Errorf("server reading: %w", err)
			return
		case n != int64(up) || sum != upSum:
			serverErr <- fmt.Errorf("server got %d bytes (hash match %v), want %d", n, sum == upSum, up)
			return
		}
		if _, err := server.Write(downData); err != nil {
			serverErr <- fmt.Errorf("server writing: %w", err)
			return
		}
		serverErr <- server.Close()
	}()

	if _, err := peer.Write(upData); err != nil {
		t.Fatalf("peer writing: %v", err)
	}
	if err := peer.CloseWrite(); err != nil {
		t.Fatalf("peer CloseWrite: %v", err)
	}
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, sum, err := readAllHash(peer)
	if err != nil {
		t.Fatalf("peer reading: %v", err)
	}
	if n != int64(down) || sum != downSum {
		t.Fatalf("peer got %d bytes (hash match %v), want %d", n, sum == downSum, down)
	}
	if err := <-serverErr; err != nil {
		t.Fatal(err)
	}
}

func TestRelayTransferIPv4(t *testing.T) { testRelayTransfer(t, "127.0.0.1") }

func TestRelayTransferIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		roottest.Unavailable(t, "no IPv6 loopback: %v", err)
	}
	ln.Close()
	testRelayTransfer(t, "::1")
}

func testRelayTransfer(t *testing.T, loopback string) {
	var listens []string
	r, logs := newTestRelay(t, Config{
		Listen: func(network, addr string) (net.Listener, error) {
			listens = append(listens, network+" "+addr)
			return net.Listen(network, addr)
		},
	})
	srv := newTestServer(t, loopback)
	p := pinholeTo(t, "s1.p1", loopback, loopback, srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	network := "tcp4"
	if p.Is6() {
		network = "tcp6"
	}
	if want := []string{network + " " + p.Dst.String()}; fmt.Sprint(listens) != fmt.Sprint(want) {
		t.Errorf("Listen calls = %q, want %q", listens, want)
	}

	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	server := srv.accept(t)
	if got := addrOf(server.RemoteAddr()).Addr(); got != netip.MustParseAddr(loopback) {
		t.Errorf("server sees the relay from %v, want %v", got, loopback)
	}
	waitFor(t, "one active relay", func() bool { return r.Active() == 1 })
	const up, down = 3<<20 + 17, 2<<20 + 5
	exchange(t, peer, server, up, down)

	waitFor(t, "the relay to end", func() bool { return r.Active() == 0 })
	ended := logs.lines("relayed transfer ended", "pinhole=\""+p.ID.String(),
		fmt.Sprintf("bytes_to_target=%d", up), fmt.Sprintf("bytes_from_target=%d", down),
		"target="+p.DNAT.String(), "peer="+addrOf(peer.LocalAddr()).String(), "duration=")
	if len(ended) != 1 {
		t.Fatalf("want one transfer log line with the byte counts, log:\n%s", logs)
	}
	if strings.Contains(ended[0], "err=") {
		t.Errorf("clean transfer logged an error: %s", ended[0])
	}
	if err := r.Close(context.Background(), p); err != nil {
		t.Errorf("Close after use: %v", err)
	}
}

func TestRelaySingleUse(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	server := srv.accept(t)
	// Once a byte has crossed, the listener is closed for sure.
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatalf("server reading: %v", err)
	}
	if _, err := dialFrom(t, "", p.Dst); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("second dial: err = %v, want connection refused", err)
	}
	srv.expectNone(t)
	exchange(t, peer, server, 1000, 1000)
}

func TestRelayWrongPeer(t *testing.T) {
	r, logs := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	// The pinhole admits 127.0.0.2 only; all of 127/8 is local on Linux.
	p := pinholeTo(t, "s1.p1", "127.0.0.2", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	expectRefused(t, "127.0.0.1", p.Dst)
	expectRefused(t, "127.0.0.1", p.Dst)
	srv.expectNone(t)
	if got := logs.lines("relay refused connection", "pinhole=\""+p.ID.String(), "from=127.0.0.1:",
		"why=\"source address is not the expected peer 127.0.0.2\""); len(got) != 2 {
		t.Errorf("want two refusal lines, log:\n%s", logs)
	}
	if r.Active() != 0 {
		t.Errorf("Active = %d after refusals", r.Active())
	}

	if runtime.GOOS != "linux" {
		roottest.Unavailable(t, "the right peer 127.0.0.2 needs all of 127/8 local (Linux)")
	}
	peer, err := dialFrom(t, "127.0.0.2", p.Dst)
	if err != nil {
		t.Fatalf("the right peer: %v", err)
	}
	exchange(t, peer, srv.accept(t), 4096, 4096)
}

func TestRelayRefusalLogCapped(t *testing.T) {
	r, logs := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.2", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	const tries = maxRefusalLogs + 3
	for range tries {
		expectRefused(t, "127.0.0.1", p.Dst)
	}
	if err := r.Close(context.Background(), p); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := logs.lines(`msg="relay refused connection"`); len(got) != maxRefusalLogs {
		t.Errorf("%d refusal lines, want %d", len(got), maxRefusalLogs)
	}
	if got := logs.lines("relay refused connections", fmt.Sprintf("refused=%d", tries)); len(got) != 1 {
		t.Errorf("want one summary line, log:\n%s", logs)
	}
}

func TestRelaySNAT(t *testing.T) {
	if runtime.GOOS != "linux" {
		roottest.Unavailable(t, "binding to 127.0.0.3 needs all of 127/8 local (Linux)")
	}
	r, logs := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	p.SNAT = netip.MustParseAddr("127.0.0.3")
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	server := srv.accept(t)
	if got := addrOf(server.RemoteAddr()).Addr(); got != p.SNAT {
		t.Errorf("server sees the relay from %v, want the SNAT address %v", got, p.SNAT)
	}
	exchange(t, peer, server, 100, 100)
	waitFor(t, "the relay to end", func() bool { return r.Active() == 0 })
	if len(logs.lines("relayed transfer ended", "source=127.0.0.3:")) != 1 {
		t.Errorf("transfer line without the SNAT source, log:\n%s", logs)
	}
}

func TestRelayTTL(t *testing.T) {
	r, logs := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	p.TTL = 50 * time.Millisecond
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	waitFor(t, "the TTL expiry", func() bool {
		return len(logs.lines("relay pinhole expired unused", "pinhole=\""+p.ID.String(), "ttl=50ms")) == 1
	})
	if _, err := dialFrom(t, "", p.Dst); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after the TTL: err = %v, want connection refused", err)
	}
	srv.expectNone(t)
	// The pinhole is gone: Close is a no-op and the ID can be opened again.
	if err := r.Close(context.Background(), p); err != nil {
		t.Errorf("Close after expiry: %v", err)
	}
	p.TTL = time.Minute
	if err := r.Open(context.Background(), p); err != nil {
		t.Errorf("Open again after expiry: %v", err)
	}
}

func TestRelayCloseBeforeUse(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	for i := range 2 { // idempotent
		if err := r.Close(context.Background(), p); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	// The port is free at once.
	ln, err := net.Listen("tcp4", p.Dst.String())
	if err != nil {
		t.Fatalf("listening on the closed pinhole's port: %v", err)
	}
	ln.Close()
	if _, err := dialFrom(t, "", p.Dst); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after Close: err = %v, want connection refused", err)
	}
	srv.expectNone(t)
	// And the same pinhole opens again.
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open again: %v", err)
	}
	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the reopened pinhole: %v", err)
	}
	exchange(t, peer, srv.accept(t), 10, 10)
}

func TestRelayCloseDuringTransfer(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	server := srv.accept(t)
	if _, err := peer.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 6)); err != nil {
		t.Fatalf("server reading: %v", err)
	}
	if err := r.Close(context.Background(), p); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if r.Active() != 1 {
		t.Errorf("Active = %d after Close, want the transfer to go on", r.Active())
	}
	exchange(t, peer, server, 1<<20, 1<<20)
	waitFor(t, "the relay to end", func() bool { return r.Active() == 0 })
}

func TestRelayAbortPropagates(t *testing.T) {
	r, logs := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	server := srv.accept(t)
	if _, err := server.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peer, make([]byte, 7)); err != nil {
		t.Fatalf("peer reading: %v", err)
	}
	// The server aborts (RST): the peer must see an error, not a clean
	// end of file that would make a truncated download look complete.
	server.(*net.TCPConn).SetLinger(0)
	server.Close()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(peer); err == nil || errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("peer after the server's reset: err = %v, want a reset", err)
	}
	waitFor(t, "the relay to end", func() bool { return r.Active() == 0 })
	if len(logs.lines("relayed transfer ended", "bytes_from_target=7", "err=")) != 1 {
		t.Errorf("want the aborted transfer logged with its error, log:\n%s", logs)
	}
}

func TestRelayDialFailure(t *testing.T) {
	r, logs := newTestRelay(t, Config{DialTimeout: 2 * time.Second})
	closed := freePort(t, "127.0.0.1") // nothing listens there
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", closed)
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	// The reset may come before connect(2) has reported success.
	peer, err := dialFrom(t, "", p.Dst)
	if err == nil {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(peer)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer: err = %v, want a reset when the target is unreachable", err)
	}
	waitFor(t, "the relay to end", func() bool { return r.Active() == 0 })
	if len(logs.lines("relay dial failed", "pinhole=\""+p.ID.String(), "target="+closed.String(), "refused")) != 1 {
		t.Errorf("want one dial failure line, log:\n%s", logs)
	}
}

func TestRelayOpenErrors(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	target := netip.MustParseAddrPort("127.0.0.1:2021")
	ok := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", target)
	if err := r.Open(context.Background(), ok); err != nil {
		t.Fatalf("Open: %v", err)
	}
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name   string
		ctx    context.Context
		edit   func(*rules.Pinhole)
		errIs  error
		errHas string
	}{
		{"invalid", nil, func(p *rules.Pinhole) { p.Src = netip.Addr{} }, nil, "required"},
		{"no DNAT", nil, func(p *rules.Pinhole) { p.DNAT = netip.AddrPort{} }, nil, "needs a DNAT"},
		{"DNAT to itself", nil, func(p *rules.Pinhole) { p.DNAT = p.Dst }, nil, "listening address"},
		{"duplicate ID", nil, func(p *rules.Pinhole) { p.ID = ok.ID }, nil, "already open"},
		{"port in use", nil, func(p *rules.Pinhole) { p.Dst = busy.Addr().(*net.TCPAddr).AddrPort() }, syscall.EADDRINUSE, ""},
		{"address not local", nil, func(p *rules.Pinhole) {
			// A documentation address that no interface here has.
			p.Src = netip.MustParseAddr("203.0.113.1")
			p.Dst = netip.MustParseAddrPort("203.0.113.2:40000")
			p.DNAT = netip.MustParseAddrPort("203.0.113.3:40000")
		}, syscall.EADDRNOTAVAIL, ""},
		{"cancelled", cancelled, func(*rules.Pinhole) {}, context.Canceled, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pinholeTo(t, "s1.p2", "127.0.0.1", "127.0.0.1", target)
			tt.edit(&p)
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			err := r.Open(ctx, p)
			if err == nil {
				r.Close(context.Background(), p)
				t.Fatal("Open succeeded")
			}
			if tt.errIs != nil && !errors.Is(err, tt.errIs) {
				t.Errorf("err = %v, want one wrapping %v", err, tt.errIs)
			}
			if !strings.Contains(err.Error(), tt.errHas) {
				t.Errorf("err = %v, want it to mention %q", err, tt.errHas)
			}
		})
	}

	listenErr := errors.New("no listening today")
	r2, _ := newTestRelay(t, Config{Listen: func(string, string) (net.Listener, error) { return nil, listenErr }})
	if err := r2.Open(context.Background(), ok); !errors.Is(err, listenErr) {
		t.Errorf("Open with a failing Listen: err = %v, want it wrapped", err)
	}
}

func TestRelayShutdown(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	pending := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	used := pinholeTo(t, "s1.p2", "127.0.0.1", "127.0.0.1", srv.addr())
	for _, p := range []rules.Pinhole{pending, used} {
		if err := r.Open(context.Background(), p); err != nil {
			t.Fatalf("Open: %v", err)
		}
	}
	peer, err := dialFrom(t, "", used.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	srv.accept(t) // the server never sends anything: a stalled transfer
	waitFor(t, "one active relay", func() bool { return r.Active() == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = r.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a stalled transfer: err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before its deadline", d)
	}
	if r.Active() != 0 {
		t.Errorf("Active = %d after Shutdown", r.Active())
	}
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(peer); err == nil {
		t.Errorf("peer of a cut transfer: clean end of file, want a reset")
	}
	if _, err := dialFrom(t, "", pending.Dst); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial of a pending pinhole after Shutdown: err = %v, want connection refused", err)
	}
	next := pinholeTo(t, "s1.p3", "127.0.0.1", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), next); !errors.Is(err, errRelayShutDown) {
		t.Errorf("Open after Shutdown: err = %v, want %v", err, errRelayShutDown)
	}
}

func TestRelayShutdownWaits(t *testing.T) {
	r, _ := newTestRelay(t, Config{})
	srv := newTestServer(t, "127.0.0.1")
	p := pinholeTo(t, "s1.p1", "127.0.0.1", "127.0.0.1", srv.addr())
	if err := r.Open(context.Background(), p); err != nil {
		t.Fatalf("Open: %v", err)
	}
	peer, err := dialFrom(t, "", p.Dst)
	if err != nil {
		t.Fatalf("dialling the pinhole: %v", err)
	}
	server := srv.accept(t)
	waitFor(t, "one active relay", func() bool { return r.Active() == 1 })

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- r.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a transfer runs", err)
	case <-time.After(50 * time.Millisecond):
	}
	exchange(t, peer, server, 1<<20, 1<<20) // the transfer finishes undisturbed
	if err := <-shut; err != nil {
		t.Errorf("Shutdown after the transfer ended: %v", err)
	}
}

// BenchmarkRelayThroughput copies 64 MiB over loopback TCP, directly and
// through the relay; the "ratio" sub-benchmark runs both in turn and
// reports relay throughput as a fraction of the direct one.
func BenchmarkRelayThroughput(b *testing.B) {
	const size = 64 << 20
	sink := newSink(b)
	r := New(Config{Log: slog.New(slog.DiscardHandler)})
	b.Cleanup(func() { r.Shutdown(context.Background()) })
	n := 0
	// openPinhole opens a fresh pinhole to the sink (they are single use).
	openPinhole := func(b *testing.B) netip.AddrPort {
		n++
		p := pinholeTo(b, fmt.Sprintf("b.p%d", n), "127.0.0.1", "127.0.0.1", sink)
		if err := r.Open(context.Background(), p); err != nil {
			b.Fatalf("Open: %v", err)
		}
		return p.Dst
	}

	b.Run("direct", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			sendTo(b, sink, size)
		}
	})
	b.Run("relay", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			dst := openPinhole(b)
			b.StartTimer()
			sendTo(b, dst, size)
		}
	})
	b.Run("ratio", func(b *testing.B) {
		var direct, relayed time.Duration
		for range b.N {
			direct += sendTo(b, sink, size)
			relayed += sendTo(b, openPinhole(b), size)
		}
		mb := float64(b.N) * size / 1e6
		b.ReportMetric(mb/direct.Seconds(), "direct-MB/s")
		b.ReportMetric(mb/relayed.Seconds(), "relay-MB/s")
		b.ReportMetric(direct.Seconds()/relayed.Seconds(), "ratio")
	})
}

// newSink starts a server that reads each connection to EOF, then writes
// the byte count (8 bytes) and closes.
func newSink(b *testing.B) netip.AddrPort {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1<<20)
				var n uint64
				for {
					m, err := c.Read(buf)
					n += uint64(m)
					if err != nil {
						break
					}
				}
				fmt.Fprintf(c, "%08x", n)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// sendBuf is what sendTo writes, 1 MiB at a time.
var sendBuf = make([]byte, 1<<20)

// sendTo sends size bytes to dst, half-closes, and waits for the sink's
// count; it returns the time taken.
func sendTo(b *testing.B, dst netip.AddrPort, size int) time.Duration {
	start := time.Now()
	c, err := net.Dial("tcp4", dst.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for sent := 0; sent < size; sent += len(sendBuf) {
		if _, err := c.Write(sendBuf[:min(len(sendBuf), size-sent)]); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil {
		b.Fatal(err)
	}
	if want := fmt.Sprintf("%08x", size); string(reply) != want {
		b.Fatalf("sink counted %q, want %q", reply, want)
	}
	return time.Since(start)
}
