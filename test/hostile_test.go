package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/test/netlab"
)

// Hostile peers for the adversarial suite: a scripted FTP server and the
// helpers a hostile client needs (raw writes, byte-per-segment writes, a
// TLS ClientHello), plus the checks every case shares (ftpalg's log lines
// of one session, rules naming a target, reachability probes).

// script answers one command of a hostile server's session: raw is written
// as is (nothing if empty), and the connection is closed after it if
// closeAfter.
type script func(verb, arg string) (raw string, closeAfter bool)

// hostileServer is a scripted FTP server in a namespace. It greets every
// connection with a 220, accepts any login (USER -> 331, PASS -> 230,
// TYPE -> 200, QUIT -> 221) and answers every other command with the
// script registered for the user name of the session (502 without one).
// Scripts are keyed by user name so that concurrent cases can share one
// listener: ftpalg's upstream connections all come from the same address.
type hostileServer struct {
	mu      sync.Mutex
	scripts map[string]script
	wg      sync.WaitGroup
}

// startHostileServer listens on port 21 of each address in ns and serves
// until t's cleanup.
func startHostileServer(t *testing.T, ns *netlab.NS, addrs ...netip.Addr) *hostileServer {
	t.Helper()
	hs := &hostileServer{scripts: map[string]script{}}
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := ns.Listen("tcp", netip.AddrPortFrom(a, 21).String())
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	var conns sync.Map // net.Conn -> struct{}, closed at cleanup
	for _, ln := range lns {
		hs.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				conns.Store(c, struct{}{})
				hs.wg.Go(func() {
					defer conns.Delete(c)
					hs.serve(c)
				})
			}
		})
	}
	t.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		hs.wg.Wait()
	})
	return hs
}

// handle registers the script for sessions that log in as user.
func (hs *hostileServer) handle(user string, s script) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.scripts[user] = s
}

func (hs *hostileServer) serve(c net.Conn) {
	defer c.Close()
	if _, err := io.WriteString(c, "220 hostile test server ready\r\n"); err != nil {
		return
	}
	var s script
	r := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd, err := ftp.ParseCommand([]byte(line))
		if err != nil {
			if _, err := io.WriteString(c, "500 Syntax error.\r\n"); err != nil {
				return
			}
			continue
		}
		raw, closeAfter := "", false
		switch cmd.Verb {
		case "USER":
			hs.mu.Lock()
			s = hs.scripts[cmd.Arg]
			hs.mu.Unlock()
			raw = "331 Password required for " + cmd.Arg + ".\r\n"
		case "PASS":
			raw = "230 Logged in.\r\n"
		case "TYPE":
			raw = "200 Type set.\r\n"
		case "QUIT":
			raw, closeAfter = "221 Goodbye.\r\n", true
		default:
			if s == nil {
				raw = "502 Command not implemented.\r\n"
			} else {
				raw, closeAfter = s(cmd.Verb, cmd.Arg)
			}
		}
		if raw != "" {
			if _, err := io.WriteString(c, raw); err != nil {
				return
			}
		}
		if closeAfter {
			return
		}
	}
}

// startSilentServer listens on ap in ns and accepts connections, but never
// writes a byte: a server that never answers. It serves until t's cleanup.
func startSilentServer(t *testing.T, ns *netlab.NS, ap netip.AddrPort) {
	t.Helper()
	ln, err := ns.Listen("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns sync.Map
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, struct{}{})
			wg.Go(func() {
				defer conns.Delete(c)
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
}

// dialRaw connects from ns to addr without reading anything.
func dialRaw(t *testing.T, ns *netlab.NS, addr netip.AddrPort) *ctrl {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &ctrl{t: t, c: c, rr: ftp.NewReplyReader(c, 0, 0)}
}

// send writes raw bytes on the control connection.
func (x *ctrl) send(raw string) {
	x.t.Helper()
	_ = x.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer x.c.SetWriteDeadline(time.Time{})
	if _, err := io.WriteString(x.c, raw); err != nil {
		x.t.Fatalf("writing %q: %v", trimLine(raw), err)
	}
}

// sendBytewise writes raw one byte per TCP segment: Nagle off, one write
// per byte, a pause between writes.
func (x *ctrl) sendBytewise(raw string) {
	x.t.Helper()
	if err := x.c.(*net.TCPConn).SetNoDelay(true); err != nil {
		x.t.Fatal(err)
	}
	for i := range len(raw) {
		if _, err := x.c.Write([]byte{raw[i]}); err != nil {
			x.t.Fatalf("writing byte %d of %q: %v", i, trimLine(raw), err)
		}
		time.Sleep(time.Millisecond)
	}
}

// local is the client's address of the control connection, as ftpalg logs
// it.
func (x *ctrl) local() netip.AddrPort {
	return unmapAP(x.c.LocalAddr().(*net.TCPAddr).AddrPort())
}

// expectClosed checks that the connection is closed (end of stream or a
// reset) with no further reply.
func (x *ctrl) expectClosed() {
	x.t.Helper()
	_ = x.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := x.rr.ReadReply()
	switch {
	case err == nil:
		x.t.Fatalf("got reply %q, want the connection closed", r.Bytes())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
	default:
		x.t.Fatalf("want the connection closed, got %v", err)
	}
}

// resetConn closes the connection with an RST (SO_LINGER 0).
func resetConn(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// clientHello returns the first TLS record a Go TLS client sends: a
// ClientHello, as an implicit-FTPS client writes on connecting.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		// Fails once the pipe closes; only the first record matters.
		_ = tls.Client(a, &tls.Config{ServerName: "ftp.example.com", InsecureSkipVerify: true}).Handshake()
	}()
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatalf("reading the ClientHello: %v", err)
	}
	if n < 6 || buf[0] != 0x16 || buf[5] != 0x01 {
		t.Fatalf("not a TLS handshake record with a ClientHello: % x", buf[:min(n, 8)])
	}
	return buf[:n]
}

func trimLine(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.TrimRight(s, "\r\n")
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// --- ftpalg's log, per session ---

// logKey identifies one control connection in ftpalg's log. The client's
// address alone does not: the client may use one local port for
// connections to different servers, at once or one after the other.
type logKey struct {
	client, server netip.AddrPort
	// session is the session ID; empty for a connection the proxy
	// refused before it became a session.
	session string
}

// match reports whether record r is about the connection: a line of the
// session, or else a refusal of the proxy naming the client and, in its
// reason, the server.
func (k logKey) match(r map[string]any) bool {
	if k.session != "" {
		return r["session"] == k.session
	}
	_, hasSession := r["session"]
	return !hasSession && r["client"] == k.client.String() && strings.Contains(logStr(r["why"]), k.server.String())
}

// keyLogs returns ftpalg's records with msg ("" for all) about k.
func keyLogs(a *ALG, k logKey, msg string) []map[string]any {
	var out []map[string]any
	for _, r := range a.Logs(msg) {
		if k.match(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitKeyLogs waits until ftpalg has logged at least n records with msg
// about k and returns them all (fewer when it gives up after minWait). A
// line may reach the log a moment after the peer saw the reply it is
// about: the reply goes out on the session's writer.
func waitKeyLogs(a *ALG, k logKey, msg string, n int) []map[string]any {
	deadline := time.Now().Add(minWait)
	for {
		rs := keyLogs(a, k, msg)
		if len(rs) >= n || time.Now().After(deadline) {
			return rs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sessionKey waits for the "session start" line of the control connection
// from client to server and returns its key. The latest such line is the
// connection's: an earlier session with the same addresses has ended.
func sessionKey(t *testing.T, a *ALG, client, server netip.AddrPort) logKey {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var last map[string]any
		for _, r := range a.Logs("session start") {
			if r["client"] == client.String() && r["server"] == server.String() {
				last = r
			}
		}
		if last != nil {
			return logKey{client: client, server: server, session: logStr(last["session"])}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session start logged for %v -> %v", client, server)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSessionEnd waits for the "session end" line of k.
func waitSessionEnd(t *testing.T, a *ALG, k logKey, within time.Duration) {
	t.Helper()
	within = max(within, minWait)
	deadline := time.Now().Add(within)
	for len(keyLogs(a, k, "session end")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no session end logged for session %s within %v", k.session, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// expectRefused checks that ftpalg logged exactly one "refused" line for
// k, with the given what and the reply the peer got (without line end).
func expectRefused(t *testing.T, a *ALG, k logKey, what, reply string) {
	t.Helper()
	rs := keyLogs(a, k, "refused")
	if len(rs) != 1 {
		t.Fatalf("%d refused lines for %v -> %v (session %q), want 1: %v", len(rs), k.client, k.server, k.session, rs)
	}
	if got := logStr(rs[0]["what"]); got != what {
		t.Errorf("refused line has what=%q, want %q: %v", got, what, rs[0])
	}
	if got := logStr(rs[0]["reply"]); got != reply {
		t.Errorf("refused line has reply=%q, the peer got %q", got, reply)
	}
	if logStr(rs[0]["why"]) == "" {
		t.Errorf("refused line gives no reason: %v", rs[0])
	}
}

// expectNotRefused checks that ftpalg logged no refusal for k.
func expectNotRefused(t *testing.T, a *ALG, k logKey) {
	t.Helper()
	if rs := keyLogs(a, k, "refused"); len(rs) > 0 {
		t.Errorf("ftpalg refused something of a well-behaved session: %v", rs)
	}
}

func logStr(v any) string {
	s, _ := v.(string)
	return s
}

// replyLine is a single-line reply without its line end.
func replyLine(r ftp.Reply) string { return strings.TrimRight(string(r.Bytes()), "\r\n") }

// --- firewall and reachability ---

// rulesNaming returns ftpalg's pinhole rules in ns that lead to target:
// a DNAT to it, or an address match on it together with its port.
func rulesNaming(t *testing.T, ns *netlab.NS, target netip.AddrPort) []string {
	t.Helper()
	host := netip.PrefixFrom(target.Addr(), target.Addr().BitLen()).String()
	port := strconv.Itoa(int(target.Port()))
	var out []string
	for _, l := range pinholeRules(t, ns) {
		f := strings.Fields(l)
		portMatch := false
		for i := 0; i+1 < len(f); i++ {
			if (f[i] == "--dport" || f[i] == "--ctorigdstport") && f[i+1] == port {
				portMatch = true
			}
		}
		if slices.Contains(f, host) && portMatch || argAfter(f, "--to-destination") == target.String() {
			out = append(out, l)
			continue
		}
		// An nftables set or map element: "src . dst . port" keys,
		// "addr . port" DNAT targets.
		if strings.Contains(" "+strings.TrimSuffix(l, ",")+" ", " "+target.Addr().String()+" . "+port+" ") {
			out = append(out, l)
		}
	}
	return out
}

// argAfter returns the field after the first field opt, or "".
func argAfter(fields []string, opt string) string {
	if i := slices.Index(fields, opt); i >= 0 && i+1 < len(fields) {
		return fields[i+1]
	}
	return ""
}

// sessionPinholes returns the pinhole rules in ns that belong to session.
func sessionPinholes(t *testing.T, ns *netlab.NS, session string) []string {
	t.Helper()
	var out []string
	for _, l := range pinholeRules(t, ns) {
		if strings.Contains(l, "ftpalg:"+session+":") {
			out = append(out, l)
		}
	}
	return out
}

// waitSessionPinholesGone waits until session owns no pinhole rule.
func waitSessionPinholesGone(t *testing.T, ns *netlab.NS, session string, within time.Duration) {
	t.Helper()
	within = max(within, minWait)
	deadline := time.Now().Add(within)
	for {
		left := sessionPinholes(t, ns, session)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pinholes of session %s still present after %v:\n%s", session, within, strings.Join(left, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probe is a connection attempt that must fail: from a namespace to an
// address where an EchoServer would answer.
type probe struct {
	from *netlab.NS
	to   netip.AddrPort
}

// probeTimeout bounds one probe. Inside the topology a handshake that is
// let through completes in well under a millisecond.
const probeTimeout = 750 * time.Millisecond

// expectUnreachable runs the probes at once and fails t for each that
// got its echo back.
func expectUnreachable(t *testing.T, ctx context.Context, probes []probe) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Go(func() {
			if err := p.from.CheckEcho(ctx, p.to.String(), probeTimeout); err == nil {
				t.Errorf("%s reached %v: the attacker's target is reachable", p.from.Role, p.to)
			}
		})
	}
	wg.Wait()
}

// poolProbes are probes from ns to every port of [lo, hi] at addr: where a
// translated (DNAT) pinhole would expose a target.
func poolProbes(ns *netlab.NS, addr netip.Addr, lo, hi uint16) []probe {
	var ps []probe
	for p := lo; p <= hi; p++ {
		ps = append(ps, probe{ns, netip.AddrPortFrom(addr, p)})
	}
	return ps
}

// hostNS returns the namespace of the topology that holds address a.
func hostNS(t *testing.T, topo *netlab.Topo, a netip.Addr) *netlab.NS {
	t.Helper()
	switch a {
	case netlab.ClientAddr4, netlab.ClientAddr6:
		return topo.Client
	case netlab.GWInsideAddr4, netlab.GWInsideAddr6, netlab.GWOutsideAddr4, netlab.GWOutsideAddr6:
		return topo.GW
	case netlab.ServerAddr4, netlab.ServerAddr6:
		return topo.Server
	case netlab.OtherAddr4, netlab.OtherAddr6:
		return topo.Other
	}
	t.Fatalf("no host of the topology has address %v", a)
	return nil
}

// runConcurrently runs fn for each case as a subtest, at most n at a
// time. The subtests do not call t.Parallel: the -parallel limit
// (GOMAXPROCS by default) would serialise cases that mostly wait for probe
// timeouts.
func runConcurrently[C any](t *testing.T, n int, cases []C, name func(C) string, fn func(*testing.T, C)) {
	t.Helper()
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			t.Run(name(c), func(t *testing.T) { fn(t, c) })
		})
	}
	wg.Wait()
}
