package nftables

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
)

// The accept rules in the operator's firewall.
//
// An accept in ftpalg's table does not override a drop in another table:
// every base chain on a hook sees the packet, and a drop anywhere is
// final. So a connection that consumed a pinhole (or was intercepted) gets
// a conntrack mark bit in ftpalg's table, and ftpalg puts one rule at the
// top of each filter chain of the operator that decides on input and
// forward, accepting that bit:
//
//	iptables/ip6tables (legacy or nft), chains INPUT and FORWARD of table filter:
//	    -m connmark --mark MARK/MARK -m comment --comment ftpalg:accept -j ACCEPT
//	native nftables, every base chain of type filter on hook input or forward
//	in a table ftpalg does not own and iptables-nft does not manage:
//	    ct mark & MARK == MARK accept comment "ftpalg:accept"
//
// Setup installs them, Teardown and the next Setup remove every rule with
// that comment, Repair puts back one that went missing.

// acceptRef is one operator chain holding ftpalg's accept rule.
type acceptRef struct {
	prog   string // "iptables" or "ip6tables"; "" for native nftables
	family nft.TableFamily
	table  string
	chain  string
}

func (a acceptRef) String() string {
	if a.prog != "" {
		return a.prog + " " + a.table + " " + a.chain
	}
	return fmt.Sprintf("nft %s %s %s", familyName(a.family), a.table, a.chain)
}

func acceptNames(refs []acceptRef) []string {
	var s []string
	for _, r := range refs {
		s = append(s, r.String())
	}
	return s
}

func familyName(f nft.TableFamily) string {
	switch f {
	case nft.TableFamilyIPv4:
		return "ip"
	case nft.TableFamilyIPv6:
		return "ip6"
	case nft.TableFamilyINet:
		return "inet"
	}
	return strconv.Itoa(int(f))
}

// xtables is one iptables program and the nftables family its nf_tables
// variant uses.
type xtables struct {
	prog   string
	family nft.TableFamily
}

var xtablesProgs = []xtables{{"iptables", nft.TableFamilyIPv4}, {"ip6tables", nft.TableFamilyIPv6}}

// xtablesTables are the table names iptables-nft manages.
var xtablesTables = []string{"filter", "nat", "mangle", "raw", "security"}

// iptSpec is the accept rule as iptables -S prints it.
func (b *Backend) iptSpec() []string {
	m := fmt.Sprintf("%#x/%#x", b.mark, b.mark)
	return []string{"-m", "connmark", "--mark", m, "-m", "comment", "--comment", commentAccept, "-j", "ACCEPT"}
}

// wantAccepts returns every operator chain that should hold the accept
// rule now: the operator may have replaced or added chains since Setup.
func (b *Backend) wantAccepts() ([]acceptRef, error) {
	ipt, managed, err := b.iptChains()
	if err != nil {
		return nil, err
	}
	var refs []acceptRef
	for _, x := range xtablesProgs {
		for _, chain := range ipt[x.prog] {
			refs = append(refs, acceptRef{prog: x.prog, family: x.family, table: "filter", chain: chain})
		}
	}
	native, err := b.nativeChains(managed)
	if err != nil {
		return nil, err
	}
	for _, c := range native {
		refs = append(refs, acceptRef{family: c.Table.Family, table: c.Table.Name, chain: c.Name})
	}
	return refs, nil
}

// nativeChains returns the operator's native nftables filter chains on
// input and forward.
func (b *Backend) nativeChains(managed map[nft.TableFamily]bool) ([]*nft.Chain, error) {
	cs, err := b.conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	var out []*nft.Chain
	for _, c := range cs {
		t := c.Table
		switch t.Family {
		case nft.TableFamilyINet, nft.TableFamilyIPv4, nft.TableFamilyIPv6:
		default:
			continue
		}
		if t.Family == nft.TableFamilyINet && t.Name == tableName {
			continue
		}
		if managed[t.Family] && slices.Contains(xtablesTables, t.Name) {
			continue
		}
		if c.Type != nft.ChainTypeFilter || c.Hooknum == nil {
			continue
		}
		if h := *c.Hooknum; h != *nft.ChainHookInput && h != *nft.ChainHookForward {
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// installAccepts puts the accept rule at the top of every operator chain
// that needs it.
func (b *Backend) installAccepts() ([]acceptRef, error) {
	ipt, managed, err := b.iptChains()
	if err != nil {
		return nil, err
	}
	var refs []acceptRef
	for _, x := range xtablesProgs {
		for _, chain := range ipt[x.prog] {
			if _, err := b.run(x.prog, append([]string{"-t", "filter", "-I", chain, "1"}, b.iptSpec()...)...); err != nil {
				return refs, err
			}
			refs = append(refs, acceptRef{prog: x.prog, family: x.family, table: "filter", chain: chain})
		}
	}
	native, err := b.nativeChains(managed)
	if err != nil {
		return refs, err
	}
	for _, c := range native {
		b.conn.InsertRule(&nft.Rule{Table: c.Table, Chain: c, Exprs: acceptRule(b.mark), UserData: comment(commentAccept)})
		refs = append(refs, acceptRef{family: c.Table.Family, table: c.Table.Name, chain: c.Name})
	}
	if err := b.conn.Flush(); err != nil {
		return refs, fmt.Errorf("inserting accept rules in nftables chains: %w", err)
	}
	return refs, nil
}

// sweepAccepts removes every accept rule with ftpalg's comment, whatever
// its mark, from the operator's chains.
func (b *Backend) sweepAccepts() error {
	var errs []error
	ipt, managed, err := b.iptChains()
	if err != nil {
		return err
	}
	for _, x := range xtablesProgs {
		for _, chain := range ipt[x.prog] {
			lines, err := b.iptOwned(x.prog, chain)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, l := range lines {
				// The comment has no blank: the fields are the rule's
				// arguments once its quotes go.
				f := strings.Fields(strings.ReplaceAll(l, `"`, ""))
				if _, err := b.run(x.prog, append([]string{"-t", "filter", "-D", chain}, f[2:]...)...); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	native, err := b.nativeChains(managed)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	n := 0
	for _, c := range native {
		rs, err := b.conn.GetRules(c.Table, c)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing chain %s of table %s: %w", c.Name, c.Table.Name, err))
			continue
		}
		for _, r := range rs {
			if cm, _ := userdata.GetString(r.UserData, userdata.TypeComment); strings.HasPrefix(cm, commentPrefix) {
				if err := b.conn.DelRule(r); err != nil {
					errs = append(errs, err)
				}
				n++
			}
		}
	}
	if n > 0 {
		if err := b.conn.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("deleting accept rules: %w", err))
		}
	}
	return errors.Join(errs...)
}

// listAccepts returns the accept rules found in the operator's chains.
func (b *Backend) listAccepts() ([]string, error) {
	var out []string
	ipt, managed, err := b.iptChains()
	if err != nil {
		return nil, err
	}
	for _, x := range xtablesProgs {
		for _, chain := range ipt[x.prog] {
			lines, err := b.iptOwned(x.prog, chain)
			if err != nil {
				return nil, err
			}
			for _, l := range lines {
				out = append(out, x.prog+" -t filter "+l)
			}
		}
	}
	native, err := b.nativeChains(managed)
	if err != nil {
		return nil, err
	}
	for _, c := range native {
		rs, err := b.conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("listing chain %s of table %s: %w", c.Name, c.Table.Name, err)
		}
		for _, r := range rs {
			if cm, _ := userdata.GetString(r.UserData, userdata.TypeComment); strings.HasPrefix(cm, commentPrefix) {
				out = append(out, fmt.Sprintf("nft %s %s chain %s rule %q", familyName(c.Table.Family), c.Table.Name, c.Name, cm))
			}
		}
	}
	return out, nil
}

// isAcceptRule reports whether r carries ftpalg's accept comment.
func isAcceptRule(r *nft.Rule) bool {
	if cm, _ := userdata.GetString(r.UserData, userdata.TypeComment); cm == commentAccept {
		return true
	}
	for _, e := range r.Exprs {
		if m, ok := e.(*expr.Match); ok && m.Name == "comment" {
			if c, ok := m.Info.(*xt.Comment); ok && string(*c) == commentAccept {
				return true
			}
		}
	}
	return false
}

// missingAccepts returns the refs whose accept rule is gone. A chain that
// is gone itself (a foreign flush of the whole ruleset) is reported too.
func (b *Backend) missingAccepts(refs []acceptRef) ([]acceptRef, error) {
	var missing []acceptRef
	for _, r := range refs {
		if r.prog != "" {
			if v, err := b.variant(r.prog); err != nil || v != "nf_tables" {
				// iptables-legacy: only the command can tell.
				_, err := b.run(r.prog, append([]string{"-t", "filter", "-C", r.chain}, b.iptSpec()...)...)
				if err != nil {
					missing = append(missing, r)
				}
				continue
			}
		}
		// Native chains, and iptables-nft's by netlink (no command run
		// every second): the rule's comment is in its user data, or an
		// xt comment match for iptables-nft.
		t := &nft.Table{Name: r.table, Family: r.family}
		rs, err := b.conn.GetRules(t, &nft.Chain{Name: r.chain, Table: t})
		if err != nil || !slices.ContainsFunc(rs, isAcceptRule) {
			missing = append(missing, r)
		}
	}
	return missing, nil
}
