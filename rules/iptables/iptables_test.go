package iptables

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newFakeBackend returns a backend on two fakes (IPv4 and IPv6).
func newFakeBackend(t testing.TB) (*Backend, *fakeIPTables, *fakeIPTables) {
	v4, v6 := newFakeIPTables(), newFakeIPTables()
	return newIPTables(testLog(t), "fake", v4, v6), v4, v6
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func addr(s string) netip.Addr   { return netip.MustParseAddr(s) }

// The pinholes of the golden scenarios, one of each kind.
var (
	// Passive, gateway mode: the client behind the gateway connects to the
	// port the server announced; SNAT to the gateway's upstream address.
	passiveGateway = rules.Pinhole{ID: rules.PinholeID{Session: 1, N: 1}, Src: addr("192.0.2.10"),
		Dst: ap("203.0.113.5:40000"), SNAT: addr("198.51.100.1")}
	// Active, gateway mode: the server connects to the gateway's pool
	// port, DNAT to the port the client announced.
	activeGateway = rules.Pinhole{ID: rules.PinholeID{Session: 2, N: 1}, Src: addr("203.0.113.5"),
		Dst: ap("198.51.100.1:50000"), DNAT: ap("192.0.2.10:40001")}
	// Passive, reverse mode: the client connects to the public pool port,
	// DNAT to the private server, SNAT to the proxy's inside address.
	reversePassive = rules.Pinhole{ID: rules.PinholeID{Session: 3, N: 2}, Src: addr("203.0.113.7"),
		Dst: ap("198.51.100.1:50001"), DNAT: ap("192.0.2.20:30000"), SNAT: addr("192.0.2.1")}
	// Routed, no NAT.
	routed = rules.Pinhole{ID: rules.PinholeID{Session: 4, N: 1}, Src: addr("192.0.2.10"), Dst: ap("203.0.113.5:40002")}

	passiveGateway6 = rules.Pinhole{ID: rules.PinholeID{Session: 5, N: 1}, Src: addr("2001:db8:1::10"),
		Dst: ap("[2001:db8:2::5]:40000"), SNAT: addr("2001:db8:ff::1")}
	activeGateway6 = rules.Pinhole{ID: rules.PinholeID{Session: 6, N: 1}, Src: addr("2001:db8:2::5"),
		Dst: ap("[2001:db8:ff::1]:50000"), DNAT: ap("[2001:db8:1::10]:40001")}
	reversePassive6 = rules.Pinhole{ID: rules.PinholeID{Session: 7, N: 1}, Src: addr("2001:db8:2::7"),
		Dst: ap("[2001:db8:ff::1]:50001"), DNAT: ap("[2001:db8:1::20]:30000"), SNAT: addr("2001:db8:1::1")}
)

// scenario is one golden test: Setup, then Intercept (when ifaces are set)
// and Open of each pinhole; the golden file holds a description and the
// sorted Rules dump. The netns test replays the same scenarios against the
// kernel and compares with the same files.
type scenario struct {
	name       string
	ifaces     []string
	listenPort uint16
	pinholes   []rules.Pinhole
}

var scenarios = []scenario{
	{name: "setup"},
	{name: "passive-gateway", pinholes: []rules.Pinhole{passiveGateway}},
	{name: "active-gateway", pinholes: []rules.Pinhole{activeGateway}},
	{name: "reverse-passive", pinholes: []rules.Pinhole{reversePassive}},
	{name: "routed", pinholes: []rules.Pinhole{routed}},
	{name: "passive-gateway-ipv6", pinholes: []rules.Pinhole{passiveGateway6}},
	{name: "active-gateway-ipv6", pinholes: []rules.Pinhole{activeGateway6}},
	{name: "reverse-passive-ipv6", pinholes: []rules.Pinhole{reversePassive6}},
	{name: "intercept", ifaces: []string{"eth0", "wan+"}, listenPort: 2121},
	{name: "all", ifaces: []string{"eth1"}, listenPort: 2121, pinholes: []rules.Pinhole{
		passiveGateway, activeGateway, reversePassive, routed, passiveGateway6, activeGateway6, reversePassive6}},
}

// run applies s to a backend that is not set up yet and returns the golden
// text: the description, then the Rules dump.
func (s scenario) run(ctx context.Context, b *Backend) (string, error) {
	var out strings.Builder
	fmt.Fprintf(&out, "# scenario %s: Setup", s.name)
	if err := b.Setup(ctx); err != nil {
		return "", err
	}
	if s.ifaces != nil {
		fmt.Fprintf(&out, ", Intercept(%v, %d)", s.ifaces, s.listenPort)
		if err := b.Intercept(ctx, s.ifaces, s.listenPort); err != nil {
			return "", err
		}
	}
	out.WriteString("\n")
	for _, p := range s.pinholes {
		fmt.Fprintf(&out, "# Open %v\n", p)
		if err := b.Open(ctx, p); err != nil {
			return "", err
		}
	}
	rules, err := b.Rules(ctx)
	if err != nil {
		return "", err
	}
	for _, r := range rules {
		out.WriteString(r + "\n")
	}
	return out.String(), nil
}

// checkGolden compares got with testdata/golden/name.golden, or rewrites the
// file under -update (allowed only when canUpdate).
func checkGolden(t *testing.T, name, got string, canUpdate bool) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name+".golden")
	if *update && canUpdate {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run go test -update to create it): %v", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs from %s (-want +got):\n%s", name, path, d)
	}
}

func TestIPTablesGolden(t *testing.T) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			ctx := t.Context()
			b, v4, v6 := newFakeBackend(t)
			before4, before6 := v4.save(), v6.save()
			got, err := s.run(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, s.name, got, true)
			if err := b.Verify(ctx); err != nil {
				t.Errorf("Verify after the scenario: %v", err)
			}

			// Closing every pinhole leaves what Setup and Intercept made.
			for _, p := range s.pinholes {
				if err := b.Close(ctx, p); err != nil {
					t.Fatalf("Close(%v): %v", p, err)
				}
			}
			noPinholes := s
			noPinholes.pinholes = nil
			b2, _, _ := newFakeBackend(t)
			want, err := noPinholes.run(ctx, b2)
			if err != nil {
				t.Fatal(err)
			}
			gotRules, err := b.Rules(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wantRules, err := b2.Rules(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(wantRules, gotRules); d != "" {
				t.Errorf("after closing every pinhole (-want +got):\n%s\n(setup: %s)", d, want)
			}

			// Teardown leaves the firewall exactly as before Setup, and
			// a second Teardown finds nothing to do.
			for range 2 {
				if err := b.Teardown(ctx); err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(before4, v4.save()); d != "" {
					t.Errorf("iptables after Teardown (-before +after):\n%s", d)
				}
				if d := cmp.Diff(before6, v6.save()); d != "" {
					t.Errorf("ip6tables after Teardown (-before +after):\n%s", d)
				}
			}
		})
	}
}

// ruleAdder is what addForeign and addStale need: a fake or go-iptables.
type ruleAdder interface {
	NewChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
}

// addForeign adds rules and a chain that belong to someone else; ftpalg must
// leave them alone. The specifications are in iptables' canonical form, so
// that the netns test can compare the kernel's dump with the same golden
// file.
func addForeign(ipt ruleAdder, six bool) error {
	host, lan := "192.0.2.99/32", "192.0.2.0/24"
	if six {
		host, lan = "2001:db8::99/128", "2001:db8::/64"
	}
	for _, step := range []struct {
		op           string
		table, chain string
		spec         []string
	}{
		{"new", "filter", "FOREIGN", nil},
		{"append", "filter", "FOREIGN", []string{"-s", host, "-j", "DROP"}},
		{"append", "filter", "FORWARD", []string{"-j", "FOREIGN"}},
		{"append", "filter", "INPUT", []string{"-p", "tcp", "-m", "tcp", "--dport", "22", "-m", "comment", "--comment", "ftpalgish: not ours", "-j", "ACCEPT"}},
		{"append", "nat", "POSTROUTING", []string{"-s", lan, "-o", "eth9", "-m", "comment", "--comment", "masquerade ftpalg:", "-j", "MASQUERADE"}},
	} {
		var err error
		if step.op == "new" {
			err = ipt.NewChain(step.table, step.chain)
		} else {
			err = ipt.Append(step.table, step.chain, step.spec...)
		}
		if err != nil {
			return fmt.Errorf("adding foreign state %v: %w", step, err)
		}
	}
	return nil
}

// addStale adds what a crashed ftpalg run could leave: owned chains with and
// without jumps and rules, an owned chain ftpalg no longer uses that another
// owned chain jumps to, a jump without comment and a stray listener rule in a
// built-in chain.
func addStale(ipt ruleAdder, six bool) error {
	src, dst, dnat := "192.0.2.10/32", "203.0.113.5/32", "198.51.100.7:40000"
	if six {
		src, dst, dnat = "2001:db8:1::10/128", "2001:db8:2::5/128", "[2001:db8:ff::7]:40000"
	}
	for _, step := range []struct {
		op           string
		table, chain string
		spec         []string
	}{
		{"new", "filter", chainForward, nil},
		{"new", "filter", "FTPALG-OLD", nil},
		{"append", "filter", chainForward, []string{"-s", src, "-d", dst, "-p", "tcp", "-m", "tcp", "--dport", "40000",
			"-m", "comment", "--comment", "ftpalg:s9:s9.p1", "-j", "ACCEPT"}},
		{"append", "filter", chainForward, []string{"-j", "FTPALG-OLD"}},
		{"append", "filter", "FORWARD", []string{"-m", "comment", "--comment", "ftpalg:jump", "-j", chainForward}},
		{"append", "filter", "OUTPUT", []string{"-j", "FTPALG-OLD"}},
		{"append", "filter", "INPUT", []string{"-i", "eth0", "-p", "tcp", "-m", "tcp", "--dport", "2121",
			"-m", "comment", "--comment", "ftpalg:listener", "-j", "ACCEPT"}},
		{"new", "nat", chainPrerouting, nil},
		{"append", "nat", chainPrerouting, []string{"-s", src, "-p", "tcp", "-m", "tcp", "--dport", "50000",
			"-m", "comment", "--comment", "ftpalg:s9:s9.p2", "-j", "DNAT", "--to-destination", dnat}},
		{"insert", "nat", "PREROUTING", []string{"-m", "comment", "--comment", "ftpalg:jump", "-j", chainPrerouting}},
		{"new", "nat", chainPostrouting, nil},
	} {
		var err error
		switch step.op {
		case "new":
			err = ipt.NewChain(step.table, step.chain)
		case "insert":
			err = ipt.Insert(step.table, step.chain, 1, step.spec...)
		default:
			err = ipt.Append(step.table, step.chain, step.spec...)
		}
		if err != nil {
			return fmt.Errorf("adding stale state %v: %w", step, err)
		}
	}
	return nil
}

func TestIPTablesSetupSweepsLeftovers(t *testing.T) {
	ctx := t.Context()
	b, v4, v6 := newFakeBackend(t)
	for _, f := range []struct {
		ipt *fakeIPTables
		six bool
	}{{v4, false}, {v6, true}} {
		if err := addForeign(f.ipt, f.six); err != nil {
			t.Fatal(err)
		}
	}
	foreign4, foreign6 := v4.save(), v6.save()
	if err := addStale(v4, false); err != nil {
		t.Fatal(err)
	}
	if err := addStale(v6, true); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "sweep", "# iptables-save\n"+v4.save()+"# ip6tables-save\n"+v6.save(), true)

	if err := b.Open(ctx, reversePassive); err != nil {
		t.Fatal(err)
	}
	if err := b.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(foreign4, v4.save()); d != "" {
		t.Errorf("iptables after Teardown differs from the foreign state (-want +got):\n%s", d)
	}
	if d := cmp.Diff(foreign6, v6.save()); d != "" {
		t.Errorf("ip6tables after Teardown differs from the foreign state (-want +got):\n%s", d)
	}
}

func TestIPTablesSetupRollsBack(t *testing.T) {
	b, v4, v6 := newFakeBackend(t)
	before4, before6 := v4.save(), v6.save()
	boom := errors.New("boom")
	v6.failOn = func(op, table, chain string, _ []string) error {
		if op == "Insert" && chain == "POSTROUTING" {
			return boom
		}
		return nil
	}
	if err := b.Setup(t.Context()); !errors.Is(err, boom) {
		t.Fatalf("Setup = %v, want %v", err, boom)
	}
	if d := cmp.Diff(before4+before6, v4.save()+v6.save()); d != "" {
		t.Errorf("after failed Setup (-before +after):\n%s", d)
	}
	if err := b.Open(t.Context(), routed); err == nil {
		t.Error("Open after a failed Setup succeeded")
	}
}

func TestIPTablesOpenRollsBack(t *testing.T) {
	for _, p := range []rules.Pinhole{reversePassive, reversePassive6} {
		for _, chain := range []string{chainForward, chainInput, chainPrerouting, chainOutput, chainPostrouting} {
			t.Run(p.ID.String()+"/"+chain, func(t *testing.T) {
				ctx := t.Context()
				b, v4, v6 := newFakeBackend(t)
				if err := b.Setup(ctx); err != nil {
					t.Fatal(err)
				}
				if err := b.Open(ctx, routed); err != nil {
					t.Fatal(err)
				}
				before := v4.save() + v6.save()
				boom := errors.New("boom")
				fail := func(op, table, c string, _ []string) error {
					// The last rule Open adds: chainInput is
					// the nat one.
					if op == "Append" && c == chain && (chain != chainInput || table == "nat") {
						return boom
					}
					return nil
				}
				v4.failOn, v6.failOn = fail, fail
				if err := b.Open(ctx, p); !errors.Is(err, boom) {
					t.Fatalf("Open = %v, want %v", err, boom)
				}
				if d := cmp.Diff(before, v4.save()+v6.save()); d != "" {
					t.Errorf("after failed Open (-before +after):\n%s", d)
				}
				v4.failOn, v6.failOn = nil, nil
				if err := b.Open(ctx, p); err != nil {
					t.Fatalf("Open after a failed Open: %v", err)
				}
				if err := b.Verify(ctx); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

func TestIPTablesOpenCanceled(t *testing.T) {
	b, v4, _ := newFakeBackend(t)
	if err := b.Setup(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := v4.save()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	n := v4.cmds
	if err := b.Open(ctx, passiveGateway); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a canceled ctx = %v, want %v", err, context.Canceled)
	}
	if v4.cmds != n {
		t.Errorf("Open with a canceled ctx ran %d commands", v4.cmds-n)
	}

	// Canceled while it waits for a run under way: withdrawn.
	gate := newGate(t, b, installFaults(v4), false)
	before = v4.save()
	ctx, cancel = context.WithCancel(t.Context())
	opened := make(chan error)
	go func() { opened <- b.Open(ctx, passiveGateway) }()
	gate.waitQueued(1)
	cancel()
	if err := <-opened; !errors.Is(err, context.Canceled) {
		t.Fatalf("Open canceled while queued = %v, want %v", err, context.Canceled)
	}
	if d := cmp.Diff(before, v4.save()); d != "" {
		t.Errorf("after canceled Open (-before +after):\n%s", d)
	}
	gate.release()
	if err := b.Open(t.Context(), passiveGateway); err != nil {
		t.Errorf("Open after a canceled Open: %v", err)
	}
}

func TestIPTablesOpenRefuses(t *testing.T) {
	ctx := t.Context()
	notSetUp, _, _ := newFakeBackend(t)
	if err := notSetUp.Open(ctx, routed); err == nil {
		t.Error("Open before Setup succeeded")
	}

	b, v4, v6 := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Open(ctx, routed); err != nil {
		t.Fatal(err)
	}
	only4 := newIPTables(testLog(t), "fake", newFakeIPTables(), nil)
	if err := only4.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := only4.Open(ctx, passiveGateway6); err == nil {
		t.Error("IPv6 Open with IPv6 disabled succeeded")
	}

	before := v4.save() + v6.save()
	bad := func(f func(*rules.Pinhole)) rules.Pinhole {
		p := passiveGateway
		p.ID = rules.PinholeID{Session: 1, N: 9}
		f(&p)
		return p
	}
	for name, p := range map[string]rules.Pinhole{
		"duplicate ID":   func() rules.Pinhole { p := passiveGateway; p.ID = routed.ID; return p }(),
		"invalid":        bad(func(p *rules.Pinhole) { p.Src = netip.Addr{} }),
		"mixed families": bad(func(p *rules.Pinhole) { p.SNAT = addr("2001:db8::1") }),
		// IDs are typed (rules.PinholeID): a comment can no longer carry
		// a space, quote, colon or 300 bytes; only the zero ID is left.
		"zero ID": bad(func(p *rules.Pinhole) { p.ID = rules.PinholeID{} }),
	} {
		if err := b.Open(ctx, p); err == nil {
			t.Errorf("%s: Open(%v) succeeded", name, p)
		}
	}
	if d := cmp.Diff(before, v4.save()+v6.save()); d != "" {
		t.Errorf("refused Opens changed the firewall (-before +after):\n%s", d)
	}
}

func TestIPTablesClose(t *testing.T) {
	ctx := t.Context()
	b, v4, _ := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	clean := v4.save()

	// Closing a pinhole that is not open runs no command.
	n := v4.cmds
	if err := b.Close(ctx, passiveGateway); err != nil {
		t.Errorf("Close of a pinhole never opened: %v", err)
	}
	if v4.cmds != n {
		t.Errorf("Close of a pinhole never opened ran %d commands", v4.cmds-n)
	}

	// A failing delete keeps the pinhole for a retry.
	if err := b.Open(ctx, reversePassive); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	v4.failOn = func(op, table, chain string, _ []string) error {
		if op == "Delete" && table == "nat" && chain == chainPrerouting {
			return boom
		}
		return nil
	}
	if err := b.Close(ctx, reversePassive); !errors.Is(err, boom) {
		t.Fatalf("Close = %v, want %v", err, boom)
	}
	v4.failOn = nil
	if err := b.Close(ctx, reversePassive); err != nil {
		t.Fatalf("retried Close: %v", err)
	}
	if d := cmp.Diff(clean, v4.save()); d != "" {
		t.Errorf("after retried Close (-want +got):\n%s", d)
	}

	// Rules flushed by someone else: Close still succeeds and forgets
	// the pinhole; closing twice is fine.
	if err := b.Open(ctx, activeGateway); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := v4.ClearChain(h.table, h.chain); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := b.Close(ctx, activeGateway); err != nil {
			t.Errorf("Close of a flushed pinhole: %v", err)
		}
	}
	if err := b.Open(ctx, activeGateway); err != nil {
		t.Errorf("reopening after Close: %v", err)
	}
}

func TestIPTablesIntercept(t *testing.T) {
	ctx := t.Context()
	b, v4, v6 := newFakeBackend(t)
	if err := b.Intercept(ctx, []string{"eth0"}, 2121); err == nil {
		t.Error("Intercept before Setup succeeded")
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	clean := v4.save() + v6.save()
	for _, bad := range []struct {
		ifaces []string
		port   uint16
	}{
		{nil, 2121},
		{[]string{"eth0"}, 0},
		{[]string{""}, 2121},
		{[]string{"eth0 -j DROP"}, 2121},
		{[]string{"-eth0"}, 2121},
		{[]string{"a-very-long-interface"}, 2121},
	} {
		if err := b.Intercept(ctx, bad.ifaces, bad.port); err == nil {
			t.Errorf("Intercept(%q, %d) succeeded", bad.ifaces, bad.port)
		}
	}

	// A second call replaces the first one's rules.
	if err := b.Intercept(ctx, []string{"eth0", "eth1"}, 2121); err != nil {
		t.Fatal(err)
	}
	if err := b.Intercept(ctx, []string{"eth1", "eth1"}, 2121); err != nil {
		t.Fatal(err)
	}
	want, _, _ := newFakeBackend(t)
	if _, err := (scenario{ifaces: []string{"eth1"}, listenPort: 2121}).run(ctx, want); err != nil {
		t.Fatal(err)
	}
	gotRules, err := b.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantRules, err := want.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(wantRules, gotRules); d != "" {
		t.Errorf("after replacing eth0,eth1 by eth1 (-want +got):\n%s", d)
	}

	// A failure leaves the previous rules.
	before := v4.save() + v6.save()
	v6.failOn = func(op, _, _ string, _ []string) error {
		if op == "Append" {
			return errors.New("boom")
		}
		return nil
	}
	if err := b.Intercept(ctx, []string{"eth2"}, 2121); err == nil {
		t.Fatal("Intercept with failing ip6tables succeeded")
	}
	if d := cmp.Diff(before, v4.save()+v6.save()); d != "" {
		t.Errorf("after failed Intercept (-before +after):\n%s", d)
	}
	if err := b.Verify(ctx); err != nil {
		t.Error(err)
	}
	v6.failOn = nil
	if err := b.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(clean, v4.save()+v6.save()); d != "" {
		t.Errorf("Teardown did not remove the intercept rules (-want +got):\n%s", d)
	}
}

func TestIPTablesVerify(t *testing.T) {
	ctx := t.Context()
	b, v4, v6 := newFakeBackend(t)
	if err := b.Verify(ctx); !errors.Is(err, ErrRulesChanged) {
		t.Errorf("Verify before Setup = %v, want %v", err, ErrRulesChanged)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Intercept(ctx, []string{"eth0"}, 2121); err != nil {
		t.Fatal(err)
	}
	if err := b.Open(ctx, reversePassive6); err != nil {
		t.Fatal(err)
	}
	if err := b.Verify(ctx); err != nil {
		t.Fatalf("Verify after Setup: %v", err)
	}

	for name, tc := range map[string]struct {
		break_ func() error
		want   string
	}{
		"jump deleted": {
			func() error { return v4.Delete("filter", "FORWARD", jumpSpec(chainForward)...) },
			"iptables -t filter jump FORWARD -> FTPALG-FORWARD",
		},
		"chain flushed": {
			func() error { return v6.ClearChain("nat", chainPostrouting) },
			`ip6tables -t nat chain FTPALG-POSTROUTING: 1 of 1 rules "ftpalg:s7:s7.p1"`,
		},
		"listener rule deleted": {
			func() error {
				lines, err := v4.List("filter", chainInput)
				if err != nil {
					return err
				}
				spec, err := splitRuleLine(lines[1])
				if err != nil {
					return err
				}
				return v4.Delete("filter", chainInput, spec[2:]...)
			},
			`iptables -t filter chain FTPALG-INPUT: 1 of 1 rules "ftpalg:listener"`,
		},
		"firewall reloaded": {
			func() error {
				for _, h := range hooks {
					if err := v6.Delete(h.table, h.builtin, jumpSpec(h.chain)...); err != nil {
						return err
					}
					if err := v6.ClearChain(h.table, h.chain); err != nil {
						return err
					}
					if err := v6.DeleteChain(h.table, h.chain); err != nil && !isNotExist(err) {
						return err
					}
				}
				return nil
			},
			"ip6tables -t nat chain FTPALG-OUTPUT",
		},
	} {
		t.Run(name, func(t *testing.T) {
			if err := b.Setup(ctx); err != nil {
				t.Fatal(err)
			}
			if err := b.Intercept(ctx, []string{"eth0"}, 2121); err != nil {
				t.Fatal(err)
			}
			if err := b.Open(ctx, reversePassive6); err != nil {
				t.Fatal(err)
			}
			if err := tc.break_(); err != nil {
				t.Fatal(err)
			}
			err := b.Verify(ctx)
			if !errors.Is(err, ErrRulesChanged) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Verify = %v, want %v mentioning %q", err, ErrRulesChanged, tc.want)
			}
		})
	}
}

func TestIPTablesConcurrent(t *testing.T) {
	ctx := t.Context()
	b, v4, v6 := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	clean := v4.save() + v6.save()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			p := passiveGateway6
			if i%2 == 0 {
				p = reversePassive
			}
			p.ID = rules.PinholeID{Session: uint64(i), N: 1}
			p.Dst = netip.AddrPortFrom(p.Dst.Addr(), uint16(40000+i))
			for range 5 {
				if err := b.Open(ctx, p); err != nil {
					t.Error(err)
					return
				}
				if err := b.Close(ctx, p); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if d := cmp.Diff(clean, v4.save()+v6.save()); d != "" {
		t.Errorf("after concurrent Open/Close (-want +got):\n%s", d)
	}
}

func TestSplitRuleLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{`-A X -j ACCEPT`, []string{"-A", "X", "-j", "ACCEPT"}},
		{`-A X -m comment --comment "ftpalg:s1:s1.p1" -j ACCEPT`, []string{"-A", "X", "-m", "comment", "--comment", "ftpalg:s1:s1.p1", "-j", "ACCEPT"}},
		{`-A X --comment "a \"b\" \\c"  -j  Y`, []string{"-A", "X", "--comment", `a "b" \c`, "-j", "Y"}},
		{`-A X --comment ""`, []string{"-A", "X", "--comment", ""}},
	} {
		got, err := splitRuleLine(tc.line)
		if err != nil {
			t.Errorf("splitRuleLine(%q): %v", tc.line, err)
			continue
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("splitRuleLine(%q) (-want +got):\n%s", tc.line, d)
		}
		// formatSpec is its inverse.
		back, err := splitRuleLine(formatSpec(got))
		if err != nil || !cmp.Equal(got, back) {
			t.Errorf("splitRuleLine(formatSpec(%q)) = %q, %v", got, back, err)
		}
	}
	if _, err := splitRuleLine(`-A X --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestParseVariant(t *testing.T) {
	for out, want := range map[string]string{
		"iptables v1.8.9 (nf_tables)\n": "nf_tables",
		"iptables v1.8.7 (legacy)\n":    "legacy",
		"ip6tables v1.6.1\n":            "legacy",
	} {
		got, err := parseVariant(out)
		if err != nil || got != want {
			t.Errorf("parseVariant(%q) = %q, %v; want %q", out, got, err, want)
		}
	}
	if _, err := parseVariant("no version here"); err == nil {
		t.Error("parseVariant accepted garbage")
	}
}

// faults is a failOn for the fake that a test may change while commands
// run: it holds up lines with chosen comments, and fails lines as fail
// says.
type faults struct {
	mu    sync.Mutex
	holds map[string]*hold // by rule comment
	fail  func(op, table, chain string, spec []string) error
}

type hold struct {
	once             sync.Once
	reached, release chan struct{}
}

func installFaults(fake *fakeIPTables) *faults {
	fl := &faults{holds: make(map[string]*hold)}
	fake.failOn = fl.failOn
	return fl
}

func (fl *faults) failOn(op, table, chain string, spec []string) error {
	c, _ := argAfter(spec, "--comment")
	fl.mu.Lock()
	h, fail := fl.holds[c], fl.fail
	fl.mu.Unlock()
	if h != nil {
		h.once.Do(func() { close(h.reached) })
		<-h.release
		return nil
	}
	if fail != nil {
		return fail(op, table, chain, spec)
	}
	return nil
}

func (fl *faults) setFail(fail func(op, table, chain string, spec []string) error) {
	fl.mu.Lock()
	fl.fail = fail
	fl.mu.Unlock()
}

// gate holds up a restore of the IPv4 Opens (or Closes), so that the
// Opens (Closes) that follow queue for the next run.
type gate struct {
	t       *testing.T
	lane    *batcher
	p       rules.Pinhole // whose Open (Close) is held up
	h       *hold
	once    sync.Once
	done    chan error // the held Open's (Close's) result
	release func()
}

// newGate starts an Open (del: a Close, after an Open) of a pinhole of its
// own and returns when its restore is held up in the fake.
func newGate(t *testing.T, b *Backend, fl *faults, del bool) *gate {
	t.Helper()
	g := &gate{t: t, lane: &b.v4.adds, done: make(chan error, 1),
		p: rules.Pinhole{ID: rules.PinholeID{Session: 201, N: 1}, Src: addr("192.0.2.250"), Dst: ap("203.0.113.250:40998")}}
	if del {
		g.lane = &b.v4.dels
		g.p.ID, g.p.Dst = rules.PinholeID{Session: 202, N: 1}, ap("203.0.113.250:40999")
		if err := b.Open(t.Context(), g.p); err != nil {
			t.Fatal(err)
		}
	}
	comment, _ := pinholeComment(g.p)
	h := &hold{reached: make(chan struct{}), release: make(chan struct{})}
	fl.mu.Lock()
	fl.holds[comment] = h
	fl.mu.Unlock()
	go func() {
		if del {
			g.done <- b.Close(context.Background(), g.p)
		} else {
			g.done <- b.Open(context.Background(), g.p)
		}
	}()
	<-h.reached
	g.release = func() {
		g.once.Do(func() {
			fl.mu.Lock()
			delete(fl.holds, comment)
			fl.mu.Unlock()
			close(h.release)
			if err := <-g.done; err != nil {
				t.Errorf("held change of %v: %v", g.p, err)
			}
		})
	}
	t.Cleanup(g.release)
	return g
}

// waitQueued waits until n changes wait for the next run.
func (g *gate) waitQueued(n int) {
	g.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		g.lane.mu.Lock()
		q := len(g.lane.queue)
		g.lane.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%d changes queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// numbered returns a copy of p with ID, session and destination port
// derived from i.
func numbered(p rules.Pinhole, i int) rules.Pinhole {
	p.ID = rules.PinholeID{Session: 1000 + uint64(i), N: 1}
	p.Dst = netip.AddrPortFrom(p.Dst.Addr(), uint16(41000+i))
	return p
}

// runConcurrently runs each function on a goroutine of its own and returns
// their results in order.
func runConcurrently(fns ...func() error) []error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() { errs[i] = fn() })
	}
	wg.Wait()
	return errs
}

// wantRules returns the Rules dump of a fresh fake backend with the given
// pinholes open.
func wantRules(t *testing.T, pinholes ...rules.Pinhole) []string {
	t.Helper()
	ctx := t.Context()
	b, _, _ := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range pinholes {
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	rules, err := b.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func checkRules(t *testing.T, b *Backend, want []string) {
	t.Helper()
	got, err := b.Rules(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("rules (-want +got):\n%s", d)
	}
}

// TestIPTablesBatches checks that the changes arriving while a restore
// runs go together into the next one, and that a pinhole being closed
// keeps its ID taken without holding up a second Close.
func TestIPTablesBatches(t *testing.T) {
	ctx := t.Context()
	b, v4, _ := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	var closing []rules.Pinhole
	for i := range 3 {
		p := numbered(reversePassive, 100+i)
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
		closing = append(closing, p)
	}
	fl := installFaults(v4)
	// The Close gate first: it opens its pinhole before it holds.
	closes := newGate(t, b, fl, true)
	opens := newGate(t, b, fl, false)

	// The gates' pinholes are being opened and closed.
	for _, g := range []*gate{opens, closes} {
		if err := b.Close(ctx, g.p); err != nil {
			t.Errorf("Close during Open or Close: %v", err)
		}
		if err := b.Open(ctx, g.p); err == nil {
			t.Error("Open during Open or Close succeeded")
		}
	}

	var fns []func() error
	var opening []rules.Pinhole
	for i := range 10 {
		p := numbered(passiveGateway, i)
		if i%2 == 1 {
			p = numbered(activeGateway, i)
		}
		opening = append(opening, p)
		fns = append(fns, func() error { return b.Open(ctx, p) })
	}
	for _, p := range closing {
		fns = append(fns, func() error { return b.Close(ctx, p) })
	}
	restores := v4.restores
	done := make(chan []error)
	go func() { done <- runConcurrently(fns...) }()
	opens.waitQueued(len(opening))
	closes.waitQueued(len(closing))
	opens.release()
	closes.release()
	for i, err := range <-done {
		if err != nil {
			t.Errorf("change %d: %v", i, err)
		}
	}
	if n := v4.restores - restores; n != 2 {
		t.Errorf("%d Opens and %d Closes took %d restores, want 2", len(opening), len(closing), n)
	}
	checkRules(t, b, wantRules(t, append(opening, opens.p)...))
	if err := b.Verify(ctx); err != nil {
		t.Error(err)
	}
}

// TestIPTablesBatchFallback checks that when a batch fails, its changes
// are applied one by one: a bad change fails alone, a delete of rules that
// someone else removed succeeds, and nothing is added twice when the
// filter table of the batch went in and the nat table did not.
func TestIPTablesBatchFallback(t *testing.T) {
	ctx := t.Context()
	b, v4, _ := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	flushed := numbered(reversePassive, 1) // its rules vanish
	failClose := numbered(reversePassive, 2)
	stays := numbered(passiveGateway, 3)
	for _, p := range []rules.Pinhole{flushed, failClose, stays} {
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	lines, err := v4.ListTable("nat")
	if err != nil {
		t.Fatal(err)
	}
	flushedComment, _ := pinholeComment(flushed)
	for _, line := range lines {
		args, err := splitRuleLine(line)
		if err != nil {
			t.Fatal(err)
		}
		if c, _ := argAfter(args, "--comment"); c == flushedComment {
			if err := v4.Delete("nat", args[1], args[2:]...); err != nil {
				t.Fatal(err)
			}
		}
	}

	fl := installFaults(v4)
	// The Close gate first: it opens its pinhole before it holds.
	closes := newGate(t, b, fl, true)
	opens := newGate(t, b, fl, false)
	boom := errors.New("boom")
	failOpen := numbered(reversePassive, 4)
	failOpenComment, _ := pinholeComment(failOpen)
	failCloseComment, _ := pinholeComment(failClose)
	fl.setFail(func(op, table, _ string, spec []string) error {
		c, _ := argAfter(spec, "--comment")
		switch {
		case op == "Append" && table == "nat" && c == failOpenComment:
			return boom
		case op == "Delete" && table == "nat" && c == failCloseComment:
			return boom
		}
		return nil
	})
	var opening []rules.Pinhole
	fns := []func() error{
		func() error { return b.Open(ctx, failOpen) },
		func() error { return b.Close(ctx, flushed) },
		func() error { return b.Close(ctx, failClose) },
	}
	for i := range 4 {
		p := numbered(reversePassive, 10+i)
		opening = append(opening, p)
		fns = append(fns, func() error { return b.Open(ctx, p) })
	}
	done := make(chan []error)
	go func() { done <- runConcurrently(fns...) }()
	opens.waitQueued(1 + len(opening))
	closes.waitQueued(2)
	opens.release()
	closes.release()
	errs := <-done
	if !errors.Is(errs[0], boom) {
		t.Errorf("failing Open = %v, want %v", errs[0], boom)
	}
	if errs[1] != nil {
		t.Errorf("Close of a pinhole whose rules are gone: %v", errs[1])
	}
	if !errors.Is(errs[2], boom) {
		t.Errorf("failing Close = %v, want %v", errs[2], boom)
	}
	for i, err := range errs[3:] {
		if err != nil {
			t.Errorf("Open of %v in a failed batch: %v", opening[i], err)
		}
	}
	// The failed Close keeps the nat rules it could not delete (its
	// filter rules went with the batch's filter table); the failed Open
	// left nothing; the others are in exactly once.
	want := wantRules(t, slices.Concat([]rules.Pinhole{stays, failClose, opens.p}, opening)...)
	want = slices.DeleteFunc(want, func(line string) bool {
		return strings.Contains(line, failCloseComment) && strings.Contains(line, "-t filter")
	})
	checkRules(t, b, want)
	if err := b.Verify(ctx); err != nil {
		t.Error(err)
	}

	fl.setFail(nil)
	if err := b.Close(ctx, failClose); err != nil {
		t.Errorf("retried Close: %v", err)
	}
	checkRules(t, b, wantRules(t, slices.Concat([]rules.Pinhole{stays, opens.p}, opening)...))
}
