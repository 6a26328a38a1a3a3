package iptables

// Classifying a failed restore; the rest of a Close whose chain a foreign
// flush took.

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// exitLockBusy is the exit status of iptables and iptables-restore
// (RESOURCE_PROBLEM) when the xtables lock could not be taken in time.
const exitLockBusy = 4

// failsAll reports whether err, from a failed restore, would fail every
// change of its batch alike, each tried alone as well: the xtables lock
// was busy (under iptables-legacy each try would wait the full --wait
// again), the command hung, or an owned chain is missing (until Watch
// repairs it).
func failsAll(err error) bool {
	return lockedOrHung(err) || noChain(err)
}

// lockedOrHung reports whether err, from a failed restore, says that the
// command could not take the xtables lock or was killed after its time
// limit: the firewall was not read, let alone changed.
func lockedOrHung(err error) bool {
	var status interface{ ExitStatus() int } // go-iptables' and the fake's errors
	var exit *exec.ExitError
	switch {
	case errors.As(err, &status) && status.ExitStatus() == exitLockBusy,
		errors.As(err, &exit) && exit.ExitCode() == exitLockBusy:
		return true
	}
	return containsAny(err, "Another app is currently holding the xtables lock",
		"resource temporarily unavailable",
		"did not finish") // killed after its time limit: a hung iptables hits every change
}

// noChain reports whether err, from a failed restore, says that a chain
// (or target) it names does not exist.
func noChain(err error) bool {
	return containsAny(err, "Chain '"+chainPrefix, "No chain/target/match by that name", "does not exist")
}

func containsAny(err error, subs ...string) bool {
	msg := strings.ToLower(err.Error())
	return slices.ContainsFunc(subs, func(s string) bool { return strings.Contains(msg, strings.ToLower(s)) })
}

// maxDeleteRounds bounds the rounds of deleteRest: each needs the firewall
// to change again (another foreign flush) during the round before.
const maxDeleteRounds = 3

// deleteRest finishes a batch of deletes (Closes) whose restore failed
// with err because a chain is missing. A foreign flush or reload
// (firewall-cmd --reload, iptables -F -X) that ran while the Closes waited
// or ran takes ftpalg's chains, and the rules in them, away: the restore
// that deletes those rules then fails with "No chain" (or, after a table
// it committed, in the next one). What a Close wants, the pinhole gone, is
// then already so; failing the Close instead would keep the pinhole known,
// and the next Repair would put it back in the firewall.
//
// deleteRest reads the tables the batch deletes from, drops from each
// change the rules that are no longer there, and runs one restore with the
// rest; again while rules keep vanishing, up to maxDeleteRounds. It returns
// nil when every rule of the batch is gone, and otherwise the last error,
// each change keeping the rules that are still there: a failure that no
// missing rule explains (every rule still in place) stays the failure it
// was. Nothing is deleted rule by rule here: a missing chain fails every
// change alike (failsAll), and the callers queued behind wait.
func (t *Backend) deleteRest(ctx context.Context, f *family, batch []*pending, err error) error {
	for range maxDeleteRounds {
		if !noChain(err) || lockedOrHung(err) || ctx.Err() != nil {
			return err
		}
		gone, lerr := dropGone(f, batch)
		if lerr != nil {
			t.log.Warn("reading iptables after a failed delete", "family", f.name, "err", lerr)
			return err
		}
		if gone == 0 {
			return err
		}
		var changes []change
		for _, p := range batch {
			if len(p.c.rules) > 0 {
				changes = append(changes, p.c)
			}
		}
		t.log.Debug("iptables delete found rules already gone", "family", f.name, "gone", gone, "changes", len(changes), "err", err)
		if len(changes) == 0 {
			return nil
		}
		if err = f.ipt.Restore(ctx, restoreInput(changes...)); err == nil {
			return nil
		}
	}
	return err
}

// dropGone removes from the changes of batch (deletes) the rules that are
// no longer in f's firewall, and returns how many it removed. It reads each
// table the batch touches once, and tells rules apart by table, chain and
// comment: every rule of a pinhole carries the pinhole's comment, in a
// chain of its own. A rule without a comment is never taken for gone.
func dropGone(f *family, batch []*pending) (gone int, err error) {
	type key struct{ table, chain, comment string }
	have := make(map[key]int)
	for _, table := range tables {
		if !slices.ContainsFunc(batch, func(p *pending) bool {
			return slices.ContainsFunc(p.c.rules, func(r rule) bool { return r.table == table })
		}) {
			continue
		}
		lines, err := f.ipt.ListTable(table)
		if err != nil {
			return 0, fmt.Errorf("listing table %s: %w", table, err)
		}
		for _, line := range lines {
			if !strings.HasPrefix(line, "-A ") {
				continue
			}
			args, err := splitRuleLine(line)
			if err != nil {
				return 0, fmt.Errorf("listing table %s: parsing %q: %w", table, line, err)
			}
			if len(args) < 2 {
				continue
			}
			c, _ := argAfter(args[2:], "--comment")
			have[key{table, args[1], c}]++
		}
	}
	for _, p := range batch {
		kept := make([]rule, 0, len(p.c.rules))
		for _, r := range p.c.rules {
			c, _ := argAfter(r.spec, "--comment")
			k := key{r.table, r.chain, c}
			if c != "" && have[k] == 0 {
				gone++
				continue
			}
			have[k]--
			kept = append(kept, r)
		}
		p.c.rules = kept
	}
	return gone, nil
}

// formatSpec joins a rule specification the way iptables -S prints it: the
// comment is always in double quotes, other arguments only when they
// contain a space or a quote.
func formatSpec(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		if (i > 0 && spec[i-1] == "--comment") || a == "" || strings.ContainsAny(a, " \t\"\\") {
			a = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a) + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
