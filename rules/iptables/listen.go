package iptables

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// AllowListeners accepts new TCP connections to ftpalg's own listeners in
// FTPALG-INPUT, so that a published server (reverse mode) is reachable on a
// host whose INPUT policy is DROP. An unspecified address ("0.0.0.0",
// "[::]", dual-stack) accepts the port on every address of its families.
// The rules are removed by Teardown, like the interception rules.
func (t *Backend) AllowListeners(ctx context.Context, addrs []netip.AddrPort) error {
	t.life.Lock()
	defer t.life.Unlock()
	t.mu.Lock()
	ready := t.ready
	t.mu.Unlock()
	if !ready {
		return errors.New("allowing listeners: iptables backend is not set up")
	}
	var add []rule
	for _, ap := range addrs {
		if ap.Port() == 0 {
			return fmt.Errorf("allowing listener %s: port 0", ap)
		}
		a := ap.Addr().Unmap()
		for _, f := range t.families() {
			six := f == t.v6
			var dst []string
			switch {
			case a.IsUnspecified() && a.Is4():
				if six {
					continue
				}
			case a.IsUnspecified():
				// "[::]" is dual-stack: both families.
			case a.Is6() != six:
				continue
			default:
				dst = []string{"-d", hostArg(a)}
			}
			r := rule{fam: f, table: "filter", chain: chainInput, spec: slices.Concat(dst, []string{"-p", "tcp", "-m", "tcp",
				"--dport", portArg(ap.Port()), "--tcp-flags", "FIN,SYN,RST,ACK", "SYN",
				"-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", listenerNote, "-j", "ACCEPT"})}
			if !slices.ContainsFunc(add, func(x rule) bool { return sameRule(x, r) }) {
				add = append(add, r)
			}
		}
	}
	if err := t.install(ctx, add); err != nil {
		return fmt.Errorf("allowing listeners %v: %w", addrs, err)
	}
	t.mu.Lock()
	for i := range add {
		t.seq++
		add[i].seq = t.seq
	}
	t.intercept = append(t.intercept, add...)
	t.mu.Unlock()
	t.log.Info("listeners allowed in the firewall", "listen", fmt.Sprint(addrs))
	return nil
}
