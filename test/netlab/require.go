package netlab

import (
	"testing"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"
)

// InCI reports whether the tests run under CI (CI=true). There a missing
// precondition fails the test instead of skipping it, so that a green CI
// always means the end-to-end tests ran.
func InCI() bool { return roottest.InCI() }

// Unavailable skips t with reason, or fails it under CI.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	roottest.Unavailable(t, format, args...)
}

// RequireRoot skips t (fails it under CI) unless the process runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	roottest.Require(t)
}

// RequireTools skips t (fails it under CI) unless every named program is
// found in PATH or, for absolute names, exists.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	roottest.RequireTools(t, names...)
}

// baseTools are the programs every topology needs: ip runs programs in a
// namespace (`ip netns exec`), the rest make and read firewalls.
var baseTools = []string{"ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore"}

// RequireNetlab skips t (fails it under CI) unless it runs as root and the
// programs a topology needs are installed.
func RequireNetlab(t testing.TB) {
	t.Helper()
	roottest.Require(t, baseTools...)
}
