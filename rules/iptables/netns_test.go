package iptables

// Root-only tests of the iptables backend against the kernel, each in a
// network namespace of its own. A namespace belongs to an OS thread, and the
// iptables commands go-iptables runs inherit the namespace of the thread
// that starts them, so every test locks its goroutine to its thread before
// it switches (and subtests, which run on goroutines of their own, switch
// again).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// requireRoot skips tb without root or the iptables tools, or fails it
// when CI=true, so that a green CI means these tests ran.
func requireRoot(tb testing.TB) {
	tb.Helper()
	roottest.Require(tb, "iptables", "ip6tables", "iptables-save", "ip6tables-save")
}

// enterNetns locks the calling goroutine to its thread and moves the thread
// to a new, empty network namespace. The returned function moves it back;
// call it from the same goroutine (defer). If that fails the thread stays
// locked, so that Go discards it when the goroutine ends.
func enterNetns(tb testing.TB) (restore func()) {
	tb.Helper()
	requireRoot(tb)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("getting the current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		if errors.Is(err, os.ErrPermission) {
			roottest.Unavailable(tb, "creating a netns: %v", err)
		}
		tb.Fatalf("creating a netns: %v", err)
	}
	return func() {
		if err := netns.Set(orig); err != nil {
			tb.Errorf("returning to the original netns: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		ns.Close()
		orig.Close()
	}
}

// newKernelBackend returns the real backend; the caller is in a netns.
func newKernelBackend(tb testing.TB) *Backend {
	tb.Helper()
	b, err := New(Config{Log: testLog(tb)})
	if err != nil {
		tb.Fatal(err)
	}
	if v := b.Variant(); v != "nf_tables" && v != "legacy" {
		tb.Errorf("Variant() = %q", v)
	}
	return b
}

// kernelRunners returns go-iptables handles for both families, to set up
// foreign and stale state as another program would.
func kernelRunners(tb testing.TB) (v4, v6 *goipt.IPTables) {
	tb.Helper()
	v4, err := goipt.New(goipt.IPFamily(goipt.ProtocolIPv4), goipt.Timeout(5))
	if err != nil {
		tb.Fatal(err)
	}
	v6, err = goipt.New(goipt.IPFamily(goipt.ProtocolIPv6), goipt.Timeout(5))
	if err != nil {
		tb.Fatal(err)
	}
	return v4, v6
}

// countersRE matches the counters of a chain line of iptables-save.
var countersRE = regexp.MustCompile(` \[[0-9]+:[0-9]+\]$`)

// kernelSave returns iptables-save (or ip6tables-save) output in the
// format of fakeIPTables.save: filter and nat only, tables by name, no
// comment lines and no counters.
func kernelSave(tb testing.TB, cmd string) string {
	tb.Helper()
	out, err := exec.Command(cmd).Output()
	if err != nil {
		tb.Fatalf("running %s: %v", cmd, err)
	}
	blocks := map[string]string{}
	var table string
	var cur strings.Builder
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSuffix(line, "\n")
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			cur.Reset()
			cur.WriteString(line + "\n")
		case line == "COMMIT":
			cur.WriteString(line + "\n")
			blocks[table] = cur.String()
		default:
			cur.WriteString(countersRE.ReplaceAllString(line, "") + "\n")
		}
	}
	var b strings.Builder
	for _, t := range tables {
		b.WriteString(blocks[t])
	}
	return b.String()
}

// ownedRE matches what ftpalg owns in iptables-save output.
var ownedRE = regexp.MustCompile(`FTPALG-|"ftpalg:`)

// countFTPALG counts lines of both families' iptables-save output that
// name an owned chain or carry an ftpalg comment.
func countFTPALG(tb testing.TB) int {
	tb.Helper()
	n := 0
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			tb.Fatalf("running %s: %v", cmd, err)
		}
		for line := range strings.Lines(string(out)) {
			if ownedRE.MatchString(line) {
				n++
			}
		}
	}
	return n
}

// TestNetnsIPTablesGolden replays the golden scenarios against the kernel:
// the kernel must print back exactly what the fake holds. Closing every
// pinhole, then Teardown, must leave the firewall as it was.
func TestNetnsIPTablesGolden(t *testing.T) {
	requireRoot(t)
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel() // each in its own netns, on its own thread
			defer enterNetns(t)()
			ctx := t.Context()
			v4, v6 := kernelRunners(t)
			// Foreign state first: it creates the tables, so that
			// before and after compare like with like.
			if err := addForeign(v4, false); err != nil {
				t.Fatal(err)
			}
			if err := addForeign(v6, true); err != nil {
				t.Fatal(err)
			}
			before := kernelSave(t, "iptables-save") + kernelSave(t, "ip6tables-save")

			b := newKernelBackend(t)
			got, err := s.run(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, s.name, got, false)
			if err := b.Verify(ctx); err != nil {
				t.Errorf("Verify: %v", err)
			}
			for _, p := range s.pinholes {
				if err := b.Close(ctx, p); err != nil {
					t.Errorf("Close(%v): %v", p, err)
				}
				if err := b.Close(ctx, p); err != nil {
					t.Errorf("second Close(%v): %v", p, err)
				}
			}
			if err := b.Teardown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := b.Teardown(ctx); err != nil {
				t.Fatalf("second Teardown: %v", err)
			}
			after := kernelSave(t, "iptables-save") + kernelSave(t, "ip6tables-save")
			if d := cmp.Diff(before, after); d != "" {
				t.Errorf("firewall after Teardown (-before +after):\n%s", d)
			}
			if n := countFTPALG(t); n != 0 {
				t.Errorf("%d ftpalg lines after Teardown", n)
			}
		})
	}
}

// TestNetnsIPTablesSweep leaves a crashed run's state and foreign rules in
// the kernel: Setup must produce the sweep golden (the same as with the
// fake), and Teardown must leave exactly the foreign state.
func TestNetnsIPTablesSweep(t *testing.T) {
	t.Parallel() // in its own netns, on its own thread
	defer enterNetns(t)()
	ctx := t.Context()
	v4, v6 := kernelRunners(t)
	if err := addForeign(v4, false); err != nil {
		t.Fatal(err)
	}
	if err := addForeign(v6, true); err != nil {
		t.Fatal(err)
	}
	foreign := kernelSave(t, "iptables-save") + kernelSave(t, "ip6tables-save")
	if err := addStale(v4, false); err != nil {
		t.Fatal(err)
	}
	if err := addStale(v6, true); err != nil {
		t.Fatal(err)
	}

	b := newKernelBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "sweep", "# iptables-save\n"+kernelSave(t, "iptables-save")+
		"# ip6tables-save\n"+kernelSave(t, "ip6tables-save"), false)

	if err := b.Open(ctx, reversePassive); err != nil {
		t.Fatal(err)
	}
	// "ftpalg rules flush" from another process removes it all.
	if err := Flush(ctx, Config{Log: testLog(t)}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(foreign, kernelSave(t, "iptables-save")+kernelSave(t, "ip6tables-save")); d != "" {
		t.Errorf("after Flush (-foreign state +got):\n%s", d)
	}
	// The first backend's Close finds its rules gone: still fine.
	if err := b.Close(ctx, reversePassive); err != nil {
		t.Errorf("Close after Flush: %v", err)
	}
}

// TestNetnsIPTablesVerify simulates a firewall reload.
func TestNetnsIPTablesVerify(t *testing.T) {
	t.Parallel() // in its own netns, on its own thread
	defer enterNetns(t)()
	ctx := t.Context()
	b := newKernelBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Teardown(context.WithoutCancel(ctx))
	if err := b.Intercept(ctx, []string{"eth0"}, 2121); err != nil {
		t.Fatal(err)
	}
	if err := b.Open(ctx, passiveGateway); err != nil {
		t.Fatal(err)
	}
	if err := b.Open(ctx, activeGateway6); err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	v4, v6 := kernelRunners(t)
	if err := v4.ClearChain("nat", chainPostrouting); err != nil {
		t.Fatal(err)
	}
	err := b.Verify(ctx)
	if !errors.Is(err, ErrRulesChanged) || !strings.Contains(err.Error(), `chain FTPALG-POSTROUTING: 1 of 1 rules "ftpalg:s1:s1.p1"`) {
		t.Errorf("Verify after flushing a chain = %v", err)
	}
	// iptables -F; iptables -X, as a reload does.
	for _, table := range tables {
		for _, c := range slices.Concat(builtinChains[table], []string{chainForward, chainInput, chainPrerouting, chainOutput, chainPostrouting}) {
			if err := v6.ClearChain(table, c); err != nil {
				t.Fatal(err)
			}
		}
		for _, h := range hooks {
			if h.table == table {
				if err := v6.DeleteChain(table, h.chain); err != nil && !isNotExist(err) {
					t.Fatal(err)
				}
			}
		}
	}
	err = b.Verify(ctx)
	if !errors.Is(err, ErrRulesChanged) || !strings.Contains(err.Error(), "ip6tables -t filter jump FORWARD -> FTPALG-FORWARD") ||
		!strings.Contains(err.Error(), "ip6tables -t nat chain FTPALG-PREROUTING") {
		t.Errorf("Verify after a reload = %v", err)
	}
	// Setup repairs it all.
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(ctx); err != nil {
		t.Errorf("Verify after a new Setup: %v", err)
	}
}

// openLive opens n passive gateway pinholes with distinct clients and ports.
func openLive(ctx context.Context, b *Backend, n int) error {
	for i := range n {
		p := passiveGateway
		p.ID = rules.PinholeID{Session: 301, N: uint32(i)}
		p.Src = netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%200)})
		p.Dst = netip.AddrPortFrom(p.Dst.Addr(), uint16(10000+i))
		if err := b.Open(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkIPTablesOpenClose measures Open followed by Close of a passive
// gateway pinhole (four rules), with no and with 1,000 other pinholes live.
func BenchmarkIPTablesOpenClose(b *testing.B) {
	for _, live := range []int{0, 1000} {
		b.Run(fmt.Sprintf("live=%d", live), func(b *testing.B) {
			defer enterNetns(b)()
			ctx := b.Context()
			t, err := New(Config{Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			if err := t.Setup(ctx); err != nil {
				b.Fatal(err)
			}
			defer t.Teardown(context.WithoutCancel(ctx))
			if err := openLive(ctx, t, live); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := t.Open(ctx, passiveGateway); err != nil {
					b.Fatal(err)
				}
				if err := t.Close(ctx, passiveGateway); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// dataPath is a gateway namespace between a client and a server namespace:
//
//	client 192.0.2.10 --- 192.0.2.1 gateway 203.0.113.1 --- 203.0.113.5 server
//
// The gateway forwards, and its firewall drops new connections in INPUT and
// FORWARD except what ftpalg's chains accept. The test goroutine stays in
// the gateway namespace; in and run other namespaces' steps on its thread.
type dataPath struct {
	t                   *testing.T
	gw, client, server  netns.NsHandle
	clientIP, serverIP  netip.Addr
	gwInside, gwOutside netip.Addr
}

func newDataPath(t *testing.T) *dataPath {
	d := &dataPath{t: t,
		clientIP: addr("192.0.2.10"), gwInside: addr("192.0.2.1"),
		gwOutside: addr("203.0.113.1"), serverIP: addr("203.0.113.5")}
	var err error
	if d.gw, err = netns.Get(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.gw.Close() })
	newNS := func() netns.NsHandle {
		ns, err := netns.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Close() })
		if err := netns.Set(d.gw); err != nil {
			t.Fatal(err)
		}
		return ns
	}
	d.client, d.server = newNS(), newNS()
	d.link("gc", d.gwInside, d.client, d.clientIP)
	d.link("gs", d.gwOutside, d.server, d.serverIP)
	d.up(d.gw, "lo")

	// Forwarding on in the gateway: /proc/sys/net belongs to the
	// namespace of the thread that opens it, the gateway's.
	if cur, err := netns.Get(); err != nil || !cur.Equal(d.gw) {
		t.Fatalf("not in the gateway namespace (%v)", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ipt, _ := kernelRunners(t)
	for _, c := range []string{"INPUT", "FORWARD"} {
		if err := ipt.Append("filter", c, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"); err != nil {
			t.Fatal(err)
		}
		if err := ipt.ChangePolicy("filter", c, "DROP"); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (d *dataPath) handle(ns netns.NsHandle) *netlink.Handle {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		d.t.Fatal(err)
	}
	return h
}

func (d *dataPath) up(ns netns.NsHandle, name string) {
	h := d.handle(ns)
	defer h.Close()
	l, err := h.LinkByName(name)
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err != nil {
		d.t.Fatalf("setting %s up: %v", name, err)
	}
}

// link connects the gateway (gwIf, gwIP/24) and peer (peer0, peerIP/24,
// default route via gwIP) with a veth pair.
func (d *dataPath) link(gwIf string, gwIP netip.Addr, peer netns.NsHandle, peerIP netip.Addr) {
	t := d.t
	gh := d.handle(d.gw)
	defer gh.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: gwIf}, PeerName: "peer0", PeerNamespace: netlink.NsFd(peer)}
	if err := gh.LinkAdd(veth); err != nil {
		t.Fatalf("adding veth %s: %v", gwIf, err)
	}
	ph := d.handle(peer)
	defer ph.Close()
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		ip   netip.Addr
	}{{gh, gwIf, gwIP}, {ph, "peer0", peerIP}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		a, err := netlink.ParseAddr(netip.PrefixFrom(side.ip, 24).String())
		if err != nil {
			t.Fatal(err)
		}
		if err := side.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	d.up(peer, "lo")
	if err := ph.RouteAdd(&netlink.Route{Gw: gwIP.AsSlice()}); err != nil {
		t.Fatalf("adding default route: %v", err)
	}
}

// in runs fn with the thread in ns, then returns to the gateway. Sockets
// keep the namespace they were made in.
func (d *dataPath) in(ns netns.NsHandle, fn func()) {
	if err := netns.Set(ns); err != nil {
		d.t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(d.gw); err != nil {
			d.t.Fatal(err)
		}
	}()
	fn()
}

func (d *dataPath) listen(ns netns.NsHandle, at netip.AddrPort) net.Listener {
	var ln net.Listener
	d.in(ns, func() {
		var err error
		if ln, err = net.Listen("tcp", at.String()); err != nil {
			d.t.Fatal(err)
		}
	})
	d.t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from ns (from the address from, when valid) to to, with a
// short timeout: the gateway drops what it does not accept.
func (d *dataPath) dial(ns netns.NsHandle, from netip.Addr, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	var err error
	d.in(ns, func() {
		dl := net.Dialer{Timeout: 300 * time.Millisecond}
		if from.IsValid() {
			dl.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
		}
		c, err = dl.Dial("tcp", to.String())
	})
	if err == nil {
		d.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// expectPeer dials and checks that ln accepts a connection from peer; it
// returns both ends.
func (d *dataPath) expectPeer(ns netns.NsHandle, from netip.Addr, to netip.AddrPort, ln net.Listener, peer netip.Addr) (client, server net.Conn) {
	d.t.Helper()
	c, err := d.dial(ns, from, to)
	if err != nil {
		d.t.Fatalf("dialing %v: %v", to, err)
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	s, err := ln.Accept()
	if err != nil {
		d.t.Fatalf("accepting the connection to %v: %v", to, err)
	}
	d.t.Cleanup(func() { s.Close() })
	if got := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != peer {
		d.t.Errorf("connection to %v arrived from %v, want %v", to, got, peer)
	}
	return c, s
}

func (d *dataPath) expectBlocked(ns netns.NsHandle, from netip.Addr, to netip.AddrPort) {
	d.t.Helper()
	if _, err := d.dial(ns, from, to); err == nil {
		d.t.Errorf("connection to %v got through", to)
	}
}

// TestNetnsIPTablesDataPath checks that pinholes let through exactly the
// connection they describe, translated as they say, in each of the paths a
// first packet can take (forwarded, to the gateway, from the gateway), and
// that Close stops new connections but not established ones.
func TestNetnsIPTablesDataPath(t *testing.T) {
	t.Parallel() // in its own netns, on its own thread
	defer enterNetns(t)()
	ctx := t.Context()
	d := newDataPath(t)
	b := newKernelBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Teardown(context.WithoutCancel(ctx))
	open := func(p rules.Pinhole) {
		t.Helper()
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	at := netip.AddrPortFrom

	t.Log("routed: forwarded, no translation")
	ln := d.listen(d.server, at(d.serverIP, 40002))
	d.listen(d.server, at(d.serverIP, 40003))
	d.expectBlocked(d.client, netip.Addr{}, at(d.serverIP, 40002))
	p := rules.Pinhole{ID: rules.PinholeID{Session: 101, N: 1}, Src: d.clientIP, Dst: at(d.serverIP, 40002)}
	open(p)
	c, s := d.expectPeer(d.client, netip.Addr{}, at(d.serverIP, 40002), ln, d.clientIP)
	d.expectBlocked(d.client, netip.Addr{}, at(d.serverIP, 40003))
	d.expectBlocked(d.server, netip.Addr{}, at(d.clientIP, 40002))
	if err := b.Close(ctx, p); err != nil {
		t.Fatal(err)
	}
	d.expectBlocked(d.client, netip.Addr{}, at(d.serverIP, 40002))
	// The connection established through the pinhole goes on.
	if _, err := c.Write([]byte("still here")); err != nil {
		t.Errorf("writing on the established connection after Close: %v", err)
	}
	s.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(s, make([]byte, len("still here"))); err != nil {
		t.Errorf("reading on the established connection after Close: %v", err)
	}

	t.Log("passive gateway: forwarded, SNAT")
	ln = d.listen(d.server, at(d.serverIP, 40000))
	open(rules.Pinhole{ID: rules.PinholeID{Session: 102, N: 1}, Src: d.clientIP, Dst: at(d.serverIP, 40000), SNAT: d.gwOutside})
	_, _ = d.expectPeer(d.client, netip.Addr{}, at(d.serverIP, 40000), ln, d.gwOutside)

	t.Log("active gateway: forwarded, DNAT")
	ln = d.listen(d.client, at(d.clientIP, 40001))
	d.expectBlocked(d.server, netip.Addr{}, at(d.gwOutside, 50000))
	open(rules.Pinhole{ID: rules.PinholeID{Session: 103, N: 1}, Src: d.serverIP, Dst: at(d.gwOutside, 50000), DNAT: at(d.clientIP, 40001)})
	_, _ = d.expectPeer(d.server, netip.Addr{}, at(d.gwOutside, 50000), ln, d.serverIP)
	d.expectBlocked(d.server, netip.Addr{}, at(d.gwOutside, 50001))

	t.Log("reverse passive: forwarded, DNAT and SNAT")
	ln = d.listen(d.server, at(d.serverIP, 30000))
	open(rules.Pinhole{ID: rules.PinholeID{Session: 104, N: 1}, Src: d.clientIP, Dst: at(d.gwInside, 50002),
		DNAT: at(d.serverIP, 30000), SNAT: d.gwOutside})
	_, _ = d.expectPeer(d.client, netip.Addr{}, at(d.gwInside, 50002), ln, d.gwOutside)

	t.Log("target on the gateway: INPUT, SNAT in nat INPUT")
	ln = d.listen(d.gw, at(d.gwInside, 40005))
	d.expectBlocked(d.client, netip.Addr{}, at(d.gwInside, 40005))
	open(rules.Pinhole{ID: rules.PinholeID{Session: 105, N: 1}, Src: d.clientIP, Dst: at(d.gwInside, 40005), SNAT: d.gwOutside})
	_, _ = d.expectPeer(d.client, netip.Addr{}, at(d.gwInside, 40005), ln, d.gwOutside)

	t.Log("source on the gateway: DNAT in nat OUTPUT")
	ln = d.listen(d.client, at(d.clientIP, 40006))
	open(rules.Pinhole{ID: rules.PinholeID{Session: 106, N: 1}, Src: d.gwOutside, Dst: at(addr("203.0.113.99"), 50003), DNAT: at(d.clientIP, 40006)})
	_, _ = d.expectPeer(d.gw, d.gwOutside, at(addr("203.0.113.99"), 50003), ln, d.gwOutside)

	if err := b.Verify(ctx); err != nil {
		t.Error(err)
	}
}

// BenchmarkIPTablesOpenUnderLoad measures Open alone (the call a PASV
// reply waits for) while 4 other sessions open and close pinholes without
// pause.
func BenchmarkIPTablesOpenUnderLoad(b *testing.B) {
	defer enterNetns(b)()
	ctx := b.Context()
	ns, err := netns.Get()
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Close()
	t, err := New(Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	if err := t.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	defer t.Teardown(context.WithoutCancel(ctx))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			// A goroutine of its own: move its thread to the
			// benchmark's netns; Go discards the thread at the end.
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				b.Error(err)
				return
			}
			p := passiveGateway
			p.ID = rules.PinholeID{Session: 302, N: uint32(i)}
			p.Dst = netip.AddrPortFrom(p.Dst.Addr(), uint16(20000+i))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := t.Open(ctx, p); err != nil {
					b.Error(err)
					return
				}
				if err := t.Close(ctx, p); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	defer wg.Wait()
	defer close(stop)
	for b.Loop() {
		if err := t.Open(ctx, passiveGateway); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := t.Close(ctx, passiveGateway); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkIPTablesOpenCloseParallel measures Open followed by Close of a
// passive gateway pinhole from 32 sessions at once, each with a pinhole of
// its own, with no and with 1,000 other pinholes live; ns/op is wall time
// per Open+Close pair. The batching shows as the gap to
// BenchmarkIPTablesOpenClose.
func BenchmarkIPTablesOpenCloseParallel(b *testing.B) {
	for _, live := range []int{0, 1000} {
		b.Run(fmt.Sprintf("live=%d", live), func(b *testing.B) {
			defer enterNetns(b)()
			ctx := b.Context()
			ns, err := netns.Get()
			if err != nil {
				b.Fatal(err)
			}
			defer ns.Close()
			t, err := New(Config{Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			if err := t.Setup(ctx); err != nil {
				b.Fatal(err)
			}
			defer t.Teardown(context.WithoutCancel(ctx))
			if err := openLive(ctx, t, live); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int32
			b.SetParallelism(16) // 16 × GOMAXPROCS sessions
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				// A goroutine of its own: move its thread to the
				// benchmark's netns; Go discards the thread at
				// the end. Without the netns, touch nothing.
				runtime.LockOSThread()
				if err := netns.Set(ns); err != nil {
					b.Error(err)
					return
				}
				i := next.Add(1)
				p := passiveGateway
				p.ID = rules.PinholeID{Session: 303, N: uint32(i)}
				p.Dst = netip.AddrPortFrom(p.Dst.Addr(), uint16(20000+i))
				for pb.Next() {
					if err := t.Open(ctx, p); err != nil {
						b.Error(err)
						return
					}
					if err := t.Close(ctx, p); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkIPTablesVerify measures Verify, which Watch runs every 2s, with
// 1,000 pinholes open.
func BenchmarkIPTablesVerify(b *testing.B) {
	defer enterNetns(b)()
	ctx := b.Context()
	t, err := New(Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	if err := t.Setup(ctx); err != nil {
		b.Fatal(err)
	}
	defer t.Teardown(context.WithoutCancel(ctx))
	if err := openLive(ctx, t, 1000); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := t.Verify(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// minimalRuleset is what a distribution's firewall might restore: DROP
// policies with established connections accepted, and nothing of ftpalg.
const minimalRuleset = `*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
`

// runIn runs a command in the current thread's netns, with stdin.
func runIn(t *testing.T, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("running %s %v: %v: %s", name, args, err, out)
	}
}

// TestNetnsIPTablesRepair breaks the firewall as reloads do, while Watch
// runs: everything must come back (the test logs how long it took),
// exactly as before, and the pinhole must let its connection through again.
func TestNetnsIPTablesRepair(t *testing.T) {
	t.Parallel() // in its own netns, on its own thread
	defer enterNetns(t)()
	ctx := t.Context()
	d := newDataPath(t)
	b := newKernelBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Teardown(context.WithoutCancel(ctx))
	if err := b.Intercept(ctx, []string{"gc"}, 2121); err != nil {
		t.Fatal(err)
	}
	if err := b.AllowListeners(ctx, []netip.AddrPort{netip.AddrPortFrom(d.gwInside, 2122)}); err != nil {
		t.Fatal(err)
	}
	at := netip.AddrPortFrom
	// A pinhole admits one connection (its accept rule carries a one-SYN
	// quota), so every check below uses a pinhole of its own: the first
	// for the healthy firewall, one for Repair, one per Watch step.
	var pgs []rules.Pinhole
	var lns []net.Listener
	for i := range 6 {
		p := rules.Pinhole{ID: rules.PinholeID{Session: 102, N: uint32(i + 1)}, Src: d.clientIP, Dst: at(d.serverIP, uint16(40000+i)), SNAT: d.gwOutside}
		pgs = append(pgs, p)
		lns = append(lns, d.listen(d.server, p.Dst))
	}
	for _, p := range append(slices.Clone(pgs), passiveGateway6, reversePassive) {
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	next := 0
	pg, ln := pgs[next], lns[next]
	d.expectPeer(d.client, netip.Addr{}, pg.Dst, ln, d.gwOutside)
	// A used pinhole admits no second connection.
	d.expectBlocked(d.client, netip.Addr{}, pg.Dst)
	want, err := b.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkRepaired := func(step string) {
		t.Helper()
		got, err := b.Rules(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s: rules after repair (-want +got):\n%s", step, d)
		}
		next++
		pg, ln = pgs[next], lns[next]
		d.expectPeer(d.client, netip.Addr{}, pg.Dst, ln, d.gwOutside)
	}

	// Repair by hand: the damage is real, and Repair undoes it.
	runIn(t, minimalRuleset, "iptables-restore")
	if err := b.Verify(ctx); !errors.Is(err, ErrRulesChanged) {
		t.Fatalf("Verify after a reload = %v, want %v", err, ErrRulesChanged)
	}
	d.expectBlocked(d.client, netip.Addr{}, pgs[next+1].Dst)
	if repaired, err := b.Repair(ctx); err != nil || !repaired {
		t.Fatalf("Repair = %v, %v; want true, nil", repaired, err)
	}
	checkRepaired("Repair after iptables-restore")
	if repaired, err := b.Repair(ctx); err != nil || repaired {
		t.Errorf("Repair of a healthy firewall = %v, %v; want false, nil", repaired, err)
	}

	// Watch, on a thread of its own in this netns.
	const interval = 250 * time.Millisecond
	wctx, cancel := context.WithCancel(ctx)
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		runtime.LockOSThread() // never unlocked: Go discards the thread
		if err := netns.Set(d.gw); err != nil {
			t.Error(err)
			return
		}
		b.Watch(wctx, interval)
	}()
	defer func() {
		cancel()
		<-watching
	}()
	for _, step := range []struct {
		name   string
		break_ func()
	}{
		{"iptables -F FTPALG-FORWARD", func() { runIn(t, "", "iptables", "-w", "-F", chainForward) }},
		{"iptables -D FORWARD <jump>", func() {
			runIn(t, "", "iptables", "-w", "-D", "FORWARD", "-m", "comment", "--comment", jumpComment, "-j", chainForward)
		}},
		{"iptables -t nat -F", func() { runIn(t, "", "iptables", "-w", "-t", "nat", "-F") }},
		{"iptables-restore", func() {
			runIn(t, minimalRuleset, "iptables-restore")
			runIn(t, minimalRuleset, "ip6tables-restore")
		}},
	} {
		step.break_()
		start := time.Now()
		// The bound is generous on purpose: a loaded machine may delay
		// Watch's ticks by seconds; only a repair that never comes fails.
		for b.Verify(ctx) != nil {
			if time.Since(start) > interval+30*time.Second {
				t.Fatalf("%s: not repaired after %v", step.name, time.Since(start))
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("%s: repaired after %v (interval %v)", step.name, time.Since(start).Round(time.Millisecond), interval)
		checkRepaired(step.name)
	}
	cancel()
	<-watching
	for _, p := range append(pgs, passiveGateway6, reversePassive) {
		if err := b.Close(ctx, p); err != nil {
			t.Error(err)
		}
	}
	if err := b.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countFTPALG(t); n != 0 {
		t.Errorf("%d ftpalg lines after Teardown", n)
	}
}
