package lab

import (
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

func TestLabID(t *testing.T) {
	for name, want := range map[string]string{
		"ftpalg-lab-1234-gw":     "1234",
		"ftpalg-lab-1-client":    "1",
		"ftpalg-lab-x-gw":        "",
		"ftpalg-lab-1234":        "",
		"ftpalgt-1234-1a-gw":     "",
		"other-ftpalg-lab-12-gw": "",
	} {
		id, ok := labID(name)
		if ok != (want != "") || id != want {
			t.Errorf("labID(%q) = %q, %v; want %q", name, id, ok, want)
		}
	}
}

func TestTopoLayout(t *testing.T) {
	tp := newTopo(42)
	for _, ns := range tp.namespaces() {
		if !strings.HasPrefix(ns.Name, Prefix+"42-") {
			t.Errorf("namespace %s lacks the prefix", ns.Name)
		}
	}
	if tp.inside() != tp.client || tp.hostAddr(tp.client, false) != netlab.InsideHost4 || tp.hostAddr(tp.server, true) != netlab.OutsideHost6 {
		t.Error("gateway layout: the client must be inside, the server outside")
	}
	tp.layout = layoutReverse
	if tp.inside() != tp.server || tp.hostAddr(tp.server, false) != netlab.InsideHost4 || tp.hostAddr(tp.client, true) != netlab.OutsideHost6 {
		t.Error("reverse layout: the server must be inside, the client outside")
	}
}

func TestRuleLine(t *testing.T) {
	l := ruleLine{v6: true, table: "nat", rule: `-A FTPALG-PREROUTING -j DNAT`}
	if got := l.String(); got != "ip6tables -t nat -A FTPALG-PREROUTING -j DNAT" {
		t.Errorf("String() = %q", got)
	}
	if got := strings.Join(quoteArgs(controlRule), " "); !strings.Contains(got, `--comment "ftpalg-lab: FTP control only"`) {
		t.Errorf("control rule %s", got)
	}
}

func TestTransferTitle(t *testing.T) {
	for x, want := range map[transfer]string{
		{verb: "PASV"}: "without ftpalg, passive (PASV), IPv4",
		{mode: "gateway", verb: "EPRT", v6: true}: "ftpalg gateway mode, active (EPRT), IPv6",
		{mode: "reverse", verb: "EPSV", v6: true}: "ftpalg reverse mode, passive (EPSV), IPv6",
	} {
		if got := x.title(); got != want {
			t.Errorf("title = %q, want %q", got, want)
		}
	}
}
