package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/test/netlab"
)

// The adversarial suite: the real ftpalg binary in the gateway namespace
// against hostile peers written for the test. For each attack the peer
// gets an FTP reply, no pinhole leads to the attacker's target, a
// connection attempt to that target fails (an EchoServer listens there, so
// a success would show), and ftpalg logs exactly one "refused" line for the
// session, naming what it refused. Stream tricks that are legal FTP (one
// byte per segment, pipelining) must work, and broken peers (silent, hung,
// reset mid-transfer) must cost ftpalg nothing.
//
// Each topology has one ftpalg; its cases run concurrently.

const (
	// Short session timeouts, so that the timeout cases are quick.
	advLoginTimeout = 2 * time.Second
	advIdleTimeout  = 4 * time.Second
	// Small pools, so that every port where a translated pinhole could
	// expose a target is probed.
	gwPoolLo, gwPoolHi   = 47000, 47007
	revPoolLo, revPoolHi = 45000, 45007
	// advConcurrency is how many cases of a topology run at once.
	advConcurrency = 8
)

var (
	// silentAddr4 is a second address of the server host, where a server
	// that accepts connections but never says a word listens.
	silentAddr4 = netip.MustParseAddr("203.0.113.4")
	// unreachableAddr4 is on the server segment, but no host has it.
	unreachableAddr4 = netip.MustParseAddr("203.0.113.9")
)

// adversarialArgs are the flags of `ftpalg run` the suite adds to a mode's.
func adversarialArgs() []string {
	return []string{"--login-timeout", advLoginTimeout.String(), "--idle-timeout", advIdleTimeout.String(),
		"--connect-timeout", "1s", "--max-sessions-per-client", "256", "--drain", "3s"}
}

// advLab is one topology with ftpalg running, as the cases see it.
type advLab struct {
	topo *netlab.Topo
	ctx  context.Context
	a    *ALG
	// srv is the real FTP server (vsftpd) the hostile clients talk to.
	srv *netlab.Server
	// attacker is where hostile clients connect from; dial returns the
	// control address they dial for family f.
	attacker *netlab.NS
	dial     func(f netlab.Family) netip.AddrPort
	// poolAddr is the address of ftpalg's translated active endpoints:
	// the server (srv's host) is told poolAddr:[poolLo, poolHi].
	poolAddr       func(f netlab.Family) netip.Addr
	poolLo, poolHi uint16
	// hs is the scripted hostile server (gateway lab only).
	hs *hostileServer
	// refusals counts the refused lines the cases expect.
	refusals atomic.Int64
}

// expectRefused checks the one refused line of the session (see the
// function expectRefused) and counts it as expected.
func (l *advLab) expectRefused(t *testing.T, k logKey, what, reply string) {
	t.Helper()
	l.refusals.Add(1)
	expectRefused(t, l.a, k, what, reply)
}

// key returns the log key of the session of x, a control connection to
// server (as ftpalg logs it: the address it dialled upstream).
func (l *advLab) key(t *testing.T, x *ctrl, server netip.AddrPort) logKey {
	t.Helper()
	return sessionKey(t, l.a, x.local(), server)
}

// finish checks what must hold once every case ran: ftpalg is alive, no
// pinhole is left, ftpalg logged no refusal the cases did not expect, it
// exits cleanly and leaves the gateway's firewall as it found it.
func (l *advLab) finish(t *testing.T, before string) {
	t.Helper()
	if exited, err := l.a.Proc.Exited(); exited {
		t.Fatalf("ftpalg exited during the suite (%v):\n%s", err, tailLines(l.a.Proc.Output(), 40))
	}
	waitNoPinholes(t, l.topo.GW, 15*time.Second)
	if got, want := len(l.a.Logs("refused")), int(l.refusals.Load()); got != want && !t.Failed() {
		t.Errorf("ftpalg logged %d refusals, the cases expected %d:\n%v", got, want, l.a.Logs("refused"))
	}
	l.a.Stop()
	if left := ftpalgRules(t, l.topo.GW); len(left) > 0 {
		t.Fatalf("ftpalg left rules after exit:\n%s", strings.Join(left, "\n"))
	}
	after, err := l.topo.GW.FirewallDump(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("gateway firewall differs after ftpalg exited\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// transfersStillWork runs real clients through ftpalg after the attacks.
func (l *advLab) transfersStillWork(t *testing.T, from *netlab.NS, server func(netlab.Family) netip.AddrPort) {
	t.Helper()
	for _, x := range []netlab.Transfer{
		l.srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv4),
		l.srv.Transfer(t, netlab.Curl, netlab.EPRT, netlab.List, netlab.IPv6),
		l.srv.Transfer(t, netlab.Curl, netlab.PORT, netlab.Stor, netlab.IPv4),
	} {
		x.Server = server(familyOfAP(x.Server))
		r := netlab.RunTransfer(l.ctx, from, x)
		if err := l.srv.Verify(r); err != nil {
			t.Errorf("%v after the attacks: %v", x, err)
		}
	}
}

// advCase is one subtest of a lab.
type advCase struct {
	name string
	run  func(t *testing.T)
}

// TestAdversarialGateway runs the attacks against ftpalg in gateway mode
// behind the strict firewall: hostile clients in the client namespace
// talking to vsftpd (on the "other" host), and a scripted hostile server on
// the server host talking to a client driven by the test.
func TestAdversarialGateway(t *testing.T) {
	t.Parallel()
	topo, ctx := gatewayTopo(t)
	l := &advLab{topo: topo, ctx: ctx, attacker: topo.Client, poolLo: gwPoolLo, poolHi: gwPoolHi}
	l.srv = netlab.StartServer(t, topo.Other, netlab.Vsftpd, netlab.ServerOptions{})
	l.dial = l.srv.Addr
	l.poolAddr = gwOutside
	if _, err := topo.Server.Run(ctx, "ip", "addr", "add", silentAddr4.String()+"/24", "dev", netlab.HostIf); err != nil {
		t.Fatal(err)
	}
	l.hs = startHostileServer(t, topo.Server, netlab.ServerAddr4, netlab.ServerAddr6)
	startSilentServer(t, topo.Server, netip.AddrPortFrom(silentAddr4, 21))
	before, err := topo.GW.FirewallDump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	args := append(gatewayArgs(), "--data-ports", fmt.Sprintf("%d-%d", gwPoolLo, gwPoolHi))
	l.a = startALG(t, topo.GW, append(args, adversarialArgs()...)...)

	var cases []advCase
	for _, c := range gatewayClientCases() {
		cases = append(cases, advCase{"client/" + c.name, func(t *testing.T) { l.clientCase(t, c) }})
	}
	for _, c := range gatewayServerCases() {
		cases = append(cases, advCase{"server/" + c.name, func(t *testing.T) { l.serverCase(t, c) }})
	}
	cases = append(cases,
		advCase{"client/TLS-ClientHello", l.clientHelloCase},
		advCase{"client/never-sends", l.clientNeverSends},
		advCase{"client/idle", l.clientIdle},
		advCase{"stream/one-byte-per-segment", l.bytewise},
		advCase{"stream/pipelined", l.pipelined},
		advCase{"stream/pipelined-with-refusal", l.pipelinedRefusal},
		advCase{"stream/slow-transfer-is-not-idle", l.slowTransfer},
		advCase{"rst/data-mid-transfer", l.resetData},
		advCase{"rst/control-mid-transfer", l.resetControl},
		advCase{"server/never-answers", l.silentServer},
		advCase{"server/hangs-after-login", l.hungServer},
		advCase{"server/unreachable", l.unreachableServer},
	)
	t.Run("control/probes-see-an-open-pinhole", l.probesCanSee)
	runConcurrently(t, advConcurrency, cases, func(c advCase) string { return c.name }, func(t *testing.T, c advCase) { c.run(t) })

	l.transfersStillWork(t, topo.Client, l.srv.Addr)
	l.finish(t, before)
}

// TestAdversarialReverse runs the bounce attacks against ftpalg publishing
// a private vsftpd (reverse mode, iptables backend): the attacker is on the
// public side, the server's data connections would come from the private
// side.
func TestAdversarialReverse(t *testing.T) {
	t.Parallel()
	topo, ctx := gatewayTopo(t)
	l := &advLab{topo: topo, ctx: ctx, attacker: topo.Server, poolLo: revPoolLo, poolHi: revPoolHi}
	l.srv = netlab.StartServer(t, topo.Client, netlab.Vsftpd, netlab.ServerOptions{})
	l.dial = publicAddr
	l.poolAddr = gwInside
	before, err := topo.GW.FirewallDump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	args := append(reverseArgs("iptables"), "--data-ports", fmt.Sprintf("%d-%d", revPoolLo, revPoolHi))
	l.a = startALG(t, topo.GW, append(args, adversarialArgs()...)...)

	t.Run("control/probes-see-an-open-pinhole", l.probesCanSee)
	runConcurrently(t, advConcurrency, reverseClientCases(), func(c clientCase) string { return c.name },
		func(t *testing.T, c clientCase) { l.clientCase(t, c) })

	l.transfersStillWork(t, topo.Server, publicAddr)
	l.finish(t, before)
}

// gwInside is the gateway's address on the client (private) side.
func gwInside(f netlab.Family) netip.Addr {
	if f == netlab.IPv6 {
		return netlab.GWInsideAddr6
	}
	return netlab.GWInsideAddr4
}

// --- hostile clients ---

// clientCase is a hostile client sending one line to a real server
// through ftpalg.
type clientCase struct {
	name  string
	f     netlab.Family
	login bool // log in before sending line
	line  string
	// code and text (a stable part) of the reply; what of the refused line.
	code int
	text string
	what string
	// ends: ftpalg ends the session after the reply.
	ends bool
	// target is where the attacker wants a data connection to go (an
	// EchoServer listens there); zero if the line names none.
	target netip.AddrPort
	// direct: the target is not on the server's segment, so the server
	// must not reach it directly either.
	direct bool
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// gatewayClientCases: the client is 192.0.2.2 / 2001:db8:1::2, the gateway
// inside 192.0.2.1 / 2001:db8:1::1. Malformed arguments name, as target,
// the endpoint a parser that wraps numbers (mod 256, mod 65536, mod 2^32,
// first six fields) would make of them: a valid endpoint of the client's
// own, which a pinhole would have exposed.
func gatewayClientCases() []clientCase {
	const own4, own6 = "must be your own (192.0.2.2)", "must be your own (2001:db8:1::2)"
	return []clientCase{
		// Bounce: the server is to connect to another host.
		{name: "PORT-bounce-to-gateway", f: netlab.IPv4, login: true, line: "PORT 192,0,2,1,9,197\r\n",
			code: 500, text: "PORT address " + own4, what: "PORT", target: ap("192.0.2.1:2501"), direct: true},
		{name: "EPRT-bounce-to-gateway-IPv6", f: netlab.IPv6, login: true, line: "EPRT |2|2001:db8:1::1|2502|\r\n",
			code: 500, text: "EPRT address " + own6, what: "EPRT", target: ap("[2001:db8:1::1]:2502"), direct: true},
		{name: "PORT-bounce-to-third-party", f: netlab.IPv4, login: true, line: "PORT 203,0,113,2,9,199\r\n",
			code: 500, text: "PORT address " + own4, what: "PORT", target: ap("203.0.113.2:2503")},
		{name: "EPRT-bounce-to-third-party-IPv6", f: netlab.IPv6, login: true, line: "EPRT |2|2001:db8:2::2|2504|\r\n",
			code: 500, text: "EPRT address " + own6, what: "EPRT", target: ap("[2001:db8:2::2]:2504")},
		// Privileged ports of the client itself.
		{name: "PORT-privileged", f: netlab.IPv4, login: true, line: "PORT 192,0,2,2,0,25\r\n",
			code: 504, text: "data port 25 is below 1024", what: "PORT", target: ap("192.0.2.2:25"), direct: true},
		{name: "EPRT-privileged-IPv6", f: netlab.IPv6, login: true, line: "EPRT |2|2001:db8:1::2|22|\r\n",
			code: 504, text: "data port 22 is below 1024", what: "EPRT", target: ap("[2001:db8:1::2]:22"), direct: true},
		{name: "EPRT-privileged-1023", f: netlab.IPv4, login: true, line: "EPRT |1|192.0.2.2|1023|\r\n",
			code: 504, text: "data port 1023 is below 1024", what: "EPRT", target: ap("192.0.2.2:1023"), direct: true},
		// Malformed numbers.
		{name: "PORT-octet-256-plus", f: netlab.IPv4, login: true, line: "PORT 192,0,2,258,9,205\r\n",
			code: 501, text: "malformed PORT argument", what: "PORT", target: ap("192.0.2.2:2509"), direct: true},
		{name: "PORT-port-octet-overflow", f: netlab.IPv4, login: true, line: "PORT 192,0,2,2,265,206\r\n",
			code: 501, text: "malformed PORT argument", what: "PORT", target: ap("192.0.2.2:2510"), direct: true},
		{name: "PORT-negative", f: netlab.IPv4, login: true, line: "PORT 192,0,2,2,9,-49\r\n",
			code: 501, text: "malformed PORT argument", what: "PORT", target: ap("192.0.2.2:2511"), direct: true},
		{name: "PORT-seven-fields", f: netlab.IPv4, login: true, line: "PORT 192,0,2,2,9,208,1\r\n",
			code: 501, text: "malformed PORT argument", what: "PORT", target: ap("192.0.2.2:2512"), direct: true},
		{name: "PORT-huge", f: netlab.IPv4, login: true, line: "PORT 192,0,2,2,9,4294967505\r\n",
			code: 501, text: "malformed PORT argument", what: "PORT", target: ap("192.0.2.2:2513"), direct: true},
		{name: "EPRT-huge-port", f: netlab.IPv4, login: true, line: "EPRT |1|192.0.2.2|68050|\r\n",
			code: 501, text: "malformed EPRT argument", what: "EPRT", target: ap("192.0.2.2:2514"), direct: true},
		{name: "EPRT-other-family", f: netlab.IPv4, login: true, line: "EPRT |2|2001:db8:1::1|2515|\r\n",
			code: 522, text: "network protocol not supported, use (1)", what: "EPRT", target: ap("[2001:db8:1::1]:2515"), direct: true},
		{name: "PORT-on-IPv6", f: netlab.IPv6, login: true, line: "PORT 192,0,2,2,9,212\r\n",
			code: 501, text: "use EPRT", what: "PORT", target: ap("192.0.2.2:2516"), direct: true},
		// Long address formats, TLS.
		{name: "LPRT", f: netlab.IPv4, login: true, line: "LPRT 4,4,192,0,2,1,2,9,213\r\n",
			code: 502, text: "LPRT not supported", what: "LPRT", target: ap("192.0.2.1:2517"), direct: true},
		{name: "LPSV", f: netlab.IPv4, login: true, line: "LPSV\r\n", code: 502, text: "LPSV not supported", what: "LPSV"},
		{name: "AUTH-TLS", f: netlab.IPv4, login: true, line: "AUTH TLS\r\n", code: 534, text: "AUTH refused", what: "AUTH"},
		{name: "AUTH-SSL-IPv6", f: netlab.IPv6, line: "AUTH SSL\r\n", code: 534, text: "AUTH refused", what: "AUTH"},
		// A client playing server.
		{name: "reply-shaped-227", f: netlab.IPv4, login: true, line: "227 Entering Passive Mode (192,0,2,1,9,214)\r\n",
			code: 500, text: "syntax error", what: "syntax", target: ap("192.0.2.1:2518"), direct: true},
		{name: "reply-shaped-229", f: netlab.IPv6, login: true, line: "229 Entering Extended Passive Mode (|||2519|)\r\n",
			code: 500, text: "syntax error", what: "syntax", target: ap("[2001:db8:1::1]:2519"), direct: true},
		// Lines no FTP client sends end the session.
		{name: "over-long-line", f: netlab.IPv4, line: "NOOP " + strings.Repeat("A", 5000) + "\r\n",
			code: 500, text: "command line too long (limit 4096 bytes)", what: "line too long", ends: true},
		{name: "NUL", f: netlab.IPv4, line: "US\x00ER anonymous\r\n", code: 500, text: "NUL byte", what: "NUL", ends: true},
		{name: "binary-garbage", f: netlab.IPv6, line: "\x16\x03\x01\xfe\xfd\x80\x01garbage\r\n",
			code: 500, text: "not an FTP command", what: "garbage", ends: true},
	}
}

// reverseClientCases: the attacker is 203.0.113.2 / 2001:db8:2::2 on the
// public side; the server's data connections would come from the private
// side, to the gateway's inside address.
func reverseClientCases() []clientCase {
	const own4, own6 = "must be your own (203.0.113.2)", "must be your own (2001:db8:2::2)"
	return []clientCase{
		{name: "PORT-bounce-to-third-party", f: netlab.IPv4, login: true, line: "PORT 203,0,113,3,9,241\r\n",
			code: 500, text: "PORT address " + own4, what: "PORT", target: ap("203.0.113.3:2545"), direct: true},
		{name: "EPRT-bounce-to-third-party-IPv6", f: netlab.IPv6, login: true, line: "EPRT |2|2001:db8:2::3|2546|\r\n",
			code: 500, text: "EPRT address " + own6, what: "EPRT", target: ap("[2001:db8:2::3]:2546"), direct: true},
		{name: "EPRT-bounce-into-private-side", f: netlab.IPv4, login: true, line: "EPRT |1|192.0.2.1|2547|\r\n",
			code: 500, text: "EPRT address " + own4, what: "EPRT", target: ap("192.0.2.1:2547"), direct: true},
		{name: "PORT-bounce-to-the-server-itself", f: netlab.IPv4, login: true, line: "PORT 192,0,2,2,9,244\r\n",
			code: 500, text: "PORT address " + own4, what: "PORT", target: ap("192.0.2.2:2548")},
		{name: "EPRT-bounce-into-private-side-IPv6", f: netlab.IPv6, login: true, line: "EPRT |2|2001:db8:1::1|2550|\r\n",
			code: 500, text: "EPRT address " + own6, what: "EPRT", target: ap("[2001:db8:1::1]:2550"), direct: true},
		{name: "PORT-privileged", f: netlab.IPv4, login: true, line: "PORT 203,0,113,2,0,25\r\n",
			code: 504, text: "data port 25 is below 1024", what: "PORT", target: ap("203.0.113.2:25"), direct: true},
		{name: "EPRT-privileged-IPv6", f: netlab.IPv6, login: true, line: "EPRT |2|2001:db8:2::2|23|\r\n",
			code: 504, text: "data port 23 is below 1024", what: "EPRT", target: ap("[2001:db8:2::2]:23"), direct: true},
		{name: "PORT-octet-256-plus", f: netlab.IPv4, login: true, line: "PORT 203,0,113,258,9,245\r\n",
			code: 501, text: "malformed PORT argument", what: "PORT", target: ap("203.0.113.2:2549"), direct: true},
	}
}

// clientCase runs c: greeting (and login), the hostile line, then the
// checks; a session that goes on must still work.
func (l *advLab) clientCase(t *testing.T, c clientCase) {
	if c.target.IsValid() {
		hostNS(t, l.topo, c.target.Addr()).StartEcho(t, c.target.String())
	}
	x := dialCtrl(t, l.attacker, l.dial(c.f))
	k := l.key(t, x, l.srv.Addr(c.f))
	if c.login {
		x.login(l.srv.User, l.srv.Pass)
	}
	x.send(c.line)
	r := x.reply()
	if r.Code != c.code || !strings.Contains(replyLine(r), c.text) {
		t.Fatalf("%q: got reply %q, want %d ...%s...", trimLine(c.line), r.Bytes(), c.code, c.text)
	}
	l.expectRefused(t, k, c.what, replyLine(r))
	if left := sessionPinholes(t, l.topo.GW, k.session); len(left) > 0 {
		t.Errorf("the refused session owns pinholes:\n%s", strings.Join(left, "\n"))
	}
	if c.target.IsValid() {
		l.expectTargetClosed(t, c.f, c.target, c.direct)
	}
	if c.ends {
		x.expectClosed()
		waitSessionEnd(t, l.a, k, 5*time.Second)
		return
	}
	// The session goes on (a client refused AUTH before login falls back
	// to plain FTP).
	if !c.login {
		x.login(l.srv.User, l.srv.Pass)
	}
	x.expectCode(x.cmd("NOOP"), 200)
	x.expectCode(x.cmd("QUIT"), 221)
}

// expectTargetClosed checks that no pinhole rule leads to target and that
// the server's host reaches it neither through ftpalg's pool of translated
// endpoints nor, if direct, at its own address.
func (l *advLab) expectTargetClosed(t *testing.T, f netlab.Family, target netip.AddrPort, direct bool) {
	t.Helper()
	if rs := rulesNaming(t, l.topo.GW, target); len(rs) > 0 {
		t.Errorf("pinhole rules lead to the target %v:\n%s", target, strings.Join(rs, "\n"))
	}
	probes := poolProbes(l.srv.NS, l.poolAddr(f), l.poolLo, l.poolHi)
	if direct {
		probes = append(probes, probe{l.srv.NS, target})
	}
	expectUnreachable(t, l.ctx, probes)
}

// probesCanSee is the control for the pool probes, run before the cases:
// a legitimate EPRT opens a translated endpoint in the pool, and exactly
// one pool probe from the server's host reaches the client's EchoServer
// through it. So the cases' probes would see a pinhole if one were open.
func (l *advLab) probesCanSee(t *testing.T) {
	own := netip.AddrPortFrom(l.attacker.Addr(netlab.IPv4), 2599)
	l.attacker.StartEcho(t, own.String())
	x := dialCtrl(t, l.attacker, l.dial(netlab.IPv4))
	k := l.key(t, x, l.srv.Addr(netlab.IPv4))
	x.login(l.srv.User, l.srv.Pass)
	x.expectCode(x.cmd("EPRT "+ftp.FormatEPRT(own)), 200)
	var reached atomic.Int32
	var wg sync.WaitGroup
	for _, p := range poolProbes(l.srv.NS, l.poolAddr(netlab.IPv4), l.poolLo, l.poolHi) {
		wg.Go(func() {
			// Longer than probeTimeout: this probe must succeed, also on
			// a loaded machine.
			if p.from.CheckEcho(l.ctx, p.to.String(), 3*time.Second) == nil {
				reached.Add(1)
			}
		})
	}
	wg.Wait()
	if n := reached.Load(); n != 1 {
		t.Errorf("%d pool probes reached the announced endpoint %v, want 1", n, own)
	}
	x.expectCode(x.cmd("QUIT"), 221)
	waitSessionPinholesGone(t, l.topo.GW, k.session, 5*time.Second)
}

// clientHelloCase: an implicit-FTPS client's TLS ClientHello on the control
// port ends the session. It is refused for its NUL byte, or as garbage when
// a newline byte comes first.
func (l *advLab) clientHelloCase(t *testing.T) {
	hello := clientHello(t)
	what, text := "NUL", "NUL byte"
	if nl, nul := bytes.IndexByte(hello, '\n'), bytes.IndexByte(hello, 0); nl >= 0 && nl < nul {
		what, text = "garbage", "not an FTP command"
	}
	l.clientCase(t, clientCase{name: "TLS-ClientHello", f: netlab.IPv4, line: string(hello),
		code: 500, text: text, what: what, ends: true})
}

// clientNeverSends: a client that connects and says nothing gets a 421
// after the login timeout.
func (l *advLab) clientNeverSends(t *testing.T) {
	x := dialCtrl(t, l.attacker, l.dial(netlab.IPv4))
	l.expectTimeout(t, x, l.key(t, x, l.srv.Addr(netlab.IPv4)), "login timeout", advLoginTimeout)
}

// clientIdle: a logged-in client that stops talking gets a 421 after the
// idle timeout.
func (l *advLab) clientIdle(t *testing.T) {
	x := dialCtrl(t, l.attacker, l.dial(netlab.IPv6))
	k := l.key(t, x, l.srv.Addr(netlab.IPv6))
	x.login(l.srv.User, l.srv.Pass)
	l.expectTimeout(t, x, k, "idle timeout", advIdleTimeout)
}

// expectTimeout waits for ftpalg's 421 on x after about d, its refused
// line, the connection's end and the session's.
func (l *advLab) expectTimeout(t *testing.T, x *ctrl, k logKey, what string, d time.Duration) {
	t.Helper()
	start := time.Now()
	r := x.reply()
	took := time.Since(start)
	if r.Code != 421 {
		t.Fatalf("got reply %q, want 421 (%s)", r.Bytes(), what)
	}
	if took < d-d/4 || took > d+5*time.Second {
		t.Errorf("%s after %v, want about %v", what, took, d)
	}
	l.expectRefused(t, k, what, replyLine(r))
	x.expectClosed()
	waitSessionEnd(t, l.a, k, 5*time.Second)
}

// --- legal stream tricks ---

// bytewise: every command is sent one byte per TCP segment; the session,
// with a passive LIST, works as usual.
func (l *advLab) bytewise(t *testing.T) {
	x := dialCtrl(t, l.attacker, l.dial(netlab.IPv4))
	k := l.key(t, x, l.srv.Addr(netlab.IPv4))
	if r := x.sendCmdBytewise("USER " + l.srv.User); r.Code == 331 {
		x.expectCode(x.sendCmdBytewise("PASS "+l.srv.Pass), 230)
	} else {
		x.expectCode(r, 230)
	}
	x.expectCode(x.sendCmdBytewise("TYPE I"), 200)
	r := x.sendCmdBytewise("EPSV")
	x.expectCode(r, 229)
	port, _, _, err := ftp.Find229(r.Text())
	if err != nil {
		t.Fatal(err)
	}
	dc := l.dialData(t, netip.AddrPortFrom(l.srv.NS.Addr(netlab.IPv4), port))
	x.expectCode(x.sendCmdBytewise("LIST "+l.srv.ListDir), 150)
	list := readAll(t, dc)
	x.expect(226)
	for _, name := range l.srv.ListNames {
		if !strings.Contains(list, name) {
			t.Errorf("listing lacks %q:\n%s", name, list)
		}
	}
	x.expectCode(x.sendCmdBytewise("QUIT"), 221)
	expectNotRefused(t, l.a, k)
}

// sendCmdBytewise sends a command one byte per segment and reads its reply.
func (x *ctrl) sendCmdBytewise(line string) ftp.Reply {
	x.t.Helper()
	x.sendBytewise(line + "\r\n")
	return x.reply()
}

// pipelined: several commands in one write, and again around a transfer;
// every reply comes, in order.
func (l *advLab) pipelined(t *testing.T) {
	x := dialCtrl(t, l.attacker, l.dial(netlab.IPv6))
	k := l.key(t, x, l.srv.Addr(netlab.IPv6))
	x.send("USER anonymous\r\nPASS " + l.srv.Pass + "\r\nTYPE I\r\nPWD\r\nNOOP\r\nEPSV\r\n")
	var r ftp.Reply
	for _, code := range []int{230, 230, 200, 257, 200, 229} {
		r = x.expect(code)
	}
	port, _, _, err := ftp.Find229(r.Text())
	if err != nil {
		t.Fatal(err)
	}
	dc := l.dialData(t, netip.AddrPortFrom(l.srv.NS.Addr(netlab.IPv6), port))
	x.send("RETR " + l.srv.Small.Path + "\r\nNOOP\r\nQUIT\r\n")
	x.expect(150)
	if got := readAll(t, dc); int64(len(got)) != l.srv.Small.Size {
		t.Errorf("RETR got %d bytes, want %d", len(got), l.srv.Small.Size)
	}
	for _, code := range []int{226, 200, 221} {
		x.expect(code)
	}
	expectNotRefused(t, l.a, k)
}

// pipelinedRefusal: a bounce PORT in the middle of pipelined commands is
// refused, and its reply comes in its place among the server's.
func (l *advLab) pipelinedRefusal(t *testing.T) {
	target := ap("192.0.2.1:2523")
	hostNS(t, l.topo, target.Addr()).StartEcho(t, target.String())
	x := dialCtrl(t, l.attacker, l.dial(netlab.IPv4))
	k := l.key(t, x, l.srv.Addr(netlab.IPv4))
	x.send("USER anonymous\r\nNOOP\r\nPORT 192,0,2,1,9,219\r\nNOOP\r\nPWD\r\n")
	x.expect(230)
	x.expect(200)
	r := x.expect(500)
	if !strings.Contains(replyLine(r), "PORT address must be your own") {
		t.Errorf("refusal %q", r.Bytes())
	}
	x.expect(200)
	x.expect(257)
	l.expectRefused(t, k, "PORT", replyLine(r))
	l.expectTargetClosed(t, netlab.IPv4, target, true)
	x.expectCode(x.cmd("QUIT"), 221)
}

// slowTransfer: a download that stalls (the client stops reading) for
// longer than the idle timeout, with nothing on the control channel
// meanwhile, is not cut.
func (l *advLab) slowTransfer(t *testing.T) {
	x, dc, k := l.startBigRetr(t, netlab.IPv4)
	n, err := io.ReadFull(dc, make([]byte, 1<<20))
	if err != nil {
		t.Fatalf("transfer did not start: %v", err)
	}
	time.Sleep(advIdleTimeout + time.Second)
	rest, err := io.Copy(io.Discard, dc)
	if err != nil {
		t.Fatalf("reading the data connection after the stall: %v", err)
	}
	if int64(n)+rest != l.srv.Big.Size {
		t.Errorf("got %d bytes, want %d", int64(n)+rest, l.srv.Big.Size)
	}
	x.expect(226)
	x.expectCode(x.cmd("NOOP"), 200)
	x.expectCode(x.cmd("QUIT"), 221)
	expectNotRefused(t, l.a, k)
}

// --- resets ---

// startBigRetr logs in, opens a passive data connection and starts the
// download of the big file; it returns after the 150.
func (l *advLab) startBigRetr(t *testing.T, f netlab.Family) (*ctrl, net.Conn, logKey) {
	t.Helper()
	x := dialCtrl(t, l.attacker, l.dial(f))
	k := l.key(t, x, l.srv.Addr(f))
	x.login(l.srv.User, l.srv.Pass)
	port := x.epsv()
	dc := l.dialData(t, netip.AddrPortFrom(l.srv.NS.Addr(f), port))
	x.send("RETR " + l.srv.Big.Path + "\r\n")
	x.expect(150)
	return x, dc, k
}

// resetData: the client resets the data connection in the middle of a
// download. The server's failure reply reaches the client, the session
// goes on and keeps no pinhole.
func (l *advLab) resetData(t *testing.T) {
	x, dc, k := l.startBigRetr(t, netlab.IPv4)
	if _, err := io.ReadFull(dc, make([]byte, 1<<20)); err != nil {
		t.Fatalf("transfer did not start: %v", err)
	}
	resetConn(t, dc)
	x.expect(426)
	waitSessionPinholesGone(t, l.topo.GW, k.session, 5*time.Second)
	x.expectCode(x.cmd("NOOP"), 200)
	x.expectCode(x.cmd("QUIT"), 221)
	expectNotRefused(t, l.a, k)
}

// resetControl: the client resets the control connection in the middle of
// a download. ftpalg ends the session and keeps no pinhole.
func (l *advLab) resetControl(t *testing.T) {
	x, dc, k := l.startBigRetr(t, netlab.IPv6)
	if _, err := io.ReadFull(dc, make([]byte, 1<<20)); err != nil {
		t.Fatalf("transfer did not start: %v", err)
	}
	resetConn(t, x.c)
	waitSessionEnd(t, l.a, k, 10*time.Second)
	waitSessionPinholesGone(t, l.topo.GW, k.session, 5*time.Second)
	dc.Close()
	expectNotRefused(t, l.a, k)
}

// dialData opens a passive data connection from the attacker's host. Its
// receive buffer is small and fixed (no autotuning), so that a big download
// cannot sit complete in socket buffers while the test holds it back: the
// transfer stays in progress until the test reads.
func (l *advLab) dialData(t *testing.T, to netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	var c net.Conn
	err := l.attacker.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", to.String())
		return err
	})
	if err != nil {
		t.Fatalf("data connection to %v: %v", to, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

func readAll(t *testing.T, dc net.Conn) string {
	t.Helper()
	b, err := io.ReadAll(dc)
	if err != nil {
		t.Fatalf("reading the data connection: %v", err)
	}
	return string(b)
}

// --- hostile servers ---

// serverCase is a hostile server answering one command of a client driven
// by the test; the client is in the client namespace, the server on the
// server host, ftpalg in between (gateway mode).
type serverCase struct {
	name string
	f    netlab.Family
	// cmd is what the client sends after login; script answers it.
	cmd    string
	script script
	// codes are the replies the client must get, in order.
	codes []int
	// text is a stable part of the first reply.
	text string
	// untouched: the replies reach the client exactly as the server wrote
	// them.
	untouched bool
	// what of the refused line; "" if nothing is refused.
	what string
	ends bool
	// target is the endpoint the hostile reply names (an EchoServer
	// listens there); zero if none.
	target netip.AddrPort
	// check runs extra checks before the target is probed.
	check func(t *testing.T, l *advLab, k logKey, replies []ftp.Reply)
}

// answer returns a script that answers verb with raw (and closes if told).
func answer(verb, raw string, closeAfter bool) script {
	return func(v, _ string) (string, bool) {
		if v == verb {
			return raw, closeAfter
		}
		return "502 Not implemented.\r\n", false
	}
}

// gatewayServerCases: the hostile server is 203.0.113.2 / 2001:db8:2::2,
// the third host 203.0.113.3 / 2001:db8:2::3.
func gatewayServerCases() []serverCase {
	helpWith227 := "214-The following commands are recognized.\r\n227 Entering Passive Mode (203,0,113,3,10,1)\r\n214 Help OK.\r\n"
	noopThen227 := "200 NOOP ok.\r\n227 Entering Passive Mode (203,0,113,3,10,2)\r\n"
	manyLines := "211-Features:\r\n" + strings.Repeat(" MDTM\r\n", 1200) + "211 End\r\n"
	return []serverCase{
		{name: "227-inside-multi-line-reply", f: netlab.IPv4, cmd: "HELP", script: answer("HELP", helpWith227, false),
			codes: []int{214}, untouched: true, target: ap("203.0.113.3:2561")},
		{name: "unsolicited-227", f: netlab.IPv4, cmd: "NOOP", script: answer("NOOP", noopThen227, false),
			codes: []int{200, 227}, untouched: true, target: ap("203.0.113.3:2562")},
		{name: "multi-line-227-to-PASV", f: netlab.IPv4, cmd: "PASV",
			script: answer("PASV", "227-Entering Passive Mode (203,0,113,3,10,3)\r\n227 Entering Passive Mode (203,0,113,3,10,3)\r\n", false),
			codes:  []int{425}, text: "multi-line passive reply", what: "PASV reply", target: ap("203.0.113.3:2563")},
		{name: "227-names-third-host", f: netlab.IPv4, cmd: "PASV",
			script: answer("PASV", "227 Entering Passive Mode (203,0,113,3,10,4).\r\n", false),
			codes:  []int{227}, text: "Entering Passive Mode (203,0,113,2,10,4)", target: ap("203.0.113.3:2564"),
			check: thirdHostRewritten},
		{name: "227-privileged-port", f: netlab.IPv4, cmd: "PASV",
			script: answer("PASV", "227 Entering Passive Mode (203,0,113,2,0,25)\r\n", false),
			codes:  []int{425}, text: "data port 25, below 1024", what: "PASV reply", target: ap("203.0.113.2:25")},
		{name: "227-octet-overflow", f: netlab.IPv4, cmd: "PASV",
			script: answer("PASV", "227 Entering Passive Mode (203,0,113,2,266,5)\r\n", false),
			codes:  []int{425}, text: "malformed 227", what: "PASV reply", target: ap("203.0.113.2:2565")},
		{name: "227-seven-numbers", f: netlab.IPv4, cmd: "PASV",
			script: answer("PASV", "227 Entering Passive Mode (203,0,113,3,10,6,1)\r\n", false),
			codes:  []int{425}, text: "malformed 227", what: "PASV reply", target: ap("203.0.113.3:2566")},
		{name: "229-privileged-port-IPv6", f: netlab.IPv6, cmd: "EPSV",
			script: answer("EPSV", "229 Entering Extended Passive Mode (|||23|)\r\n", false),
			codes:  []int{425}, text: "data port 23, below 1024", what: "EPSV reply", target: ap("[2001:db8:2::2]:23")},
		{name: "229-huge-port-IPv6", f: netlab.IPv6, cmd: "EPSV",
			script: answer("EPSV", "229 Entering Extended Passive Mode (|||68103|)\r\n", false),
			codes:  []int{425}, text: "malformed 229", what: "EPSV reply", target: ap("[2001:db8:2::2]:2567")},
		{name: "227-on-IPv6", f: netlab.IPv6, cmd: "PASV",
			script: answer("PASV", "227 Entering Passive Mode (203,0,113,3,10,8)\r\n", false),
			codes:  []int{425}, text: "PASV cannot work over IPv6", what: "PASV reply", target: ap("203.0.113.3:2568")},
		// Replies no FTP server sends end the session.
		{name: "reply-garbage", f: netlab.IPv4, cmd: "NOOP", script: answer("NOOP", "\x16\x03\x01\xfe\x80 garbage\r\n", false),
			codes: []int{421}, text: "invalid reply", what: "server reply", ends: true},
		{name: "reply-over-long", f: netlab.IPv6, cmd: "NOOP", script: answer("NOOP", "200 "+strings.Repeat("A", 5000)+"\r\n", false),
			codes: []int{421}, text: "invalid reply", what: "server reply", ends: true},
		{name: "reply-NUL", f: netlab.IPv4, cmd: "NOOP", script: answer("NOOP", "200 NO\x00OP\r\n", false),
			codes: []int{421}, text: "invalid reply", what: "server reply", ends: true},
		{name: "reply-too-many-lines", f: netlab.IPv4, cmd: "FEAT", script: answer("FEAT", manyLines, false),
			codes: []int{421}, text: "invalid reply", what: "server reply", ends: true},
	}
}

// thirdHostRewritten: a 227 answering PASV but naming a third host is
// rewritten to the real server, and the pinhole leads there only.
func thirdHostRewritten(t *testing.T, l *advLab, k logKey, _ []ftp.Reply) {
	opened := waitKeyLogs(l.a, k, "pinhole open", 1)
	if len(opened) != 1 {
		t.Fatalf("%d pinhole open lines, want 1: %v", len(opened), opened)
	}
	if got := logStr(opened[0]["announced"]); got != "203.0.113.3:2564" {
		t.Errorf("pinhole open: announced=%q, want the third host 203.0.113.3:2564", got)
	}
	if got := logStr(opened[0]["rewritten"]); got != "203.0.113.2:2564" {
		t.Errorf("pinhole open: rewritten=%q, want the real server 203.0.113.2:2564", got)
	}
	// The real server's endpoint is open (the probe below would be
	// meaningless if nothing were), the third host's is not.
	rewritten := ap("203.0.113.2:2564")
	l.topo.Server.StartEcho(t, rewritten.String())
	if rs := rulesNaming(t, l.topo.GW, rewritten); len(rs) == 0 {
		t.Errorf("no pinhole rule for the real server's endpoint %v", rewritten)
	}
	expectUnreachable(t, l.ctx, []probe{{l.topo.Client, ap("203.0.113.3:2564")}})
	if err := l.topo.Client.CheckEcho(l.ctx, rewritten.String(), 5*time.Second); err != nil {
		t.Errorf("the rewritten endpoint %v is not reachable: %v", rewritten, err)
	}
}

// serverCase runs c: login, the command, the hostile answer, the checks.
func (l *advLab) serverCase(t *testing.T, c serverCase) {
	l.hs.handle(c.name, c.script)
	if c.target.IsValid() {
		hostNS(t, l.topo, c.target.Addr()).StartEcho(t, c.target.String())
	}
	server := netip.AddrPortFrom(l.topo.Server.Addr(c.f), 21)
	x := dialCtrl(t, l.topo.Client, server)
	k := l.key(t, x, server)
	x.login(c.name, "x")
	x.send(c.cmd + "\r\n")
	var replies []ftp.Reply
	var raw []byte
	for _, code := range c.codes {
		r := x.expect(code)
		replies = append(replies, r)
		raw = append(raw, r.Bytes()...)
	}
	if !strings.Contains(string(replies[0].Bytes()), c.text) {
		t.Errorf("reply %q lacks %q", replies[0].Bytes(), c.text)
	}
	if c.untouched {
		if want, _ := c.script(c.cmd, ""); string(raw) != want {
			t.Errorf("the server's replies were changed on the way:\ngot  %q\nwant %q", raw, want)
		}
	}
	if c.what != "" {
		l.expectRefused(t, k, c.what, replyLine(replies[0]))
	} else {
		expectNotRefused(t, l.a, k)
	}
	if c.check != nil {
		c.check(t, l, k, replies)
	} else {
		if opened := keyLogs(l.a, k, "pinhole open"); len(opened) > 0 {
			t.Errorf("ftpalg opened a pinhole: %v", opened)
		}
		if left := sessionPinholes(t, l.topo.GW, k.session); len(left) > 0 {
			t.Errorf("the session owns pinholes:\n%s", strings.Join(left, "\n"))
		}
	}
	if c.target.IsValid() {
		if rs := rulesNaming(t, l.topo.GW, c.target); len(rs) > 0 {
			t.Errorf("pinhole rules lead to the target %v:\n%s", c.target, strings.Join(rs, "\n"))
		}
		expectUnreachable(t, l.ctx, []probe{{l.topo.Client, c.target}})
	}
	if c.ends {
		x.expectClosed()
		waitSessionEnd(t, l.a, k, 5*time.Second)
		return
	}
	x.expectCode(x.cmd("QUIT"), 221)
	waitSessionEnd(t, l.a, k, 5*time.Second)
	waitSessionPinholesGone(t, l.topo.GW, k.session, 5*time.Second)
}

// silentServer: a server that accepts the connection but never says a
// word; the client gets a 421 after the login timeout.
func (l *advLab) silentServer(t *testing.T) {
	server := netip.AddrPortFrom(silentAddr4, 21)
	x := dialRaw(t, l.topo.Client, server)
	l.expectTimeout(t, x, l.key(t, x, server), "login timeout", advLoginTimeout)
}

// hungServer: a server that stops answering after the login; the pending
// command does not keep the session alive past the idle timeout.
func (l *advLab) hungServer(t *testing.T) {
	const user = "hangs-after-login"
	l.hs.handle(user, func(string, string) (string, bool) { return "", false })
	server := netip.AddrPortFrom(netlab.ServerAddr4, 21)
	x := dialCtrl(t, l.topo.Client, server)
	k := l.key(t, x, server)
	x.login(user, "x")
	x.send("NOOP\r\n")
	l.expectTimeout(t, x, k, "idle timeout", advIdleTimeout)
}

// unreachableServer: the client dials a server that does not exist; ftpalg
// answers 421 once its connect timeout passed.
func (l *advLab) unreachableServer(t *testing.T) {
	server := netip.AddrPortFrom(unreachableAddr4, 21)
	x := dialRaw(t, l.topo.Client, server)
	// The proxy refuses the connection before it becomes a session.
	k := logKey{client: x.local(), server: server}
	r := x.expect(421)
	if !strings.Contains(replyLine(r), "cannot reach the server") {
		t.Errorf("reply %q", r.Bytes())
	}
	// Not a policy refusal: one line of its own, naming the server.
	if rs := keyLogs(l.a, k, "refused"); len(rs) != 0 {
		t.Errorf("an unreachable server was logged as a refusal: %v", rs)
	}
	var us []map[string]any
	for _, u := range l.a.Logs("server unreachable") {
		if u["client"] == k.client.String() && u["server"] == k.server.String() {
			us = append(us, u)
		}
	}
	if len(us) != 1 || logStr(us[0]["reply"]) != replyLine(r) || logStr(us[0]["err"]) == "" {
		t.Errorf("want one \"server unreachable\" line with the reply the client got, have %v", us)
	}
	x.expectClosed()
}
