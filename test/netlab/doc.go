// Package netlab is the end-to-end test harness of ftpalg: network
// namespaces wired as client - gateway - server segment, a strict firewall
// for the gateway, real FTP servers (vsftpd, pure-ftpd) and real FTP clients
// (curl, lftp) driven in every data-connection mode.
//
// Typical usage:
//
//	func TestMain(m *testing.M) { netlab.Main(m) } // sweeps stale namespaces
//
//	func TestSomething(t *testing.T) {
//		tp := netlab.NewTopology(t, netlab.Options{}) // skips without root, fails under CI=true
//		ctx := context.Background()
//		if err := tp.ApplyStrictFirewall(ctx); err != nil {
//			t.Fatal(err)
//		}
//		srv := netlab.StartServer(t, tp.Server, netlab.Vsftpd, netlab.ServerOptions{})
//		tp.GW.Start(t, ftpalgBinary, "run", ...) // output captured, stopped in cleanup
//		x := srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv4)
//		if err := srv.Verify(netlab.RunTransfer(ctx, tp.Client, x)); err != nil {
//			t.Fatal(err)
//		}
//	}
//
// Everything lives in namespaces named Prefix + "<pid>-<id>-<role>"; t.Cleanup
// kills their processes and deletes them, and SweepStale (run by Main)
// removes those of runs that died. Addresses come from the documentation
// ranges only (see ClientAddr4 and the others). Nothing here changes the root
// namespace's firewall, routes or interfaces; Main fails the run if the root
// firewall changed.
//
// The namespaces, their wiring and the address plan are package lab/netlab's
// (over netlink), shared with `ftpalg lab`; NS embeds lab/netlab.NS. The
// gateway's IPv6 neighbours are static: a strict firewall drops neighbour
// discovery (conntrack never calls it ESTABLISHED), which would otherwise
// break IPv6 through the gateway for reasons unrelated to FTP. Root and tool
// checks are lab/netlab/roottest's, the one place every package's root
// tests ask.
package netlab
