package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
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
