package iptables

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/google/go-cmp/cmp"
)

// reloadFake replaces everything in f by the foreign state, as a
// distribution's iptables-restore of its own rules does.
func reloadFake(f *fakeIPTables, six bool) error {
	fresh := newFakeIPTables()
	f.mu.Lock()
	f.tables = fresh.tables
	f.mu.Unlock()
	return addForeign(f, six)
}

// ownedLines returns the lines of save output that are ftpalg's.
func ownedLines(save string) string {
	var out strings.Builder
	for line := range strings.Lines(save) {
		if ownedRE.MatchString(line) {
			out.WriteString(line)
		}
	}
	return out.String()
}

// repairCase breaks the firewall of a backend set up with the "all"
// scenario and foreign state.
type repairCase struct {
	name   string
	break_ func(v4, v6 *fakeIPTables) error
	// lost says which foreign lines the damage took for good (the
	// owner of those would put them back, not ftpalg).
	lost func(line string) bool
}

var repairCases = []repairCase{
	{name: "chain flushed", break_: func(v4, _ *fakeIPTables) error {
		return v4.ClearChain("filter", chainForward)
	}},
	{name: "jump deleted", break_: func(_, v6 *fakeIPTables) error {
		return v6.Delete("nat", "PREROUTING", jumpSpec(chainPrerouting)...)
	}},
	{name: "one pinhole rule deleted", break_: func(v4, _ *fakeIPTables) error {
		lines, err := v4.List("nat", chainPostrouting)
		if err != nil {
			return err
		}
		spec, err := splitRuleLine(lines[len(lines)-1])
		if err != nil {
			return err
		}
		return v4.Delete("nat", chainPostrouting, spec[2:]...)
	}},
	{name: "listener rule deleted", break_: func(_, v6 *fakeIPTables) error {
		lines, err := v6.List("filter", chainInput)
		if err != nil {
			return err
		}
		for _, line := range lines {
			if strings.Contains(line, listenerNote) {
				spec, err := splitRuleLine(line)
				if err != nil {
					return err
				}
				return v6.Delete("filter", chainInput, spec[2:]...)
			}
		}
		return errors.New("no listener rule")
	}},
	{name: "nat table flushed", break_: func(v4, v6 *fakeIPTables) error {
		// iptables -t nat -F: every chain, built in or not.
		for _, f := range []*fakeIPTables{v4, v6} {
			chains, err := f.ListChains("nat")
			if err != nil {
				return err
			}
			for _, c := range chains {
				if err := f.ClearChain("nat", c); err != nil {
					return err
				}
			}
		}
		return nil
	}, lost: func(line string) bool { return strings.Contains(line, "MASQUERADE") }},
	{name: "firewall reloaded", break_: func(v4, v6 *fakeIPTables) error {
		if err := reloadFake(v4, false); err != nil {
			return err
		}
		return reloadFake(v6, true)
	}},
	{name: "everything deleted", break_: func(v4, v6 *fakeIPTables) error {
		for _, f := range []*fakeIPTables{v4, v6} {
			if _, _, err := sweepFamily(&family{name: "fake", ipt: f}); err != nil {
				return err
			}
		}
		return nil
	}},
}

// setUpRepair returns a fake backend with foreign state, the "all"
// scenario and, when listeners, AllowListeners; and the golden text of the
// scenario.
func setUpRepair(t *testing.T, log *slog.Logger, listeners bool) (b *Backend, v4, v6 *fakeIPTables, golden string) {
	t.Helper()
	ctx := t.Context()
	v4, v6 = newFakeIPTables(), newFakeIPTables()
	b = newIPTables(log, "fake", v4, v6)
	if err := addForeign(v4, false); err != nil {
		t.Fatal(err)
	}
	if err := addForeign(v6, true); err != nil {
		t.Fatal(err)
	}
	var all scenario
	for _, s := range scenarios {
		if s.name == "all" {
			all = s
		}
	}
	golden, err := all.run(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if listeners {
		if err := b.AllowListeners(ctx, []netip.AddrPort{ap("[::]:990")}); err != nil {
			t.Fatal(err)
		}
	}
	return b, v4, v6, golden
}

// goldenOf returns the golden text of the "all" scenario for b: its
// description lines from golden, then b's Rules.
func goldenOf(t *testing.T, b *Backend, golden string) string {
	t.Helper()
	var out strings.Builder
	for line := range strings.Lines(golden) {
		if strings.HasPrefix(line, "#") {
			out.WriteString(line)
		}
	}
	rules, err := b.Rules(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		out.WriteString(r + "\n")
	}
	return out.String()
}

func TestIPTablesRepair(t *testing.T) {
	for _, listeners := range []bool{false, true} {
		for _, tc := range repairCases {
			name := tc.name
			if listeners {
				name += "/listeners"
			}
			t.Run(name, func(t *testing.T) {
				ctx := t.Context()
				var logBuf syncBuffer
				b, v4, v6, golden := setUpRepair(t, slog.New(slog.NewTextHandler(&logBuf, nil)), listeners)
				healthy := v4.save() + v6.save()
				if err := tc.break_(v4, v6); err != nil {
					t.Fatal(err)
				}
				if err := b.Verify(ctx); !errors.Is(err, ErrRulesChanged) {
					t.Fatalf("Verify after the damage = %v, want %v", err, ErrRulesChanged)
				}
				logBuf.Reset()
				repaired, err := b.Repair(ctx)
				if err != nil || !repaired {
					t.Fatalf("Repair = %v, %v; want true, nil", repaired, err)
				}
				if err := b.Verify(ctx); err != nil {
					t.Errorf("Verify after Repair: %v", err)
				}
				if !listeners {
					checkGolden(t, "all", goldenOf(t, b, golden), false)
				}
				// Exactly as before: positions, order, no
				// duplicates, foreign rules untouched.
				want := healthy
				if tc.lost != nil {
					var kept strings.Builder
					for line := range strings.Lines(healthy) {
						if !tc.lost(line) {
							kept.WriteString(line)
						}
					}
					want = kept.String()
				}
				if d := cmp.Diff(want, v4.save()+v6.save()); d != "" {
					t.Errorf("after Repair (-healthy +got):\n%s", d)
				}
				logs := strings.Split(strings.TrimSpace(logBuf.String()), "\n")
				if len(logs) != 1 || !strings.Contains(logs[0], "iptables rules repaired") || !strings.Contains(logs[0], "missing=") {
					t.Errorf("Repair logged %q, want one line naming what was missing", logs)
				}

				// Healthy now: nothing to do, nothing changed.
				restores := v4.restores + v6.restores
				if repaired, err := b.Repair(ctx); err != nil || repaired {
					t.Errorf("second Repair = %v, %v; want false, nil", repaired, err)
				}
				if n := v4.restores + v6.restores - restores; n != 0 {
					t.Errorf("second Repair ran %d restores", n)
				}

				// The repaired pinholes close, and Teardown leaves
				// the foreign state.
				for _, s := range scenarios {
					if s.name != "all" {
						continue
					}
					for _, p := range s.pinholes {
						if err := b.Close(ctx, p); err != nil {
							t.Errorf("Close(%v) after Repair: %v", p, err)
						}
					}
				}
				if err := b.Teardown(ctx); err != nil {
					t.Fatal(err)
				}
				if owned := ownedLines(v4.save() + v6.save()); owned != "" {
					t.Errorf("after Teardown:\n%s", owned)
				}
			})
		}
	}
}

func TestIPTablesRepairHealthy(t *testing.T) {
	ctx := t.Context()
	b, v4, v6 := newFakeBackend(t)
	if _, err := b.Repair(ctx); err == nil {
		t.Error("Repair before Setup succeeded")
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Open(ctx, reversePassive); err != nil {
		t.Fatal(err)
	}
	before := v4.save() + v6.save()
	cmds := v4.cmds + v6.cmds
	if repaired, err := b.Repair(ctx); err != nil || repaired {
		t.Errorf("Repair of a healthy firewall = %v, %v; want false, nil", repaired, err)
	}
	// One listing per table and family, nothing else.
	if n := v4.cmds + v6.cmds - cmds; n != 4 {
		t.Errorf("Repair of a healthy firewall ran %d commands, want 4", n)
	}
	if d := cmp.Diff(before, v4.save()+v6.save()); d != "" {
		t.Errorf("Repair of a healthy firewall changed it (-before +after):\n%s", d)
	}

	// A failing restore: Repair reports it, and a later one succeeds.
	if err := v4.ClearChain("nat", chainPrerouting); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	v4.failOn = func(op, _, _ string, _ []string) error {
		if op == "NewChain" {
			return boom
		}
		return nil
	}
	if _, err := b.Repair(ctx); !errors.Is(err, boom) {
		t.Errorf("Repair with a failing restore = %v, want %v", err, boom)
	}
	v4.failOn = nil
	if repaired, err := b.Repair(ctx); err != nil || !repaired {
		t.Errorf("Repair = %v, %v; want true, nil", repaired, err)
	}
	if d := cmp.Diff(before, v4.save()+v6.save()); d != "" {
		t.Errorf("after Repair (-before +after):\n%s", d)
	}

	if err := b.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Repair(ctx); err == nil {
		t.Error("Repair after Teardown succeeded")
	}
}

// TestIPTablesRepairConcurrent repairs while sessions open and close
// pinholes. An Open may fail while the chains are gone, but a Close never
// does, and no pinhole comes back after its Close.
func TestIPTablesRepairConcurrent(t *testing.T) {
	ctx := t.Context()
	b, v4, v6 := newFakeBackend(t)
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	clean := v4.save() + v6.save()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var opened atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			p := numbered(reversePassive, i)
			if i%2 == 1 {
				p = numbered(activeGateway6, i)
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := b.Open(ctx, p); err != nil {
					continue
				}
				opened.Add(1)
				if err := b.Close(ctx, p); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 50 {
		if err := reloadFake(v4, false); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Repair(ctx); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
	if opened.Load() == 0 {
		t.Error("no Open succeeded")
	}
	if _, err := b.Repair(ctx); err != nil {
		t.Fatal(err)
	}
	// Foreign state (from the reloads) aside, what is left is the
	// skeleton of Setup.
	if d := cmp.Diff(ownedLines(clean), ownedLines(v4.save()+v6.save())); d != "" {
		t.Errorf("ftpalg's rules after concurrent Repairs (-want +got):\n%s", d)
	}
	if err := b.Verify(ctx); err != nil {
		t.Error(err)
	}
}

// TestIPTablesCloseDuringReload is the interleaving behind the flakes of
// TestIPTablesRepairConcurrent, made deterministic: a foreign reload takes
// ftpalg's chains while a batch of Closes is being deleted, before its
// filter table commits or between its filter and nat tables. The Closes
// succeed (their rules went with the chains), in a bounded number of
// restores, and the next Repair does not bring the pinholes back.
func TestIPTablesCloseDuringReload(t *testing.T) {
	for _, table := range []string{"filter", "nat"} {
		t.Run("before "+table, func(t *testing.T) {
			ctx := t.Context()
			b, v4, v6 := newFakeBackend(t)
			if err := b.Setup(ctx); err != nil {
				t.Fatal(err)
			}
			clean := v4.save() + v6.save()
			closing := []rules.Pinhole{numbered(reversePassive, 1), numbered(reversePassive, 2)}
			stays := numbered(reversePassive, 3) // opened after the reload
			for _, p := range closing {
				if err := b.Open(ctx, p); err != nil {
					t.Fatal(err)
				}
			}
			fl := installFaults(v4)
			closes := newGate(t, b, fl, true)
			var reloaded atomic.Bool
			first, _ := pinholeComment(closing[0])
			fl.setFail(func(op, tbl, _ string, spec []string) error {
				// Not in the gate's own restore: in the batch.
				if c, _ := argAfter(spec, "--comment"); c != first {
					return nil
				}
				if op == "Delete" && tbl == table && reloaded.CompareAndSwap(false, true) {
					return reloadFake(v4, false)
				}
				return nil
			})
			var fns []func() error
			for _, p := range closing {
				fns = append(fns, func() error { return b.Close(ctx, p) })
			}
			done := make(chan []error)
			go func() { done <- runConcurrently(fns...) }()
			closes.waitQueued(len(closing))
			restores := v4.restores
			closes.release()
			for i, err := range <-done {
				if err != nil {
					t.Errorf("Close of %v during a reload: %v", closing[i], err)
				}
			}
			fl.setFail(nil)
			if !reloaded.Load() {
				t.Fatal("no reload during the Closes")
			}
			// The batch, and at most one restore of what was left.
			if n := v4.restores - restores; n > 2 {
				t.Errorf("the Closes took %d restores, want at most 2", n)
			}
			if repaired, err := b.Repair(ctx); err != nil || !repaired {
				t.Fatalf("Repair = %v, %v; want true, nil", repaired, err)
			}
			if err := b.Open(ctx, stays); err != nil {
				t.Fatal(err)
			}
			checkRules(t, b, wantRules(t, stays))
			if err := b.Close(ctx, stays); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(ownedLines(clean), ownedLines(v4.save()+v6.save())); d != "" {
				t.Errorf("ftpalg's rules after the Closes and a Repair (-want +got):\n%s", d)
			}
		})
	}
}

func TestIPTablesWatch(t *testing.T) {
	b, v4, v6, _ := setUpRepair(t, testLog(t), true)
	healthy := v4.save() + v6.save()
	// watch runs Watch until the returned stop is called; stop fails the
	// test if Watch does not return after its ctx ended.
	watch := func() (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			b.Watch(ctx, 5*time.Millisecond)
		}()
		return func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Watch did not return after its ctx ended")
			}
		}
	}
	for _, tc := range repairCases {
		if tc.lost != nil {
			continue
		}
		// A break takes several steps (a jump, then its chain); a Watch
		// running meanwhile could repair between them and make the next
		// step fail. Break first, then let a new Watch find it.
		if err := tc.break_(v4, v6); err != nil {
			t.Fatal(err)
		}
		if b.Verify(t.Context()) == nil {
			t.Fatalf("%s: the break left nothing to repair", tc.name)
		}
		stop := watch()
		start := time.Now()
		for b.Verify(t.Context()) != nil {
			// Generous: the behaviour is "repaired eventually"; a busy
			// machine may delay a 5ms ticker by seconds.
			if time.Since(start) > 30*time.Second {
				stop()
				t.Fatalf("%s: Watch did not repair within 30s", tc.name)
			}
			time.Sleep(time.Millisecond)
		}
		stop()
		t.Logf("%s: repaired after %v", tc.name, time.Since(start).Round(time.Millisecond))
		if d := cmp.Diff(healthy, v4.save()+v6.save()); d != "" {
			t.Errorf("%s: after Watch repaired (-healthy +got):\n%s", tc.name, d)
		}
	}
}

// syncBuffer is a bytes.Buffer for a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}
