package nftables

// Intercept and AllowListeners: the rules of the owned table that are not
// per pinhole.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ftpalg/ftpalg/rules"
	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Intercept sends new TCP connections to port 21 that arrive on one of
// ifaces to the local listener on listenPort, for IPv4 and IPv6, and marks
// them so that the operator's filter lets them reach it:
//
//	iifname IF meta l4proto tcp tcp dport 21 ct mark set ct mark | MARK redirect to :PORT
//
// A later call replaces the rules of the earlier one. Setup must have run.
func (b *Backend) Intercept(ctx context.Context, ifaces []string, listenPort uint16) error {
	if err := rules.CheckIntercept(ifaces, listenPort); err != nil {
		return err
	}
	var uniq []string
	for _, ifc := range ifaces {
		if !slices.Contains(uniq, ifc) {
			uniq = append(uniq, ifc)
		}
	}
	b.life.Lock()
	defer b.life.Unlock()
	if err := b.replaceRules(ctx, chainNPre, commentIntercept, func() []ruleExprs {
		var rs []ruleExprs
		for _, ifc := range uniq {
			rs = append(rs, b.tb.interceptRule(ifc, listenPort))
		}
		return rs
	}); err != nil {
		return fmt.Errorf("intercepting FTP on %v: %w", ifaces, err)
	}
	b.mu.Lock()
	b.ifaces, b.listenP = uniq, listenPort
	b.mu.Unlock()
	b.log.Info("intercepting FTP", "interfaces", uniq, "listen_port", listenPort)
	return nil
}

// AllowListeners marks new TCP connections to ftpalg's own listeners, so
// that the operator's filter lets them in (reverse mode on a host whose
// input policy is drop). An unspecified address accepts the port on every
// address of its families ("[::]" is dual-stack). Teardown removes them.
func (b *Backend) AllowListeners(ctx context.Context, addrs []netip.AddrPort) error {
	for _, ap := range addrs {
		if ap.Port() == 0 {
			return fmt.Errorf("allowing listener %s: port 0", ap)
		}
	}
	b.life.Lock()
	defer b.life.Unlock()
	b.mu.Lock()
	all := append(slices.Clone(b.listeners), addrs...)
	b.mu.Unlock()
	if err := b.replaceRules(ctx, chainPre, commentListener, func() []ruleExprs {
		return b.listenerRules(all)
	}); err != nil {
		return fmt.Errorf("allowing listeners %v: %w", addrs, err)
	}
	b.mu.Lock()
	b.listeners = all
	b.mu.Unlock()
	return nil
}

func (b *Backend) listenerRules(addrs []netip.AddrPort) []ruleExprs {
	var rs []ruleExprs
	seen := map[netip.AddrPort]bool{}
	for _, ap := range addrs {
		a := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if seen[a] {
			continue
		}
		seen[a] = true
		switch {
		case a.Addr().IsUnspecified() && a.Addr().Is4():
			rs = append(rs, b.tb.listenerRule(&fam4, netip.Addr{}, a.Port()))
		case a.Addr().IsUnspecified():
			rs = append(rs, b.tb.listenerRule(nil, netip.Addr{}, a.Port()))
		default:
			rs = append(rs, b.tb.listenerRule(famOf(a.Addr()), a.Addr(), a.Port()))
		}
	}
	return rs
}

// ruleExprs is the expressions of one rule.
type ruleExprs = []expr.Any

// replaceRules replaces, in one batch, the rules of the owned chain that
// carry the comment cm by the rules want returns, placed at the top of the
// chain in order. Setup must have run; the caller holds b.life.
func (b *Backend) replaceRules(ctx context.Context, chain, cm string, want func() []ruleExprs) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	ready := b.ready
	b.mu.Unlock()
	if !ready {
		return errors.New("nftables backend is not set up")
	}
	ch := b.tb.chains[chain]
	cur, err := b.conn.GetRules(b.tb.t, ch)
	if err != nil {
		return fmt.Errorf("listing chain %s: %w", chain, err)
	}
	for _, r := range cur {
		if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); c == cm {
			if err := b.conn.DelRule(r); err != nil {
				return fmt.Errorf("deleting rule from chain %s: %w", chain, err)
			}
		}
	}
	rs := want()
	// InsertRule puts a rule at the top: insert the last one first.
	for i := len(rs) - 1; i >= 0; i-- {
		b.conn.InsertRule(&nft.Rule{Table: b.tb.t, Chain: ch, Exprs: rs[i], UserData: comment(cm)})
	}
	if err := b.conn.Flush(); err != nil {
		return fmt.Errorf("replacing rules of chain %s: %w", chain, err)
	}
	return nil
}
