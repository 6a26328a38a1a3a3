// Package roottest is the one place that decides whether a test that needs
// root (network namespaces, netfilter) or a program can run: without them
// it skips with the reason, and under CI=true it fails instead, so that a
// green CI always means every root test ran.
//
// Typical usage:
//
//	func TestInNamespaces(t *testing.T) {
//		roottest.Require(t, "iptables", "ip6tables") // root and these programs
//		...
//	}
package roottest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips tb with the reason, or fails it under CI=true.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	reason := fmt.Sprintf(format, args...)
	if InCI() {
		tb.Fatalf("CI=true but %s", reason)
	}
	tb.Skip(reason)
}

// Require skips tb (fails it under CI=true) unless the process runs as
// root and every named program is found in PATH (or, for an absolute name,
// exists).
func Require(tb testing.TB, programs ...string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Unavailable(tb, "the test needs root (network namespaces, netfilter)")
	}
	RequireTools(tb, programs...)
}

// RequireTools skips tb (fails it under CI=true) unless every named
// program is found in PATH or, for an absolute name, exists.
func RequireTools(tb testing.TB, programs ...string) {
	tb.Helper()
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			Unavailable(tb, "%s not found (%v); run test/install-peers.sh", p, err)
		}
	}
}
