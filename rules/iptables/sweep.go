package iptables

// Owned state: the sweep of leftovers, listing and flushing the rules.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// sweep removes every ftpalg rule and chain of every family.
func (t *Backend) sweep() error {
	var errs []error
	for _, f := range t.families() {
		rules, chains, err := sweepFamily(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("sweeping %s: %w", f.name, err))
		}
		if rules+chains > 0 {
			t.log.Info("removed ftpalg firewall state", "family", f.name, "rules", rules, "chains", chains)
		}
	}
	return errors.Join(errs...)
}

// sweepFamily removes, in the filter and nat tables, every rule of a built-in
// chain that is ftpalg's (an "ftpalg:" comment, or a jump to an FTPALG-*
// chain), then every FTPALG-* chain. It goes on after an error and returns
// how many rules and chains it removed.
func sweepFamily(f *family) (rules, chains int, err error) {
	var errs []error
	for _, table := range tables {
		for _, builtin := range builtinChains[table] {
			lines, err := f.ipt.List(table, builtin)
			if err != nil {
				errs = append(errs, fmt.Errorf("listing chain %s in table %s: %w", builtin, table, err))
				continue
			}
			for _, line := range lines {
				spec, ok, err := ownedRule(line, builtin)
				if err != nil {
					errs = append(errs, fmt.Errorf("table %s: %w", table, err))
					continue
				}
				if !ok {
					continue
				}
				if err := f.ipt.Delete(table, builtin, spec...); err != nil && !isNotExist(err) {
					errs = append(errs, fmt.Errorf("deleting rule %q from chain %s in table %s: %w", line, builtin, table, err))
					continue
				}
				rules++
			}
		}
		all, err := f.ipt.ListChains(table)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing chains of table %s: %w", table, err))
			continue
		}
		var owned []string
		for _, c := range all {
			if strings.HasPrefix(c, chainPrefix) {
				owned = append(owned, c)
			}
		}
		// Flush them all before deleting any: owned chains may jump to
		// each other.
		for _, c := range owned {
			if err := f.ipt.ClearChain(table, c); err != nil {
				errs = append(errs, fmt.Errorf("flushing chain %s in table %s: %w", c, table, err))
			}
		}
		for _, c := range owned {
			if err := f.ipt.DeleteChain(table, c); err != nil {
				if !isNotExist(err) {
					errs = append(errs, fmt.Errorf("deleting chain %s in table %s: %w", c, table, err))
				}
				continue
			}
			chains++
		}
	}
	return rules, chains, errors.Join(errs...)
}

// ownedRule parses one line of "iptables -S chain" and reports whether it is
// a rule ftpalg owns; if so it returns the rule specification to delete it.
func ownedRule(line, chain string) (spec []string, owned bool, err error) {
	if !strings.HasPrefix(line, "-A ") {
		return nil, false, nil
	}
	args, err := splitRuleLine(line)
	if err != nil {
		return nil, false, fmt.Errorf("parsing rule %q: %w", line, err)
	}
	if len(args) < 2 || args[0] != "-A" || args[1] != chain {
		return nil, false, fmt.Errorf("parsing rule %q: not a rule of chain %s", line, chain)
	}
	spec = args[2:]
	if c, ok := argAfter(spec, "--comment"); ok && strings.HasPrefix(c, commentPrefix) {
		return spec, true, nil
	}
	if j, ok := argAfter(spec, "-j"); ok && strings.HasPrefix(j, chainPrefix) {
		return spec, true, nil
	}
	return nil, false, nil
}

// argAfter returns the argument that follows the first occurrence of flag.
func argAfter(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

// splitRuleLine splits a line of iptables -S output into arguments. Like
// iptables-save, it quotes an argument in double quotes, with \" and \\
// escaping a quote and a backslash inside.
func splitRuleLine(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\'):
			i++
			cur.WriteByte(line[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			cur.WriteByte(c)
		case c == '"':
			quoted, inArg = true, true
		case c == ' ' || c == '\t':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			inArg = true
			cur.WriteByte(c)
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// Rules lists everything ftpalg owns in the kernel, for both families: the
// owned chains ("-N"), their rules and the ftpalg rules of built-in chains
// ("-A"), each line prefixed with the command and table, e.g.
//
//	iptables -t filter -A FORWARD -m comment --comment "ftpalg:jump" -j FTPALG-FORWARD
//
// sorted. It reads the kernel, not t's memory, so it also shows what another
// or a crashed process left.
func (t *Backend) Rules(ctx context.Context) ([]string, error) {
	t.life.RLock()
	defer t.life.RUnlock()
	var out []string
	for _, f := range t.families() {
		for _, table := range tables {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			prefix := f.name + " -t " + table + " "
			for _, builtin := range builtinChains[table] {
				lines, err := f.ipt.List(table, builtin)
				if err != nil {
					return nil, fmt.Errorf("listing %s chain %s in table %s: %w", f.name, builtin, table, err)
				}
				for _, line := range lines {
					_, ok, err := ownedRule(line, builtin)
					if err != nil {
						return nil, fmt.Errorf("listing %s table %s: %w", f.name, table, err)
					}
					if ok {
						out = append(out, prefix+line)
					}
				}
			}
			chains, err := f.ipt.ListChains(table)
			if err != nil {
				return nil, fmt.Errorf("listing %s chains of table %s: %w", f.name, table, err)
			}
			for _, c := range chains {
				if !strings.HasPrefix(c, chainPrefix) {
					continue
				}
				lines, err := f.ipt.List(table, c)
				if err != nil {
					return nil, fmt.Errorf("listing %s chain %s in table %s: %w", f.name, c, table, err)
				}
				for _, line := range lines {
					out = append(out, prefix+line)
				}
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Flush removes everything ftpalg owns from the firewall, as left by any
// ftpalg process (for "ftpalg rules flush"): Teardown on a fresh backend.
func Flush(ctx context.Context, cfg Config) error {
	t, err := New(cfg)
	if err != nil {
		return err
	}
	return t.Teardown(ctx)
}
