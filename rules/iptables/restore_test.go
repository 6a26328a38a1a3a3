package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// restoreFaults wraps a fake so that its Restore, and only Restore, fails
// as fail says; single commands (the one-by-one deletes, the rollback of a
// failed Open) work.
type restoreFaults struct {
	*fakeIPTables
	mu         sync.Mutex
	fail       func(input []byte) error
	adds, dels int // restores run while fail was set
}

func (r *restoreFaults) Restore(ctx context.Context, input []byte) error {
	r.mu.Lock()
	fail := r.fail
	if fail != nil {
		if bytes.Contains(input, []byte("\n-D ")) {
			r.dels++
		} else {
			r.adds++
		}
	}
	r.mu.Unlock()
	if fail != nil {
		if err := fail(input); err != nil {
			return err
		}
	}
	return r.fakeIPTables.Restore(ctx, input)
}

func (r *restoreFaults) setFail(fail func(input []byte) error) {
	r.mu.Lock()
	r.fail, r.adds, r.dels = fail, 0, 0
	r.mu.Unlock()
}

func (r *restoreFaults) counts() (adds, dels int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.adds, r.dels
}

// TestIPTablesBatchFailsFast checks that a batch whose restore fails in a
// way that would fail each change alone too (the xtables lock busy, an
// owned chain missing) fails every change after that one restore, a
// failed Close keeping its rules for a retry, while any other error still
// isolates the bad change.
func TestIPTablesBatchFailsFast(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		fast bool
	}{
		{"lock exit status", &fakeError{4, "iptables-restore: lock busy", false}, true},
		{"lock message", errors.New("iptables-restore: Another app is currently holding the xtables lock. Stopped waiting after 5s."), true},
		{"lock EAGAIN", errors.New("iptables-restore: can't lock: Resource temporarily unavailable"), true},
		{"owned chain", &fakeError{2, "iptables-restore v1.8.9 (nf_tables): Chain 'FTPALG-FORWARD' does not exist", true}, true},
		{"no chain", errFakeNoChain, true},
		{"bad rule", errors.New("iptables-restore: line 3 failed: Bad rule"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testBatchFailure(t, tc.err, tc.fast)
		})
	}
}

func testBatchFailure(t *testing.T, failure error, fast bool) {
	ctx := t.Context()
	v4 := &restoreFaults{fakeIPTables: newFakeIPTables()}
	b := newIPTables(testLog(t), "fake", v4, newFakeIPTables())
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	var closing, opening []rules.Pinhole
	for i := range 3 {
		p := numbered(reversePassive, 100+i)
		if err := b.Open(ctx, p); err != nil {
			t.Fatal(err)
		}
		closing = append(closing, p)
		opening = append(opening, numbered(passiveGateway, i))
	}
	bad := opening[1] // the one whose rules fail when failure does not fail all
	badComment, _ := pinholeComment(bad)

	fl := installFaults(v4.fakeIPTables)
	// The Close gate first: it opens its pinhole before it holds.
	closes := newGate(t, b, fl, true)
	opens := newGate(t, b, fl, false)
	var fns []func() error
	for _, p := range opening {
		fns = append(fns, func() error { return b.Open(ctx, p) })
	}
	for _, p := range closing {
		fns = append(fns, func() error { return b.Close(ctx, p) })
	}
	done := make(chan []error)
	go func() { done <- runConcurrently(fns...) }()
	opens.waitQueued(len(opening))
	closes.waitQueued(len(closing))
	v4.setFail(func(input []byte) error {
		if fast || bytes.Contains(input, []byte(badComment)) {
			return fmt.Errorf("fake restore: %w", failure)
		}
		return nil
	})
	opens.release()
	closes.release()
	errs := <-done
	adds, dels := v4.counts()
	v4.setFail(nil)

	if !fast {
		// The bad Open fails alone, after the batch and one restore
		// per Open; the Closes go in their batch.
		for i, err := range errs[:len(opening)] {
			if (i == 1) != errors.Is(err, failure) {
				t.Errorf("Open of %v = %v", opening[i], err)
			}
		}
		for i, err := range errs[len(opening):] {
			if err != nil {
				t.Errorf("Close of %v: %v", closing[i], err)
			}
		}
		if want := 1 + len(opening); adds != want || dels != 1 {
			t.Errorf("batches took %d and %d restores, want %d and 1", adds, dels, want)
		}
		checkRules(t, b, wantRules(t, opening[0], opening[2], opens.p))
		return
	}

	for i, err := range errs {
		if !errors.Is(err, failure) {
			t.Errorf("change %d = %v, want %v", i, err, failure)
		}
	}
	if adds != 1 || dels != 1 {
		t.Errorf("failed batches took %d and %d restores, want 1 each", adds, dels)
	}
	// The failed Opens left nothing; the failed Closes kept their
	// rules, and a retry removes them.
	checkRules(t, b, wantRules(t, slices.Concat(closing, []rules.Pinhole{opens.p})...))
	if err := b.Verify(ctx); err != nil {
		t.Error(err)
	}
	for _, p := range closing {
		if err := b.Close(ctx, p); err != nil {
			t.Errorf("retried Close of %v: %v", p, err)
		}
	}
	checkRules(t, b, wantRules(t, opens.p))
}

// TestFailsAll checks the classification of restore errors, including the
// exit status of the real command.
func TestFailsAll(t *testing.T) {
	exit4 := exec.Command("sh", "-c", "exit 4").Run()
	exit1 := exec.Command("sh", "-c", "exit 1").Run()
	if exit4 == nil || exit1 == nil {
		t.Fatalf("sh exit: %v, %v", exit4, exit1)
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("running iptables-restore: %w: ", exit4), true},
		{fmt.Errorf("running iptables-restore: %w: iptables-restore: line 2 failed: Bad rule (does a matching rule exist in that chain?).", exit1), false},
		{fmt.Errorf("running iptables-restore: %w: iptables-restore: line 2 failed: No chain/target/match by that name.", exit1), true},
		{fmt.Errorf("running iptables-restore: %w: iptables-restore v1.8.9 (nf_tables): Chain 'FTPALG-INPUT' does not exist", exit1), true},
		{errors.New("running iptables-restore: did not finish in 15s (killed)"), true},
		{&fakeError{4, "x", false}, true},
		{&fakeError{1, "x", false}, false},
	} {
		if got := failsAll(tc.err); got != tc.want {
			t.Errorf("failsAll(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// hungRestore wraps a fake so that every Opens' restore hangs, as an
// iptables-restore stuck on the kernel would, until the run's context
// ends, which kills it; nothing is committed then.
type hungRestore struct {
	*fakeIPTables
	hung chan struct{} // closed once a restore hangs
	once sync.Once
}

func (h *hungRestore) Restore(ctx context.Context, input []byte) error {
	if bytes.Contains(input, []byte("\n-A ")) {
		h.once.Do(func() { close(h.hung) })
		<-ctx.Done()
		return fmt.Errorf("fake iptables-restore: killed: %w", ctx.Err())
	}
	return h.fakeIPTables.Restore(ctx, input)
}

// TestIPTablesOpenTimeoutBoundsRun checks that the context of an Open
// bounds the restore run it leads and the one it waits in: a hung
// iptables-restore is killed at the Opens' deadline, both Opens fail with
// the context's error, and the firewall is as before.
func TestIPTablesOpenTimeoutBoundsRun(t *testing.T) {
	v4 := &hungRestore{fakeIPTables: newFakeIPTables(), hung: make(chan struct{})}
	b := newIPTables(testLog(t), "fake", v4, newFakeIPTables())
	if err := b.Setup(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := v4.save()
	const timeout = 200 * time.Millisecond
	errs := make(chan error, 2)
	for i := range 2 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			errs <- b.Open(ctx, numbered(reversePassive, 300+i))
		}()
		if i == 0 {
			<-v4.hung // the second Open queues behind the hung run
		}
	}
	start := time.Now()
	for range 2 {
		select {
		case err := <-errs:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Open during a hung restore: %v, want the context's deadline", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Open not bounded by its context while iptables-restore hangs")
		}
	}
	t.Logf("both Opens returned %v after the hang began", time.Since(start).Round(time.Millisecond))
	if after := v4.save(); after != before {
		t.Errorf("failed Opens changed the firewall:\n%s\nwant:\n%s", after, before)
	}
}

// endedCtx is a context whose end the test decides, and whose Done never
// fires: the Open that waits with it never notices the end by itself, as
// when its deadline passes just after the run before chose it to lead.
type endedCtx struct {
	context.Context
	ended atomic.Bool
}

func (c *endedCtx) Err() error {
	if c.ended.Load() {
		return context.DeadlineExceeded
	}
	return nil
}

// killedRestore holds the first restore of Opens until kill closes, and
// every later one until its context ends, as a hung iptables-restore.
type killedRestore struct {
	*fakeIPTables
	hung, kill chan struct{}
	n          atomic.Int32
}

func (k *killedRestore) Restore(ctx context.Context, input []byte) error {
	if !bytes.Contains(input, []byte("\n-A ")) {
		return k.fakeIPTables.Restore(ctx, input)
	}
	if k.n.Add(1) == 1 {
		close(k.hung)
		<-k.kill
		return errors.New("fake iptables-restore: killed")
	}
	<-ctx.Done()
	return fmt.Errorf("fake iptables-restore: killed: %w", ctx.Err())
}

// TestIPTablesOpenLeadsAfterItsEnd checks that an Open chosen to lead the
// next run after its context ended is withdrawn (it fails with its
// context's error, nothing changes) rather than led into a run that no
// deadline bounds. This was the rare hang of
// TestIPTablesOpenTimeoutBoundsRun.
func TestIPTablesOpenLeadsAfterItsEnd(t *testing.T) {
	v4 := &killedRestore{fakeIPTables: newFakeIPTables(), hung: make(chan struct{}), kill: make(chan struct{})}
	b := newIPTables(testLog(t), "fake", v4, newFakeIPTables())
	if err := b.Setup(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := v4.save()
	first := make(chan error, 1)
	go func() { first <- b.Open(t.Context(), numbered(reversePassive, 310)) }()
	<-v4.hung
	late := &endedCtx{Context: context.Background()}
	second := make(chan error, 1)
	go func() { second <- b.Open(late, numbered(reversePassive, 311)) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b.v4.adds.mu.Lock()
		n := len(b.v4.adds.queue)
		b.v4.adds.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second Open did not queue")
		}
	}
	late.ended.Store(true)
	close(v4.kill) // the first run fails; the second Open leads the next
	select {
	case err := <-first:
		if err == nil {
			t.Error("Open in a killed run succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open in a killed run hangs")
	}
	select {
	case err := <-second:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Open chosen to lead after its end = %v, want its context's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open chosen to lead after its end hangs in a run no deadline bounds")
	}
	if n := v4.n.Load(); n != 1 {
		t.Errorf("%d restores of Opens ran, want 1", n)
	}
	if after := v4.save(); after != before {
		t.Errorf("failed Opens changed the firewall:\n%s\nwant:\n%s", after, before)
	}
}
