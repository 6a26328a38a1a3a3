package netlab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

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
	for _, x := range xtables {
		if err := tp.GW.IPTables(ctx, x.family, "-A", "FORWARD", "-p", "tcp", "--dport", "21",
			"-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"); err != nil {
			return fmt.Errorf("allowing FTP control connections: %w", err)
		}
	}
	return nil
}

// FirewallDump returns iptables-save and ip6tables-save of the namespace,
// each after a header line ("# iptables-save" / "# ip6tables-save").
// Counters and the generated-by comments are left out, so dumps compare.
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
	return b.String(), nil
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
