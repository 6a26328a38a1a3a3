package test

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// The end-to-end suites on the nftables backend, behind both operator
// firewalls: the strict iptables firewall and the same policy in native
// nftables (see variant_test.go). The iptables backend keeps running the
// same tests behind the iptables firewall under their own names.

func TestNFTablesGatewayTransfers(t *testing.T) { inVariants(t, nftVariants, TestGatewayTransfers) }
func TestNFTablesReverseTransfers(t *testing.T) { inVariants(t, nftVariants, TestReverseTransfers) }
func TestNFTablesPinholeIsNarrow(t *testing.T) {
	inVariants(t, nftVariants, TestGatewayPinholeIsNarrow)
}
func TestNFTablesCrashSweep(t *testing.T) {
	inVariants(t, []variant{varNFTNative}, TestGatewayCrashSweep)
}
func TestNFTablesAdversarialGateway(t *testing.T) {
	inVariantsSelfParallel(t, []variant{varNFTNative}, TestAdversarialGateway)
}
func TestNFTablesAdversarialReverse(t *testing.T) {
	inVariantsSelfParallel(t, []variant{varNFTables}, TestAdversarialReverse)
}
func TestNFTablesLoad1000Sessions(t *testing.T) {
	inVariants(t, []variant{varNFTNative}, TestLoad1000Sessions)
}

// TestNFTablesKill9Expiry: ftpalg is killed with announced, unused
// pinholes and not restarted. The kernel expires them: after the TTL no
// element is left and a connect to the announced endpoint fails.
func TestNFTablesKill9Expiry(t *testing.T) {
	inVariants(t, nftVariants, func(t *testing.T) {
		topo, ctx := gatewayTopo(t)
		srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
		const ttl = 3 * time.Second
		a := startALG(t, topo.GW, "--mode", "gateway", "--intercept", netlab.GWInside, "--pinhole-ttl", ttl.String())
		var ports []uint16
		var fams []netlab.Family
		for _, f := range netlab.Families {
			x := dialCtrl(t, topo.Client, srv.Addr(f))
			x.login(srv.User, srv.Pass)
			ports = append(ports, x.epsv())
			fams = append(fams, f)
		}
		killed := time.Now()
		if err := a.Proc.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-a.Proc.Done()
		for _, port := range ports {
			if !hasPinholeFor(pinholeRules(t, topo.GW), port) {
				t.Fatalf("no pinhole for port %d in the kernel after kill -9:\n%s", port, strings.Join(ftpalgRules(t, topo.GW), "\n"))
			}
		}
		time.Sleep(time.Until(killed.Add(ttl + 500*time.Millisecond)))
		if left := pinholeRules(t, topo.GW); len(left) > 0 {
			t.Errorf("pinholes left in the kernel %v after the TTL:\n%s", time.Since(killed).Round(time.Millisecond)-ttl, strings.Join(left, "\n"))
		}
		for i, port := range ports {
			if err := topo.Client.CanConnect(ctx, hostPort(srv.NS.Addr(fams[i]), port), 2*time.Second); err == nil {
				t.Errorf("the announced endpoint %s port %d was reachable after the TTL", fams[i], port)
			}
		}
		// No restart: the namespace goes with the test; ftpalg's table,
		// left for the next start to sweep, holds nothing open.
	})
}

// TestNFTablesSecondConnectRefused: two connects back to back to a
// passive pinhole; exactly one reaches the server, the other is dropped at
// the gateway (a timeout, not a refusal by the server). The kernel
// enforces it before ftpalg sees the first connection in conntrack: the
// first SYN consumes the set element (nftables) or the accept rule's
// one-SYN quota (iptables).
func TestNFTablesSecondConnectRefused(t *testing.T) {
	inVariants(t, nftVariants, secondConnectRefused)
}

// TestGatewaySecondConnectRefused is the same under the iptables backend.
func TestGatewaySecondConnectRefused(t *testing.T) {
	inVariants(t, []variant{varIPTables}, secondConnectRefused)
}

func secondConnectRefused(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	a := startALG(t, topo.GW, gatewayArgs()...)
	for _, f := range netlab.Families {
		x := dialCtrl(t, topo.Client, srv.Addr(f))
		x.login(srv.User, srv.Pass)
		port := x.epsv()
		to := hostPort(srv.NS.Addr(f), port)
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		first, err := topo.Client.DialContext(dctx, "tcp", to)
		cancel()
		if err != nil {
			t.Fatalf("%s: first connect: %v", f, err)
		}
		dctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		second, err := topo.Client.DialContext(dctx, "tcp", to)
		cancel()
		switch {
		case err == nil:
			second.Close()
			t.Errorf("%s: the second connect reached the server", f)
		case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded):
			t.Errorf("%s: the second connect reached the server (refused by it: %v), want it dropped at the gateway", f, err)
		}
		first.Close()
		x.cmd("QUIT")
	}
	a.StopClean()
}

// TestNFTablesRepair: a foreign "nft delete table inet ftpalg", or "nft
// flush ruleset" followed by the operator's firewall reload, while a
// pinhole is open. ftpalg notices within 2 s, logs one line, and puts back
// its table, its accept rules and the live pinhole (with the lifetime it
// has left): the announced transfer and new sessions work.
func TestNFTablesRepair(t *testing.T) {
	inVariants(t, nftVariants, func(t *testing.T) {
		for _, foreign := range []string{"delete table inet ftpalg", "flush ruleset"} {
			t.Run(strings.ReplaceAll(foreign, " ", "-"), func(t *testing.T) {
				topo, ctx := gatewayTopo(t)
				srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
				a := startALG(t, topo.GW, gatewayArgs()...)
				x := dialCtrl(t, topo.Client, srv.Addr(netlab.IPv4))
				x.login(srv.User, srv.Pass)
				port := x.epsv()

				if _, err := topo.GW.Run(ctx, "nft", strings.Fields(foreign)...); err != nil {
					t.Fatal(err)
				}
				flushed := time.Now()
				if foreign == "flush ruleset" {
					// The operator's firewall comes back, as a reload does.
					if err := topo.ApplyFirewall(ctx, variantOf(t).Firewall); err != nil {
						t.Fatal(err)
					}
				}
				for len(a.Logs("firewall state repaired after a foreign change")) == 0 {
					if time.Since(flushed) > 2*time.Second {
						t.Fatalf("ftpalg did not repair within 2 s:\n%s", tailLines(a.Proc.Output(), 20))
					}
					time.Sleep(50 * time.Millisecond)
				}
				if n := len(a.Logs("firewall state repaired after a foreign change")); n != 1 {
					t.Errorf("%d repair lines, want 1", n)
				}
				if rules := pinholeRules(t, topo.GW); foreign == "delete table inet ftpalg" && !hasPinholeFor(rules, port) {
					t.Fatalf("the open pinhole was not re-installed:\n%s", strings.Join(ftpalgRules(t, topo.GW), "\n"))
				}
				if foreign == "delete table inet ftpalg" {
					// The session goes on, and its pinhole works. (After a
					// flush of the whole ruleset, every NATed connection
					// of the host, the intercepted control connection
					// included, loses its translation until NAT chains are
					// back: the session may die of it; the kernel's doing.)
					retrPassive(t, ctx, x, topo.Client, srv, netlab.IPv4, port)
				}
				r := netlab.RunTransfer(ctx, topo.Client, srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv6))
				if err := srv.Verify(r); err != nil {
					t.Fatalf("new session after the repair: %v", err)
				}
				a.StopClean()
			})
		}
	})
}

// BenchmarkNFTablesSessionsPerSecond is BenchmarkSessionsPerSecond with
// the nftables backend: complete sessions per second through ftpalg as a
// ratio to the kernel's FTP helper, measured side by side in one run
// (both gateways behind the strict iptables firewall, which the helper's
// CT rule needs).
//
//	go test -run NONE -bench NFTablesSessionsPerSecond -benchtime 200x ./test/
func BenchmarkNFTablesSessionsPerSecond(b *testing.B) {
	b.Run(varNFTables.name(), BenchmarkSessionsPerSecond)
}

// TestBackendAuto: --backend auto picks nftables on this kernel and says
// why in the start-up line; a transfer works and nothing is left at exit.
func TestBackendAuto(t *testing.T) {
	netlab.RequireTools(t, "nft")
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	a := startALG(t, topo.GW, append(gatewayArgs(), "--backend", "auto")...)
	lines := a.Logs("pinhole backend")
	if len(lines) != 1 || lines[0]["backend"] != "nftables" || !strings.HasPrefix(logStr(lines[0]["reason"]), "auto:") {
		t.Fatalf("start-up lines %v, want one with backend=nftables and an auto: reason", lines)
	}
	if r := a.Logs("ftpalg running"); len(r) != 1 || r[0]["backend"] != "nftables" {
		t.Errorf("ftpalg running lines %v, want backend=nftables", r)
	}
	r := netlab.RunTransfer(ctx, topo.Client, srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv4))
	if err := srv.Verify(r); err != nil {
		t.Fatal(err)
	}
	a.StopClean()
	if left := ftpalgRules(t, topo.GW); len(left) > 0 {
		t.Fatalf("ftpalg left state after exit:\n%s", strings.Join(left, "\n"))
	}
}
