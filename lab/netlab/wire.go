package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The address plan: a gateway between a private network (Inside) and the
// internet (Outside). Addresses belong to the place, not to the host:
// whoever is plugged in first inside is 192.0.2.2.
//
//	inside hosts    192.0.2.2 (, .3 ...)    2001:db8:1::2 (, ::3 ...)  (eth0)
//	   |
//	gateway         192.0.2.1   2001:db8:1::1  (interface "inside")
//	                203.0.113.1 2001:db8:2::1  (interface "outside")
//	   |
//	outside hosts   203.0.113.2 (, .3 ...)  2001:db8:2::2 (, ::3 ...)  (eth0)
var (
	InsideGW4     = netip.MustParseAddr("192.0.2.1")
	InsideHost4   = netip.MustParseAddr("192.0.2.2")
	InsideGW6     = netip.MustParseAddr("2001:db8:1::1")
	InsideHost6   = netip.MustParseAddr("2001:db8:1::2")
	OutsideGW4    = netip.MustParseAddr("203.0.113.1")
	OutsideHost4  = netip.MustParseAddr("203.0.113.2")
	OutsideOther4 = netip.MustParseAddr("203.0.113.3")
	OutsideGW6    = netip.MustParseAddr("2001:db8:2::1")
	OutsideHost6  = netip.MustParseAddr("2001:db8:2::2")
	OutsideOther6 = netip.MustParseAddr("2001:db8:2::3")
)

// Interface names.
const (
	// IfInside is the gateway's interface on the private network.
	IfInside = "inside"
	// IfOutside is the gateway's interface toward the internet.
	IfOutside = "outside"
	// IfHost is the one interface of every host.
	IfHost = "eth0"
	// bridgeName is the bridge of a segment with more than one host.
	bridgeName = "br0"
)

// Side is one of the gateway's two networks.
type Side int

const (
	// Inside is the private network behind the gateway.
	Inside Side = iota
	// Outside is the internet side.
	Outside
)

// GWDev returns the gateway's interface on the side.
func (s Side) GWDev() string {
	if s == Outside {
		return IfOutside
	}
	return IfInside
}

// GWAddr returns the gateway's address on the side (v6 false: IPv4).
func (s Side) GWAddr(v6 bool) netip.Addr { return s.addr(1, v6) }

// HostAddr returns the address of the i-th host plugged in on the side
// (0: .2 / ::2, 1: .3 / ::3, ...).
func (s Side) HostAddr(i int, v6 bool) netip.Addr { return s.addr(2+i, v6) }

func (s Side) addr(last int, v6 bool) netip.Addr {
	switch {
	case s == Inside && v6:
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(last)})
	case s == Inside:
		return netip.AddrFrom4([4]byte{192, 0, 2, byte(last)})
	case v6:
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 15: byte(last)})
	}
	return netip.AddrFrom4([4]byte{203, 0, 113, byte(last)})
}

// mac is the static MAC address (locally administered) of the place whose
// address ends in last on the side: the gateway is 1, hosts from 2. With
// static MACs the IPv6 neighbours can be entered permanently: a strict
// firewall drops neighbour discovery to and from the gateway (conntrack
// never calls it ESTABLISHED), which would break IPv6 for reasons
// unrelated to FTP.
func (s Side) mac(last int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xf7, 0x1a, 0x00, byte(s) + 1, byte(last)}
}

// Segment is one side of the gateway and the hosts plugged in there.
type Segment struct {
	// Side says which network, and so the addresses.
	Side Side
	// Hosts are plugged in in order: the first gets HostAddr(0, ...).
	Hosts []*NS
	// Switch, required for more than one host, holds the bridge that joins
	// the gateway and the hosts; nothing runs there. With one host and no
	// switch, a veth pair joins the host to the gateway directly.
	Switch *NS
}

// Wire plugs the segments into the gateway gw: veth pairs (and a bridge
// in the segment's switch), the addresses of the plan, default routes of
// the hosts via the gateway and permanent IPv6 neighbours between every
// two places of a segment. Every namespace must exist (Create) and have no
// interfaces of these names; see Unwire.
func Wire(gw *NS, segs ...Segment) error {
	w := wiring{handles: map[string]*netlink.Handle{}, fds: map[string]netns.NsHandle{}}
	defer w.close()
	for _, seg := range segs {
		if err := w.segment(gw, seg); err != nil {
			return fmt.Errorf("wiring the %s side: %w", seg.Side.GWDev(), err)
		}
	}
	return nil
}

// Unwire deletes the gateway's interfaces devs (and with each the other end
// of its veth pair). A missing interface is fine.
func Unwire(gw *NS, devs ...string) error {
	w := wiring{handles: map[string]*netlink.Handle{}, fds: map[string]netns.NsHandle{}}
	defer w.close()
	h, err := w.handle(gw)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		l, err := h.LinkByName(dev)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			continue
		}
		if err != nil {
			return fmt.Errorf("looking up %s in %s: %w", dev, gw.Name, err)
		}
		if err := h.LinkDel(l); err != nil {
			return fmt.Errorf("deleting %s in %s: %w", dev, gw.Name, err)
		}
	}
	return nil
}

// wiring holds the netlink handles of one Wire call.
type wiring struct {
	handles map[string]*netlink.Handle
	fds     map[string]netns.NsHandle
}

func (w *wiring) close() {
	for _, h := range w.handles {
		h.Close()
	}
	for _, fd := range w.fds {
		fd.Close()
	}
}

func (w *wiring) fd(n *NS) (netns.NsHandle, error) {
	if fd, ok := w.fds[n.Name]; ok {
		return fd, nil
	}
	fd, err := netns.GetFromName(n.Name)
	if err != nil {
		return fd, fmt.Errorf("opening network namespace %s: %w", n.Name, err)
	}
	w.fds[n.Name] = fd
	return fd, nil
}

func (w *wiring) handle(n *NS) (*netlink.Handle, error) {
	if h, ok := w.handles[n.Name]; ok {
		return h, nil
	}
	fd, err := w.fd(n)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", n.Name, err)
	}
	w.handles[n.Name] = h
	return h, nil
}

// place is an interface on a segment with its addresses.
type place struct {
	ns   *NS
	dev  string
	last int // last byte of its addresses and MAC
}

func (w *wiring) segment(gw *NS, seg Segment) error {
	s := seg.Side
	gwPlace := place{gw, s.GWDev(), 1}
	places := []place{gwPlace}
	for i, h := range seg.Hosts {
		places = append(places, place{h, IfHost, 2 + i})
	}
	switch {
	case seg.Switch == nil && len(seg.Hosts) == 1:
		if err := w.veth(gw, gwPlace.dev, s.mac(1), places[1].ns, IfHost, s.mac(2)); err != nil {
			return err
		}
	case seg.Switch != nil:
		if err := w.bridge(s, seg.Switch, places); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%d hosts need a switch", len(seg.Hosts))
	}
	for _, p := range places {
		if err := w.address(s, p); err != nil {
			return err
		}
	}
	for _, p := range places[1:] {
		h, err := w.handle(p.ns)
		if err != nil {
			return err
		}
		for _, v6 := range []bool{false, true} {
			gwIP := net.IP(s.GWAddr(v6).AsSlice())
			if err := h.RouteReplace(&netlink.Route{Gw: gwIP}); err != nil {
				return fmt.Errorf("adding the default route via %s in %s: %w", gwIP, p.ns.Name, err)
			}
		}
	}
	for _, a := range places {
		for _, b := range places {
			if a.ns == b.ns {
				continue
			}
			if err := w.neighbour(s, a, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// veth creates a veth pair: dev in n with mac, and peerDev in peer with
// peerMAC. A nil MAC is left to the kernel.
func (w *wiring) veth(n *NS, dev string, mac net.HardwareAddr, peer *NS, peerDev string, peerMAC net.HardwareAddr) error {
	h, err := w.handle(n)
	if err != nil {
		return err
	}
	pfd, err := w.fd(peer)
	if err != nil {
		return err
	}
	la := netlink.NewLinkAttrs()
	la.Name = dev
	la.HardwareAddr = mac
	v := netlink.NewVeth(la)
	v.PeerName, v.PeerHardwareAddr, v.PeerNamespace = peerDev, peerMAC, netlink.NsFd(pfd)
	if err := h.LinkAdd(v); err != nil {
		return fmt.Errorf("adding veth %s in %s (peer %s in %s): %w", dev, n.Name, peerDev, peer.Name, err)
	}
	return nil
}

// bridge joins the places through a bridge in sw: one veth pair each, the
// switch end named "p<last>" and made a bridge port.
func (w *wiring) bridge(s Side, sw *NS, places []place) error {
	h, err := w.handle(sw)
	if err != nil {
		return err
	}
	la := netlink.NewLinkAttrs()
	la.Name = bridgeName
	off := false
	br := &netlink.Bridge{LinkAttrs: la, MulticastSnooping: &off}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge in %s: %w", sw.Name, err)
	}
	for _, p := range places {
		port := fmt.Sprintf("p%d", p.last)
		if err := w.veth(sw, port, nil, p.ns, p.dev, s.mac(p.last)); err != nil {
			return err
		}
		l, err := h.LinkByName(port)
		if err != nil {
			return fmt.Errorf("looking up %s in %s: %w", port, sw.Name, err)
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("adding %s to the bridge in %s: %w", port, sw.Name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up in %s: %w", port, sw.Name, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("setting the bridge up in %s: %w", sw.Name, err)
	}
	return nil
}

// address gives p's interface its addresses of both families (IPv6
// without duplicate address detection) and sets it up.
func (w *wiring) address(s Side, p place) error {
	h, err := w.handle(p.ns)
	if err != nil {
		return err
	}
	l, err := h.LinkByName(p.dev)
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", p.dev, p.ns.Name, err)
	}
	for _, v6 := range []bool{false, true} {
		bits, flags := 24, 0
		if v6 {
			bits, flags = 64, unix.IFA_F_NODAD
		}
		a := s.addr(p.last, v6)
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}, Flags: flags}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("adding %s/%d to %s in %s: %w", a, bits, p.dev, p.ns.Name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", p.dev, p.ns.Name, err)
	}
	return nil
}

// neighbour enters b's IPv6 address and MAC as a permanent neighbour of a.
func (w *wiring) neighbour(s Side, a, b place) error {
	h, err := w.handle(a.ns)
	if err != nil {
		return err
	}
	l, err := h.LinkByName(a.dev)
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", a.dev, a.ns.Name, err)
	}
	n := &netlink.Neigh{
		LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V6, State: netlink.NUD_PERMANENT,
		IP: s.addr(b.last, true).AsSlice(), HardwareAddr: s.mac(b.last),
	}
	if err := h.NeighSet(n); err != nil {
		return fmt.Errorf("adding neighbour %s on %s in %s: %w", n.IP, a.dev, a.ns.Name, err)
	}
	return nil
}

// linkUp sets the interface dev of the namespace up.
func (n *NS) linkUp(dev string) error {
	w := wiring{handles: map[string]*netlink.Handle{}, fds: map[string]netns.NsHandle{}}
	defer w.close()
	h, err := w.handle(n)
	if err != nil {
		return err
	}
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", dev, n.Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", dev, n.Name, err)
	}
	return nil
}
