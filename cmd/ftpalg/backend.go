package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/iptables"
	"github.com/ftpalg/ftpalg/rules/nftables"
)

// Choosing and building the firewall backend (--backend auto|nftables|
// iptables; relay is built in run.go).

// firewallBackend is what run needs of a firewall backend; both
// rules/nftables and rules/iptables provide it.
type firewallBackend interface {
	rules.Backend
	Setup(ctx context.Context) error
	Teardown(ctx context.Context) error
	Intercept(ctx context.Context, ifaces []string, listenPort uint16) error
	AllowListeners(ctx context.Context, addrs []netip.AddrPort) error
	Watch(ctx context.Context, interval time.Duration)
	Rules(ctx context.Context) ([]string, error)
}

var (
	_ firewallBackend = (*nftables.Backend)(nil)
	_ firewallBackend = (*iptables.Backend)(nil)
)

// resolveBackend picks the backend "auto" stands for: nftables when the
// kernel answers nf_tables over netlink, else iptables. It says why.
func resolveBackend(name string) (kind, reason string) {
	if name != "auto" {
		return name, "--backend " + name
	}
	if err := nftables.Probe(); err != nil {
		return "iptables", fmt.Sprintf("auto: nf_tables unavailable (%v)", err)
	}
	return "nftables", "auto: the kernel has nf_tables"
}

// sweepOther removes what a crashed run of the other firewall backend
// left: switching backends must not leave old pinholes or chains behind.
// Best effort: the other backend may be missing here.
func sweepOther(ctx context.Context, kind string, log *slog.Logger) {
	var err error
	switch kind {
	case "nftables":
		if _, e := iptables.New(iptables.Config{Log: slog.New(slog.DiscardHandler)}); e == nil {
			err = iptables.Flush(ctx, iptables.Config{Log: log})
		}
	case "iptables":
		if nftables.Probe() == nil {
			err = nftables.Flush(ctx, nftables.Config{Log: log})
		}
	}
	if err != nil {
		log.Warn("removing leftovers of the other firewall backend", "err", err)
	}
}

// setupFirewall sets up the firewall backend kind: leftovers of a crashed
// run swept, its table or chains installed and watched, all removed again
// at exit. It logs which backend runs and why.
func (d *daemon) setupFirewall(ctx context.Context, kind, reason string) error {
	lock, err := lockFirewall()
	if err != nil {
		return err
	}
	// Closed last (cleanups run in reverse): after Teardown.
	d.cleanups = append(d.cleanups, func() { lock.Close() })
	var fw firewallBackend
	attrs := []any{"backend", kind, "reason", reason}
	interval := d.cfg.RepairEvery.D()
	switch kind {
	case "nftables":
		nb, err := nftables.New(nftables.Config{Log: d.log, LockWait: d.cfg.LockWait.D()})
		if err != nil {
			return err
		}
		d.cleanups = append(d.cleanups, func() { nb.Release() }) // after Teardown
		fw = nb
		// A foreign flush is noticed within a second.
		interval = min(interval, nftables.DefaultWatchInterval)
	case "iptables":
		ipt, err := iptables.New(iptables.Config{Log: d.log, Timeout: d.cfg.LockWait.D()})
		if err != nil {
			return err
		}
		fw = ipt
		attrs = append(attrs, "iptables", ipt.Variant())
	default:
		return usagef("--backend %s is not available in this build", kind)
	}
	d.log.Info("pinhole backend", attrs...)
	sweepOther(ctx, kind, d.log)
	if err := fw.Setup(ctx); err != nil {
		return fmt.Errorf("installing firewall state: %w", err)
	}
	d.fw = fw
	// Someone else may flush ftpalg's table or chains (nft flush ruleset,
	// firewall-cmd --reload, a firewall restart): notice within seconds,
	// log it and re-install them with the live pinholes.
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		fw.Watch(wctx, interval)
	}()
	d.cleanups = append(d.cleanups, func() {
		stopWatch()
		<-watched
		// Not ctx: it is cancelled by the signal that brought us here.
		tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := fw.Teardown(tctx); err != nil {
			d.log.Error("removing firewall rules", "err", err)
		} else {
			d.log.Info("firewall rules removed")
		}
	})
	return nil
}
