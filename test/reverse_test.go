package test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// In the reverse tests the topology's roles turn around: the FTP server
// sits on the private side (the "client" namespace, 192.0.2.2 /
// 2001:db8:1::2) and the FTP clients on the public side (the "server" and
// "other" namespaces). ftpalg publishes the server on the gateway's outside
// addresses.

func publicAddr(f netlab.Family) netip.AddrPort { return netip.AddrPortFrom(gwOutside(f), 21) }

func reverseArgs(backend string) []string {
	return []string{"--mode", "reverse", "--backend", backend,
		"--listen", publicAddr(netlab.IPv4).String(), "--listen", publicAddr(netlab.IPv6).String(),
		"--upstream", netip.AddrPortFrom(netlab.ClientAddr4, 21).String(),
		"--upstream", netip.AddrPortFrom(netlab.ClientAddr6, 21).String(),
		"--data-ports", "45000-45099", "--pinhole-ttl", "10s", "--drain", "3s"}
}

// reverseMatrix is every supported transfer against srv, dialling the
// public address instead of the server's own.
func reverseMatrix(t *testing.T, srv *netlab.Server) []netlab.Transfer {
	xs := matrix(t, srv, netlab.Ops)
	for i := range xs {
		xs[i].Server = publicAddr(familyOfAP(xs[i].Server))
	}
	return xs
}

func familyOfAP(ap netip.AddrPort) netlab.Family {
	if ap.Addr().Is4() {
		return netlab.IPv4
	}
	return netlab.IPv6
}

// TestReverseTransfers: a server on a private network, published through
// the strict gateway by ftpalg with each backend; every client, mode and
// operation works from the public side, against vsftpd (same-peer checks
// on) and pure-ftpd, over both families. Publishing only the control port
// with a plain port forward (what an operator would try first) is shown to
// fail on the same firewall.
func TestReverseTransfers(t *testing.T) {
	backends := []string{"iptables", "relay"}
	if variantOf(t) != varIPTables {
		backends = []string{"iptables"} // the variant's backend, by withBackend
	}
	for _, backend := range backends {
		for _, kind := range netlab.ServerKinds {
			t.Run(backend+"/"+string(kind), func(t *testing.T) {
				t.Parallel()
				topo, ctx := gatewayTopo(t)
				srv := netlab.StartServer(t, topo.Client, kind, netlab.ServerOptions{})
				xs := reverseMatrix(t, srv)

				if backend == "iptables" && variantOf(t).Firewall == netlab.FirewallIPTables {
					// Without ftpalg: the control port forwarded to the
					// server, data blocked.
					undo := portForward21(t, ctx, topo)
					var without []netlab.Transfer
					for _, x := range xs {
						if x.Op == netlab.List {
							x.Timeout = 12 * time.Second
							without = append(without, x)
						}
					}
					for i, r := range runAll(ctx, topo.Server, without, 8) {
						if r.Err == nil {
							t.Errorf("%v succeeded through a control-port forward without ftpalg", without[i])
						}
					}
					undo()
				} else if backend == "relay" {
					// The relay terminates data connections on the gateway
					// itself: the operator opens the small pool range.
					for _, f := range netlab.Families {
						if err := topo.GW.IPTables(ctx, f, "-A", "INPUT", "-p", "tcp", "-m", "multiport",
							"--dports", "21,45000:45099", "-j", "ACCEPT"); err != nil {
							t.Fatal(err)
						}
					}
				}

				a := startALG(t, topo.GW, reverseArgs(backend)...)
				for _, r := range runAll(ctx, topo.Server, xs, 4) {
					if err := srv.Verify(r); err != nil {
						t.Errorf("%v through ftpalg (%s): %v", r.Transfer, backend, err)
					}
				}
				if r := a.Logs("refused"); len(r) > 0 {
					t.Errorf("ftpalg refused something from real peers: %v", r)
				}
				if backend == "iptables" {
					waitNoPinholes(t, topo.GW, 15*time.Second)
				}
				a.StopClean()
			})
		}
	}
}

// portForward21 publishes the private server's port 21 on the gateway's
// outside addresses with DNAT and a FORWARD accept; it returns the undo.
func portForward21(t *testing.T, ctx context.Context, topo *netlab.Topo) func() {
	t.Helper()
	var rules [][]string
	for _, f := range netlab.Families {
		srv := netlab.ClientAddr4.String()
		if f == netlab.IPv6 {
			srv = "[" + netlab.ClientAddr6.String() + "]"
		}
		rules = append(rules,
			[]string{fmt.Sprint(f), "-t", "nat", "PREROUTING", "-d", gwOutside(f).String(), "-p", "tcp", "--dport", "21", "-j", "DNAT", "--to-destination", srv + ":21"},
			[]string{fmt.Sprint(f), "-t", "filter", "FORWARD", "-p", "tcp", "--dport", "21", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"})
	}
	apply := func(op string) {
		for _, r := range rules {
			f := netlab.IPv4
			if r[0] == "IPv6" {
				f = netlab.IPv6
			}
			args := append([]string{r[1], r[2], op, r[3]}, r[4:]...)
			if err := topo.GW.IPTables(ctx, f, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	apply("-A")
	return func() { apply("-D") }
}

// TestSidecarRelay: ftpalg beside a server that listens on loopback only,
// in one namespace, running as an unprivileged user with the relay backend
// and no firewall change; the namespace's own firewall opens just the
// listener and the small pool range. Passive and active work from a client
// on another network.
func TestSidecarRelay(t *testing.T) {
	netlab.RequireNetlab(t)
	netlab.RequireTools(t, "curl", "lftp", "vsftpd", "setpriv")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	topo := netlab.NewTopology(t, netlab.Options{})
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{Port: 2100, Loopback: true})
	// The pod's firewall: only the published port and the pool.
	for _, rule := range [][]string{
		{"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
		{"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT"},
		{"-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "2121,46000:46009", "-j", "ACCEPT"},
		{"-P", "INPUT", "DROP"},
	} {
		if err := topo.Server.IPTables(ctx, netlab.IPv4, rule...); err != nil {
			t.Fatal(err)
		}
	}
	before, err := topo.Server.FirewallDump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin := ftpalgBin(t)
	if err := os.Chmod(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	public := netip.AddrPortFrom(netlab.ServerAddr4, 2121)
	proc := topo.Server.Start(t, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
		bin, "run", "--mode", "reverse", "--backend", "relay", "--listen", public.String(),
		"--upstream", "127.0.0.1:2100", "--data-ports", "46000-46009", "--log-format", "json")
	a := &ALG{t: t, Proc: proc, NS: topo.Server}
	waitReady(t, a)

	for _, mode := range []netlab.Mode{netlab.EPSV, netlab.PASV, netlab.PORT, netlab.EPRT} {
		for _, op := range netlab.Ops {
			x := srv.Transfer(t, netlab.Curl, mode, op, netlab.IPv4)
			x.Server = public
			r := netlab.RunTransfer(ctx, topo.Client, x)
			if err := srv.Verify(r); err != nil {
				t.Errorf("%v through the sidecar: %v", x, err)
			}
		}
	}
	x := srv.Transfer(t, netlab.LFTP, netlab.PORT, netlab.Retr, netlab.IPv4)
	x.Server = public
	if err := srv.Verify(netlab.RunTransfer(ctx, topo.Client, x)); err != nil {
		t.Errorf("%v through the sidecar: %v", x, err)
	}
	// Without privileges ftpalg changed no firewall.
	after, err := topo.Server.FirewallDump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("the unprivileged sidecar changed the firewall:\n%s", after)
	}
	a.Stop()
}
