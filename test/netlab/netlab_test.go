package netlab_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"

	labnet "github.com/ftpalg/ftpalg/lab/netlab"
	"github.com/ftpalg/ftpalg/test/netlab"
)

func TestMain(m *testing.M) { netlab.Main(m) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func hostPort(a netip.Addr, port int) string {
	return net.JoinHostPort(a.String(), fmt.Sprint(port))
}

// TestTopologyForwarding checks the plain topology: the gateway routes both
// ways, masquerades towards the server side, and the server segment is one
// L2 segment.
func TestTopologyForwarding(t *testing.T) {
	t.Parallel()
	tp := netlab.NewTopology(t, netlab.Options{})
	ctx := ctxT(t, time.Minute)
	if err := tp.ApplyMasquerade(ctx); err != nil {
		t.Fatal(err)
	}
	srvEcho := tp.Server.StartEcho(t, "[::]:5000")
	cliEcho := tp.Client.StartEcho(t, "[::]:5001")
	for _, f := range netlab.Families {
		if err := tp.Client.CheckEcho(ctx, hostPort(tp.Server.Addr(f), 5000), 3*time.Second); err != nil {
			t.Errorf("client -> server %v: %v", f, err)
		}
		if err := tp.Other.CheckEcho(ctx, hostPort(tp.Server.Addr(f), 5000), 3*time.Second); err != nil {
			t.Errorf("other -> server %v: %v", f, err)
		}
		// Routed back without translation: what active mode needs.
		if err := tp.Server.CheckEcho(ctx, hostPort(tp.Client.Addr(f), 5001), 3*time.Second); err != nil {
			t.Errorf("server -> client %v: %v", f, err)
		}
	}
	var got []netip.Addr
	for _, p := range srvEcho.Peers() {
		got = append(got, p.Addr())
	}
	want := []netip.Addr{netlab.GWOutsideAddr4, netlab.OtherAddr4, netlab.GWOutsideAddr6, netlab.OtherAddr6}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("server saw peers %v, want %v (client masqueraded to the gateway)", got, want)
	}
	var cliPeers []netip.Addr
	for _, p := range cliEcho.Peers() {
		cliPeers = append(cliPeers, p.Addr())
	}
	if want := []netip.Addr{netlab.ServerAddr4, netlab.ServerAddr6}; fmt.Sprint(cliPeers) != fmt.Sprint(want) {
		t.Errorf("client saw peers %v, want %v", cliPeers, want)
	}

	// The gateway's conntrack table has the flows, with byte counters.
	to5000 := func(f conntrack.Flow) bool {
		return f.TupleOrig.Proto.DestinationPort == 5000 && f.TupleOrig.IP.SourceAddress.Unmap() == netlab.ClientAddr4 ||
			f.TupleOrig.Proto.DestinationPort == 5000 && f.TupleOrig.IP.SourceAddress == netlab.ClientAddr6
	}
	n, err := tp.GW.CountConntrack(to5000)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("gateway has %d conntrack entries client -> :5000, want 2", n)
	}
	flows, err := tp.GW.ConntrackFlows()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if to5000(f) && f.CountersOrig.Bytes == 0 {
			t.Errorf("flow %v has no byte counter (nf_conntrack_acct off?)", f)
		}
	}
	if n, err := tp.Client.CountConntrack(nil); err != nil || n != 0 {
		t.Errorf("client conntrack entries = %d, %v; want 0 (no netfilter there)", n, err)
	}
}

// TestStrictFirewall checks the strict gateway: exactly the rules asked for,
// new connections blocked both ways, and the control-port exception.
func TestStrictFirewall(t *testing.T) {
	t.Parallel()
	tp := netlab.NewTopology(t, netlab.Options{})
	ctx := ctxT(t, time.Minute)
	if err := tp.ApplyStrictFirewall(ctx); err != nil {
		t.Fatal(err)
	}
	dump, err := tp.GW.FirewallDump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		":INPUT DROP", ":FORWARD DROP",
		"-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT",
		"-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT",
		"-A POSTROUTING -o outside -j MASQUERADE",
	} {
		if c := strings.Count(dump, want+"\n"); c != 2 {
			t.Errorf("%q appears %d times in the dump, want 2 (IPv4 and IPv6):\n%s", want, c, dump)
		}
	}
	if strings.Contains(dump, "RELATED") {
		t.Errorf("dump accepts RELATED:\n%s", dump)
	}
	if c := strings.Count(dump, "\n-A "); c != 6 {
		t.Errorf("dump has %d rules, want 6:\n%s", c, dump)
	}

	tp.Server.StartEcho(t, "[::]:21")
	tp.Server.StartEcho(t, "[::]:5000")
	tp.Client.StartEcho(t, "[::]:5001")
	blocked := func(from *netlab.NS, addr string) {
		t.Helper()
		if err := from.CanConnect(ctx, addr, 1500*time.Millisecond); err == nil {
			t.Errorf("%s -> %s connected through the strict firewall", from.Role, addr)
		}
	}
	open := func(from *netlab.NS, addr string) {
		t.Helper()
		if err := from.CheckEcho(ctx, addr, 3*time.Second); err != nil {
			t.Errorf("%s -> %s: %v", from.Role, addr, err)
		}
	}
	var wg sync.WaitGroup
	for _, f := range netlab.Families {
		for _, c := range []struct {
			from *netlab.NS
			addr string
		}{
			{tp.Client, hostPort(tp.Server.Addr(f), 21)},
			{tp.Client, hostPort(tp.Server.Addr(f), 5000)},
			{tp.Server, hostPort(tp.Client.Addr(f), 5001)},
			{tp.Client, hostPort(tp.GW.Addr(f), 22)},
		} {
			wg.Go(func() { blocked(c.from, c.addr) })
		}
		// Same segment: the gateway is not in the way.
		open(tp.Other, hostPort(tp.Server.Addr(f), 5000))
	}
	wg.Wait()

	if err := tp.AllowFTPControl(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range netlab.Families {
		open(tp.Client, hostPort(tp.Server.Addr(f), 21))
		wg.Go(func() { blocked(tp.Client, hostPort(tp.Server.Addr(f), 5000)) })
		wg.Go(func() { blocked(tp.Server, hostPort(tp.Client.Addr(f), 5001)) })
	}
	wg.Wait()
}

// TestTransfersWithoutFirewall: with only forwarding and masquerade in the
// gateway, every client, mode and operation works against every server over
// both families. Active mode needs the server to accept a data address that
// differs from the (masqueraded) control peer; a server with its default
// check refuses it, which is what an ALG's PORT rewrite fixes.
func TestTransfersWithoutFirewall(t *testing.T) {
	t.Parallel()
	netlab.RequireTools(t, "curl", "lftp")
	for _, kind := range netlab.ServerKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			tp := netlab.NewTopology(t, netlab.Options{})
			ctx := ctxT(t, 2*time.Minute)
			if err := tp.ApplyMasquerade(ctx); err != nil {
				t.Fatal(err)
			}
			srv := netlab.StartServer(t, tp.Server, kind, netlab.ServerOptions{AllowForeignDataAddress: true})
			strict := netlab.StartServer(t, tp.Server, kind, netlab.ServerOptions{Port: 2121, PasvMin: 42000, PasvMax: 42099})

			xs := netlab.Matrix(t, srv, netlab.Ops)
			refused := strict.Transfer(t, netlab.Curl, netlab.PORT, netlab.List, netlab.IPv4)
			refused.Timeout = 10 * time.Second
			xs = append(xs, refused)
			results := netlab.RunAll(ctx, tp.Client, xs, 4)

			for _, r := range results[:len(results)-1] {
				t.Run(strings.ReplaceAll(r.Transfer.String(), "/", "-"), func(t *testing.T) {
					if err := srv.Verify(r); err != nil {
						t.Fatal(err)
					}
				})
			}
			// The default server refuses PORT naming the client, since the
			// control connection comes from the gateway.
			r := results[len(results)-1]
			if last := lastReply(r); r.Err == nil || !r.SentCommand("PORT") || !strings.HasPrefix(last, "5") {
				t.Errorf("PORT to a foreign address was not refused by default %s:\n%s", kind, r.Summary())
			} else {
				t.Logf("default %s refused PORT through masquerade: %q", kind, last)
			}
		})
	}
}

// TestTransfersFailWithStrictFirewall: behind the strict gateway nothing
// works; with the control port opened, logins work but every data
// connection, passive or active, is blocked. This is the state ftpalg must
// fix.
func TestTransfersFailWithStrictFirewall(t *testing.T) {
	t.Parallel()
	netlab.RequireTools(t, "curl", "lftp")
	for _, kind := range netlab.ServerKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			tp := netlab.NewTopology(t, netlab.Options{})
			ctx := ctxT(t, 2*time.Minute)
			if err := tp.ApplyStrictFirewall(ctx); err != nil {
				t.Fatal(err)
			}
			srv := netlab.StartServer(t, tp.Server, kind, netlab.ServerOptions{AllowForeignDataAddress: true})

			// Control connections are dropped too.
			var xs []netlab.Transfer
			for _, f := range netlab.Families {
				x := srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.List, f)
				x.ConnectTimeout, x.Timeout = 2*time.Second, 5*time.Second
				xs = append(xs, x)
			}
			for _, r := range netlab.RunAll(ctx, tp.Client, xs, 4) {
				if r.Err == nil || r.SentCommand("USER") {
					t.Errorf("control connection passed the strict firewall:\n%s", r.Summary())
				}
			}

			if err := tp.AllowFTPControl(ctx); err != nil {
				t.Fatal(err)
			}
			xs = netlab.Matrix(t, srv, []netlab.Op{netlab.Retr, netlab.List})
			for i := range xs {
				xs[i].ConnectTimeout, xs[i].Timeout = 3*time.Second, 12*time.Second
			}
			for _, r := range netlab.RunAll(ctx, tp.Client, xs, len(xs)) {
				t.Run(strings.ReplaceAll(r.Transfer.String(), "/", "-"), func(t *testing.T) {
					x := r.Transfer
					if r.Err == nil {
						t.Fatalf("transfer passed the strict firewall:\n%s", r.Summary())
					}
					// The control channel worked up to the announcement...
					if !r.SentCommand(string(x.Mode)) {
						t.Fatalf("client never sent %s: the control channel did not work:\n%s", x.Mode, r.Summary())
					}
					// ...and the server accepted it.
					code := map[netlab.Mode]string{netlab.EPSV: "229", netlab.PASV: "227", netlab.PORT: "200", netlab.EPRT: "200"}[x.Mode]
					if len(r.RepliesWithCode(code)) == 0 {
						t.Errorf("no %s reply to %s:\n%s", code, x.Mode, r.Summary())
					}
					if x.Op == netlab.Retr && r.SHA256 == srv.Big.SHA256 {
						t.Errorf("file arrived anyway:\n%s", r.Summary())
					}
					for _, reply := range r.Replies {
						if strings.HasPrefix(reply, "226") {
							t.Errorf("server reported a completed transfer:\n%s", r.Summary())
						}
					}
					t.Logf("blocked as expected: exit %d after %v, last reply %q", r.ExitCode, r.Duration.Round(time.Millisecond), lastReply(r))
				})
			}
		})
	}
}

// TestActiveFromPort20: a server with its default checks accepts PORT/EPRT
// naming the control connection's peer, and vsftpd connects from port 20 as
// Debian configures it (pure-ftpd does so too). "other" is on the server's segment, so no NAT is in
// the way.
func TestActiveFromPort20(t *testing.T) {
	t.Parallel()
	netlab.RequireTools(t, "curl", "lftp", "ss")
	for _, kind := range netlab.ServerKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			tp := netlab.NewTopology(t, netlab.Options{})
			ctx := ctxT(t, time.Minute)
			srv := netlab.StartServer(t, tp.Server, kind, netlab.ServerOptions{})
			count := 0
			for _, f := range netlab.Families {
				for _, tool := range netlab.Tools {
					for _, mode := range []netlab.Mode{netlab.PORT, netlab.EPRT} {
						if !netlab.Supported(tool, mode, f) {
							continue
						}
						count++
						x := srv.Transfer(t, tool, mode, netlab.Retr, f)
						if err := srv.Verify(netlab.RunTransfer(ctx, tp.Other, x)); err != nil {
							t.Error(err)
						}
					}
				}
			}
			// The server closes a RETR data connection first, so its end
			// waits in TIME_WAIT, showing the source port.
			out, err := tp.Server.Run(ctx, "ss", "-Htan", "state", "time-wait", "( sport = :20 )")
			if err != nil {
				t.Fatal(err)
			}
			n := len(strings.Fields(out)) / 4
			if n != count {
				t.Errorf("%s made %d data connections from port 20, want %d:\n%s", kind, n, count, out)
			}
		})
	}
}

// TestCleanupRemovesEverything checks that a topology with running servers
// and processes disappears when its test ends.
func TestCleanupRemovesEverything(t *testing.T) {
	t.Parallel()
	var names []string
	var proc *netlab.Proc
	t.Run("topology", func(t *testing.T) {
		tp := netlab.NewTopology(t, netlab.Options{})
		for _, n := range tp.Namespaces() {
			names = append(names, n.Name)
		}
		proc = tp.GW.Start(t, "sleep", "600")
		// A process started outside the harness's bookkeeping.
		cmd := tp.Server.Command(context.Background(), "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = cmd.Wait() }() // reaped once the topology's cleanup kills it
		// `ip netns exec` enters the namespace just after it starts.
		ctx := ctxT(t, 10*time.Second)
		var pids []int
		for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(20 * time.Millisecond) {
			var err error
			if pids, err = tp.GW.PIDs(ctx); err != nil {
				t.Fatal(err)
			}
			if len(pids) > 0 {
				break
			}
		}
		if len(pids) != 1 || pids[0] != proc.PID() {
			t.Errorf("gw pids = %v, want [%d]", pids, proc.PID())
		}
	})
	if exited, _ := proc.Exited(); !exited {
		t.Errorf("process %d still running after cleanup", proc.PID())
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.Contains(string(out), name) {
			t.Errorf("namespace %s left after cleanup", name)
		}
	}
	for _, name := range names {
		if _, err := os.Stat("/run/netns/" + name); err == nil {
			t.Errorf("/run/netns/%s left after cleanup", name)
		}
	}
}

// TestSweepStale checks that leftovers of a dead run are removed and a live
// run's namespaces are not.
func TestSweepStale(t *testing.T) {
	netlab.RequireNetlab(t)
	t.Parallel()
	// A pid that no longer exists: a process that has exited and been reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	staleNS := fmt.Sprintf("%s%d-sweeptest-gw", netlab.Prefix, dead)
	liveNS := fmt.Sprintf("%s%d-sweeptest-gw", netlab.Prefix, os.Getpid())
	for _, name := range []string{staleNS, liveNS} {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("adding %s: %v: %s", name, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	}
	staleDir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", netlab.Prefix, dead))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(staleDir) })
	// A stale namespace with a process in it.
	sleeper := (&labnet.NS{Name: staleNS}).Command(context.Background(), "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = sleeper.Wait() }() // reaped once the sweep kills it

	ctx := ctxT(t, 30*time.Second)
	if err := netlab.SweepStale(ctx, slogT(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + staleNS); err == nil {
		t.Errorf("stale namespace %s survived the sweep", staleNS)
	}
	if _, err := os.Stat(staleDir); err == nil {
		t.Errorf("stale directory %s survived the sweep", staleDir)
	}
	if _, err := os.Stat("/run/netns/" + liveNS); err != nil {
		t.Errorf("live namespace %s was swept: %v", liveNS, err)
	}
}

func lastReply(r netlab.Result) string {
	if len(r.Replies) == 0 {
		return ""
	}
	return r.Replies[len(r.Replies)-1]
}

func slogT(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}
