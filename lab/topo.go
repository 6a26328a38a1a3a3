package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// The lab network is lab/netlab's address plan: a gateway between a
// private network ("inside") and the internet ("outside"), one host on each
// side. Addresses belong to the place, not to the host: whoever is plugged
// in inside is 192.0.2.2. In gateway mode the client is inside and the
// server outside; for reverse mode the cables are swapped.
//
//	inside host  192.0.2.2   2001:db8:1::2  (eth0)
//	   |
//	gateway      192.0.2.1   2001:db8:1::1  (inside)
//	             203.0.113.1 2001:db8:2::1  (outside, MASQUERADE)
//	   |
//	outside host 203.0.113.2 2001:db8:2::2  (eth0)

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
	client *netlab.NS
	gw     *netlab.NS
	server *netlab.NS
	layout layout
}

func newTopo(pid int) *topo {
	id := strconv.Itoa(pid)
	mk := func(role string) *netlab.NS { return &netlab.NS{Name: Prefix + id + "-" + role} }
	return &topo{id: id, client: mk("client"), gw: mk("gw"), server: mk("server")}
}

func (t *topo) namespaces() []*netlab.NS { return []*netlab.NS{t.client, t.gw, t.server} }

// inside and outside return the hosts plugged in on each side.
func (t *topo) inside() *netlab.NS {
	if t.layout == layoutReverse {
		return t.server
	}
	return t.client
}

func (t *topo) outside() *netlab.NS {
	if t.layout == layoutReverse {
		return t.client
	}
	return t.server
}

// hostAddr returns the address of host in family v6.
func (t *topo) hostAddr(host *netlab.NS, v6 bool) netip.Addr {
	in := host == t.inside()
	switch {
	case in && v6:
		return netlab.InsideHost6
	case in:
		return netlab.InsideHost4
	case v6:
		return netlab.OutsideHost6
	}
	return netlab.OutsideHost4
}

// build creates the namespaces, makes the gateway a router and wires them
// in the gateway layout. Partial state is left for destroy.
func (t *topo) build() error {
	for _, n := range t.namespaces() {
		if _, err := netlab.Create(n.Name); err != nil {
			return err
		}
	}
	if err := netlab.SetGateway(t.gw); err != nil {
		return err
	}
	// A short TIME_WAIT, so that a finished data connection leaves
	// conntrack (and is reported) within seconds rather than two minutes.
	if err := t.gw.SetSysctls("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"); err != nil {
		return err
	}
	return t.wire(layoutGateway)
}

// wire (re)plugs the hosts in layout l: the gateway's two veth pairs are
// created anew, with the addresses, routes and static neighbours of their
// places. The firewall refers to interfaces by name and stays.
func (t *topo) wire(l layout) error {
	if err := netlab.Unwire(t.gw, netlab.IfInside, netlab.IfOutside); err != nil {
		return fmt.Errorf("unplugging the lab: %w", err)
	}
	t.layout = l
	if err := netlab.Wire(t.gw,
		netlab.Segment{Side: netlab.Inside, Hosts: []*netlab.NS{t.inside()}},
		netlab.Segment{Side: netlab.Outside, Hosts: []*netlab.NS{t.outside()}},
	); err != nil {
		return fmt.Errorf("wiring the lab: %w", err)
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
			{"-t", "nat", "-A", "POSTROUTING", "-o", netlab.IfOutside, "-m", "comment", "--comment", firewallComment, "-j", "MASQUERADE"},
		}
		for _, s := range steps {
			if _, err := iptables(ctx, t.gw, v6, s...); err != nil {
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
		if _, err := iptables(ctx, t.gw, v6, append([]string{op}, controlRule...)...); err != nil {
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
			s, err := iptables(ctx, t.gw, v6, "-t", table, "-S")
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
		if err := removeLabNamespace(ctx, n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeLabNamespace removes namespace name (netlab.Remove), but only if it
// is a lab namespace.
func removeLabNamespace(ctx context.Context, name string) error {
	if _, ok := labID(name); !ok {
		return fmt.Errorf("refusing to remove namespace %s: not a lab namespace", name)
	}
	return netlab.Remove(ctx, name)
}
