package nftables

import (
	"context"
	"errors"
	"fmt"
	"time"

	nft "github.com/google/nftables"
)

// Foreign changes: "nft flush ruleset", "nft delete table inet ftpalg", a
// firewall reload that replaces the operator's tables. Watch checks every
// second and Repair puts back the table, the rules of Intercept and
// AllowListeners, the accept rules, and every live pinhole with the
// lifetime it has left. A pinhole that a connection had already consumed
// before the flush is put back too (ftpalg cannot tell), until its session
// closes it or its timeout passes.

// DefaultWatchInterval is the interval Watch uses when given none: a
// foreign flush is repaired within about a second.
const DefaultWatchInterval = time.Second

// ErrRulesChanged is wrapped by the error Verify returns when the table,
// one of its chains or an accept rule is missing.
var ErrRulesChanged = errors.New("ftpalg firewall state missing")

// damage is what check found missing.
type damage struct {
	table   bool // the table or one of its chains
	accepts []acceptRef
}

func (d damage) any() bool { return d.table || len(d.accepts) > 0 }

func (b *Backend) check() (damage, error) {
	var d damage
	b.mu.Lock()
	ready := b.ready
	b.mu.Unlock()
	if !ready {
		return d, nil
	}
	refs, err := b.wantAccepts()
	if err != nil {
		return d, err
	}
	cs, err := b.conn.ListChainsOfTableFamily(nft.TableFamilyINet)
	if err != nil {
		return d, fmt.Errorf("listing nftables chains: %w", err)
	}
	n := 0
	for _, c := range cs {
		if c.Table.Name == tableName {
			if _, ok := b.tb.chains[c.Name]; ok {
				n++
			}
		}
	}
	d.table = n != len(b.tb.chains)
	if d.accepts, err = b.missingAccepts(refs); err != nil {
		return d, err
	}
	return d, nil
}

// Verify reports whether everything Setup installed is in place.
func (b *Backend) Verify(ctx context.Context) error {
	b.life.RLock()
	defer b.life.RUnlock()
	d, err := b.check()
	if err != nil {
		return err
	}
	if d.any() {
		return fmt.Errorf("%w: table %v, accept rules %v", ErrRulesChanged, d.table, acceptNames(d.accepts))
	}
	return nil
}

// Repair runs the check and, when something is missing, puts it back: the
// table with its rules and the live pinholes (each with its remaining
// lifetime), and the accept rules. It logs one line when it repaired.
func (b *Backend) Repair(ctx context.Context) (repaired bool, err error) {
	b.life.RLock()
	d, err := b.check()
	b.life.RUnlock()
	if err != nil || !d.any() {
		return false, err
	}
	b.life.Lock()
	defer b.life.Unlock()
	if d, err = b.check(); err != nil || !d.any() {
		return false, err
	}
	pinholes := 0
	if d.table {
		if has, err := b.hasTable(); err == nil && has {
			b.conn.DelTable(b.tb.t)
			if err := b.conn.Flush(); err != nil {
				return false, fmt.Errorf("repairing: deleting the damaged table: %w", err)
			}
		}
		if err := b.install(); err != nil {
			return false, fmt.Errorf("repairing: %w", err)
		}
		if pinholes, err = b.reopen(); err != nil {
			return true, fmt.Errorf("repairing: %w", err)
		}
	}
	if len(d.accepts) > 0 {
		if err := b.sweepAccepts(); err != nil {
			return true, fmt.Errorf("repairing accept rules: %w", err)
		}
		refs, err := b.installAccepts()
		b.mu.Lock()
		b.accepts = refs
		b.mu.Unlock()
		if err != nil {
			return true, fmt.Errorf("repairing accept rules: %w", err)
		}
	}
	b.log.Warn("firewall state repaired after a foreign change", "table_recreated", d.table,
		"pinholes_reinstalled", pinholes, "accept_rules_reinstalled", acceptNames(d.accepts))
	return true, nil
}

// reopen adds the elements of every live pinhole again with the lifetime
// it has left; the caller holds b.life exclusively.
func (b *Backend) reopen() (int, error) {
	now := time.Now()
	var elems []element
	n := 0
	b.mu.Lock()
	for id, l := range b.open {
		left := l.deadline.Sub(now)
		if left <= 0 {
			delete(b.open, id)
			continue
		}
		n++
		for _, e := range l.elems {
			e.timeout = left
			elems = append(elems, e)
		}
	}
	b.mu.Unlock()
	// Bounded batches: a netlink message must fit the socket buffer.
	const chunk = 512
	for len(elems) > 0 {
		k := min(chunk, len(elems))
		if err := b.ec.add(tableName, elems[:k]); err != nil {
			return n, fmt.Errorf("reinstalling pinholes: %w", err)
		}
		elems = elems[k:]
	}
	return n, nil
}

// Watch runs Repair every interval (DefaultWatchInterval when not
// positive) until ctx ends, logging its errors.
func (b *Backend) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := b.Repair(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("repairing nftables state", "err", err)
		}
	}
}
