package iptables

// Pinholes: Open, Close and the rules of one pinhole.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/ftpalg/ftpalg/rules"
)

// family returns the family of p, or an error when it is not managed.
func (t *Backend) family(p rules.Pinhole) (*family, error) {
	if !p.Is6() {
		return t.v4, nil
	}
	if t.v6 == nil {
		return nil, errors.New("IPv6 pinhole, but ip6tables is not managed")
	}
	return t.v6, nil
}

// Open makes p live: it appends the ACCEPT rules (filter FTPALG-FORWARD and
// FTPALG-INPUT), and when p translates, the DNAT rules (nat
// FTPALG-PREROUTING and FTPALG-OUTPUT) and the SNAT rules (nat
// FTPALG-POSTROUTING and FTPALG-INPUT), in one iptables-restore run shared
// with the other pinhole changes that wait for the same run. It is
// all-or-nothing: on error, the rules it added are removed again. When it
// returns nil, every rule is in the kernel. When ctx ends while Open waits
// for its run, it returns ctx's error and changes nothing. Setup must have
// run.
func (t *Backend) Open(ctx context.Context, p rules.Pinhole) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("opening pinhole: %w", err)
	}
	if p.TLS != nil {
		return fmt.Errorf("opening pinhole %v: the kernel cannot carry a TLS-terminated data connection (use the relay)", p)
	}
	comment, err := pinholeComment(p)
	if err != nil {
		return fmt.Errorf("opening pinhole %v: %w", p, err)
	}
	fam, err := t.family(p)
	if err != nil {
		return fmt.Errorf("opening pinhole %v: %w", p, err)
	}
	rules := pinholeRules(fam, p, comment)

	t.life.RLock()
	defer t.life.RUnlock()
	t.mu.Lock()
	if !t.ready {
		t.mu.Unlock()
		return fmt.Errorf("opening pinhole %v: iptables backend is not set up", p)
	}
	if _, ok := t.open[p.ID]; ok || t.busy[p.ID] {
		t.mu.Unlock()
		return fmt.Errorf("opening pinhole %v: already open", p)
	}
	t.busy[p.ID] = true
	t.mu.Unlock()

	applied := false
	if err = ctx.Err(); err == nil {
		applied = true
		_, err = t.apply(ctx, fam, change{rules: rules})
	}

	var left []rule
	if err != nil && applied {
		// The failed change was rolled back, but a rollback can fail too
		// (a table committed, the lock busy): remove once more, and keep
		// what still stands under the pinhole's ID so that Close or
		// Teardown removes it; never forget a rule in the kernel.
		var rerr error
		if left, rerr = remove(rules); rerr != nil {
			t.log.Error("rules of a failed pinhole left in the firewall", "pinhole", p.String(), "rules", len(left), "err", rerr)
		}
	}
	t.mu.Lock()
	delete(t.busy, p.ID)
	if err == nil || len(left) > 0 {
		t.seq++
		keep := rules
		if err != nil {
			keep = left
		}
		for i := range keep {
			keep[i].seq = t.seq
		}
		t.open[p.ID] = &livePinhole{fam: fam, rules: keep}
	}
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("opening pinhole %v: %w", p, err)
	}
	t.log.Debug("pinhole opened", "session", p.Session(), "pinhole", p.String(), "rules", len(rules))
	return nil
}

// Close removes the rules of the pinhole with p's ID, in one
// iptables-restore run shared like Open's. A pinhole that is not open is not
// an error, nor is a rule that is already gone (flushed by someone else).
// When a rule cannot be removed, the pinhole stays known with the remaining
// rules, so that a later Close retries. Like Teardown, Close is not
// interrupted by ctx. Close of a pinhole whose Open or Close is still
// running returns nil at once.
func (t *Backend) Close(ctx context.Context, p rules.Pinhole) error {
	t.life.RLock()
	defer t.life.RUnlock()
	t.mu.Lock()
	live, ok := t.open[p.ID]
	if !ok || t.busy[p.ID] {
		t.mu.Unlock()
		return nil
	}
	delete(t.open, p.ID)
	t.busy[p.ID] = true
	t.mu.Unlock()

	left, err := t.apply(context.WithoutCancel(ctx), live.fam, change{del: true, rules: live.rules})

	t.mu.Lock()
	delete(t.busy, p.ID)
	if len(left) > 0 {
		t.open[p.ID] = &livePinhole{fam: live.fam, rules: left}
	}
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("closing pinhole %v: %w", p, err)
	}
	t.log.Debug("pinhole closed", "session", p.Session(), "pinhole", p.String())
	return nil
}

// install appends rules in order; on error (or when ctx ends) it removes
// the ones it added.
func (t *Backend) install(ctx context.Context, rules []rule) error {
	for i, r := range rules {
		err := ctx.Err()
		if err == nil {
			if err = r.fam.ipt.Append(r.table, r.chain, r.spec...); err != nil {
				err = fmt.Errorf("appending to chain %s in table %s: %w", r.chain, r.table, err)
			}
		}
		if err != nil {
			if _, rerr := remove(rules[:i]); rerr != nil {
				t.log.Error("rolling back partial iptables change", "err", rerr)
				err = errors.Join(err, fmt.Errorf("rolling back: %w", rerr))
			}
			return err
		}
	}
	return nil
}

// remove deletes rules, newest first; a rule already gone counts as removed.
// On error it goes on and returns the rules it could not remove.
func remove(rules []rule) (left []rule, err error) {
	var errs []error
	for i := len(rules) - 1; i >= 0; i-- {
		r := rules[i]
		if err := r.fam.ipt.Delete(r.table, r.chain, r.spec...); err != nil && !isNotExist(err) {
			errs = append(errs, fmt.Errorf("deleting from chain %s in table %s: %w", r.chain, r.table, err))
			left = append(left, r)
		}
	}
	slices.Reverse(left)
	return left, errors.Join(errs...)
}

// pinholeComment returns the rule comment of p: "ftpalg:<session>:<id>",
// e.g. "ftpalg:s12:s12.p3". Typed IDs make it short and safe by
// construction; the error is kept for the callers' sake.
func pinholeComment(p rules.Pinhole) (string, error) {
	if p.ID.IsZero() {
		return "", errors.New("pinhole without ID")
	}
	return commentPrefix + p.Session() + ":" + p.ID.String(), nil
}

// hostArg formats a for -s/-d the way iptables -S prints it.
func hostArg(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

func portArg(p uint16) string { return strconv.Itoa(int(p)) }

// pinholeRules returns the rules of p. Each specification is written the
// way iptables -S prints it back (/32, -m tcp, --tcp-flags for --syn,
// options in save order), so that Rules, the fake and the kernel agree.
func pinholeRules(f *family, p rules.Pinhole, comment string) []rule {
	tgt := p.Target()
	// origDst narrows a translated pinhole to connections that were
	// addressed to Dst before DNAT.
	var origDst []string
	if p.DNAT.IsValid() {
		origDst = []string{"--ctorigdst", p.Dst.Addr().String(), "--ctorigdstport", portArg(p.Dst.Port())}
	}
	tail := func(target ...string) []string {
		return append([]string{"-m", "comment", "--comment", comment, "-j"}, target...)
	}
	accept := slices.Concat(
		[]string{"-s", hostArg(p.Src), "-d", hostArg(tgt.Addr()), "-p", "tcp", "-m", "tcp", "--dport", portArg(tgt.Port()),
			"--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-m", "conntrack", "--ctstate", "NEW"},
		origDst, []string{"-m", "quota", "--quota", oneSYN(p)}, tail("ACCEPT"))
	rules := []rule{
		{fam: f, table: "filter", chain: chainForward, spec: accept},
		{fam: f, table: "filter", chain: chainInput, spec: accept},
	}
	if p.DNAT.IsValid() {
		dnat := slices.Concat(
			[]string{"-s", hostArg(p.Src), "-d", hostArg(p.Dst.Addr()), "-p", "tcp", "-m", "tcp", "--dport", portArg(p.Dst.Port()),
				"-m", "conntrack", "--ctstate", "NEW"},
			tail("DNAT", "--to-destination", p.DNAT.String()))
		rules = append(rules,
			rule{fam: f, table: "nat", chain: chainPrerouting, spec: dnat},
			rule{fam: f, table: "nat", chain: chainOutput, spec: dnat})
	}
	if p.SNAT.IsValid() {
		snat := slices.Concat(
			[]string{"-s", hostArg(p.Src), "-d", hostArg(tgt.Addr()), "-p", "tcp", "-m", "tcp", "--dport", portArg(tgt.Port()),
				"-m", "conntrack", "--ctstate", "NEW"},
			origDst, tail("SNAT", "--to-source", p.SNAT.String()))
		rules = append(rules,
			rule{fam: f, table: "nat", chain: chainPostrouting, spec: snat},
			rule{fam: f, table: "nat", chain: chainInput, spec: snat})
	}
	return rules
}

// oneSYN is the byte quota that makes a pinhole's accept rule single use in
// the kernel: xt_quota matches a packet while the quota left covers its
// length, so a quota of one SYN admits the first SYN (any options) and no
// second one, however soon it follows and before ftpalg has seen the first
// in conntrack. A SYN is at least 40 bytes over IPv4 (20 IP + 20 TCP) and 60
// over IPv6; the quota is twice that less one, so after any first SYN the
// rest is below the smallest second one, and a first SYN with up to 39
// (IPv4) or 59 (IPv6) bytes of TCP options still fits. The rule's FORWARD
// and INPUT copies count apart, but a packet only crosses one of them.
func oneSYN(p rules.Pinhole) string {
	if p.Is6() {
		return "119"
	}
	return "79"
}
