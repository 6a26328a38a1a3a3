package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
)

// rules.Pinhole changes go through iptables-restore.
//
// With iptables-nft every transaction that deletes rules waits some 16ms
// in the kernel, and such transactions do not overlap, so a pinhole's four
// deletes take 70ms as single commands but 16ms per table in one
// "iptables-restore --noflush". Each Open and each Close is therefore one
// restore run, and the changes that arrive while a run is under way wait
// for it and go together into the next run: under load a run carries many
// sessions' pinholes for the price of one. Opens and Closes queue apart:
// a restore that only appends takes a millisecond or two, also while a
// deleting one waits, so an Open (which a PASV reply waits for) never
// waits behind deletes. iptables-restore commits each table on its own, so
// a pinhole's filter and nat rules are two transactions; a failure between
// them is rolled back like a failed command was before. Reading a table
// costs time in proportion to its size, and a delete reads the chains it
// deletes from: with 1,000 pinholes open, a Close takes some 80ms.
//
// Every run executes on the goroutine of one of the callers it carries
// (the one that found no run under way, or the first to wait), never on a
// goroutine of the backend's own, so the commands run in the network
// namespace of a caller's thread, as single go-iptables commands do.
//
// A run of Opens is bounded by its callers' contexts: it is killed at the
// earliest deadline among the Opens it carries, so that an Open never takes longer than
// its context allows (the session's OpenTimeout) also when it waits in, or
// leads, a shared run. A killed run fails every Open it carried; their
// rules are rolled back. Runs of Closes are not interrupted by contexts
// (a pinhole must close); the command's own limit bounds them.

// kernelIPTables drives the kernel: go-iptables for single commands,
// iptables-restore (or ip6tables-restore) for transactions.
type kernelIPTables struct {
	*goipt.IPTables
	path        string // iptables or ip6tables
	restorePath string // iptables-restore or ip6tables-restore
	wait        int    // seconds, for --wait
}

// newKernelIPTables pairs ipt with the commands cmd ("iptables" or
// "ip6tables") and cmd-restore found in PATH; the restore command must be
// of variant, like cmd.
func newKernelIPTables(ipt *goipt.IPTables, cmd, variant string, wait int) (*kernelIPTables, error) {
	path, err := exec.LookPath(cmd)
	if err != nil {
		return nil, fmt.Errorf("finding %s: %w", cmd, err)
	}
	restore := cmd + "-restore"
	restorePath, err := exec.LookPath(restore)
	if err != nil {
		return nil, fmt.Errorf("finding %s: %w", restore, err)
	}
	v, err := commandVariant(restorePath)
	if err != nil {
		return nil, err
	}
	if v != variant {
		return nil, fmt.Errorf("%s is %s but %s is %s: install the matching %s", restorePath, v, cmd, variant, restore)
	}
	return &kernelIPTables{IPTables: ipt, path: path, restorePath: restorePath, wait: wait}, nil
}

// limit bounds one iptables command: --wait only bounds the wait for the
// legacy xtables lock, and iptables-nft ignores it, so a hung command must
// not stop every pinhole change for good.
func (k *kernelIPTables) limit() time.Duration {
	return time.Duration(k.wait)*time.Second + 10*time.Second
}

func (k *kernelIPTables) deadline() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), k.limit())
}

// runContext bounds one restore by ctx and by the command's own limit.
func (k *kernelIPTables) runContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, k.limit())
}

// ListTable runs "iptables -t table -S" and returns its lines.
func (k *kernelIPTables) ListTable(table string) ([]string, error) {
	var stderr bytes.Buffer
	ctx, cancel := k.deadline()
	defer cancel()
	cmd := exec.CommandContext(ctx, k.path, "--wait", strconv.Itoa(k.wait), "-t", table, "-S")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("running %s -t %s -S: did not finish in %v (killed)", filepath.Base(k.path), table, k.limit())
	}
	if err != nil {
		return nil, fmt.Errorf("running %s -t %s -S: %w: %s", filepath.Base(k.path), table, err, strings.TrimSpace(stderr.String()))
	}
	return strings.FieldsFunc(string(out), func(r rune) bool { return r == '\n' }), nil
}

// Restore runs "iptables-restore --noflush" with input, in the format of
// iptables-save. Each table is committed on its own, in input order; at the
// first error the run stops, and the tables committed before stay.
//
// The run is killed when ctx ends (the error then wraps ctx's error) or
// after the command's own limit.
func (k *kernelIPTables) Restore(ctx context.Context, input []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("running %s: %w", filepath.Base(k.restorePath), err)
	}
	var stderr bytes.Buffer
	rctx, cancel := k.runContext(ctx)
	defer cancel()
	cmd := exec.CommandContext(rctx, k.restorePath, "--noflush", "--wait="+strconv.Itoa(k.wait))
	cmd.Stdin = bytes.NewReader(input)
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("running %s: killed: %w", filepath.Base(k.restorePath), ctx.Err())
	}
	if rctx.Err() != nil {
		return fmt.Errorf("running %s: did not finish in %v (killed)", filepath.Base(k.restorePath), k.limit())
	}
	if err != nil {
		return fmt.Errorf("running %s: %w: %s", filepath.Base(k.restorePath), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// change is one Open's rules to append, or one Close's rules to delete.
type change struct {
	del   bool
	rules []rule
}

// restoreInput returns the iptables-restore input that makes changes, one
// block per table in the order of tables. Deletes go newest rule first.
func restoreInput(changes ...change) []byte {
	var b bytes.Buffer
	for _, table := range tables {
		n := 0
		for _, c := range changes {
			for i := range c.rules {
				r := c.rules[i]
				op := "-A"
				if c.del {
					r = c.rules[len(c.rules)-1-i]
					op = "-D"
				}
				if r.table != table {
					continue
				}
				if n == 0 {
					b.WriteString("*" + table + "\n")
				}
				n++
				fmt.Fprintf(&b, "%s %s %s\n", op, r.chain, formatSpec(r.spec))
			}
		}
		if n > 0 {
			b.WriteString("COMMIT\n")
		}
	}
	return b.Bytes()
}

// spansTables reports whether rules lie in more than one table, so that a
// failed restore of them may have committed some.
func spansTables(rules []rule) bool {
	return slices.ContainsFunc(rules, func(r rule) bool { return r.table != rules[0].table })
}

// batcher coalesces the changes to one family, appends or deletes: while
// a restore runs, new changes queue, and the next run takes the whole
// queue.
type batcher struct {
	mu      sync.Mutex
	running bool       // a caller is running a restore
	queue   []*pending // changes waiting for the next run
}

// pending is one change waiting for a run. wake receives once: when lead
// is set, the waiter runs the next batch; otherwise its change is done and
// left and err hold the outcome.
type pending struct {
	ctx  context.Context // the caller's; bounds the run that carries an Open
	c    change
	wake chan struct{}
	lead bool   // guarded by batcher.mu
	left []rule // rules of a delete that could not be removed
	err  error
}

// apply makes c in f's firewall, together with whatever other changes
// arrive meanwhile, and returns c's outcome. While c waits for a run under
// way, the end of ctx withdraws it (context.WithoutCancel makes c wait in
// any case); once its run has started, c is made or fails with the run.
func (t *Backend) apply(ctx context.Context, f *family, c change) (left []rule, err error) {
	b := &f.adds
	if c.del {
		b = &f.dels
	}
	p := &pending{ctx: ctx, c: c, wake: make(chan struct{}, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	if b.running {
		b.mu.Unlock()
		select {
		case <-p.wake:
		case <-ctx.Done():
			b.mu.Lock()
			if i := slices.Index(b.queue, p); i >= 0 && !p.lead {
				b.queue = slices.Delete(b.queue, i, i+1)
				b.mu.Unlock()
				return nil, ctx.Err()
			}
			b.mu.Unlock()
			<-p.wake // taken into a run, or chosen to lead one
		}
		if !p.lead {
			return p.left, p.err
		}
		b.mu.Lock()
	}
	// p leads: run everything queued, p's change included, except the
	// changes whose callers gave up before this run began (p's own, too,
	// when p was chosen to lead as its context ended): withdrawn, they
	// fail with their context's error and change nothing. A run of only
	// such changes would have no deadline left to bound it.
	b.running = true
	batch := b.queue
	b.queue = nil
	b.mu.Unlock()

	run := make([]*pending, 0, len(batch))
	for _, q := range batch {
		if q.err = q.ctx.Err(); q.err == nil {
			run = append(run, q)
		}
	}
	if len(run) > 0 {
		rctx, cancel := runContext(ctx, run)
		t.runBatch(rctx, f, run)
		cancel()
	}

	for _, q := range batch {
		if q != p {
			q.wake <- struct{}{}
		}
	}
	b.mu.Lock()
	if len(b.queue) > 0 {
		// The first waiter runs the next batch; p returns now.
		next := b.queue[0]
		next.lead = true
		next.wake <- struct{}{}
	} else {
		b.running = false
	}
	b.mu.Unlock()
	return p.left, p.err
}

// runContext is the context of a run led by a caller with ctx: it ends at
// the earliest deadline among the changes of batch whose callers still
// wait. A cancellation does not end it: the leader may have been chosen
// after its own context ended, and the others' changes must not fail for
// that.
func runContext(ctx context.Context, batch []*pending) (context.Context, context.CancelFunc) {
	var first time.Time
	for _, q := range batch {
		if q.ctx.Err() != nil {
			continue
		}
		if d, ok := q.ctx.Deadline(); ok && (first.IsZero() || d.Before(first)) {
			first = d
		}
	}
	base := context.WithoutCancel(ctx)
	if first.IsZero() {
		return context.WithCancel(base)
	}
	return context.WithDeadline(base, first)
}

// runBatch applies the changes of batch in one restore, bounded by ctx. When that fails,
// it applies them one by one, so that one bad change (a rule to delete that
// someone else removed already) does not fail the others; unless the error
// fails every change alike (failsAll), which trying each alone would only
// repeat, once per change, while the callers queued behind the batch wait.
// A batch of deletes that failed for a missing chain first drops the rules
// a foreign flush took (deleteRest).
func (t *Backend) runBatch(ctx context.Context, f *family, batch []*pending) {
	changes := make([]change, len(batch))
	for i, p := range batch {
		changes[i] = p.c
	}
	err := f.ipt.Restore(ctx, restoreInput(changes...))
	if err == nil {
		return
	}
	if batch[0].c.del {
		if err = t.deleteRest(ctx, f, batch, err); err == nil {
			return
		}
	}
	var all []rule
	for _, p := range batch {
		all = append(all, p.c.rules...)
	}
	if failsAll(err) || ctx.Err() != nil {
		t.log.Warn("iptables batch failed, failing all its changes",
			"family", f.name, "changes", len(batch), "err", err)
		// A failed Open removes its rules again (the restore may have
		// committed a table); a failed Close keeps all its rules, a
		// later Close retries them, and a rule already gone counts as
		// removed then.
		for _, p := range batch {
			p.err = err
			if p.c.del {
				p.left = p.c.rules
			}
		}
		return
	}
	if len(batch) == 1 {
		batch[0].left, batch[0].err = t.applyAlone(ctx, f, batch[0].c, err, false)
		return
	}
	t.log.Debug("iptables batch failed, applying its changes one by one",
		"family", f.name, "changes", len(batch), "err", err)
	// Tables commit one by one: the batch may be partly in.
	partial := spansTables(all)
	for _, p := range batch {
		p.left, p.err = t.applyAlone(ctx, f, p.c, nil, partial)
	}
}

// applyAlone makes c by itself, after a restore that carried it failed. err
// is that restore's error when it carried c alone; nil when it carried
// others too, and c is then tried again alone. partial says that the failed
// restore may have committed part of c.
//
// A delete that fails goes on rule by rule, a rule already gone counting as
// deleted; what cannot be deleted is returned. An append that fails is
// rolled back.
func (t *Backend) applyAlone(ctx context.Context, f *family, c change, err error, partial bool) (left []rule, _ error) {
	if c.del {
		if err == nil {
			if err = f.ipt.Restore(ctx, restoreInput(c)); err == nil {
				return nil, nil
			}
		}
		left, rerr := remove(c.rules)
		if rerr != nil {
			return left, rerr
		}
		return nil, nil
	}
	if err == nil {
		if partial {
			// Remove what the failed batch may have added, lest
			// the retry add it twice.
			if _, rerr := remove(c.rules); rerr != nil {
				t.log.Error("removing rules of a failed iptables batch", "family", f.name, "err", rerr)
				return nil, fmt.Errorf("removing rules of a failed batch: %w", rerr)
			}
		}
		if err = f.ipt.Restore(ctx, restoreInput(c)); err == nil {
			return nil, nil
		}
	}
	if spansTables(c.rules) {
		if _, rerr := remove(c.rules); rerr != nil {
			t.log.Error("rolling back partial iptables change", "family", f.name, "err", rerr)
			err = errors.Join(err, fmt.Errorf("rolling back: %w", rerr))
		}
	}
	return nil, err
}
