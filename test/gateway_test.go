package test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/test/netlab"
)

func gatewayArgs() []string {
	return []string{"--mode", "gateway", "--intercept", netlab.GWInside, "--pinhole-ttl", "10s"}
}

// matrix returns every supported transfer of every operation against s.
func matrix(t *testing.T, s *netlab.Server, ops []netlab.Op) []netlab.Transfer {
	return netlab.Matrix(t, s, ops)
}

// runAll runs the transfers from ns, at most limit at a time.
func runAll(ctx context.Context, ns *netlab.NS, xs []netlab.Transfer, limit int) []netlab.Result {
	return netlab.RunAll(ctx, ns, xs, limit)
}

// gatewayTopo builds client — gateway — server (+ other) with the strict
// firewall in the gateway: INPUT and FORWARD policy DROP, one ESTABLISHED
// rule in each, MASQUERADE on the outside interface.
func gatewayTopo(t *testing.T) (*netlab.Topo, context.Context) {
	t.Helper()
	netlab.RequireNetlab(t)
	netlab.RequireTools(t, "curl", "lftp", "vsftpd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	topo := netlab.NewTopology(t, netlab.Options{})
	if err := topo.ApplyFirewall(ctx, variantOf(t).Firewall); err != nil {
		t.Fatal(err)
	}
	return topo, ctx
}

// TestGatewayTransfers: behind the strict firewall, every client (curl,
// lftp), mode (PASV, EPSV, PORT, EPRT) and operation (RETR of a 10 MiB file
// checked by hash, STOR, LIST) works through ftpalg against vsftpd and
// pure-ftpd, over IPv4 and IPv6, with the servers' default same-peer checks
// on. The same transfers fail on the same firewall without ftpalg. No
// pinhole outlives its transfer, and nothing of ftpalg outlives ftpalg.
func TestGatewayTransfers(t *testing.T) {
	for _, kind := range netlab.ServerKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			topo, ctx := gatewayTopo(t)
			srv := netlab.StartServer(t, topo.Server, kind, netlab.ServerOptions{})
			before, err := topo.GW.FirewallDump(ctx)
			if err != nil {
				t.Fatal(err)
			}
			xs := matrix(t, srv, netlab.Ops)

			// Without ftpalg, but with the control channel let through,
			// every data connection is blocked.
			if err := topo.AllowFTPControl(ctx); err != nil {
				t.Fatal(err)
			}
			var without []netlab.Transfer
			for _, x := range xs {
				if x.Op == netlab.List {
					x.Timeout = 12 * time.Second
					without = append(without, x)
				}
			}
			for i, r := range runAll(ctx, topo.Client, without, 8) {
				if r.Err == nil {
					t.Errorf("%v succeeded on the strict firewall without ftpalg", without[i])
				}
			}
			if err := topo.DisallowFTPControl(ctx); err != nil {
				t.Fatal(err)
			}

			a := startALG(t, topo.GW, gatewayArgs()...)
			results := runAll(ctx, topo.Client, xs, 4)
			for _, r := range results {
				if err := srv.Verify(r); err != nil {
					t.Errorf("%v through ftpalg: %v", r.Transfer, err)
				}
			}
			waitNoPinholes(t, topo.GW, 15*time.Second)
			checkTransferLines(t, a, len(xs))
			if n := len(a.Logs("pinhole open")); n < len(xs) {
				t.Errorf("%d pinholes opened for %d transfers", n, len(xs))
			}
			if r := a.Logs("refused"); len(r) > 0 {
				t.Errorf("ftpalg refused something from real peers: %v", r)
			}
			a.StopClean()
			after, err := topo.GW.FirewallDump(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if after != before {
				t.Fatalf("gateway firewall differs after ftpalg exited\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// TestGatewayPinholeIsNarrow drives the control channel by hand to look at
// the firewall while a pinhole is open: only the announced endpoint is
// reachable, only from the expected peer, and only until the transfer.
func TestGatewayPinholeIsNarrow(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	a := startALG(t, topo.GW, gatewayArgs()...)
	const probe = 2 * time.Second

	for _, f := range netlab.Families {
		t.Run("passive/"+f.String(), func(t *testing.T) {
			server := topo.Server.Addr(f)
			x := dialCtrl(t, topo.Client, srv.Addr(f))
			x.login(srv.User, srv.Pass)
			port := x.epsv()
			if rules := pinholeRules(t, topo.GW); !hasPinholeFor(rules, port) {
				t.Fatalf("no pinhole rule for port %d:\n%s", port, strings.Join(rules, "\n"))
			}
			// Another port on the same server, and the same port on another
			// host, stay closed while the pinhole is open.
			topo.Server.StartEcho(t, hostPort(server, port+1))
			topo.Other.StartEcho(t, hostPort(topo.Other.Addr(f), port))
			if err := topo.Client.CheckEcho(ctx, hostPort(server, port+1), probe); err == nil {
				t.Error("another port of the server was reachable through the pinhole")
			}
			if err := topo.Client.CheckEcho(ctx, hostPort(topo.Other.Addr(f), port), probe); err == nil {
				t.Error("the announced port on another host was reachable")
			}
			// The announced endpoint works.
			retrPassive(t, ctx, x, topo.Client, srv, f, port)
			waitNoPinholes(t, topo.GW, 5*time.Second)
			x.cmd("QUIT")
		})
		t.Run("active/"+f.String(), func(t *testing.T) {
			client := topo.Client.Addr(f)
			ln, err := topo.Client.Listen("tcp", hostPort(client, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			q := netipPort(t, ln.Addr().String())
			topo.Client.StartEcho(t, hostPort(client, q+1))

			x := dialCtrl(t, topo.Client, srv.Addr(f))
			x.login(srv.User, srv.Pass)
			x.expectCode(x.cmd("EPRT "+ftp.FormatEPRT(netip.AddrPortFrom(client, q))), 200)
			opened := a.Logs("pinhole open")
			rewritten := netip.MustParseAddrPort(fmt.Sprint(opened[len(opened)-1]["rewritten"]))
			if rewritten.Addr() != gwOutside(f) {
				t.Fatalf("EPRT rewritten to %v, want the gateway's outside address %v", rewritten, gwOutside(f))
			}
			// Only the server may use the translated endpoint, and only that
			// one: the client's other ports and its real address stay closed.
			if err := topo.Other.CanConnect(ctx, rewritten.String(), probe); err == nil {
				t.Error("another host could use the server's pinhole")
			}
			if err := topo.Server.CheckEcho(ctx, hostPort(client, q+1), probe); err == nil {
				t.Error("the server reached another port of the client")
			}
			if err := topo.Server.CheckEcho(ctx, hostPort(gwOutside(f), q+1), probe); err == nil {
				t.Error("the server reached another port of the gateway")
			}
			done := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- nil
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				done <- b
			}()
			x.expectCode(x.cmd("RETR "+srv.Small.Path), 150)
			select {
			case b := <-done:
				if int64(len(b)) != srv.Small.Size {
					t.Fatalf("active RETR got %d bytes, want %d", len(b), srv.Small.Size)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the server's data connection did not arrive")
			}
			x.expect(226)
			waitNoPinholes(t, topo.GW, 5*time.Second)
			// The translated endpoint is closed again, though the client
			// still listens behind it.
			if err := topo.Server.CanConnect(ctx, rewritten.String(), probe); err == nil {
				t.Error("the translated endpoint was still open after the transfer")
			}
			x.cmd("QUIT")
		})
	}
	a.StopClean()
}

// TestGatewayCrashSweep: kill -9 during a transfer leaves ftpalg's chains
// and the pinhole in the firewall; the next start sweeps them and works.
func TestGatewayCrashSweep(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	a := startALG(t, topo.GW, gatewayArgs()...)

	x := dialCtrl(t, topo.Client, srv.Addr(netlab.IPv4))
	x.login(srv.User, srv.Pass)
	port := x.epsv()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dc, err := topo.Client.DialContext(dctx, "tcp", hostPort(srv.NS.Addr(netlab.IPv4), port))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	// A new pinhole that is still open at the crash.
	x2 := dialCtrl(t, topo.Client, srv.Addr(netlab.IPv4))
	x2.login(srv.User, srv.Pass)
	x2.epsv()
	x.c.Write([]byte("RETR " + srv.Big.Path + "\r\n"))
	if _, err := io.ReadFull(dc, make([]byte, 1<<20)); err != nil {
		t.Fatalf("transfer did not start: %v", err)
	}
	if err := a.Proc.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.Proc.Done()
	if len(pinholeRules(t, topo.GW)) == 0 {
		t.Fatal("expected the crashed run's pinhole to be left in the firewall")
	}

	b := startALG(t, topo.GW, gatewayArgs()...)
	if left := pinholeRules(t, topo.GW); len(left) > 0 {
		t.Fatalf("restart did not sweep the pinholes:\n%s", strings.Join(left, "\n"))
	}
	r := netlab.RunTransfer(ctx, topo.Client, srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv4))
	if err := srv.Verify(r); err != nil {
		t.Fatalf("transfer after restart: %v", err)
	}
	b.Stop()
	if left := ftpalgRules(t, topo.GW); len(left) > 0 {
		t.Fatalf("ftpalg left rules after exit:\n%s", strings.Join(left, "\n"))
	}
}

func containsAll(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

func netipPort(t *testing.T, addr string) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ap.Port()
}

// gwOutside is the gateway's address on the server side.
func gwOutside(f netlab.Family) netip.Addr {
	if f == netlab.IPv6 {
		return netlab.GWOutsideAddr6
	}
	return netlab.GWOutsideAddr4
}

// checkTransferLines waits for ftpalg's per-transfer log lines (from
// conntrack, when a data connection ends): one per transfer, and the 10 MiB
// downloads counted in bytes.
func checkTransferLines(t *testing.T, a *ALG, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Logs("transfer")) < want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	lines := a.Logs("transfer")
	if len(lines) < want {
		seen := map[any]bool{}
		for _, m := range lines {
			seen[m["pinhole"]] = true
		}
		var missing []string
		for _, m := range a.Logs("pinhole closed") {
			if m["reason"] != nil && !seen[m["pinhole"]] {
				missing = append(missing, fmt.Sprintf("%v (closed: %v)", m["pinhole"], m["reason"]))
			}
		}
		t.Errorf("%d transfer log lines for %d transfers; no line for %v", len(lines), want, missing)
	}
	big := 0
	for _, m := range lines {
		orig, _ := m["bytes_orig"].(float64)
		reply, _ := m["bytes_reply"].(float64)
		if max(orig, reply) >= netlab.BigSize {
			big++
			// Only downloads are that big here.
			if n, _ := m["bytes"].(float64); m["direction"] != "server->client" || n < netlab.BigSize || m["client"] == nil || m["server"] == nil {
				t.Errorf("a 10 MiB transfer line lacks its client, server, direction or bytes: %v", m)
			}
		}
	}
	if big == 0 {
		t.Errorf("no transfer line counted a 10 MiB download: %v", lines)
	}
}

// TestGatewayReload: someone else flushes ftpalg's chains and removes its
// jumps (as a firewall reload would) while a pinhole is open. ftpalg
// notices within seconds, logs it, and re-installs its skeleton and the
// live pinhole: the announced transfer and new sessions work.
func TestGatewayReload(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	a := startALG(t, topo.GW, gatewayArgs()...)

	x := dialCtrl(t, topo.Client, srv.Addr(netlab.IPv4))
	x.login(srv.User, srv.Pass)
	port := x.epsv()

	for _, f := range netlab.Families {
		for _, args := range [][]string{
			{"-F", "FTPALG-FORWARD"},
			{"-t", "nat", "-F", "FTPALG-PREROUTING"},
			{"-D", "FORWARD", "-m", "comment", "--comment", "ftpalg:jump", "-j", "FTPALG-FORWARD"},
			{"-D", "INPUT", "-m", "comment", "--comment", "ftpalg:jump", "-j", "FTPALG-INPUT"},
		} {
			if err := topo.GW.IPTables(ctx, f, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Logs("iptables rules repaired")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ftpalg did not notice the flushed rules:\n%s", tailLines(a.Proc.Output(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if rules := pinholeRules(t, topo.GW); !containsAll(rules, fmt.Sprintf("--dport %d", port)) {
		t.Fatalf("the open pinhole was not re-installed:\n%s", strings.Join(ftpalgRules(t, topo.GW), "\n"))
	}
	// The pinhole that was open at the reload still works...
	retrPassive(t, ctx, x, topo.Client, srv, netlab.IPv4, port)
	// ... and so does interception for new sessions.
	r := netlab.RunTransfer(ctx, topo.Client, srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv6))
	if err := srv.Verify(r); err != nil {
		t.Fatalf("new session after the reload: %v", err)
	}
	a.StopClean()
}

// TestGatewaySecondInstanceRefused: one ftpalg per firewall. A second
// `ftpalg run` in the same namespace, or `ftpalg rules flush`, is refused
// while the first runs (it would sweep or undo the first one's rules), and
// works once the first is gone.
func TestGatewaySecondInstanceRefused(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	a := startALG(t, topo.GW, gatewayArgs()...)
	before := ftpalgRules(t, topo.GW)
	for _, args := range [][]string{append([]string{"run"}, gatewayArgs()...), {"rules", "flush"}} {
		out, err := topo.GW.Run(ctx, ftpalgBin(t), args...)
		if err == nil || !strings.Contains(err.Error()+out, "another ftpalg manages this firewall") {
			t.Errorf("ftpalg %v beside a running ftpalg: %v\n%s", args, err, out)
		}
	}
	if after := ftpalgRules(t, topo.GW); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatalf("the refused commands changed the running ftpalg's rules:\n%s", strings.Join(after, "\n"))
	}
	a.StopClean()
	if out, err := topo.GW.Run(ctx, ftpalgBin(t), "rules", "flush"); err != nil {
		t.Fatalf("rules flush after ftpalg stopped: %v\n%s", err, out)
	}
}
