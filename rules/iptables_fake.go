package rules

import (
	"fmt"
	"maps"
	"slices"
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
	// NewChain, ClearChain, DeleteChain), without holding the fake's lock,
	// so it may block like a slow command; a non-nil result is returned
	// and nothing changes. Set it while no command runs.
	failOn func(op, table, chain string, spec []string) error
	// cmds counts the commands run, as the real backend would exec them.
	cmds int
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
// existing, like (*iptables.Error).IsNotExist.
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

// formatSpec joins a rule specification the way iptables -S prints it: the
// comment is always in double quotes, other arguments only when they
// contain a space or a quote.
func formatSpec(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		if (i > 0 && spec[i-1] == "--comment") || a == "" || strings.ContainsAny(a, " \t\"\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
