package nftables

// Listing and flushing what ftpalg owns, for "ftpalg rules list|flush".

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	nft "github.com/google/nftables"
)

// Rules lists what ftpalg owns in the kernel, read from the kernel (so it
// also shows what another or a crashed process left): the table, its
// chains with their number of rules, every element of its sets and maps
// with its comment and remaining lifetime, and the accept rules in the
// operator's chains, e.g.
//
//	nft table inet ftpalg
//	nft inet ftpalg chain pinhole_pre rules 2
//	nft inet ftpalg set open4 element 192.0.2.10 . 203.0.113.5 . 40000 expires 29.5s comment "ftpalg:s1:p1"
//	nft inet filter chain forward rule "ftpalg:accept"
//	iptables -t filter -A FORWARD -m connmark --mark 0x1000000/0x1000000 -m comment --comment ftpalg:accept -j ACCEPT
//
// sorted.
func (b *Backend) Rules(ctx context.Context) ([]string, error) {
	b.life.RLock()
	defer b.life.RUnlock()
	var out []string
	has, err := b.hasTable()
	if err != nil {
		return nil, err
	}
	if has {
		out = append(out, "nft table inet "+tableName)
		chains, err := b.conn.ListChainsOfTableFamily(nft.TableFamilyINet)
		if err != nil {
			return nil, fmt.Errorf("listing chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != tableName {
				continue
			}
			rs, err := b.conn.GetRules(b.tb.t, ch)
			if err != nil {
				return nil, fmt.Errorf("listing chain %s: %w", ch.Name, err)
			}
			out = append(out, fmt.Sprintf("nft inet %s chain %s rules %d", tableName, ch.Name, len(rs)))
		}
		for _, s := range b.tb.sets {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			elems, err := b.conn.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("listing set %s: %w", s.Name, err)
			}
			for _, e := range elems {
				out = append(out, fmt.Sprintf("nft inet %s set %s element %s", tableName, s.Name, formatElement(s, e)))
			}
		}
	}
	acc, err := b.listAccepts()
	if err != nil {
		return nil, err
	}
	out = append(out, acc...)
	slices.Sort(out)
	return out, nil
}

// formatElement prints an element of one of the owned sets.
func formatElement(s *nft.Set, e nft.SetElement) string {
	alen := 4
	if s.Name == setOpen6 || s.Name == mapDNAT6 || s.Name == mapSNAT6 {
		alen = 16
	}
	str := fmt.Sprint(e.Key)
	if len(e.Key) == 2*alen+4 {
		src, _ := netip.AddrFromSlice(e.Key[:alen])
		dst, _ := netip.AddrFromSlice(e.Key[alen : 2*alen])
		str = fmt.Sprintf("%s . %s . %d", src, dst, int(e.Key[2*alen])<<8|int(e.Key[2*alen+1]))
	}
	switch {
	case len(e.Val) == alen+4:
		a, _ := netip.AddrFromSlice(e.Val[:alen])
		str += fmt.Sprintf(" : %s . %d", a, int(e.Val[alen])<<8|int(e.Val[alen+1]))
	case len(e.Val) == alen:
		a, _ := netip.AddrFromSlice(e.Val)
		str += " : " + a.String()
	}
	if e.Expires > 0 {
		str += " expires " + e.Expires.Round(100*time.Millisecond).String()
	}
	if e.Comment != "" {
		str += fmt.Sprintf(" comment %q", e.Comment)
	}
	return str
}

// Flush removes everything ftpalg owns from the firewall, as left by any
// ftpalg process (for "ftpalg rules flush"): Teardown on a fresh backend.
func Flush(ctx context.Context, cfg Config) error {
	b, err := New(cfg)
	if err != nil {
		return err
	}
	defer b.Release()
	return b.Teardown(ctx)
}
