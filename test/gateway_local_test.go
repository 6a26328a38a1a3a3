package test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// TestGatewayRefusesRouterItself: a client's connection to port 21 of the
// gateway itself is refused (421, one "refused" line: what=upstream), not
// proxied to the router's own services, and so is one to an address the
// gateway gets while ftpalg runs (ftpalg follows address changes instead of
// reading the interfaces per connection).
func TestGatewayRefusesRouterItself(t *testing.T) {
	topo, _ := gatewayTopo(t)
	a := startALG(t, topo.GW, gatewayArgs()...)

	routerRefusals := func() int {
		n := 0
		for _, l := range a.Logs("refused") {
			if l["what"] == "upstream" && strings.Contains(logStr(l["why"]), "is this router itself") {
				n++
			}
		}
		return n
	}
	// refused connects to port 21 of dst, wants 421, and reports whether
	// the want-th refusal for the router itself is logged (a line may
	// reach the test a little after the reply).
	refused := func(dst netip.Addr, want int) bool {
		t.Helper()
		c := dialRaw(t, topo.Client, netip.AddrPortFrom(dst, 21))
		r := c.reply()
		if r.Code != 421 {
			t.Fatalf("to %s: got %q, want 421", dst, r.Bytes())
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if routerRefusals() >= want {
				return true
			}
		}
		return false
	}
	if !refused(netlab.GWOutsideAddr4, 1) {
		t.Fatalf("no refusal for the router itself; log:\n%s", tailLines(a.Proc.Output(), 20))
	}
	if n := len(a.Logs("server unreachable")); n != 0 {
		t.Errorf("%d connections to the router itself were dialled", n)
	}

	added := netip.MustParseAddr("198.51.100.77")
	topo.GW.MustRun(t, "ip", "addr", "add", added.String()+"/32", "dev", "lo")
	// The change reaches ftpalg as a netlink event, soon but not at once on
	// a busy machine: until then a connection is dialled (and fails, 421).
	// A cache that never learns the address fails here after 30s.
	for start := time.Now(); !refused(added, 2); {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("an address added to the router is not refused after 30s; log:\n%s", tailLines(a.Proc.Output(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := routerRefusals(); n != 2 {
		t.Errorf("%d refusals for the router itself, want 2", n)
	}
	a.StopClean()
}
