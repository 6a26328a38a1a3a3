package netlab

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
)

// Firewall kinds: the operator's firewall in the gateway.
const (
	// FirewallIPTables is the strict firewall made with iptables and
	// ip6tables (ApplyStrictFirewall).
	FirewallIPTables = "iptables"
	// FirewallNFTables is the same policy as a native nftables ruleset
	// (ApplyNativeFirewall).
	FirewallNFTables = "nftables"
)

// firewallKind records, per gateway namespace, which firewall an Apply
// method installed, for AllowFTPControl and DisallowFTPControl.
var firewallKind sync.Map // *NS -> string

// Firewall returns the kind of operator firewall applied in n:
// FirewallIPTables (also when none was) or FirewallNFTables.
func (n *NS) Firewall() string {
	if k, ok := firewallKind.Load(n); ok {
		return k.(string)
	}
	return FirewallIPTables
}

// ApplyFirewall applies the strict firewall of the given kind.
func (tp *Topo) ApplyFirewall(ctx context.Context, kind string) error {
	switch kind {
	case FirewallIPTables:
		return tp.ApplyStrictFirewall(ctx)
	case FirewallNFTables:
		return tp.ApplyNativeFirewall(ctx)
	}
	return fmt.Errorf("unknown firewall kind %q", kind)
}

// nativeFirewall is ApplyStrictFirewall's policy as an operator writes it
// in nftables: its own tables, base chains with policy drop.
const nativeFirewall = `table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established accept
	}
}
table inet nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "%s" masquerade
	}
}
`

// ApplyNativeFirewall makes the gateway a strict firewall in native
// nftables, for both families: table inet filter with input and forward
// base chains of policy drop that accept conntrack state established (not
// related), and table inet nat masquerading out of the outside interface.
// The kernel's FTP helper is verified to be off.
func (tp *Topo) ApplyNativeFirewall(ctx context.Context) error {
	cmd := tp.GW.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(nativeFirewall, GWOutside))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("applying native nftables firewall: %w: %s", err, out)
	}
	firewallKind.Store(tp.GW, FirewallNFTables)
	return tp.VerifyNoFTPHelper(ctx)
}

// nftControlRule is AllowFTPControl's rule in the native firewall.
const nftControlRule = `tcp dport 21 ct state new accept comment "netlab:ftp-control"`

// DisallowFTPControl removes the rules AllowFTPControl added.
func (tp *Topo) DisallowFTPControl(ctx context.Context) error {
	if tp.GW.Firewall() == FirewallNFTables {
		out, err := tp.GW.Run(ctx, "nft", "-a", "list", "chain", "inet", "filter", "forward")
		if err != nil {
			return fmt.Errorf("listing the forward chain: %w", err)
		}
		m := regexp.MustCompile(`netlab:ftp-control" # handle ([0-9]+)`).FindStringSubmatch(out)
		if m == nil {
			return fmt.Errorf("no FTP control rule in:\n%s", out)
		}
		if _, err := tp.GW.Run(ctx, "nft", "delete", "rule", "inet", "filter", "forward", "handle", m[1]); err != nil {
			return fmt.Errorf("disallowing FTP control connections: %w", err)
		}
		return nil
	}
	for _, x := range xtables {
		if err := tp.GW.IPTables(ctx, x.family, "-D", "FORWARD", "-p", "tcp", "--dport", "21",
			"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"); err != nil {
			return fmt.Errorf("disallowing FTP control connections: %w", err)
		}
	}
	return nil
}

// xtables names the iptables program of each family.
var xtables = []struct {
	family  Family
	prog    string
	save    string
	outside string
}{
	{IPv4, "iptables", "iptables-save", GWOutside},
	{IPv6, "ip6tables", "ip6tables-save", GWOutside},
}

// IPTables runs iptables (IPv4) or ip6tables (IPv6) with args in the
// namespace, waiting up to 10 s for the xtables lock.
func (n *NS) IPTables(ctx context.Context, f Family, args ...string) error {
	prog := "iptables"
	if f == IPv6 {
		prog = "ip6tables"
	}
	_, err := n.Run(ctx, prog, append([]string{"-w", "10"}, args...)...)
	return err
}

// ApplyMasquerade gives the gateway the NAT that a home router has and no
// filtering: MASQUERADE of both families out of the outside interface.
// Rules are appended, so call it before ftpalg installs its own.
func (tp *Topo) ApplyMasquerade(ctx context.Context) error {
	for _, x := range xtables {
		if err := tp.GW.IPTables(ctx, x.family, "-t", "nat", "-A", "POSTROUTING", "-o", x.outside, "-j", "MASQUERADE"); err != nil {
			return fmt.Errorf("adding masquerade: %w", err)
		}
	}
	return nil
}

// ApplyStrictFirewall makes the gateway a strict firewall, for both
// families: INPUT and FORWARD policy DROP, one rule in each accepting
// conntrack state ESTABLISHED (not RELATED), and MASQUERADE out of the
// outside interface. Nothing else: new connections, including FTP control
// connections, are dropped. The kernel's FTP conntrack helper is verified to
// be off, so it cannot let data connections through.
// Rules are appended and policies set, so call it before ftpalg starts.
func (tp *Topo) ApplyStrictFirewall(ctx context.Context) error {
	for _, x := range xtables {
		steps := [][]string{
			{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT"},
			{"-P", "INPUT", "DROP"},
			{"-P", "FORWARD", "DROP"},
			{"-t", "nat", "-A", "POSTROUTING", "-o", x.outside, "-j", "MASQUERADE"},
		}
		for _, s := range steps {
			if err := tp.GW.IPTables(ctx, x.family, s...); err != nil {
				return fmt.Errorf("applying strict firewall: %w", err)
			}
		}
	}
	return tp.VerifyNoFTPHelper(ctx)
}

// AllowFTPControl adds to the strict firewall, for both families, one
// FORWARD rule accepting new TCP connections to port 21, so that FTP control
// connections pass while data connections stay blocked.
func (tp *Topo) AllowFTPControl(ctx context.Context) error {
	if tp.GW.Firewall() == FirewallNFTables {
		if _, err := tp.GW.Run(ctx, "nft", "add", "rule", "inet", "filter", "forward", nftControlRule); err != nil {
			return fmt.Errorf("allowing FTP control connections: %w", err)
		}
		return nil
	}
	for _, x := range xtables {
		if err := tp.GW.IPTables(ctx, x.family, "-A", "FORWARD", "-p", "tcp", "--dport", "21",
			"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"); err != nil {
			return fmt.Errorf("allowing FTP control connections: %w", err)
		}
	}
	return nil
}

// FirewallDump returns iptables-save and ip6tables-save of the namespace,
// each after a header line ("# iptables-save" / "# ip6tables-save"), then,
// when nft is installed, the nftables tables that iptables-nft does not
// manage ("# nft list ruleset": the operator's native tables, ftpalg's
// table inet ftpalg). Counters, the generated-by comments and the
// remaining lifetimes of set elements are left out, so dumps compare.
func (n *NS) FirewallDump(ctx context.Context) (string, error) {
	var b strings.Builder
	for _, x := range xtables {
		out, err := n.Run(ctx, x.save)
		if err != nil {
			return "", fmt.Errorf("dumping firewall: %w", err)
		}
		fmt.Fprintf(&b, "# %s\n", x.save)
		for _, line := range strings.Split(out, "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if strings.HasPrefix(line, ":") {
				// ":INPUT DROP [12:3456]" -> ":INPUT DROP"
				if i := strings.LastIndex(line, " ["); i > 0 {
					line = line[:i]
				}
			}
			b.WriteString(line + "\n")
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := n.Run(ctx, "nft", "list", "ruleset")
		if err != nil {
			return "", fmt.Errorf("dumping nftables ruleset: %w", err)
		}
		b.WriteString("# nft list ruleset\n")
		b.WriteString(nativeTables(out))
	}
	return b.String(), nil
}

var (
	xtablesTableRE = regexp.MustCompile(`^table (ip|ip6) (filter|nat|mangle|raw|security) \{`)
	expiresRE      = regexp.MustCompile(` expires [0-9hms.]+`)
)

// nativeTables keeps the tables of "nft list ruleset" output that
// iptables-nft does not manage (iptables-save shows those), without the
// remaining lifetimes of set elements.
func nativeTables(ruleset string) string {
	var b strings.Builder
	keep := false
	for _, line := range strings.Split(ruleset, "\n") {
		if strings.HasPrefix(line, "table ") {
			keep = !xtablesTableRE.MatchString(line)
		}
		if keep && line != "" {
			b.WriteString(expiresRE.ReplaceAllString(line, "") + "\n")
		}
	}
	return b.String()
}

// VerifyNoFTPHelper checks that nothing in the gateway can attach the
// kernel's FTP conntrack helper (nf_conntrack_ftp) to a connection: the
// automatic assignment sysctl is absent or 0, and neither the iptables rules
// nor the nftables ruleset use a CT helper.
func (tp *Topo) VerifyNoFTPHelper(ctx context.Context) error {
	v, err := tp.GW.ReadSysctl(ctx, "net.netfilter.nf_conntrack_helper")
	if err == nil && v != "0" {
		return fmt.Errorf("net.netfilter.nf_conntrack_helper is %s in %s", v, tp.GW.Name)
	}
	dump, err := tp.GW.FirewallDump(ctx)
	if err != nil {
		return err
	}
	if strings.Contains(dump, "--helper") || strings.Contains(dump, "-m helper") {
		return fmt.Errorf("firewall of %s uses a conntrack helper:\n%s", tp.GW.Name, dump)
	}
	if _, err := exec.LookPath("nft"); err == nil {
		ruleset, err := tp.GW.Run(ctx, "nft", "list", "ruleset")
		if err != nil {
			return fmt.Errorf("listing nftables ruleset: %w", err)
		}
		if strings.Contains(ruleset, "ct helper") {
			return fmt.Errorf("nftables ruleset of %s uses a conntrack helper:\n%s", tp.GW.Name, ruleset)
		}
	}
	return nil
}
