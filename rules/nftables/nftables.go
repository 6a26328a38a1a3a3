package nftables

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	nft "github.com/google/nftables"
	"github.com/vishvananda/netns"
)

const (
	// DefaultMark is the conntrack mark bit a connection gets when it
	// consumes a pinhole or is intercepted (Config.Mark).
	DefaultMark = 0x01000000
	// ftpPort is the control port Intercept redirects.
	ftpPort = 21
	// defaultTTL is the kernel timeout of a pinhole without a TTL.
	defaultTTL = 2 * time.Minute
	// defaultLockWait bounds the wait for the xtables lock.
	defaultLockWait = 5 * time.Second
)

// Config configures the nftables backend. The zero value is usable.
type Config struct {
	// Mark is the bit (or bits) of the conntrack mark that says "ftpalg
	// admitted this connection": set on the first packet of a connection
	// that consumes a pinhole or is intercepted, accepted by the one rule
	// ftpalg puts at the top of the operator's filter chains. Zero means
	// DefaultMark. Choose bits no other software on the host uses.
	Mark uint32
	// Log receives setup, teardown, repair and pinhole events. If nil,
	// slog.Default.
	Log *slog.Logger
	// LockWait bounds the wait for the xtables lock of the iptables
	// commands that add the accept rule to an iptables firewall. Zero
	// means 5s.
	LockWait time.Duration
}

// Backend makes pinholes live as elements of sets and maps in "table inet
// ftpalg", each with a kernel timeout, consumed by its first connection.
//
// Typical usage:
//
//	b, err := nftables.New(nftables.Config{Log: log})
//	err = b.Setup(ctx)        // sweep leftovers, create the table and the accept rules
//	defer b.Teardown(context.WithoutCancel(ctx))
//	go b.Watch(ctx, 0)        // put back what a foreign flush removed
//	err = b.Open(ctx, p)      // ... b.Close(ctx, p)
//
// Its methods are safe for concurrent use. Setup, Teardown, Intercept,
// AllowListeners and a Repair that finds damage run alone; Open, Close and
// Rules run concurrently. The netlink sockets and the iptables commands it
// runs belong to the network namespace that called New.
type Backend struct {
	log      *slog.Logger
	mark     uint32
	lockWait time.Duration
	tb       *table
	ns       netns.NsHandle // the namespace of New, for commands
	conn     *nft.Conn      // table, chains, rules; lasting
	ec       *elementConn   // pinhole elements

	life sync.RWMutex // exclusive: Setup, Teardown, Intercept, AllowListeners, repair

	mu        sync.Mutex // guards the fields below; never held during netlink I/O
	ready     bool
	open      map[string]*live // by pinhole ID
	busy      map[string]bool
	ifaces    []string // Intercept
	listenP   uint16
	listeners []netip.AddrPort  // AllowListeners
	accepts   []acceptRef       // the operator's chains that hold ftpalg's accept rule
	variants  map[string]string // iptables program -> "nf_tables" or "legacy"
}

// live is one open pinhole.
type live struct {
	p        rules.Pinhole
	elems    []element
	deadline time.Time // when the kernel drops its elements
}

var _ rules.Backend = (*Backend)(nil)

// New opens the netlink sockets in the calling thread's network namespace
// and checks that the kernel has nf_tables. It changes nothing; call Setup
// before Open.
func New(cfg Config) (*Backend, error) {
	if err := checkKernel(); err != nil {
		return nil, fmt.Errorf("nftables backend: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	mark := cfg.Mark
	if mark == 0 {
		mark = DefaultMark
	}
	wait := cfg.LockWait
	if wait <= 0 {
		wait = defaultLockWait
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("getting the network namespace: %w", err)
	}
	conn, err := nft.New(nft.AsLasting(), nft.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("opening nftables netlink: %w", err)
	}
	if _, err := conn.ListTables(); err != nil {
		conn.CloseLasting()
		ns.Close()
		return nil, fmt.Errorf("listing nftables tables: %w", err)
	}
	return &Backend{
		log: log, mark: mark, lockWait: wait, tb: newTable(mark), ns: ns, conn: conn,
		ec:   &elementConn{netns: int(ns)},
		open: map[string]*live{}, busy: map[string]bool{},
	}, nil
}

// Release releases the netlink sockets; call it after Teardown.
func (b *Backend) Release() error {
	b.ec.close()
	err := b.conn.CloseLasting()
	b.ns.Close()
	return err
}

// Mark returns the conntrack mark bits in use.
func (b *Backend) Mark() uint32 { return b.mark }

// Setup removes what a previous run left (the table and every accept rule
// commented "ftpalg:accept" in the operator's chains), then creates the
// table, its sets, maps and chains, and the accept rules. On error, Setup
// removes what it added.
func (b *Backend) Setup(ctx context.Context) error {
	b.life.Lock()
	defer b.life.Unlock()
	b.forget()
	if err := b.sweep(); err != nil {
		return fmt.Errorf("setting up nftables: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := b.install()
	var accepts []acceptRef
	if err == nil {
		accepts, err = b.installAccepts()
	}
	if err != nil {
		err = fmt.Errorf("setting up nftables: %w", err)
		if serr := b.sweep(); serr != nil {
			err = errors.Join(err, fmt.Errorf("removing partial setup: %w", serr))
		}
		return err
	}
	b.mu.Lock()
	b.ready = true
	b.accepts = accepts
	b.mu.Unlock()
	b.log.Info("nftables table installed", "table", "inet "+tableName, "mark", fmt.Sprintf("%#x", b.mark),
		"accept_rules", acceptNames(accepts))
	return nil
}

// install creates the table with its sets, chains and fixed rules, and
// the rules of Intercept and AllowListeners, in one batch.
func (b *Backend) install() error {
	b.mu.Lock()
	ifaces, port, listeners := b.ifaces, b.listenP, b.listeners
	b.mu.Unlock()
	c := b.conn
	c.AddTable(b.tb.t)
	for _, s := range b.tb.sets {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", s.Name, err)
		}
	}
	base := b.tb.baseRules()
	for _, name := range chainOrder {
		ch := c.AddChain(b.tb.chains[name])
		if name == chainNPre {
			for _, ifc := range ifaces {
				c.AddRule(&nft.Rule{Table: b.tb.t, Chain: ch, Exprs: b.tb.interceptRule(ifc, port), UserData: comment(commentIntercept)})
			}
		}
		if name == chainPre {
			for _, r := range b.listenerRules(listeners) {
				c.AddRule(&nft.Rule{Table: b.tb.t, Chain: ch, Exprs: r, UserData: comment(commentListener)})
			}
		}
		for _, r := range base[name] {
			cm := commentPinhole
			switch name {
			case chainNPre, chainNOut:
				cm = commentDNAT
			case chainNPst, chainNIn:
				cm = commentSNAT
			}
			c.AddRule(&nft.Rule{Table: b.tb.t, Chain: ch, Exprs: r, UserData: comment(cm)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("creating table inet %s: %w", tableName, err)
	}
	return nil
}

// Teardown removes everything ftpalg added: the table (and with it every
// pinhole) and the accept rules in the operator's chains, and any leftover
// of an earlier run. It is idempotent and not interrupted by ctx.
func (b *Backend) Teardown(ctx context.Context) error {
	b.life.Lock()
	defer b.life.Unlock()
	b.forget()
	b.mu.Lock()
	b.ifaces, b.listenP, b.listeners = nil, 0, nil
	b.mu.Unlock()
	if err := b.sweep(); err != nil {
		return fmt.Errorf("tearing down nftables: %w", err)
	}
	b.log.Info("nftables table removed", "table", "inet "+tableName)
	return nil
}

func (b *Backend) forget() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ready = false
	clear(b.open)
	clear(b.busy)
	b.accepts = nil
}

// sweep deletes the owned table and every ftpalg accept rule.
func (b *Backend) sweep() error {
	var errs []error
	if has, err := b.hasTable(); err != nil {
		errs = append(errs, err)
	} else if has {
		b.conn.DelTable(b.tb.t)
		if err := b.conn.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("deleting table inet %s: %w", tableName, err))
		} else {
			b.log.Info("removed ftpalg firewall state", "table", "inet "+tableName)
		}
	}
	if err := b.sweepAccepts(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (b *Backend) hasTable() (bool, error) {
	ts, err := b.conn.ListTablesOfFamily(nft.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	return slices.ContainsFunc(ts, func(t *nft.Table) bool { return t.Name == tableName }), nil
}

// elements returns the set and map elements of p, each with timeout ttl.
func (b *Backend) elements(p rules.Pinhole, ttl time.Duration) []element {
	f := famOf(p.Src)
	key := keyOf(p.Src, p.Dst)
	cm := commentPrefix + p.Session() + ":" + p.ID.String()
	elems := []element{{set: f.open, key: key, timeout: ttl, comment: cm}}
	if p.DNAT.IsValid() {
		elems = append(elems, element{set: f.dnat, key: key, val: addrPortVal(p.DNAT), timeout: ttl, comment: cm})
	}
	if p.SNAT.IsValid() {
		tgt := p.Target()
		elems = append(elems, element{set: f.snat, key: keyOf(p.Src, tgt), val: p.SNAT.AsSlice(), timeout: ttl, comment: cm})
	}
	return elems
}

func ttlOf(p rules.Pinhole) time.Duration {
	if p.TTL > 0 {
		return p.TTL
	}
	return defaultTTL
}

// Open makes p live: one netlink batch adds its element to the open set
// (and to the dnat and snat maps when it translates), each with the kernel
// timeout p.TTL (2 minutes when p has none). The first new connection that
// matches consumes it. A pinhole with the same source, destination and
// port as a live one is refused.
func (b *Backend) Open(ctx context.Context, p rules.Pinhole) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("opening pinhole: %w", err)
	}
	if p.ID.IsZero() {
		return fmt.Errorf("opening pinhole %v: no ID", p)
	}
	id := p.ID.String()
	ttl := ttlOf(p)
	elems := b.elements(p, ttl)

	b.life.RLock()
	defer b.life.RUnlock()
	b.mu.Lock()
	if !b.ready {
		b.mu.Unlock()
		return fmt.Errorf("opening pinhole %v: nftables backend is not set up", p)
	}
	if _, ok := b.open[id]; ok || b.busy[id] {
		b.mu.Unlock()
		return fmt.Errorf("opening pinhole %v: already open", p)
	}
	b.busy[id] = true
	b.mu.Unlock()

	err := ctx.Err()
	start := time.Now()
	if err == nil {
		err = b.ec.add(tableName, elems)
	}
	b.mu.Lock()
	delete(b.busy, id)
	if err == nil {
		b.open[id] = &live{p: p, elems: elems, deadline: start.Add(ttl)}
	}
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("opening pinhole %v: %w", p, err)
	}
	b.log.Debug("pinhole opened", "session", p.Session(), "pinhole", p.String(), "ttl", ttl)
	return nil
}

// Close removes the elements of the pinhole with p's ID in one netlink
// batch. An element already gone (consumed by its connection, expired, or
// flushed by someone else) is not an error. Close does not disturb a
// connection established through p. It is not interrupted by ctx.
func (b *Backend) Close(ctx context.Context, p rules.Pinhole) error {
	id := p.ID.String()
	b.life.RLock()
	defer b.life.RUnlock()
	b.mu.Lock()
	l, ok := b.open[id]
	if !ok || b.busy[id] {
		b.mu.Unlock()
		return nil
	}
	delete(b.open, id)
	b.busy[id] = true
	b.mu.Unlock()

	err := b.ec.destroy(tableName, l.elems)
	if err != nil {
		if has, herr := b.hasTable(); herr == nil && !has {
			// Someone deleted the table, and the elements with it: the
			// desired state. Repair will not bring this pinhole back.
			err = nil
		}
	}

	b.mu.Lock()
	delete(b.busy, id)
	if err != nil {
		b.open[id] = l // a later Close retries; the kernel timeout is the backstop
	}
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("closing pinhole %v: %w", p, err)
	}
	b.log.Debug("pinhole closed", "session", p.Session(), "pinhole", p.String())
	return nil
}

// Live returns the number of pinholes opened and not closed whose kernel
// timeout has not passed.
func (b *Backend) Live() int {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, l := range b.open {
		if l.deadline.After(now) {
			n++
		}
	}
	return n
}
