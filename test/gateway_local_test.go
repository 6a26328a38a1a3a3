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

	refused := func(dst netip.Addr, want int) {
		t.Helper()
		c := dialRaw(t, topo.Client, netip.AddrPortFrom(dst, 21))
		r := c.reply()
		if r.Code != 421 {
			t.Fatalf("to %s: got %q, want 421", dst, r.Bytes())
		}
		var lines []map[string]any
		for _, l := range a.Logs("refused") {
			if l["what"] == "upstream" && strings.Contains(logStr(l["why"]), "is this router itself") {
				lines = append(lines, l)
			}
		}
		if len(lines) != want {
			t.Fatalf("to %s: %d refusals for the router itself, want %d; log:\n%s", dst, len(lines), want, tailLines(a.Proc.Output(), 20))
		}
	}
	refused(netlab.GWOutsideAddr4, 1)

	added := netip.MustParseAddr("198.51.100.77")
	topo.GW.MustRun(t, "ip", "addr", "add", added.String()+"/32", "dev", "lo")
	// The change reaches ftpalg as a netlink event; give it a moment.
	time.Sleep(200 * time.Millisecond)
	refused(added, 2)
	if n := len(a.Logs("server unreachable")); n != 0 {
		t.Errorf("%d connections to the router itself were dialled", n)
	}
	a.StopClean()
}
