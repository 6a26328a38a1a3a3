package nftables

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// dataPath is three namespaces:
//
//	client 192.0.2.10    --- 192.0.2.1    gateway 203.0.113.1    --- 203.0.113.5    server
//	       2001:db8:1::10 --- 2001:db8:1::1        2001:db8:2::1 --- 2001:db8:2::5
//
// The gateway forwards, and its operator firewall (iptables or native
// nftables) drops new connections in input and forward. The test goroutine
// stays in the gateway namespace; in runs other namespaces' steps on its
// thread.
type dataPath struct {
	t                   *testing.T
	gw, client, server  netns.NsHandle
	clientIP, serverIP  netip.Addr
	gwInside, gwOutside netip.Addr
	client6, server6    netip.Addr
	gwInside6, gwOut6   netip.Addr
}

// firewall is one kind of operator firewall: a strict policy that drops
// new connections in input and forward and accepts established ones (and
// ICMPv6 to the gateway, for neighbour discovery).
type firewall struct {
	name  string
	tools []string
	apply func(t *testing.T)
}

var firewalls = []firewall{
	{"iptables", []string{"iptables", "ip6tables"}, func(t *testing.T) {
		for _, prog := range []string{"iptables", "ip6tables"} {
			for _, c := range []string{"INPUT", "FORWARD"} {
				run(t, prog, "-w", "5", "-A", c, "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT")
				run(t, prog, "-w", "5", "-P", c, "DROP")
			}
		}
		// Neighbour discovery, as any IPv6 firewall has it.
		run(t, "ip6tables", "-w", "5", "-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT")
	}},
	{"nftables", nil, func(t *testing.T) {
		runStdin(t, nativeFirewall, "nft", "-f", "-")
	}},
}

// nativeFirewall is the operator's native nftables firewall.
const nativeFirewall = `table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established accept
		iifname "lo" accept
		meta l4proto ipv6-icmp accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established accept
	}
}
`

func newDataPath(t *testing.T, fw firewall) *dataPath {
	d := &dataPath{t: t,
		clientIP: addr("192.0.2.10"), gwInside: addr("192.0.2.1"),
		gwOutside: addr("203.0.113.1"), serverIP: addr("203.0.113.5"),
		client6: addr("2001:db8:1::10"), gwInside6: addr("2001:db8:1::1"),
		gwOut6: addr("2001:db8:2::1"), server6: addr("2001:db8:2::5")}
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
	d.link("gc", d.gwInside, d.gwInside6, d.client, d.clientIP, d.client6)
	d.link("gs", d.gwOutside, d.gwOut6, d.server, d.serverIP, d.server6)
	d.up(d.gw, "lo")
	if cur, err := netns.Get(); err != nil || !cur.Equal(d.gw) {
		t.Fatalf("not in the gateway namespace (%v)", err)
	}
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(f, []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fw.apply(t)
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

// link connects the gateway (gwIf) and peer (peer0) with a veth pair, both
// families, the peer's default routes via the gateway.
func (d *dataPath) link(gwIf string, gwIP, gwIP6 netip.Addr, peer netns.NsHandle, peerIP, peerIP6 netip.Addr) {
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
		ips  []netip.Prefix
	}{{gh, gwIf, []netip.Prefix{netip.PrefixFrom(gwIP, 24), netip.PrefixFrom(gwIP6, 64)}},
		{ph, "peer0", []netip.Prefix{netip.PrefixFrom(peerIP, 24), netip.PrefixFrom(peerIP6, 64)}}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range side.ips {
			a, err := netlink.ParseAddr(p.String())
			if err != nil {
				t.Fatal(err)
			}
			a.Flags = 0x02 // IFA_F_NODAD: usable at once
			if err := side.h.AddrAdd(l, a); err != nil {
				t.Fatal(err)
			}
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	d.up(peer, "lo")
	if err := ph.RouteAdd(&netlink.Route{Gw: gwIP.AsSlice()}); err != nil {
		t.Fatalf("adding default route: %v", err)
	}
	if err := ph.RouteAdd(&netlink.Route{Gw: gwIP6.AsSlice()}); err != nil {
		t.Fatalf("adding default IPv6 route: %v", err)
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

func (d *dataPath) listen(ns netns.NsHandle, at netip.AddrPort) *net.TCPListener {
	var ln net.Listener
	d.in(ns, func() {
		var err error
		if ln, err = net.Listen("tcp", at.String()); err != nil {
			d.t.Fatal(err)
		}
	})
	d.t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dialer returns a dialer made in ns (its sockets are ns's) with a short
// timeout: the gateway drops what it does not accept.
func (d *dataPath) dial(ns netns.NsHandle, from netip.Addr, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	var err error
	d.in(ns, func() {
		dl := net.Dialer{Timeout: 500 * time.Millisecond}
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

// expectPeer dials and checks that ln accepts a connection from peer.
func (d *dataPath) expectPeer(ns netns.NsHandle, from netip.Addr, to netip.AddrPort, ln *net.TCPListener, peer netip.Addr) (client, server net.Conn) {
	d.t.Helper()
	c, err := d.dial(ns, from, to)
	if err != nil {
		d.t.Fatalf("dialing %v: %v", to, err)
	}
	ln.SetDeadline(time.Now().Add(2 * time.Second))
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

// firewallFor returns the firewall of the running subtest of
// forEachFirewall.
func firewallFor(t *testing.T) firewall {
	for _, fw := range firewalls {
		if strings.HasSuffix(t.Name(), "/"+fw.name) {
			return fw
		}
	}
	t.Fatalf("no firewall for %s", t.Name())
	return firewall{}
}

// forEachFirewall runs fn in a gateway namespace of its own behind each
// operator firewall, with the backend set up.
func forEachFirewall(t *testing.T, fn func(t *testing.T, d *dataPath, b *Backend)) {
	for _, fw := range firewalls {
		t.Run(fw.name, func(t *testing.T) {
			t.Parallel()
			defer enterNetns(t, fw.tools...)()
			d := newDataPath(t, fw)
			b := newKernelBackend(t, Config{})
			if err := b.Setup(t.Context()); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := b.Teardown(context.WithoutCancel(t.Context())); err != nil {
					t.Error(err)
				}
				if out := run(t, "nft", "list", "ruleset"); strings.Contains(out, "ftpalg") {
					t.Errorf("ftpalg state left after Teardown:\n%s", out)
				}
			}()
			fn(t, d, b)
		})
	}
}

// TestNetnsNFTablesDataPath checks, behind both operator firewalls, that
// pinholes let through exactly the connection they describe, translated as
// they say, in each path a first packet can take (forwarded, to the
// gateway, from the gateway), for IPv4 and IPv6; that nothing passes
// without one; and that Close stops new connections but not established
// ones.
func TestNetnsNFTablesDataPath(t *testing.T) {
	t.Parallel()
	forEachFirewall(t, func(t *testing.T, d *dataPath, b *Backend) {
		ctx := t.Context()
		open := func(p rules.Pinhole) {
			t.Helper()
			if err := b.Open(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		at := netip.AddrPortFrom

		t.Log("the operator's firewall blocks without a pinhole")
		ln := d.listen(d.server, at(d.serverIP, 40002))
		d.listen(d.server, at(d.serverIP, 40003))
		d.expectBlocked(d.client, netip.Addr{}, at(d.serverIP, 40002))

		t.Log("routed: forwarded, no translation")
		p := rules.Pinhole{ID: rules.PinholeID{Session: 101, N: 1}, Src: d.clientIP, Dst: at(d.serverIP, 40002), TTL: time.Minute}
		open(p)
		d.expectBlocked(d.client, netip.Addr{}, at(d.serverIP, 40003))
		d.expectBlocked(d.server, netip.Addr{}, at(d.clientIP, 40002))
		c, s := d.expectPeer(d.client, netip.Addr{}, at(d.serverIP, 40002), ln, d.clientIP)
		if err := b.Close(ctx, p); err != nil {
			t.Fatal(err)
		}
		d.expectBlocked(d.client, netip.Addr{}, at(d.serverIP, 40002))
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
		d.expectPeer(d.client, netip.Addr{}, at(d.serverIP, 40000), ln, d.gwOutside)

		t.Log("active gateway: forwarded, DNAT")
		ln = d.listen(d.client, at(d.clientIP, 40001))
		d.expectBlocked(d.server, netip.Addr{}, at(d.gwOutside, 50000))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 103, N: 1}, Src: d.serverIP, Dst: at(d.gwOutside, 50000), DNAT: at(d.clientIP, 40001)})
		d.expectBlocked(d.server, netip.Addr{}, at(d.gwOutside, 50001))
		d.expectPeer(d.server, netip.Addr{}, at(d.gwOutside, 50000), ln, d.serverIP)

		t.Log("reverse passive: forwarded, DNAT and SNAT")
		ln = d.listen(d.server, at(d.serverIP, 30000))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 104, N: 1}, Src: d.clientIP, Dst: at(d.gwInside, 50002),
			DNAT: at(d.serverIP, 30000), SNAT: d.gwOutside})
		d.expectPeer(d.client, netip.Addr{}, at(d.gwInside, 50002), ln, d.gwOutside)

		t.Log("target on the gateway: input, SNAT in nat input")
		ln = d.listen(d.gw, at(d.gwInside, 40005))
		d.expectBlocked(d.client, netip.Addr{}, at(d.gwInside, 40005))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 105, N: 1}, Src: d.clientIP, Dst: at(d.gwInside, 40005), SNAT: d.gwOutside})
		d.expectPeer(d.client, netip.Addr{}, at(d.gwInside, 40005), ln, d.gwOutside)

		t.Log("source on the gateway: DNAT in nat output")
		ln = d.listen(d.client, at(d.clientIP, 40006))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 106, N: 1}, Src: d.gwOutside, Dst: at(addr("203.0.113.99"), 50003), DNAT: at(d.clientIP, 40006)})
		d.expectPeer(d.gw, d.gwOutside, at(addr("203.0.113.99"), 50003), ln, d.gwOutside)

		t.Log("IPv6 passive gateway: forwarded, SNAT")
		ln = d.listen(d.server, at(d.server6, 40000))
		d.expectBlocked(d.client, netip.Addr{}, at(d.server6, 40000))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 107, N: 1}, Src: d.client6, Dst: at(d.server6, 40000), SNAT: d.gwOut6})
		d.expectPeer(d.client, netip.Addr{}, at(d.server6, 40000), ln, d.gwOut6)

		t.Log("IPv6 reverse passive: DNAT and SNAT")
		ln = d.listen(d.server, at(d.server6, 30000))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 108, N: 1}, Src: d.client6, Dst: at(d.gwInside6, 50002),
			DNAT: at(d.server6, 30000), SNAT: d.gwOut6})
		d.expectPeer(d.client, netip.Addr{}, at(d.gwInside6, 50002), ln, d.gwOut6)

		t.Log("IPv6 active gateway: DNAT")
		ln = d.listen(d.client, at(d.client6, 40001))
		open(rules.Pinhole{ID: rules.PinholeID{Session: 109, N: 1}, Src: d.server6, Dst: at(d.gwOut6, 50000), DNAT: at(d.client6, 40001)})
		d.expectPeer(d.server, netip.Addr{}, at(d.gwOut6, 50000), ln, d.server6)

		if err := b.Verify(ctx); err != nil {
			t.Error(err)
		}
	})
}

// TestNetnsNFTablesSingleUse checks that the first connection consumes a
// pinhole in the kernel: of two connects to it back to back, and of two
// started at the same time, exactly one reaches the server; the second
// is neither admitted nor translated.
func TestNetnsNFTablesSingleUse(t *testing.T) {
	t.Parallel()
	forEachFirewall(t, func(t *testing.T, d *dataPath, b *Backend) {
		ctx := t.Context()
		at := netip.AddrPortFrom
		for i, translate := range []bool{false, true} {
			port := uint16(41000 + 10*i)
			ln := d.listen(d.server, at(d.serverIP, port))
			p := rules.Pinhole{ID: rules.PinholeID{Session: 111, N: uint32(1 + i)}, Src: d.clientIP, Dst: at(d.serverIP, port), TTL: time.Minute}
			if translate {
				// Reverse mode: the second SYN must not be translated either.
				p.Dst = at(d.gwInside, port)
				p.DNAT = at(d.serverIP, port)
				p.SNAT = d.gwOutside
			}
			if err := b.Open(ctx, p); err != nil {
				t.Fatal(err)
			}
			// Back to back: the second dial starts as soon as the first
			// is established.
			c1, err1 := d.dial(d.client, netip.Addr{}, p.Dst)
			_, err2 := d.dial(d.client, netip.Addr{}, p.Dst)
			if err1 != nil {
				t.Errorf("translate=%v: first connect: %v", translate, err1)
			} else {
				c1.Close()
			}
			if err2 == nil {
				t.Errorf("translate=%v: second connect through a used pinhole got through", translate)
			}
			ln.SetDeadline(time.Now().Add(500 * time.Millisecond))
			n := 0
			for {
				s, err := ln.Accept()
				if err != nil {
					break
				}
				s.Close()
				n++
			}
			if n != 1 {
				t.Errorf("translate=%v: %d connections reached the server, want 1", translate, n)
			}
			if err := b.Close(ctx, p); err != nil {
				t.Fatal(err)
			}
		}

		// Two at the same time, from two goroutines on their own threads,
		// so that the two SYNs meet the rule on two CPUs at once: the
		// connection count in the used set lets one through.
		const pairs = 20
		both := 0
		for i := range pairs {
			port := uint16(41100 + i)
			ln := d.listen(d.server, at(d.serverIP, port))
			p := rules.Pinhole{ID: rules.PinholeID{Session: 112, N: uint32(1 + i)}, Src: d.clientIP, Dst: at(d.serverIP, port), TTL: time.Minute}
			if err := b.Open(ctx, p); err != nil {
				t.Fatal(err)
			}
			dl := net.Dialer{Timeout: 500 * time.Millisecond}
			var wg sync.WaitGroup
			start := make(chan struct{})
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					lockedIn(d.client) // this goroutine's thread, for good
					<-start
					if c, err := dl.Dial("tcp", p.Dst.String()); err == nil {
						c.Close()
					}
				}()
			}
			close(start)
			wg.Wait()
			ln.SetDeadline(time.Now().Add(200 * time.Millisecond))
			n := 0
			for {
				s, err := ln.Accept()
				if err != nil {
					break
				}
				s.Close()
				n++
			}
			if n == 0 {
				t.Errorf("pair %d: neither of two simultaneous connects got through", i)
			}
			if n == 2 {
				both++
				t.Errorf("pair %d: both simultaneous connects got through", i)
			}
			ln.Close()
		}
		t.Logf("simultaneous connects from two CPUs: both got through in %d of %d pairs", both, pairs)
	})
}

// lockedIn moves the calling goroutine's thread to ns for good: the thread
// stays locked, so Go discards it when the goroutine ends.
func lockedIn(ns netns.NsHandle) {
	runtimeLock()
	if err := netns.Set(ns); err != nil {
		panic(err)
	}
}

// TestNetnsNFTablesTTL checks that the kernel expires a pinhole nobody
// closes (a crashed ftpalg): after the TTL its elements are gone and a
// connect to it fails.
func TestNetnsNFTablesTTL(t *testing.T) {
	t.Parallel()
	forEachFirewall(t, func(t *testing.T, d *dataPath, b *Backend) {
		ctx := t.Context()
		at := netip.AddrPortFrom
		d.listen(d.server, at(d.serverIP, 42000))
		d.listen(d.server, at(d.serverIP, 30000))
		ps := []rules.Pinhole{
			{ID: rules.PinholeID{Session: 110, N: 1}, Src: d.clientIP, Dst: at(d.serverIP, 42000), SNAT: d.gwOutside, TTL: time.Second},
			{ID: rules.PinholeID{Session: 110, N: 2}, Src: d.clientIP, Dst: at(d.gwInside, 50000), DNAT: at(d.serverIP, 30000), TTL: time.Second},
		}
		for _, p := range ps {
			if err := b.Open(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		if n := countElements(t, b); n != 4 {
			t.Errorf("%d elements after Open, want 4", n)
		}
		time.Sleep(1500 * time.Millisecond)
		if n := countElements(t, b); n != 0 {
			t.Errorf("%d elements left after the TTL, want 0:\n%s", n, listTable(t))
		}
		for _, p := range ps {
			d.expectBlocked(d.client, netip.Addr{}, p.Dst)
		}
	})
}

func countElements(t *testing.T, b *Backend) int {
	t.Helper()
	n := 0
	for _, s := range b.tb.sets {
		es, err := b.conn.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		n += len(es)
	}
	return n
}
