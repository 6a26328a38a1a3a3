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
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Prefix starts the name of every namespace (and scratch directory) this
// package creates: Prefix + "<pid>-<id>-<role>". The pid lets SweepStale tell
// a crashed run's leftovers from a live run's namespaces.
const Prefix = "ftpalgt-"

// Addresses of the topology. Everything is in documentation ranges.
//
//	client 192.0.2.2 2001:db8:1::2 (eth0)
//	   |
//	gw     192.0.2.1 2001:db8:1::1 (inside)   203.0.113.1 2001:db8:2::1 (outside)
//	   |
//	switch (a bridge in its own namespace)
//	   |                              |
//	server 203.0.113.2 2001:db8:2::2  other 203.0.113.3 2001:db8:2::3 (eth0)
var (
	ClientAddr4    = netip.MustParseAddr("192.0.2.2")
	ClientAddr6    = netip.MustParseAddr("2001:db8:1::2")
	GWInsideAddr4  = netip.MustParseAddr("192.0.2.1")
	GWInsideAddr6  = netip.MustParseAddr("2001:db8:1::1")
	GWOutsideAddr4 = netip.MustParseAddr("203.0.113.1")
	GWOutsideAddr6 = netip.MustParseAddr("2001:db8:2::1")
	ServerAddr4    = netip.MustParseAddr("203.0.113.2")
	ServerAddr6    = netip.MustParseAddr("2001:db8:2::2")
	OtherAddr4     = netip.MustParseAddr("203.0.113.3")
	OtherAddr6     = netip.MustParseAddr("2001:db8:2::3")
)

// Interface names inside the namespaces.
const (
	// GWInside is the gateway's client-side interface.
	GWInside = "inside"
	// GWOutside is the gateway's server-side interface (MASQUERADE goes out here).
	GWOutside = "outside"
	// HostIf is the one interface of client, server and other.
	HostIf = "eth0"
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

// Static MAC addresses, so that IPv6 neighbours can be entered permanently.
// A strict firewall (INPUT policy DROP, only ESTABLISHED accepted) drops
// neighbour discovery, which conntrack never marks ESTABLISHED.
const (
	macClient    = "02:f7:a1:00:01:02"
	macGWInside  = "02:f7:a1:00:01:01"
	macGWOutside = "02:f7:a1:00:02:01"
	macServer    = "02:f7:a1:00:02:02"
	macOther     = "02:f7:a1:00:02:03"
)

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
	mk := func(role string) *NS { return &NS{Name: Prefix + id + "-" + role, Role: role, log: log} }
	tp.Client, tp.GW, tp.Server, tp.Other, tp.Switch = mk("client"), mk("gw"), mk("server"), mk("other"), mk("switch")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := tp.destroy(ctx); err != nil {
			t.Errorf("removing topology %s: %v", tp.ID, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if err := tp.build(ctx); err != nil {
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

func (tp *Topo) build(ctx context.Context) error {
	for _, n := range tp.Namespaces() {
		if _, err := runIP(ctx, "netns", "add", n.Name); err != nil {
			return err
		}
		// DAD off before any interface exists, so that addresses are usable
		// at once; "nodad" on the addresses below as well.
		if _, err := n.Run(ctx, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
			"net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0"); err != nil {
			return err
		}
	}
	if _, err := tp.GW.Run(ctx, "sysctl", "-q", "-w",
		"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.forwarding=1"); err != nil {
		return err
	}
	if err := tp.GW.Sysctl(ctx, "net.netfilter.nf_conntrack_acct", "1"); err != nil {
		return err
	}
	if err := disableConntrackHelper(ctx, tp.GW); err != nil {
		return err
	}
	c, gw, srv, oth, sw := tp.Client.Name, tp.GW.Name, tp.Server.Name, tp.Other.Name, tp.Switch.Name
	steps := [][]string{
		{"-n", gw, "link", "add", GWInside, "address", macGWInside, "type", "veth", "peer", "name", HostIf, "address", macClient, "netns", c},
		{"-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"},
		{"-n", gw, "link", "add", GWOutside, "address", macGWOutside, "type", "veth", "peer", "name", "p-gw", "netns", sw},
		{"-n", srv, "link", "add", HostIf, "address", macServer, "type", "veth", "peer", "name", "p-server", "netns", sw},
		{"-n", oth, "link", "add", HostIf, "address", macOther, "type", "veth", "peer", "name", "p-other", "netns", sw},
	}
	for _, port := range []string{"p-gw", "p-server", "p-other"} {
		steps = append(steps, []string{"-n", sw, "link", "set", port, "master", "br0", "up"})
	}
	steps = append(steps, []string{"-n", sw, "link", "set", "br0", "up"})
	type host struct {
		ns   string
		dev  string
		a4   netip.Addr
		a6   netip.Addr
		via4 netip.Addr
		via6 netip.Addr
	}
	hosts := []host{
		{c, HostIf, ClientAddr4, ClientAddr6, GWInsideAddr4, GWInsideAddr6},
		{gw, GWInside, GWInsideAddr4, GWInsideAddr6, netip.Addr{}, netip.Addr{}},
		{gw, GWOutside, GWOutsideAddr4, GWOutsideAddr6, netip.Addr{}, netip.Addr{}},
		{srv, HostIf, ServerAddr4, ServerAddr6, GWOutsideAddr4, GWOutsideAddr6},
		{oth, HostIf, OtherAddr4, OtherAddr6, GWOutsideAddr4, GWOutsideAddr6},
	}
	for _, n := range []string{c, gw, srv, oth, sw} {
		steps = append(steps, []string{"-n", n, "link", "set", "lo", "up"})
	}
	for _, h := range hosts {
		plen := "/24"
		steps = append(steps,
			[]string{"-n", h.ns, "addr", "add", h.a4.String() + plen, "dev", h.dev},
			[]string{"-n", h.ns, "-6", "addr", "add", h.a6.String() + "/64", "dev", h.dev, "nodad"},
			[]string{"-n", h.ns, "link", "set", h.dev, "up"},
		)
		if h.via4.IsValid() {
			steps = append(steps,
				[]string{"-n", h.ns, "route", "add", "default", "via", h.via4.String()},
				[]string{"-n", h.ns, "-6", "route", "add", "default", "via", h.via6.String()},
			)
		}
	}
	// Permanent IPv6 neighbours: see the comment on the MAC constants.
	neigh := func(ns, dev string, a netip.Addr, mac string) []string {
		return []string{"-n", ns, "-6", "neigh", "replace", a.String(), "lladdr", mac, "dev", dev, "nud", "permanent"}
	}
	steps = append(steps,
		neigh(c, HostIf, GWInsideAddr6, macGWInside),
		neigh(gw, GWInside, ClientAddr6, macClient),
		neigh(gw, GWOutside, ServerAddr6, macServer),
		neigh(gw, GWOutside, OtherAddr6, macOther),
		neigh(srv, HostIf, GWOutsideAddr6, macGWOutside),
		neigh(srv, HostIf, OtherAddr6, macOther),
		neigh(oth, HostIf, GWOutsideAddr6, macGWOutside),
		neigh(oth, HostIf, ServerAddr6, macServer),
	)
	for _, s := range steps {
		if _, err := runIP(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// disableConntrackHelper makes sure the kernel does not attach the FTP
// conntrack helper to port 21 on its own: net.netfilter.nf_conntrack_helper
// (removed in Linux 6.0) must be absent or 0. Nothing in this package adds a
// CT --helper rule, so the helper never sees the control channels.
func disableConntrackHelper(ctx context.Context, n *NS) error {
	const key = "net.netfilter.nf_conntrack_helper"
	v, err := n.ReadSysctl(ctx, key)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if v != "0" {
		if err := n.Sysctl(ctx, key, "0"); err != nil {
			return fmt.Errorf("disabling automatic conntrack helpers: %w", err)
		}
	}
	return nil
}

// destroy kills every process in the namespaces and deletes them. A
// namespace that is already gone is fine.
func (tp *Topo) destroy(ctx context.Context) error {
	var errs []error
	for _, n := range tp.Namespaces() {
		if err := removeNamespace(ctx, n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeNamespace kills the processes in namespace name, waits for them to
// go, and deletes it. A missing namespace is not an error.
func removeNamespace(ctx context.Context, name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	n := &NS{Name: name}
	for {
		pids, err := n.PIDs(ctx)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for processes %v in %s to exit: %w", pids, name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := runIP(ctx, "netns", "del", name); err != nil {
		return err
	}
	return nil
}

// ownerPID returns the pid encoded in a name made of Prefix + "<pid>-...".
func ownerPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// alive reports whether a process with this pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// listNamespaces returns the names `ip netns list` shows.
func listNamespaces(ctx context.Context) ([]string, error) {
	out, err := runIP(ctx, "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// SweepStale removes what a killed earlier run left behind: namespaces named
// Prefix + "<pid>-..." (and scratch directories and files in os.TempDir()
// named the same way) whose pid no longer exists. Namespaces of live runs, including
// this process, are left alone.
func SweepStale(ctx context.Context, log *slog.Logger) error {
	names, err := listNamespaces(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		pid, ok := ownerPID(name)
		if !ok || alive(pid) {
			continue
		}
		log.Info("removing stale namespace", "ns", name, "owner", pid)
		if err := removeNamespace(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), Prefix+"*"))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, dir := range dirs {
		pid, ok := ownerPID(filepath.Base(dir))
		if !ok || alive(pid) {
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
	names, err := listNamespaces(ctx)
	if err != nil {
		log.Warn("listing namespaces", "err", err)
	}
	for _, name := range names {
		if pid, ok := ownerPID(name); ok && pid == os.Getpid() {
			fmt.Fprintf(os.Stderr, "FAIL: namespace %s left behind\n", name)
			code = 1
			if err := removeNamespace(ctx, name); err != nil {
				log.Warn("removing leftover namespace", "ns", name, "err", err)
			}
		}
	}
	return code
}
