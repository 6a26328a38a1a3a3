package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/ftpalg/ftpalg/rules"
)

// The iptables backend.
//
// Everything it adds lives in chains it owns, named FTPALG-*, each entered by
// one jump inserted at position 1 of a built-in chain:
//
//	filter FORWARD     -> FTPALG-FORWARD      ACCEPT of forwarded pinhole connections
//	filter INPUT       -> FTPALG-INPUT        ACCEPT of pinhole connections to the host itself; the intercept listener
//	nat    PREROUTING  -> FTPALG-PREROUTING   DNAT of pinholes arriving from outside; the intercept REDIRECT
//	nat    OUTPUT      -> FTPALG-OUTPUT       DNAT of pinholes the host itself opens
//	nat    INPUT       -> FTPALG-INPUT        SNAT of pinholes to the host itself
//	nat    POSTROUTING -> FTPALG-POSTROUTING  SNAT of pinholes leaving the host
//
// The first packet of a connection passes exactly one hook of each pair
// (FORWARD or INPUT, PREROUTING or OUTPUT, POSTROUTING or INPUT), depending on
// whether it is forwarded, addressed to the host or sent by the host. Rather
// than guess where the endpoints of a pinhole live, the backend installs each
// pinhole rule in both chains of its pair: the rule in the other chain never
// matches, and a pinhole works the same for a router, a sidecar next to the
// server (target local) or a client on the host itself.
//
// Every rule carries a comment: "ftpalg:jump" for the jumps,
// "ftpalg:<session>:<pinhole ID>" for pinhole rules, "ftpalg:intercept" and
// "ftpalg:listener" for the rules Intercept installs. Both iptables and
// ip6tables are managed, each with the same chains.
//
// Setup, Teardown and Intercept run single commands through go-iptables.
// Open and Close run iptables-restore, coalescing the changes of sessions
// that arrive together (iptables_restore.go). Verify, Repair and Watch
// notice a firewall reload and put back what it removed
// (iptables_repair.go).

// Owned chain names.
const (
	chainForward     = "FTPALG-FORWARD"
	chainInput       = "FTPALG-INPUT"
	chainPrerouting  = "FTPALG-PREROUTING"
	chainOutput      = "FTPALG-OUTPUT"
	chainPostrouting = "FTPALG-POSTROUTING"

	chainPrefix   = "FTPALG-"
	commentPrefix = "ftpalg:"
	jumpComment   = "ftpalg:jump"
	interceptNote = "ftpalg:intercept"
	listenerNote  = "ftpalg:listener"

	// ftpPort is the control port Intercept redirects.
	ftpPort = 21
	// defaultLockWait bounds the wait for the xtables lock.
	defaultLockWait = 5 * time.Second
)

// hook is one owned chain and the built-in chain that jumps to it.
type hook struct {
	table, builtin, chain string
}

// hooks lists every owned chain, in the order Setup creates them.
var hooks = []hook{
	{"filter", "FORWARD", chainForward},
	{"filter", "INPUT", chainInput},
	{"nat", "PREROUTING", chainPrerouting},
	{"nat", "OUTPUT", chainOutput},
	{"nat", "INPUT", chainInput},
	{"nat", "POSTROUTING", chainPostrouting},
}

// builtinChains are the built-in chains of the tables ftpalg uses; the sweep
// looks for stray ftpalg rules in them.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

// tables ftpalg uses, in a fixed order.
var tables = []string{"filter", "nat"}

func jumpSpec(chain string) []string {
	return []string{"-m", "comment", "--comment", jumpComment, "-j", chain}
}

// ipTables mirrors the methods of *goipt.IPTables from
// github.com/coreos/go-iptables that the backend uses, so that fakeIPTables
// (iptables_fake.go) can stand in for the kernel in unit tests.
type ipTables interface {
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	ChainExists(table, chain string) (bool, error)
	ListChains(table string) ([]string, error)
	List(table, chain string) ([]string, error)
	// ListTable lists a whole table like "iptables -t table -S". With
	// iptables-nft every command reads the whole table, so one call is
	// as cheap as one List.
	ListTable(table string) ([]string, error)
	// Restore runs "iptables-restore --noflush" with input in the format
	// of iptables-save (iptables_restore.go).
	// The run is killed when ctx ends.
	Restore(ctx context.Context, input []byte) error
}

var _ ipTables = (*kernelIPTables)(nil)

// isNotExist reports whether err says that a chain or rule does not exist,
// for go-iptables errors and the fake's alike.
func isNotExist(err error) bool {
	var e interface{ IsNotExist() bool }
	return errors.As(err, &e) && e.IsNotExist()
}

// ErrRulesChanged is wrapped by the error Verify returns when chains, jumps
// or rules that ftpalg installed are missing, e.g. after a firewall reload.
var ErrRulesChanged = errors.New("ftpalg firewall rules missing")

// Config configures the iptables backend. The zero value is usable.
type Config struct {
	// Timeout bounds the wait for the xtables lock of each iptables
	// command (iptables -w); it is rounded up to whole seconds. Zero means
	// 5s.
	Timeout time.Duration
	// Log receives setup, teardown and pinhole events. If nil, slog.Default.
	Log *slog.Logger
	// DisableIPv6 leaves ip6tables alone; IPv6 pinholes are then refused.
	// By default both iptables and ip6tables are managed.
	DisableIPv6 bool
}

// family is one of iptables and ip6tables.
type family struct {
	name string // "iptables" or "ip6tables", the prefix of Rules lines
	ipt  ipTables
	// adds and dels coalesce the pinhole changes of this family: Opens
	// and Closes apart, since a restore that deletes takes long.
	adds, dels batcher
}

// rule is one rule ftpalg installed.
type rule struct {
	fam          *family
	table, chain string
	spec         []string
	// seq orders the rules of pinholes and Intercept: the value of
	// Backend.seq when the rule was installed. Repair re-installs rules
	// in this order.
	seq uint64
}

// Backend is the Backend that makes pinholes live as iptables and ip6tables
// rules in chains ftpalg owns.
//
// Typical usage:
//
//	t, err := rules.New(rules.Config{Log: log})
//	err = t.Setup(ctx)        // sweep leftovers, create chains and jumps
//	defer t.Teardown(context.WithoutCancel(ctx))
//	err = t.Intercept(ctx, []string{"eth1"}, 2121)
//	err = t.Open(ctx, p)      // ... t.Close(ctx, p)
//
// Its methods are safe for concurrent use. Setup, Teardown, Intercept,
// AllowListeners and a Repair that finds damage run alone; Open, Close,
// Rules and Verify run concurrently with each other. Each Open and each
// Close is one iptables-restore transaction per family, and those that
// arrive while one runs are applied together in the next
// (iptables_restore.go). The iptables commands run on the calling
// goroutine's thread, hence in its network namespace.
type Backend struct {
	log     *slog.Logger
	variant string
	v4, v6  *family // v6 is nil when IPv6 is disabled

	// life is held exclusively by Setup, Teardown and Intercept, shared
	// by the others.
	life sync.RWMutex

	mu        sync.Mutex                       // guards the fields below; never held while a command runs
	ready     bool                             // Setup has succeeded, Teardown not yet run
	open      map[rules.PinholeID]*livePinhole // open pinholes, by pinhole ID
	seq       uint64                           // counts installs, to order rules (rule.seq)
	busy      map[rules.PinholeID]bool         // IDs of pinholes being opened or closed
	intercept []rule                           // rules installed by Intercept and AllowListeners
}

// livePinhole is the state of one open pinhole.
type livePinhole struct {
	fam   *family
	rules []rule // its rules in the firewall
}

var _ rules.Backend = (*Backend)(nil)

// New returns a backend that drives the iptables (and ip6tables)
// commands found in PATH. It reports which variant "iptables" resolves to
// (nf_tables or legacy) in a log line and through Variant. It changes
// nothing; call Setup before Open.
func New(cfg Config) (*Backend, error) {
	wait := cfg.Timeout
	if wait <= 0 {
		wait = defaultLockWait
	}
	secs := int((wait + time.Second - 1) / time.Second)
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	ipt4, err := goipt.New(goipt.IPFamily(goipt.ProtocolIPv4), goipt.Timeout(secs))
	if err != nil {
		return nil, fmt.Errorf("finding iptables: %w", err)
	}
	variant, err := commandVariant("iptables")
	if err != nil {
		return nil, err
	}
	v4, err := newKernelIPTables(ipt4, "iptables", variant, secs)
	if err != nil {
		return nil, err
	}
	var v6 ipTables
	variant6 := ""
	if !cfg.DisableIPv6 {
		ipt6, err := goipt.New(goipt.IPFamily(goipt.ProtocolIPv6), goipt.Timeout(secs))
		if err != nil {
			return nil, fmt.Errorf("finding ip6tables: %w", err)
		}
		if variant6, err = commandVariant("ip6tables"); err != nil {
			return nil, err
		}
		if variant6 != variant {
			log.Warn("iptables and ip6tables use different variants",
				"iptables", variant, "ip6tables", variant6)
		}
		if v6, err = newKernelIPTables(ipt6, "ip6tables", variant6, secs); err != nil {
			return nil, err
		}
	}
	t := newIPTables(log, variant, v4, v6)
	log.Info("iptables backend", "variant", variant, "ipv6", v6 != nil, "lock_wait", time.Duration(secs)*time.Second)
	return t, nil
}

// newIPTables builds the backend on the given command runners; v6 may be
// nil. Tests pass fakes.
func newIPTables(log *slog.Logger, variant string, v4, v6 ipTables) *Backend {
	t := &Backend{
		log:     log,
		variant: variant,
		v4:      &family{name: "iptables", ipt: v4},
		open:    make(map[rules.PinholeID]*livePinhole),
		busy:    make(map[rules.PinholeID]bool),
	}
	if v6 != nil {
		t.v6 = &family{name: "ip6tables", ipt: v6}
	}
	return t
}

var variantRE = regexp.MustCompile(`v[0-9]+\.[0-9]+\.[0-9]+(?:\s+\((\w+)\))?`)

// commandVariant runs "cmd --version" and returns the variant it reports:
// "nf_tables" or "legacy" (older versions print none: legacy).
func commandVariant(cmd string) (string, error) {
	path, err := exec.LookPath(cmd)
	if err != nil {
		return "", fmt.Errorf("finding %s: %w", cmd, err)
	}
	var stderr bytes.Buffer
	c := exec.Command(path, "--version")
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	v, err := parseVariant(string(out))
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w", path, err)
	}
	return v, nil
}

// parseVariant returns the variant named in the output of iptables
// --version, e.g. "iptables v1.8.9 (nf_tables)"; versions that name none are
// legacy.
func parseVariant(out string) (string, error) {
	m := variantRE.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("unexpected version output %q", out)
	}
	if m[1] == "" {
		return "legacy", nil
	}
	return m[1], nil
}

// Variant returns the iptables variant in use: "nf_tables" or "legacy".
func (t *Backend) Variant() string { return t.variant }

func (t *Backend) families() []*family {
	if t.v6 == nil {
		return []*family{t.v4}
	}
	return []*family{t.v4, t.v6}
}

// Setup removes what a previous run left (every FTPALG-* chain in the
// filter and nat tables, and every rule of a built-in chain that carries an
// "ftpalg:" comment or jumps to an FTPALG-* chain), then creates the owned
// chains and inserts the jumps to them at position 1 of the built-in chains.
// Pinholes and intercept rules a previous Setup of t installed are removed
// too. On error, Setup removes what it added.
func (t *Backend) Setup(ctx context.Context) error {
	t.life.Lock()
	defer t.life.Unlock()
	t.forget()
	if err := t.sweep(); err != nil {
		return fmt.Errorf("setting up iptables: %w", err)
	}
	for _, f := range t.families() {
		if err := setupFamily(ctx, f); err != nil {
			err = fmt.Errorf("setting up %s: %w", f.name, err)
			if serr := t.sweep(); serr != nil {
				err = errors.Join(err, fmt.Errorf("removing partial setup: %w", serr))
			}
			return err
		}
	}
	t.mu.Lock()
	t.ready = true
	t.mu.Unlock()
	t.log.Info("iptables chains installed", "chains", len(hooks), "ipv6", t.v6 != nil)
	return nil
}

func setupFamily(ctx context.Context, f *family) error {
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := f.ipt.NewChain(h.table, h.chain); err != nil {
			return fmt.Errorf("creating chain %s in table %s: %w", h.chain, h.table, err)
		}
	}
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := f.ipt.Insert(h.table, h.builtin, 1, jumpSpec(h.chain)...); err != nil {
			return fmt.Errorf("inserting jump from %s to %s in table %s: %w", h.builtin, h.chain, h.table, err)
		}
	}
	return nil
}

// Teardown removes everything ftpalg added: jumps, owned chains and their
// rules, and any leftover of an earlier run, for both families. A missing
// chain or rule counts as removed, so Teardown is idempotent. It is not
// interrupted by ctx: cleanup runs to the end, each command bounded by the
// lock timeout. On error it still removes what it can.
func (t *Backend) Teardown(ctx context.Context) error {
	t.life.Lock()
	defer t.life.Unlock()
	t.forget()
	if err := t.sweep(); err != nil {
		return fmt.Errorf("tearing down iptables: %w", err)
	}
	t.log.Info("iptables chains removed")
	return nil
}

// forget drops the in-memory state; the caller holds t.life exclusively
// and sweeps the kernel.
func (t *Backend) forget() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ready = false
	clear(t.open)
	clear(t.busy)
	t.intercept = nil
}

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
		origDst, tail("ACCEPT"))
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

// ifaceRE is what Intercept accepts as an interface name (iptables -i, so a
// trailing "+" is a wildcard).
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.@-]*\+?$`)

// Intercept sends new TCP connections to port 21 that arrive on one of
// ifaces to the local listener on listenPort, for IPv4 and IPv6:
//
//	nat FTPALG-PREROUTING: -i IF -p tcp --dport 21 -j REDIRECT --to-ports listenPort
//	filter FTPALG-INPUT:   -i IF -p tcp --dport listenPort -m conntrack --ctstate DNAT --ctorigdstport 21 -j ACCEPT
//
// The ACCEPT lets only redirected connections reach the listener. A later
// call replaces the rules of the earlier one. It is all-or-nothing, and
// Setup must have run.
func (t *Backend) Intercept(ctx context.Context, ifaces []string, listenPort uint16) error {
	if len(ifaces) == 0 {
		return errors.New("intercepting FTP: no interfaces")
	}
	if listenPort == 0 {
		return errors.New("intercepting FTP: listen port 0")
	}
	for _, ifc := range ifaces {
		if len(ifc) > 15 || !ifaceRE.MatchString(ifc) {
			return fmt.Errorf("intercepting FTP: invalid interface name %q", ifc)
		}
	}
	t.life.Lock()
	defer t.life.Unlock()
	t.mu.Lock()
	ready, cur := t.ready, t.intercept
	t.mu.Unlock()
	if !ready {
		return errors.New("intercepting FTP: iptables backend is not set up")
	}
	var want []rule
	for _, f := range t.families() {
		for _, ifc := range ifaces {
			want = append(want,
				rule{fam: f, table: "nat", chain: chainPrerouting, spec: []string{"-i", ifc, "-p", "tcp", "-m", "tcp", "--dport", portArg(ftpPort),
					"-m", "comment", "--comment", interceptNote, "-j", "REDIRECT", "--to-ports", portArg(listenPort)}},
				rule{fam: f, table: "filter", chain: chainInput, spec: []string{"-i", ifc, "-p", "tcp", "-m", "tcp", "--dport", portArg(listenPort),
					"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", portArg(ftpPort),
					"-m", "comment", "--comment", listenerNote, "-j", "ACCEPT"}})
		}
	}
	has := func(rs []rule, r rule) bool {
		return slices.ContainsFunc(rs, func(x rule) bool { return sameRule(x, r) })
	}
	var uniq []rule // an interface may be named twice
	for _, r := range want {
		if !has(uniq, r) {
			uniq = append(uniq, r)
		}
	}
	want = uniq
	var add, drop []rule
	for _, r := range want {
		if !has(cur, r) {
			add = append(add, r)
		}
	}
	for _, r := range cur {
		if !has(want, r) {
			drop = append(drop, r)
		}
	}
	if err := t.install(ctx, add); err != nil {
		return fmt.Errorf("intercepting FTP on %v: %w", ifaces, err)
	}
	left, err := remove(drop)
	// The wanted rules are all in; what could not be removed stays
	// recorded so that a later call or Teardown removes it.
	t.mu.Lock()
	for i, r := range want {
		if j := slices.IndexFunc(cur, func(x rule) bool { return sameRule(x, r) }); j >= 0 {
			want[i] = cur[j]
		} else {
			t.seq++
			want[i].seq = t.seq
		}
	}
	t.intercept = append(want, left...)
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("intercepting FTP on %v: removing previous rules: %w", ifaces, err)
	}
	t.log.Info("intercepting FTP", "interfaces", ifaces, "listen_port", listenPort)
	return nil
}

func sameRule(a, b rule) bool {
	return a.fam == b.fam && a.table == b.table && a.chain == b.chain && slices.Equal(a.spec, b.spec)
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
