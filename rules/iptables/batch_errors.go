package iptables

// Classifying a failed restore.

import (
	"errors"
	"os/exec"
	"strings"
)

// exitLockBusy is the exit status of iptables and iptables-restore
// (RESOURCE_PROBLEM) when the xtables lock could not be taken in time.
const exitLockBusy = 4

// failsAll reports whether err, from a failed restore, would fail every
// change of its batch alike, each tried alone as well: the xtables lock
// was busy (under iptables-legacy each try would wait the full --wait
// again), or an owned chain is missing (until Watch repairs it).
func failsAll(err error) bool {
	var status interface{ ExitStatus() int } // go-iptables' and the fake's errors
	var exit *exec.ExitError
	switch {
	case errors.As(err, &status) && status.ExitStatus() == exitLockBusy,
		errors.As(err, &exit) && exit.ExitCode() == exitLockBusy:
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, s := range []string{
		"Another app is currently holding the xtables lock",
		"resource temporarily unavailable",
		"Chain '" + chainPrefix,
		"No chain/target/match by that name",
		"does not exist",
		"did not finish", // killed after its time limit: a hung iptables hits every change
	} {
		if strings.Contains(msg, strings.ToLower(s)) {
			return true
		}
	}
	return false
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
