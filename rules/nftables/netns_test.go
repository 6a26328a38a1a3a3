package nftables

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func testLog(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// requireRoot skips tb without root or the tools, or fails it when
// CI=true, so that a green CI means these tests ran.
func requireRoot(tb testing.TB, tools ...string) {
	tb.Helper()
	skip := tb.Skipf
	if os.Getenv("CI") == "true" {
		skip = tb.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("needs root (netfilter in a network namespace)")
	}
	for _, cmd := range append([]string{"nft"}, tools...) {
		if _, err := exec.LookPath(cmd); err != nil {
			skip("needs %s: %v", cmd, err)
		}
	}
}

// enterNetns locks the calling goroutine to its thread and moves the thread
// to a new, empty network namespace. The returned function moves it back;
// call it from the same goroutine (defer). If that fails the thread stays
// locked, so that Go discards it when the goroutine ends.
func enterNetns(tb testing.TB, tools ...string) (restore func()) {
	tb.Helper()
	requireRoot(tb, tools...)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatalf("getting the current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		if os.Getenv("CI") != "true" && errors.Is(err, os.ErrPermission) {
			tb.Skipf("creating a netns: %v", err)
		}
		tb.Fatalf("creating a netns: %v", err)
	}
	return func() {
		if err := netns.Set(orig); err != nil {
			tb.Errorf("returning to the original netns: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		ns.Close()
		orig.Close()
	}
}

func newKernelBackend(tb testing.TB, cfg Config) *Backend {
	tb.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog(tb)
	}
	b, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Release() })
	return b
}

// run runs a command on the calling (namespaced) thread.
func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func runStdin(tb testing.TB, stdin, name string, args ...string) {
	tb.Helper()
	c := exec.Command(name, args...)
	c.Stdin = strings.NewReader(stdin)
	if out, err := c.CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

var expiresRE = regexp.MustCompile(` expires [0-9hms.]+`)

var elementsRE = regexp.MustCompile(`(?s)elements = \{ (.*?) \}\n`)

// listTable returns "nft list table inet ftpalg" without the remaining
// lifetimes of elements, which change by the millisecond, and with the
// elements of each set sorted, one a line (the kernel lists them in hash
// order).
func listTable(tb testing.TB) string {
	tb.Helper()
	out := expiresRE.ReplaceAllString(run(tb, "nft", "list", "table", "inet", "ftpalg"), "")
	return elementsRE.ReplaceAllStringFunc(out, func(m string) string {
		inner := elementsRE.FindStringSubmatch(m)[1]
		var elems []string
		for _, e := range strings.Split(inner, ",\n") {
			elems = append(elems, strings.TrimSpace(e))
		}
		slices.Sort(elems)
		return "elements = {\n\t\t\t" + strings.Join(elems, ",\n\t\t\t") + "\n\t\t}\n"
	})
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -update writes it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s differs (-want +got):\n%s", name, d)
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestNetnsNFTablesGolden installs the table for a configuration and
// compares "nft list table inet ftpalg" with the golden file: after Setup,
// after Intercept, AllowListeners and pinholes of each kind, and after
// Close.
func TestNetnsNFTablesGolden(t *testing.T) {
	t.Parallel()
	defer enterNetns(t)()
	ctx := t.Context()
	b := newKernelBackend(t, Config{Mark: 0x00800000})
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Teardown(context.WithoutCancel(ctx))
	golden(t, "setup.nft", listTable(t))

	if err := b.Intercept(ctx, []string{"eth1", "wg+"}, 2121); err != nil {
		t.Fatal(err)
	}
	if err := b.AllowListeners(ctx, []netip.AddrPort{netip.MustParseAddrPort("[::]:2100"), netip.MustParseAddrPort("198.51.100.1:21")}); err != nil {
		t.Fatal(err)
	}
	at := netip.AddrPortFrom
	ps := []rules.Pinhole{
		{ID: rules.PinholeID{Session: 1, N: 1}, Src: addr("192.0.2.10"), Dst: at(addr("203.0.113.5"), 40000), SNAT: addr("203.0.113.1"), TTL: 30 * time.Second, Passive: true},
		{ID: rules.PinholeID{Session: 2, N: 1}, Src: addr("203.0.113.5"), Dst: at(addr("203.0.113.1"), 50000), DNAT: at(addr("192.0.2.10"), 40001), TTL: 30 * time.Second},
		{ID: rules.PinholeID{Session: 3, N: 1}, Src: addr("198.51.100.7"), Dst: at(addr("198.51.100.1"), 50002), DNAT: at(addr("192.0.2.20"), 30000), SNAT: addr("192.0.2.1"), TTL: 30 * time.Second, Passive: true},
		{ID: rules.PinholeID{Session: 4, N: 1}, Src: addr("2001:db8:1::10"), Dst: at(addr("2001:db8:2::5"), 40000), SNAT: addr("2001:db8:2::1"), TTL: 30 * time.Second, Passive: true},
		{ID: rules.PinholeID{Session: 5, N: 1}, Src: addr("2001:db8:2::5"), Dst: at(addr("2001:db8:2::1"), 50000), DNAT: at(addr("2001:db8:1::10"), 40001), TTL: 30 * time.Second},
	}
	for _, p := range ps {
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	golden(t, "open.nft", listTable(t))
	for _, p := range ps {
		if err := b.Close(ctx, p); err != nil {
			t.Fatal(err)
		}
		// Idempotent.
		if err := b.Close(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	golden(t, "closed.nft", listTable(t))
	if err := b.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Errorf("ruleset after Teardown:\n%s", out)
	}
}

func runtimeLock() { runtime.LockOSThread() }
