package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// The lab network: a gateway between a private network ("inside") and the
// internet ("outside"), one host on each side. Addresses belong to the
// place, not to the host: whoever is plugged in inside is 192.0.2.2. In
// gateway mode the client is inside and the server outside; for reverse
// mode the cables are swapped.
//
//	inside host  192.0.2.2   2001:db8:1::2  (eth0)
//	   |
//	gateway      192.0.2.1   2001:db8:1::1  (inside)
//	             203.0.113.1 2001:db8:2::1  (outside, MASQUERADE)
//	   |
//	outside host 203.0.113.2 2001:db8:2::2  (eth0)
var (
	insideGW4    = netip.MustParseAddr("192.0.2.1")
	insideHost4  = netip.MustParseAddr("192.0.2.2")
	outsideGW4   = netip.MustParseAddr("203.0.113.1")
	outsideHost4 = netip.MustParseAddr("203.0.113.2")
	insideGW6    = netip.MustParseAddr("2001:db8:1::1")
	insideHost6  = netip.MustParseAddr("2001:db8:1::2")
	outsideGW6   = netip.MustParseAddr("2001:db8:2::1")
	outsideHost6 = netip.MustParseAddr("2001:db8:2::2")
)

// Interface names.
const (
	ifInside  = "inside"
	ifOutside = "outside"
	ifHost    = "eth0"
)

// Static MAC addresses (locally administered), one per place, so that the
// IPv6 neighbours can be entered permanently: the strict firewall drops
// neighbour discovery to and from the gateway (conntrack never calls it
// ESTABLISHED), which would break IPv6 for reasons unrelated to FTP.
const (
	macInsideGW    = "02:f7:1a:00:01:01"
	macInsideHost  = "02:f7:1a:00:01:02"
	macOutsideGW   = "02:f7:1a:00:02:01"
	macOutsideHost = "02:f7:1a:00:02:02"
)

// layout says which host is plugged in where.
type layout int

const (
	// layoutGateway: client inside, server outside (ftpalg protects clients).
	layoutGateway layout = iota
	// layoutReverse: server inside, client outside (ftpalg publishes a server).
	layoutReverse
)

// topo is the lab's three namespaces.
type topo struct {
	id     string
	client *netNS
	gw     *netNS
	server *netNS
	layout layout
}

func newTopo(pid int) *topo {
	id := strconv.Itoa(pid)
	mk := func(role string) *netNS { return &netNS{name: Prefix + id + "-" + role} }
	return &topo{id: id, client: mk("client"), gw: mk("gw"), server: mk("server")}
}

func (t *topo) namespaces() []*netNS { return []*netNS{t.client, t.gw, t.server} }

// inside and outside return the hosts plugged in on each side.
func (t *topo) inside() *netNS {
	if t.layout == layoutReverse {
		return t.server
	}
	return t.client
}

func (t *topo) outside() *netNS {
	if t.layout == layoutReverse {
		return t.client
	}
	return t.server
}

// hostAddr returns the address of host in family v6.
func (t *topo) hostAddr(host *netNS, v6 bool) netip.Addr {
	in := host == t.inside()
	switch {
	case in && v6:
		return insideHost6
	case in:
		return insideHost4
	case v6:
		return outsideHost6
	}
	return outsideHost4
}

// build creates the namespaces, sets their sysctls and wires them in the
// gateway layout. Partial state is left for destroy.
func (t *topo) build(ctx context.Context) error {
	for _, n := range t.namespaces() {
		if _, err := runCmd(ctx, "ip", "netns", "add", n.name); err != nil {
			return err
		}
		// DAD off before any interface exists, so that IPv6 addresses are
		// usable at once ("nodad" on the addresses as well).
		if err := n.sysctl(
			"net.ipv6.conf.all.accept_dad", "0", "net.ipv6.conf.default.accept_dad", "0",
			"net.ipv6.conf.all.accept_ra", "0", "net.ipv6.conf.default.accept_ra", "0",
		); err != nil {
			return err
		}
	}
	if err := t.gw.sysctl(
		"net.ipv4.ip_forward", "1",
		"net.ipv6.conf.all.forwarding", "1", "net.ipv6.conf.default.forwarding", "1",
		// Byte counters for ftpalg's per-transfer log line, and a short
		// TIME_WAIT so that a finished data connection leaves conntrack
		// (and is reported) within seconds rather than two minutes.
		"net.netfilter.nf_conntrack_acct", "1",
		"net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1",
	); err != nil {
		return err
	}
	if err := t.disableFTPHelper(); err != nil {
		return err
	}
	return t.wire(ctx, layoutGateway)
}

// disableFTPHelper makes sure the kernel does not attach its FTP conntrack
// helper (nf_conntrack_ftp) to port 21 by itself: the automatic assignment
// (net.netfilter.nf_conntrack_helper, gone since Linux 6.0) must be absent
// or 0. The lab adds no CT --helper rule, so the helper never sees FTP.
func (t *topo) disableFTPHelper() error {
	const key = "net.netfilter.nf_conntrack_helper"
	v, err := t.gw.readSysctl(key)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if v != "0" {
		return t.gw.sysctl(key, "0")
	}
	return nil
}

// wire (re)plugs the hosts in layout l: the gateway's two veth pairs are
// created anew, with the addresses, routes and static neighbours of their
// places. The firewall refers to interfaces by name and stays.
func (t *topo) wire(ctx context.Context, l layout) error {
	gw := t.gw.name
	for _, dev := range []string{ifInside, ifOutside} {
		// Deleting one end of a veth pair deletes both; missing is fine.
		if _, err := runCmd(ctx, "ip", "-n", gw, "link", "show", dev); err == nil {
			if _, err := runCmd(ctx, "ip", "-n", gw, "link", "del", dev); err != nil {
				return err
			}
		}
	}
	t.layout = l
	in, out := t.inside().name, t.outside().name
	type place struct {
		gwDev, gwMAC, hostMAC  string
		host                   string
		gw4, host4, gw6, host6 netip.Addr
	}
	places := []place{
		{ifInside, macInsideGW, macInsideHost, in, insideGW4, insideHost4, insideGW6, insideHost6},
		{ifOutside, macOutsideGW, macOutsideHost, out, outsideGW4, outsideHost4, outsideGW6, outsideHost6},
	}
	var steps [][]string
	for _, p := range places {
		steps = append(steps,
			[]string{"-n", gw, "link", "add", p.gwDev, "address", p.gwMAC, "type", "veth",
				"peer", "name", ifHost, "address", p.hostMAC, "netns", p.host},
			[]string{"-n", gw, "addr", "add", p.gw4.String() + "/24", "dev", p.gwDev},
			[]string{"-n", gw, "-6", "addr", "add", p.gw6.String() + "/64", "dev", p.gwDev, "nodad"},
			[]string{"-n", gw, "link", "set", p.gwDev, "up"},
			[]string{"-n", p.host, "addr", "add", p.host4.String() + "/24", "dev", ifHost},
			[]string{"-n", p.host, "-6", "addr", "add", p.host6.String() + "/64", "dev", ifHost, "nodad"},
			[]string{"-n", p.host, "link", "set", ifHost, "up"},
			[]string{"-n", p.host, "link", "set", "lo", "up"},
			[]string{"-n", p.host, "route", "replace", "default", "via", p.gw4.String()},
			[]string{"-n", p.host, "-6", "route", "replace", "default", "via", p.gw6.String()},
			[]string{"-n", p.host, "-6", "neigh", "replace", p.gw6.String(), "lladdr", p.gwMAC, "dev", ifHost, "nud", "permanent"},
			[]string{"-n", gw, "-6", "neigh", "replace", p.host6.String(), "lladdr", p.hostMAC, "dev", p.gwDev, "nud", "permanent"},
		)
	}
	steps = append(steps, []string{"-n", gw, "link", "set", "lo", "up"})
	for _, s := range steps {
		if _, err := runCmd(ctx, "ip", s...); err != nil {
			return fmt.Errorf("wiring the lab: %w", err)
		}
	}
	return nil
}

// firewallComment marks the lab's own rules.
const firewallComment = "ftpalg-lab"

// controlRule lets FTP control connections through the strict firewall (the
// "without ftpalg" step): new TCP connections to port 21, nothing else.
var controlRule = []string{"FORWARD", "-p", "tcp", "--dport", "21", "-m", "conntrack", "--ctstate", "NEW",
	"-m", "comment", "--comment", firewallComment + ": FTP control only", "-j", "ACCEPT"}

// strictFirewall makes the gateway a strict firewall, for IPv4 and IPv6:
// INPUT and FORWARD policy DROP, one rule in each accepting conntrack state
// ESTABLISHED (not RELATED), MASQUERADE out of the outside interface.
func (t *topo) strictFirewall(ctx context.Context) error {
	for _, v6 := range []bool{false, true} {
		steps := [][]string{
			{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-m", "comment", "--comment", firewallComment, "-j", "ACCEPT"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-m", "comment", "--comment", firewallComment, "-j", "ACCEPT"},
			{"-P", "INPUT", "DROP"},
			{"-P", "FORWARD", "DROP"},
			{"-t", "nat", "-A", "POSTROUTING", "-o", ifOutside, "-m", "comment", "--comment", firewallComment, "-j", "MASQUERADE"},
		}
		for _, s := range steps {
			if _, err := t.gw.iptables(ctx, v6, s...); err != nil {
				return fmt.Errorf("applying the strict firewall: %w", err)
			}
		}
	}
	return nil
}

// setControlRule adds (on true) or deletes the control-only rule in both
// families.
func (t *topo) setControlRule(ctx context.Context, on bool) error {
	op := "-D"
	if on {
		op = "-A"
	}
	for _, v6 := range []bool{false, true} {
		if _, err := t.gw.iptables(ctx, v6, append([]string{op}, controlRule...)...); err != nil {
			return fmt.Errorf("changing the FTP control rule: %w", err)
		}
	}
	return nil
}

// ruleLine is one line of `iptables -S` (or ip6tables) of one table.
type ruleLine struct {
	v6    bool
	table string
	rule  string
}

// String returns the rule as a command line: "iptables -t nat -A ...".
func (l ruleLine) String() string { return xtables(l.v6) + " " + l.short() }

// short returns the rule with its table: "-t nat -A ...".
func (l ruleLine) short() string { return "-t " + l.table + " " + l.rule }

// ftpalgRules returns the gateway's rules (iptables -S and ip6tables -S of
// the filter and nat tables) that belong to ftpalg: its chains, the jumps
// into them and every rule with an "ftpalg:" comment.
func (t *topo) ftpalgRules(ctx context.Context) ([]ruleLine, error) {
	var out []ruleLine
	for _, v6 := range []bool{false, true} {
		for _, table := range []string{"filter", "nat"} {
			s, err := t.gw.iptables(ctx, v6, "-t", table, "-S")
			if err != nil {
				return nil, err
			}
			for _, line := range strings.Split(s, "\n") {
				if strings.Contains(line, "FTPALG") || strings.Contains(line, `"ftpalg:`) {
					out = append(out, ruleLine{v6: v6, table: table, rule: line})
				}
			}
		}
	}
	return out, nil
}

// destroy deletes the namespaces (and kills anything left in them).
func (t *topo) destroy(ctx context.Context) error {
	var errs []error
	for _, n := range t.namespaces() {
		if err := removeNamespace(ctx, n.name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
