package alg_test

import (
	"bufio"
	"context"
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

// greeter is an upstream FTP server that greets and then echoes "200 ok"
// to every line.
func greeter(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("220 hello\r\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					c.Write([]byte("200 ok\r\n"))
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func startProxy(t *testing.T, p *alg.Proxy) (addr string, logs *logBuf, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs = &logBuf{}
	p.Log = slog.New(slog.NewJSONHandler(logs, nil))
	if p.Planner == nil {
		pool, _ := nat.NewPool(40000, 40009)
		p.Planner = &nat.Reverse{Pool: pool}
	}
	if p.Backend == nil {
		p.Backend = &rules.Fake{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Serve did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), logs, stop
}

// dialFrom connects from a given loopback address and returns the first
// line the proxy sends.
func dialFrom(t *testing.T, from, addr string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return c, line
}

func TestProxyPerClientLimit(t *testing.T) {
	srv := greeter(t)
	addr, logs, _ := startProxy(t, &alg.Proxy{Upstream: alg.FixedUpstream(srv), MaxPerClient: 2, MaxSessions: 10})
	// A flood of idle connections from one address...
	for range 2 {
		if _, line := dialFrom(t, "127.0.0.1", addr); line != "220 hello\r\n" {
			t.Fatalf("got %q", line)
		}
	}
	_, line := dialFrom(t, "127.0.0.1", addr)
	if line != "421 ftpalg: too many connections; try again later\r\n" {
		t.Fatalf("over the per-client limit: %q", line)
	}
	// ... does not stop another client.
	if _, line := dialFrom(t, "127.0.0.2", addr); line != "220 hello\r\n" {
		t.Fatalf("another client: %q", line)
	}
	if r := logs.refusals(t); len(r) != 1 || r[0]["what"] != "limit" {
		t.Fatalf("refusals %v", r)
	}
}

func TestProxyTotalLimit(t *testing.T) {
	srv := greeter(t)
	addr, _, _ := startProxy(t, &alg.Proxy{Upstream: alg.FixedUpstream(srv), MaxSessions: 2})
	dialFrom(t, "127.0.0.1", addr)
	dialFrom(t, "127.0.0.2", addr)
	if _, line := dialFrom(t, "127.0.0.3", addr); !strings.HasPrefix(line, "421 ") {
		t.Fatalf("over the total limit: %q", line)
	}
}

func TestProxyUnreachableServer(t *testing.T) {
	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	addr, logs, _ := startProxy(t, &alg.Proxy{Upstream: alg.FixedUpstream(dead), ConnectTimeout: time.Second})
	if _, line := dialFrom(t, "127.0.0.1", addr); line != "421 ftpalg: cannot reach the server; try again later\r\n" {
		t.Fatalf("got %q", line)
	}
	// An unreachable server is not a policy refusal: it has a line of its own.
	if r := logs.refusals(t); len(r) != 0 {
		t.Fatalf("refusals %v", r)
	}
	var un []map[string]any
	for _, m := range logs.lines(t) {
		if m["msg"] == "server unreachable" {
			un = append(un, m)
		}
	}
	if len(un) != 1 || un[0]["server"] != dead.String() || un[0]["err"] == nil {
		t.Fatalf("server unreachable lines %v", un)
	}
}

func TestProxyDrainsThenCloses(t *testing.T) {
	srv := greeter(t)
	addr, logs, stop := startProxy(t, &alg.Proxy{Upstream: alg.FixedUpstream(srv), DrainTimeout: 300 * time.Millisecond})
	c, _ := dialFrom(t, "127.0.0.1", addr)
	start := time.Now()
	stop()
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Fatalf("Serve returned after %v, want about the drain timeout", d)
	}
	// The idle session was told 421 and closed at the end of the drain.
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	rest, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("session still open after the drain (%v), read %q", err, rest)
	}
	if string(rest) != "421 ftpalg: shutting down; closing the connection\r\n" {
		t.Fatalf("at the end of the drain the client got %q, want the 421", rest)
	}
	found := false
	for _, m := range logs.lines(t) {
		if m["msg"] == "drain timeout: closing sessions" {
			found = true
		}
	}
	if !found {
		t.Fatal("no log line for the drain timeout")
	}
}

func TestProxyEndDrainCutsItShort(t *testing.T) {
	srv := greeter(t)
	p := &alg.Proxy{Upstream: alg.FixedUpstream(srv), DrainTimeout: time.Hour}
	addr, _, stop := startProxy(t, p)
	c, _ := dialFrom(t, "127.0.0.1", addr)
	p.EndDrain() // before the drain: it ends as soon as it starts
	start := time.Now()
	stop()
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("Serve returned after %v despite EndDrain", d)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "421 ftpalg: shutting down; closing the connection\r\n" {
		t.Fatalf("after the cut drain the client got %q (%v), want the 421 and EOF", rest, err)
	}
}

func TestProxyReloadAppliesToNewSessions(t *testing.T) {
	srv := greeter(t)
	p := &alg.Proxy{Upstream: alg.FixedUpstream(srv), MaxPerClient: 1}
	addr, _, _ := startProxy(t, p)
	if _, line := dialFrom(t, "127.0.0.1", addr); strings.HasPrefix(line, "421 ") {
		t.Fatalf("first session refused: %q", line)
	}
	if _, line := dialFrom(t, "127.0.0.1", addr); !strings.HasPrefix(line, "421 ") {
		t.Fatalf("second session over the per-client limit 1: %q", line)
	}
	p.Reload(alg.Limits{Policy: alg.DefaultPolicy(), MaxSessions: 10, MaxPerClient: 2})
	if _, line := dialFrom(t, "127.0.0.1", addr); strings.HasPrefix(line, "421 ") {
		t.Fatalf("after raising the limit to 2, the second session was refused: %q", line)
	}
	if got := p.Accepted(); got != 2 {
		t.Errorf("Accepted() = %d, want 2", got)
	}
	snap := p.Snapshot()
	if len(snap) != 2 || snap[0].Client.Addr().String() != "127.0.0.1" || snap[0].Server != srv {
		t.Errorf("Snapshot() = %+v", snap)
	}
}
