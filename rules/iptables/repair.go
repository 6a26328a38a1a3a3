package iptables

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Firewall reloads.
//
// "firewall-cmd --reload", a distribution's iptables-restore of its own
// rules or a plain "iptables -F" take ftpalg's chains, jumps or rules away
// while it runs. Verify notices; Repair puts back what t installed; Watch
// runs Repair periodically. Each check reads every table of each family
// once ("iptables -t T -S"): with iptables-nft every command reads the
// whole table anyway, so with 1,000 pinholes open a check costs four
// commands instead of 36.

// DefaultWatchInterval is the interval Watch uses when given none.
const DefaultWatchInterval = 2 * time.Second

// damage is one thing missing from the firewall.
type damage struct {
	fam   *family
	table string
	hook  *hook // a missing jump: the hook it belongs to
	what  string
}

// Verify reports whether everything t installed is still in place: every
// owned chain, every jump to it, and in each owned chain as many rules with
// each ftpalg comment as t added. A difference (e.g. after a firewall reload
// flushed the tables) yields an error wrapping ErrRulesChanged; a failure to
// read the firewall yields another error. Before Setup, or after Teardown,
// everything counts as missing.
func (t *Backend) Verify(ctx context.Context) error {
	t.life.RLock()
	defer t.life.RUnlock()
	missing, err := t.check(ctx)
	if err != nil {
		return err
	}
	t.mu.Lock()
	ready := t.ready
	t.mu.Unlock()
	if len(missing) == 0 && ready {
		return nil
	}
	what := make([]string, 0, len(missing)+1)
	for _, d := range missing {
		what = append(what, d.what)
	}
	if !ready {
		what = append(what, "backend not set up")
	}
	slices.Sort(what)
	return fmt.Errorf("%w: %s", ErrRulesChanged, strings.Join(what, "; "))
}

// check compares the firewall with what t installed and returns what is
// missing. The caller holds t.life.
func (t *Backend) check(ctx context.Context) ([]damage, error) {
	// want counts the expected rules per family, table, chain and comment.
	type key struct {
		fam                   *family
		table, chain, comment string
	}
	want := make(map[key]int)
	count := func(r rule) {
		c, _ := argAfter(r.spec, "--comment")
		want[key{r.fam, r.table, r.chain, c}]++
	}
	// Pinholes being opened are not counted yet, and those being closed
	// no longer: the firewall holds at least what is counted.
	t.mu.Lock()
	for _, lp := range t.open {
		for _, r := range lp.rules {
			count(r)
		}
	}
	for _, r := range t.intercept {
		count(r)
	}
	t.mu.Unlock()
	var missing []damage
	for _, f := range t.families() {
		for _, table := range tables {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			lines, err := f.ipt.ListTable(table)
			if err != nil {
				return nil, fmt.Errorf("verifying %s table %s: %w", f.name, table, err)
			}
			chains := make(map[string]bool)
			jumps := make(map[[2]string]bool) // built-in chain, owned chain
			have := make(map[[2]string]int)   // owned chain, comment
			for _, line := range lines {
				if c, ok := strings.CutPrefix(line, "-N "); ok {
					chains[c] = true
					continue
				}
				if !strings.HasPrefix(line, "-A ") {
					continue
				}
				args, err := splitRuleLine(line)
				if err != nil {
					return nil, fmt.Errorf("verifying %s table %s: parsing %q: %w", f.name, table, line, err)
				}
				if len(args) < 2 {
					continue
				}
				chain, spec := args[1], args[2:]
				if !strings.HasPrefix(chain, chainPrefix) {
					if j, ok := argAfter(spec, "-j"); ok && slices.Equal(spec, jumpSpec(j)) {
						jumps[[2]string{chain, j}] = true
					}
					continue
				}
				c, _ := argAfter(spec, "--comment")
				have[[2]string{chain, c}]++
			}
			for i := range hooks {
				h := &hooks[i]
				if h.table != table {
					continue
				}
				jump := damage{f, table, h, fmt.Sprintf("%s -t %s jump %s -> %s", f.name, table, h.builtin, h.chain)}
				if !chains[h.chain] {
					// No jump to a missing chain either.
					missing = append(missing, damage{f, table, nil, fmt.Sprintf("%s -t %s chain %s", f.name, table, h.chain)}, jump)
					continue
				}
				if !jumps[[2]string{h.builtin, h.chain}] {
					missing = append(missing, jump)
				}
				for k, n := range want {
					if k.fam == f && k.table == table && k.chain == h.chain && have[[2]string{h.chain, k.comment}] < n {
						missing = append(missing, damage{f, table, nil, fmt.Sprintf("%s -t %s chain %s: %d of %d rules %q",
							f.name, table, h.chain, n-have[[2]string{h.chain, k.comment}], n, k.comment)})
					}
				}
			}
		}
	}
	return missing, nil
}

// Repair runs Verify and, when something t installed is missing (after a
// firewall reload, say), puts it back: in each family and table that lost
// something, it re-creates the owned chains and the missing jumps to them
// (at position 1 of the built-in chains, as Setup does), and fills the
// owned chains anew with the rules of Intercept, AllowListeners and every
// open pinhole, in the order they were added. Each table is rebuilt in one
// iptables-restore transaction, so rules that survived are not doubled and
// no packet sees a half-rebuilt chain. It logs one line naming what was
// missing and reports whether it changed anything. rules.Pinhole changes wait
// while it repairs; while nothing is missing it takes no lock they need.
func (t *Backend) Repair(ctx context.Context) (repaired bool, err error) {
	if err := t.Verify(ctx); err == nil {
		return false, nil
	} else if !errors.Is(err, ErrRulesChanged) {
		return false, fmt.Errorf("repairing iptables rules: %w", err)
	}
	t.life.Lock()
	defer t.life.Unlock()
	t.mu.Lock()
	ready := t.ready
	t.mu.Unlock()
	if !ready {
		return false, errors.New("repairing iptables rules: backend is not set up")
	}
	// Again, now that no pinhole changes: the state t knows is the one
	// to restore.
	missing, err := t.check(ctx)
	if err != nil {
		return false, fmt.Errorf("repairing iptables rules: %w", err)
	}
	if len(missing) == 0 {
		return false, nil
	}
	var errs []error
	pinholes := 0
	for _, f := range t.families() {
		input, n := t.repairInput(f, missing)
		if len(input) == 0 {
			continue
		}
		if err := f.ipt.Restore(context.WithoutCancel(ctx), input); err != nil {
			errs = append(errs, fmt.Errorf("restoring %s: %w", f.name, err))
			continue
		}
		pinholes += n
		repaired = true
	}
	what := make([]string, len(missing))
	for i, d := range missing {
		what[i] = d.what
	}
	slices.Sort(what)
	if len(what) > 10 {
		what = append(what[:10], fmt.Sprintf("and %d more", len(what)-10))
	}
	if repaired {
		t.log.Warn("iptables rules repaired", "missing", strings.Join(what, "; "), "pinholes", pinholes)
	}
	if err := errors.Join(errs...); err != nil {
		return repaired, fmt.Errorf("repairing iptables rules (missing: %s): %w", strings.Join(what, "; "), err)
	}
	return repaired, nil
}

// repairInput returns the iptables-restore input that rebuilds the tables
// of f that lack something, and how many pinholes it re-installs. The
// caller holds t.life exclusively.
func (t *Backend) repairInput(f *family, missing []damage) ([]byte, int) {
	// Every rule t installed in f, in the order it went in.
	var rules []rule
	pinholeOf := make(map[uint64]bool) // seq of the pinholes' rules
	t.mu.Lock()
	for _, r := range t.intercept {
		if r.fam == f {
			rules = append(rules, r)
		}
	}
	for _, lp := range t.open {
		if lp.fam == f {
			rules = append(rules, lp.rules...)
			for _, r := range lp.rules {
				pinholeOf[r.seq] = true
			}
		}
	}
	t.mu.Unlock()
	slices.SortStableFunc(rules, func(a, b rule) int { return cmp.Compare(a.seq, b.seq) })

	var b bytes.Buffer
	pinholes := make(map[uint64]bool)
	for _, table := range tables {
		if !slices.ContainsFunc(missing, func(d damage) bool { return d.fam == f && d.table == table }) {
			continue
		}
		b.WriteString("*" + table + "\n")
		// Creates the chain, or flushes it when it exists.
		for _, h := range hooks {
			if h.table == table {
				fmt.Fprintf(&b, ":%s - [0:0]\n", h.chain)
			}
		}
		for _, d := range missing {
			if d.fam == f && d.table == table && d.hook != nil {
				fmt.Fprintf(&b, "-I %s 1 %s\n", d.hook.builtin, formatSpec(jumpSpec(d.hook.chain)))
			}
		}
		for _, r := range rules {
			if r.table != table {
				continue
			}
			fmt.Fprintf(&b, "-A %s %s\n", r.chain, formatSpec(r.spec))
			if pinholeOf[r.seq] {
				pinholes[r.seq] = true
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.Bytes(), len(pinholes)
}

// Watch runs Repair every interval (DefaultWatchInterval when not
// positive) until ctx ends, so that ftpalg's rules are back within about
// interval of a firewall reload. It logs a Repair error once, until the
// error changes or Repair succeeds again. Run it on a goroutine of its own,
// after Setup, and end it before Teardown; like every method of t, it runs
// the iptables commands in the network namespace of its goroutine's thread.
func (t *Backend) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var failing string
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		_, err := t.Repair(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && err.Error() != failing:
			t.log.Error("watching iptables rules", "err", err)
			failing = err.Error()
		case err == nil && failing != "":
			t.log.Info("iptables rules in place again")
			failing = ""
		}
	}
}
