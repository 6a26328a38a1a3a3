package lab

import (
	"context"
	"strings"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// Prefix starts the name of every network namespace the lab creates:
// Prefix + "<pid>-<role>", where pid is the lab process that built it.
// Clean removes namespaces by this prefix.
const Prefix = "ftpalg-lab-"

// iptables runs iptables (v6 false) or ip6tables with args in the
// namespace, waiting up to 5s for the xtables lock, and returns its
// standard output.
func iptables(ctx context.Context, n *netlab.NS, v6 bool, args ...string) (string, error) {
	return n.Run(ctx, xtables(v6), append([]string{"-w", "5"}, args...)...)
}

func xtables(v6 bool) string {
	if v6 {
		return "ip6tables"
	}
	return "iptables"
}

// labID returns the id (the owner's pid) in a lab namespace name.
func labID(name string) (string, bool) {
	if _, ok := netlab.OwnerPID(Prefix, name); !ok {
		return "", false
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(name, Prefix), "-")
	return id, true
}
