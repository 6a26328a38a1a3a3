package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	labnet "github.com/ftpalg/ftpalg/lab/netlab"
)

// Prefix starts the name of every namespace (and scratch directory) this
// package creates: Prefix + "<pid>-<id>-<role>". The pid lets SweepStale tell
// a crashed run's leftovers from a live run's namespaces.
const Prefix = "ftpalgt-"

// Addresses of the topology: lab/netlab's address plan, with the client
// inside and the server and a third host outside. Everything is in
// documentation ranges.
//
//	client 192.0.2.2 2001:db8:1::2 (eth0)
//	   |
//	gw     192.0.2.1 2001:db8:1::1 (inside)   203.0.113.1 2001:db8:2::1 (outside)
//	   |
//	switch (a bridge in its own namespace)
//	   |                              |
//	server 203.0.113.2 2001:db8:2::2  other 203.0.113.3 2001:db8:2::3 (eth0)
var (
	ClientAddr4    = labnet.InsideHost4
	ClientAddr6    = labnet.InsideHost6
	GWInsideAddr4  = labnet.InsideGW4
	GWInsideAddr6  = labnet.InsideGW6
	GWOutsideAddr4 = labnet.OutsideGW4
	GWOutsideAddr6 = labnet.OutsideGW6
	ServerAddr4    = labnet.OutsideHost4
	ServerAddr6    = labnet.OutsideHost6
	OtherAddr4     = labnet.OutsideOther4
	OtherAddr6     = labnet.OutsideOther6
)

// Interface names inside the namespaces.
const (
	// GWInside is the gateway's client-side interface.
	GWInside = labnet.IfInside
	// GWOutside is the gateway's server-side interface (MASQUERADE goes out here).
	GWOutside = labnet.IfOutside
	// HostIf is the one interface of client, server and other.
	HostIf = labnet.IfHost
)

// Family is an IP version.
type Family int

// The two families; the values are the IP version numbers.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Families lists both families, IPv4 first.
var Families = []Family{IPv4, IPv6}

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Options configures NewTopology.
type Options struct {
	// Logger receives debug logs of every command run. If nil, logs at Info
	// level and above go to the test's output.
	Logger *slog.Logger
}

// Topo is a client, a gateway, a server and a second server-side host, each
// in its own network namespace, plus a switch namespace holding the bridge of
// the server-side segment. The gateway forwards both families and has no
// firewall rules until one of the Apply methods is called.
type Topo struct {
	// ID is the unique part of the namespace names ("<pid>-<n><hex>").
	ID string
	// Client is the FTP client's host, behind the gateway.
	Client *NS
	// GW is the gateway, where ftpalg and the firewall run.
	GW *NS
	// Server is the FTP server's host.
	Server *NS
	// Other is a second host on the server's segment (a third party, e.g.
	// an attacker trying to use a pinhole).
	Other *NS
	// Switch holds the bridge of the server-side segment; nothing runs there.
	Switch *NS

	log *slog.Logger
}

var topoSeq atomic.Int64

// NewTopology builds a new topology for t and registers its removal (every
// process in its namespaces is killed, then the namespaces are deleted) with
// t.Cleanup. It skips t (fails it under CI) without root or tools, and fails
// t if the topology cannot be built.
func NewTopology(t testing.TB, opts Options) *Topo {
	t.Helper()
	RequireNetlab(t)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	var suffix [2]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		t.Fatalf("reading random suffix: %v", err)
	}
	id := fmt.Sprintf("%d-%d%s", os.Getpid(), topoSeq.Add(1), hex.EncodeToString(suffix[:]))
	tp := &Topo{ID: id, log: log}
	mk := func(role string) *NS {
		return &NS{NS: labnet.NS{Name: Prefix + id + "-" + role, Log: log}, Role: role}
	}
	tp.Client, tp.GW, tp.Server, tp.Other, tp.Switch = mk("client"), mk("gw"), mk("server"), mk("other"), mk("switch")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := tp.destroy(ctx); err != nil {
			t.Errorf("removing topology %s: %v", tp.ID, err)
		}
	})
	start := time.Now()
	if err := tp.build(); err != nil {
		t.Fatalf("building topology %s: %v", tp.ID, err)
	}
	log.Debug("topology ready", "id", id, "took", time.Since(start))
	return tp
}

// Namespaces returns the five namespaces.
func (tp *Topo) Namespaces() []*NS {
	return []*NS{tp.Client, tp.GW, tp.Server, tp.Other, tp.Switch}
}

// Addr returns the primary address of family f of a host namespace: for the
// gateway its outside (server-side) address. The switch has none.
func (n *NS) Addr(f Family) netip.Addr {
	addrs := hostAddrs[n.Role]
	if f == IPv6 {
		return addrs[1]
	}
	return addrs[0]
}

// hostAddrs maps a role to its IPv4 and IPv6 address (see NS.Addr).
var hostAddrs = map[string][2]netip.Addr{
	"client": {ClientAddr4, ClientAddr6},
	"gw":     {GWOutsideAddr4, GWOutsideAddr6},
	"server": {ServerAddr4, ServerAddr6},
	"other":  {OtherAddr4, OtherAddr6},
}

// build creates the namespaces and wires them: the client directly to the
// gateway's inside, the gateway, server and other through the switch's
// bridge outside.
func (tp *Topo) build() error {
	for _, n := range tp.Namespaces() {
		if _, err := labnet.Create(n.Name); err != nil {
			return err
		}
	}
	if err := labnet.SetGateway(&tp.GW.NS); err != nil {
		return err
	}
	return labnet.Wire(&tp.GW.NS,
		labnet.Segment{Side: labnet.Inside, Hosts: []*labnet.NS{&tp.Client.NS}},
		labnet.Segment{Side: labnet.Outside, Hosts: []*labnet.NS{&tp.Server.NS, &tp.Other.NS}, Switch: &tp.Switch.NS},
	)
}

// destroy kills every process in the namespaces and deletes them. A
// namespace that is already gone is fine.
func (tp *Topo) destroy(ctx context.Context) error {
	var errs []error
	for _, n := range tp.Namespaces() {
		if err := labnet.Remove(ctx, n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SweepStale removes what a killed earlier run left behind: namespaces named
// Prefix + "<pid>-..." (and scratch directories and files in os.TempDir()
// named the same way) whose pid no longer exists. Namespaces of live runs, including
// this process, are left alone.
func SweepStale(ctx context.Context, log *slog.Logger) error {
	owned, err := labnet.ListOwned(Prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, o := range owned {
		if labnet.Alive(o.PID) {
			continue
		}
		log.Info("removing stale namespace", "ns", o.Name, "owner", o.PID)
		if err := labnet.Remove(ctx, o.Name); err != nil {
			errs = append(errs, err)
		}
	}
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), Prefix+"*"))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, dir := range dirs {
		pid, ok := labnet.OwnerPID(Prefix, filepath.Base(dir))
		if !ok || labnet.Alive(pid) {
			continue
		}
		log.Info("removing stale scratch directory", "dir", dir, "owner", pid)
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// rootFirewall returns the root namespace's iptables and ip6tables rules
// (`-S` of the filter, nat, mangle and raw tables), to check that tests left
// them alone. Programs that are missing are skipped.
func rootFirewall(ctx context.Context) string {
	var b strings.Builder
	for _, prog := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			fmt.Fprintf(&b, "# %s -t %s\n", prog, table)
			out, err := runCmd(ctx, prog, "-w", "10", "-t", table, "-S")
			if err != nil {
				fmt.Fprintf(&b, "(%v)\n", err)
				continue
			}
			b.WriteString(out)
		}
	}
	return b.String()
}

// Main is a TestMain for packages that build topologies: as root it sweeps
// stale namespaces, runs the tests, then fails the run if the root
// namespace's firewall changed or a namespace of this process is left.
//
//	func TestMain(m *testing.M) { netlab.Main(m) }
func Main(m *testing.M) {
	os.Exit(runMain(m))
}

// Run is Main without the exit: it returns the exit code, so that a
// TestMain can clean up its own things first.
func Run(m *testing.M) int { return runMain(m) }

func runMain(m *testing.M) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if os.Geteuid() != 0 {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := SweepStale(ctx, log); err != nil {
		log.Warn("sweeping stale namespaces", "err", err)
	}
	before := rootFirewall(ctx)
	cancel()

	code := m.Run()

	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if after := rootFirewall(ctx); after != before {
		fmt.Fprintf(os.Stderr, "FAIL: the root namespace's firewall changed during the tests\nbefore:\n%s\nafter:\n%s\n", before, after)
		code = 1
	}
	owned, err := labnet.ListOwned(Prefix)
	if err != nil {
		log.Warn("listing namespaces", "err", err)
	}
	for _, o := range owned {
		if o.PID == os.Getpid() {
			fmt.Fprintf(os.Stderr, "FAIL: namespace %s left behind\n", o.Name)
			code = 1
			if err := labnet.Remove(ctx, o.Name); err != nil {
				log.Warn("removing leftover namespace", "ns", o.Name, "err", err)
			}
		}
	}
	return code
}
