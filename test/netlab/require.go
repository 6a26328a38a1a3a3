package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true). There a missing
// precondition fails the test instead of skipping it, so that a green CI
// always means the end-to-end tests ran.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t with reason, or fails it under CI.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("CI=true but %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot skips t (fails it under CI) unless the process runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "end-to-end test needs root (network namespaces, iptables)")
	}
}

// RequireTools skips t (fails it under CI) unless every named program is
// found in PATH or, for absolute names, exists.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			Unavailable(t, "%s not found (%v); run test/install-peers.sh", name, err)
		}
	}
}

// baseTools are the programs every topology needs.
var baseTools = []string{"ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore", "sysctl", "mount"}

// RequireNetlab skips t (fails it under CI) unless it runs as root and the
// programs a topology needs are installed.
func RequireNetlab(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, baseTools...)
}
