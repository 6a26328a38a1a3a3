package iptables

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// fakeIPTables is an in-memory ipTables for one family: the filter and nat
// tables with their built-in chains (policy ACCEPT), user chains and rules
// stored as argument lists. It answers like the iptables command does for
// the calls the backend makes: rules are matched by exact specification, a
// chain must exist before rules go into it or jump to it, a chain that is
// built in, not empty or jumped to cannot be deleted, and errors carry the
// same "not exist" classification as go-iptables'. It does not normalise
// specifications: the backend writes them in iptables' canonical form, and
// the netns test checks that the kernel prints them back unchanged.
type fakeIPTables struct {
	mu     sync.Mutex
	tables map[string]map[string]*fakeChain
	// failOn, when set, is called at the start of every command that
	// changes something (op is the method name: Append, Insert, Delete,
	// NewChain, ClearChain, DeleteChain), and by Restore for each line
	// that changes something, with the op of the same change; without
	// holding the fake's lock, so it may block like a slow command. A
	// non-nil result is returned and nothing changes (Restore: nothing in
	// that line's table). Set it while no command runs.
	failOn func(op, table, chain string, spec []string) error
	// cmds counts the commands run, as the real backend would exec them;
	// restores counts the Restore calls among them.
	cmds, restores int
}

type fakeChain struct {
	builtin bool
	rules   [][]string
}

var _ ipTables = (*fakeIPTables)(nil)

// fakeTargets are the targets the fake knows besides user chains; the NAT
// ones are valid in the nat table only.
var fakeTargets = map[string]bool{
	"ACCEPT": false, "DROP": false, "RETURN": false, "REJECT": false, "LOG": false,
	"DNAT": true, "SNAT": true, "REDIRECT": true, "MASQUERADE": true,
}

func newFakeIPTables() *fakeIPTables {
	f := &fakeIPTables{tables: make(map[string]map[string]*fakeChain)}
	for table, chains := range builtinChains {
		f.tables[table] = make(map[string]*fakeChain)
		for _, c := range chains {
			f.tables[table][c] = &fakeChain{builtin: true}
		}
	}
	return f
}

// fakeError is what the fake returns for a failed command, with the exit
// status and message iptables would give.
type fakeError struct {
	status   int
	msg      string
	notExist bool
}

func (e *fakeError) Error() string {
	return fmt.Sprintf("fake iptables: exit status %d: %s", e.status, e.msg)
}

// ExitStatus returns the exit status iptables would have.
func (e *fakeError) ExitStatus() int { return e.status }

// IsNotExist reports whether the error is due to the chain or rule not
// existing, like (*goipt.Error).IsNotExist.
func (e *fakeError) IsNotExist() bool { return e.notExist }

var (
	errFakeNoChain = &fakeError{1, "iptables: No chain/target/match by that name.", true}
	errFakeNoRule  = &fakeError{1, "iptables: Bad rule (does a matching rule exist in that chain?).", true}
)

// chain returns the chain, or an error when the table or chain is unknown.
// The caller holds f.mu.
func (f *fakeIPTables) chain(table, chain string) (*fakeChain, error) {
	t, ok := f.tables[table]
	if !ok {
		return nil, &fakeError{3, fmt.Sprintf("iptables: can't initialize iptables table `%s': Table does not exist", table), false}
	}
	c, ok := t[chain]
	if !ok {
		return nil, errFakeNoChain
	}
	return c, nil
}

// checkSpec rejects a specification whose target does not exist in table,
// with the error iptables-nft gives.
func (f *fakeIPTables) checkSpec(table string, spec []string) error {
	j, ok := argAfter(spec, "-j")
	if !ok {
		return nil
	}
	if nat, known := fakeTargets[j]; known {
		if nat && table != "nat" {
			return &fakeError{1, fmt.Sprintf("iptables: %s target: only valid in nat table", j), false}
		}
		return nil
	}
	if c, ok := f.tables[table][j]; !ok || c.builtin {
		return &fakeError{2, fmt.Sprintf("iptables v1.8.9 (nf_tables): Chain '%s' does not exist", j), true}
	}
	return nil
}

func (f *fakeIPTables) fail(op, table, chain string, spec []string) error {
	if f.failOn == nil {
		return nil
	}
	return f.failOn(op, table, chain, spec)
}

// Append adds spec at the end of chain.
func (f *fakeIPTables) Append(table, chain string, spec ...string) error {
	if err := f.fail("Append", table, chain, spec); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	return f.appendRule(table, chain, spec)
}

func (f *fakeIPTables) appendRule(table, chain string, spec []string) error {
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if err := f.checkSpec(table, spec); err != nil {
		return err
	}
	c.rules = append(c.rules, slices.Clone(spec))
	return nil
}

// Insert adds spec at position pos (from 1) of chain.
func (f *fakeIPTables) Insert(table, chain string, pos int, spec ...string) error {
	if err := f.fail("Insert", table, chain, spec); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	return f.insertRule(table, chain, pos, spec)
}

func (f *fakeIPTables) insertRule(table, chain string, pos int, spec []string) error {
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if pos < 1 || pos > len(c.rules)+1 {
		return &fakeError{1, "iptables: Index of insertion too big.", false}
	}
	if err := f.checkSpec(table, spec); err != nil {
		return err
	}
	c.rules = slices.Insert(c.rules, pos-1, slices.Clone(spec))
	return nil
}

// Delete removes the first rule of chain equal to spec.
func (f *fakeIPTables) Delete(table, chain string, spec ...string) error {
	if err := f.fail("Delete", table, chain, spec); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	return f.deleteRule(table, chain, spec)
}

func (f *fakeIPTables) deleteRule(table, chain string, spec []string) error {
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(c.rules, func(r []string) bool { return slices.Equal(r, spec) })
	if i < 0 {
		return errFakeNoRule
	}
	c.rules = slices.Delete(c.rules, i, i+1)
	return nil
}

// Exists reports whether chain holds a rule equal to spec; like iptables -C,
// a missing chain is no error.
func (f *fakeIPTables) Exists(table, chain string, spec ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	c, err := f.chain(table, chain)
	if err == errFakeNoChain {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := f.checkSpec(table, spec); err != nil {
		return false, err
	}
	return slices.ContainsFunc(c.rules, func(r []string) bool { return slices.Equal(r, spec) }), nil
}

// NewChain creates an empty user chain.
func (f *fakeIPTables) NewChain(table, chain string) error {
	if err := f.fail("NewChain", table, chain, nil); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	return f.newChain(table, chain)
}

func (f *fakeIPTables) newChain(table, chain string) error {
	_, err := f.chain(table, chain)
	if err == nil {
		return &fakeError{1, "iptables: Chain already exists.", false}
	}
	if err != errFakeNoChain {
		return err
	}
	f.tables[table][chain] = &fakeChain{}
	return nil
}

// ClearChain flushes chain, creating it when it does not exist.
func (f *fakeIPTables) ClearChain(table, chain string) error {
	if err := f.fail("ClearChain", table, chain, nil); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	c, err := f.chain(table, chain)
	if err == errFakeNoChain {
		return f.newChain(table, chain)
	}
	if err != nil {
		return err
	}
	f.cmds++ // go-iptables runs -N, then -F
	c.rules = nil
	return nil
}

// DeleteChain deletes an empty user chain that nothing jumps to.
func (f *fakeIPTables) DeleteChain(table, chain string) error {
	if err := f.fail("DeleteChain", table, chain, nil); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if c.builtin {
		return &fakeError{2, "iptables: Invalid argument. Run `dmesg' for more information.", false}
	}
	if len(c.rules) > 0 {
		return &fakeError{1, "iptables: Directory not empty.", false}
	}
	for _, other := range f.tables[table] {
		for _, r := range other.rules {
			if j, _ := argAfter(r, "-j"); j == chain {
				return &fakeError{4, fmt.Sprintf("iptables: CHAIN_DEL failed (Device or resource busy): chain %s", chain), false}
			}
		}
	}
	delete(f.tables[table], chain)
	return nil
}

// ChainExists reports whether the chain exists.
func (f *fakeIPTables) ChainExists(table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	_, err := f.chain(table, chain)
	if err == errFakeNoChain {
		return false, nil
	}
	return err == nil, err
}

// chainNames returns the chains of table in iptables' order: built-in
// chains first, then user chains by name. The caller holds f.mu.
func (f *fakeIPTables) chainNames(table string) []string {
	names := slices.Clone(builtinChains[table])
	var user []string
	for name, c := range f.tables[table] {
		if !c.builtin {
			user = append(user, name)
		}
	}
	slices.Sort(user)
	return append(names, user...)
}

// ListChains returns the names of the chains of table.
func (f *fakeIPTables) ListChains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	if _, ok := f.tables[table]; !ok {
		return nil, &fakeError{3, fmt.Sprintf("iptables: can't initialize iptables table `%s': Table does not exist", table), false}
	}
	return f.chainNames(table), nil
}

// List returns chain the way "iptables -t table -S chain" prints it.
func (f *fakeIPTables) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	c, err := f.chain(table, chain)
	if err == errFakeNoChain {
		// What iptables-nft says; iptables-legacy says errFakeNoChain.
		return nil, &fakeError{1, fmt.Sprintf("iptables v1.8.9 (nf_tables): chain `%s' in table `%s' is incompatible, use 'nft' tool.", chain, table), false}
	}
	if err != nil {
		return nil, err
	}
	var out []string
	if c.builtin {
		out = append(out, "-P "+chain+" ACCEPT")
	} else {
		out = append(out, "-N "+chain)
	}
	for _, r := range c.rules {
		out = append(out, "-A "+chain+" "+formatSpec(r))
	}
	return out, nil
}

// ListTable returns table the way "iptables -t table -S" prints it.
func (f *fakeIPTables) ListTable(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds++
	t, ok := f.tables[table]
	if !ok {
		return nil, &fakeError{3, fmt.Sprintf("iptables: can't initialize iptables table `%s': Table does not exist", table), false}
	}
	var out []string
	names := f.chainNames(table)
	for _, name := range names {
		if t[name].builtin {
			out = append(out, "-P "+name+" ACCEPT")
		} else {
			out = append(out, "-N "+name)
		}
	}
	for _, name := range names {
		for _, r := range t[name].rules {
			out = append(out, "-A "+name+" "+formatSpec(r))
		}
	}
	return out, nil
}

// save returns the whole fake in the format of iptables-save without
// counters and comment lines, tables by name.
func (f *fakeIPTables) save() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, table := range slices.Sorted(maps.Keys(f.tables)) {
		fmt.Fprintf(&b, "*%s\n", table)
		names := f.chainNames(table)
		for _, name := range names {
			if f.tables[table][name].builtin {
				fmt.Fprintf(&b, ":%s ACCEPT\n", name)
			} else {
				fmt.Fprintf(&b, ":%s -\n", name)
			}
		}
		for _, name := range names {
			for _, r := range f.tables[table][name].rules {
				fmt.Fprintf(&b, "-A %s %s\n", name, formatSpec(r))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// restoreLine is one line of Restore input that changes something.
type restoreLine struct {
	n      int    // line number, from 1
	op     string // Append, Delete, Insert, or NewChain for a chain line
	chain  string
	pos    int      // Insert position
	policy string   // chain line: "-" for a user chain
	spec   []string // rule specification
}

// Restore applies input like "iptables-restore --noflush" does: "*table"
// opens a table, "COMMIT" commits it, ":CHAIN - [0:0]" creates a user
// chain or flushes the existing one, ":BUILTIN POLICY [0:0]" is accepted
// (the fake keeps every policy ACCEPT), "-A", "-D" and "-I chain [pos]"
// change rules; empty lines and "#" comments are skipped. Each table is
// committed on its own: at the first error the run stops, the failing
// table stays as it was and the tables committed before stay changed.
func (f *fakeIPTables) Restore(ctx context.Context, input []byte) error {
	if err := ctx.Err(); err != nil {
		// iptables-restore is not started (or killed at once).
		return fmt.Errorf("fake iptables-restore: killed: %w", err)
	}
	f.mu.Lock()
	f.cmds++
	f.restores++
	f.mu.Unlock()
	table := ""
	var block []restoreLine
	lines := strings.Split(strings.TrimSuffix(string(input), "\n"), "\n")
	for i, text := range lines {
		n := i + 1
		failed := func(err error) error {
			return fmt.Errorf("fake iptables-restore: line %d failed: %w", n, err)
		}
		text = strings.TrimSpace(text)
		switch {
		case text == "" || strings.HasPrefix(text, "#"):
		case strings.HasPrefix(text, "*"):
			if table != "" {
				return failed(errors.New("table not committed"))
			}
			table, block = text[1:], nil
			f.mu.Lock()
			_, ok := f.tables[table]
			f.mu.Unlock()
			if !ok {
				return failed(fmt.Errorf("table %q does not exist", table))
			}
		case table == "":
			return failed(errors.New("no table"))
		case text == "COMMIT":
			if err := f.commit(table, block); err != nil {
				return err
			}
			table = ""
		case strings.HasPrefix(text, ":"):
			fields := strings.Fields(text[1:])
			if len(fields) < 2 {
				return failed(errors.New("bad chain line"))
			}
			block = append(block, restoreLine{n: n, op: "NewChain", chain: fields[0], policy: fields[1]})
		default:
			args, err := splitRuleLine(text)
			if err != nil {
				return failed(err)
			}
			if len(args) < 2 {
				return failed(errors.New("no chain"))
			}
			l := restoreLine{n: n, chain: args[1], spec: args[2:]}
			switch args[0] {
			case "-A":
				l.op = "Append"
			case "-D":
				l.op = "Delete"
			case "-I":
				l.op, l.pos = "Insert", 1
				if len(l.spec) > 0 {
					if pos, err := strconv.Atoi(l.spec[0]); err == nil {
						l.pos, l.spec = pos, l.spec[1:]
					}
				}
			default:
				return failed(fmt.Errorf("unsupported command %q", args[0]))
			}
			block = append(block, l)
		}
	}
	if table != "" {
		return fmt.Errorf("fake iptables-restore: COMMIT expected at line %d", len(lines)+1)
	}
	return nil
}

// commit applies the lines of one table of Restore input, all or none.
func (f *fakeIPTables) commit(table string, block []restoreLine) error {
	for _, l := range block {
		if err := f.fail(l.op, table, l.chain, l.spec); err != nil {
			return fmt.Errorf("fake iptables-restore: line %d failed: %w", l.n, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	saved := make(map[string]*fakeChain, len(f.tables[table]))
	for name, c := range f.tables[table] {
		saved[name] = &fakeChain{builtin: c.builtin, rules: slices.Clone(c.rules)}
	}
	for _, l := range block {
		var err error
		switch l.op {
		case "Append":
			err = f.appendRule(table, l.chain, l.spec)
		case "Delete":
			err = f.deleteRule(table, l.chain, l.spec)
		case "Insert":
			err = f.insertRule(table, l.chain, l.pos, l.spec)
		case "NewChain":
			err = f.restoreChain(table, l.chain, l.policy)
		}
		if err != nil {
			f.tables[table] = saved
			return fmt.Errorf("fake iptables-restore: line %d failed: %w", l.n, err)
		}
	}
	return nil
}

// restoreChain handles a chain line of Restore input. The caller holds f.mu.
func (f *fakeIPTables) restoreChain(table, chain, policy string) error {
	c, err := f.chain(table, chain)
	switch {
	case err == errFakeNoChain && policy == "-":
		return f.newChain(table, chain)
	case err != nil:
		return err
	case c.builtin != (policy != "-"):
		return &fakeError{2, fmt.Sprintf("iptables-restore: invalid policy %q for chain %s", policy, chain), false}
	case !c.builtin:
		c.rules = nil
	}
	return nil
}
