package test

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// variant is the pinhole backend and the operator firewall an end-to-end
// test runs with. A test picks its variant up from its name, so that the
// same test body runs under several: inVariants runs fn in subtests named
// "backend=B,fw=F", and gatewayTopo, newLoadEnv and startALG read it back
// with variantOf. Outside such a subtest, a test runs the iptables backend
// behind the iptables firewall, as it always has.
type variant struct {
	Backend  string // --backend: "iptables" or "nftables"
	Firewall string // netlab.FirewallIPTables or netlab.FirewallNFTables
}

var (
	varIPTables  = variant{"iptables", netlab.FirewallIPTables}
	varNFTables  = variant{"nftables", netlab.FirewallIPTables}
	varNFTNative = variant{"nftables", netlab.FirewallNFTables}
	// nftVariants: the nftables backend behind both operator firewalls.
	nftVariants = []variant{varNFTables, varNFTNative}
)

func (v variant) name() string { return "backend=" + v.Backend + ",fw=" + v.Firewall }

var variantRE = regexp.MustCompile(`backend=(\w+),fw=(\w+)`)

// variantOf returns the variant of the running test.
func variantOf(t testing.TB) variant {
	m := variantRE.FindStringSubmatch(t.Name())
	if m == nil {
		return varIPTables
	}
	return variant{m[1], m[2]}
}

// inVariants runs fn once per variant, in parallel subtests.
func inVariants(t *testing.T, vs []variant, fn func(t *testing.T)) {
	runVariants(t, vs, true, fn)
}

// inVariantsSelfParallel is inVariants for a fn that calls t.Parallel
// itself.
func inVariantsSelfParallel(t *testing.T, vs []variant, fn func(t *testing.T)) {
	runVariants(t, vs, false, fn)
}

func runVariants(t *testing.T, vs []variant, parallel bool, fn func(t *testing.T)) {
	for _, v := range vs {
		t.Run(v.name(), func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			if v.Firewall == netlab.FirewallNFTables || v.Backend == "nftables" {
				netlab.RequireTools(t, "nft")
			}
			fn(t)
		})
	}
}

// withBackend sets ftpalg's --backend to the variant's: it replaces
// "--backend iptables" (the relay stays the relay) or adds the flag.
func withBackend(t testing.TB, args []string) []string {
	v := variantOf(t)
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == "--backend" {
			if out[i+1] == "iptables" {
				out[i+1] = v.Backend
			}
			return out
		}
	}
	return append(out, "--backend", v.Backend)
}

// hasPinholeFor reports whether one of the pinhole lines (iptables rules
// or nftables set elements) is for port.
func hasPinholeFor(lines []string, port uint16) bool {
	return containsAll(lines, fmt.Sprintf("--dport %d", port)) || containsAll(lines, fmt.Sprintf(" . %d ", port)) ||
		containsAll(lines, fmt.Sprintf(" . %d,", port))
}
