package nftables

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// operatorDump is the operator's firewall as the tools print it: the
// filter table of iptables-save and ip6tables-save, or the native table.
func operatorDump(t *testing.T, fw firewall) string {
	t.Helper()
	if fw.name == "nftables" {
		return run(t, "nft", "list", "table", "inet", "filter")
	}
	var b strings.Builder
	for _, prog := range []string{"iptables-save", "ip6tables-save"} {
		for _, l := range strings.Split(run(t, prog, "-t", "filter"), "\n") {
			if strings.HasPrefix(l, "#") || l == "" {
				continue
			}
			if i := strings.LastIndex(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
				l = l[:i]
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestNetnsNFTablesAcceptRules checks the one rule ftpalg puts in each of
// the operator's filter chains, against golden files, and that Teardown
// leaves the operator's firewall exactly as it was; a stale accept rule
// (another mark, a crashed run) is swept by Setup.
func TestNetnsNFTablesAcceptRules(t *testing.T) {
	t.Parallel()
	for _, fw := range firewalls {
		t.Run(fw.name, func(t *testing.T) {
			t.Parallel()
			defer enterNetns(t, append(fw.tools, "iptables-save", "ip6tables-save")...)()
			fw.apply(t)
			before := operatorDump(t, fw)
			// A crashed run with another mark left its rule.
			stale := newKernelBackend(t, Config{Mark: 0x4})
			if err := stale.Setup(t.Context()); err != nil {
				t.Fatal(err)
			}
			b := newKernelBackend(t, Config{})
			if err := b.Setup(t.Context()); err != nil {
				t.Fatal(err)
			}
			golden(t, "accept-"+fw.name+".txt", operatorDump(t, fw))
			list, err := b.Rules(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "rules-"+fw.name+".txt", strings.Join(list, "\n")+"\n")
			if err := b.Teardown(t.Context()); err != nil {
				t.Fatal(err)
			}
			if after := operatorDump(t, fw); after != before {
				t.Errorf("operator firewall after Teardown:\n%s\nwant:\n%s", after, before)
			}
		})
	}
}

// TestNetnsNFTablesRepair checks that a foreign "nft flush ruleset" or
// "nft delete table inet ftpalg" is noticed and repaired within 2 s by
// Watch: the table, the accept rules and the live pinholes with their
// remaining lifetime.
func TestNetnsNFTablesRepair(t *testing.T) {
	t.Parallel()
	forEachFirewall(t, func(t *testing.T, d *dataPath, b *Backend) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		at := netip.AddrPortFrom
		go b.Watch(ctx, 0)
		for i, foreign := range [][]string{
			{"delete", "table", "inet", "ftpalg"},
			{"flush", "ruleset"},
		} {
			port := uint16(43000 + i)
			ln := d.listen(d.server, at(d.serverIP, port))
			p := rules.Pinhole{ID: rules.PinholeID{Session: 120, N: uint32(1 + i)}, Src: d.clientIP, Dst: at(d.serverIP, port), SNAT: d.gwOutside, TTL: time.Minute}
			if err := b.Open(ctx, p); err != nil {
				t.Fatal(err)
			}
			run(t, "nft", foreign...)
			if strings.Join(foreign, " ") == "flush ruleset" {
				// The operator reloads their firewall, as firewall tools do.
				firewallFor(t).apply(t)
			}
			deadline := time.Now().Add(2 * time.Second)
			for b.Verify(ctx) != nil && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if err := b.Verify(ctx); err != nil {
				t.Fatalf("after nft %s: not repaired within 2 s: %v", strings.Join(foreign, " "), err)
			}
			out := run(t, "nft", "list", "set", "inet", "ftpalg", "open4")
			if !strings.Contains(out, "ftpalg:s120:"+p.ID.String()) {
				t.Errorf("pinhole not reinstalled after nft %s:\n%s", strings.Join(foreign, " "), out)
			}
			d.expectPeer(d.client, netip.Addr{}, p.Dst, ln, d.gwOutside)
		}
	})
}
