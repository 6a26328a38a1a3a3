package test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// FTPS through the firewall (issue 12).

// tlsTools are the FTPS clients of the matrices: curl --ssl-reqd, lftp
// with ftp:ssl-force and ftp:ssl-protect-data, and Python's FTP_TLS
// resuming the control session on its data connections.
var tlsTools = []netlab.Tool{netlab.Curl, netlab.LFTP, netlab.FTPLib}

// tlsMatrix is every supported FTPS transfer (client, mode, family,
// operation) against srv, dialled at server(f) and verifying ca.
func tlsMatrix(t *testing.T, srv *netlab.Server, ca string, server func(netlab.Family) netip.AddrPort) []netlab.Transfer {
	var xs []netlab.Transfer
	for _, tool := range tlsTools {
		for _, f := range netlab.Families {
			for _, mode := range netlab.Modes {
				if !netlab.Supported(tool, mode, f) {
					continue
				}
				if tool == netlab.Curl && !mode.Passive() {
					// curl 7.87-7.88 (Debian 12's 7.88.1) never starts
					// TLS on an active data connection and hangs
					// (curl/curl#10666, fixed in 8.0): active mode is
					// covered by lftp and ftplib.
					continue
				}
				for _, op := range netlab.Ops {
					x := srv.Transfer(t, tool, mode, op, f)
					x.TLS, x.CAFile = netlab.TLSExplicit, ca
					if server != nil {
						x.Server = server(f)
					}
					x.Timeout = 60 * time.Second
					xs = append(xs, x)
				}
			}
		}
	}
	return xs
}

// TestFTPSHarnessDirect checks the harness itself, without ftpalg and
// without a firewall: every FTPS client, mode and operation against vsftpd
// (ssl_enable, require_ssl_reuse) and pure-ftpd (-Y 3) directly; and the
// stock ftplib, which does not resume the control session on its data
// connection, is refused by vsftpd's require_ssl_reuse.
func TestFTPSHarnessDirect(t *testing.T) {
	netlab.RequireNetlab(t)
	netlab.RequireTools(t, "curl", "lftp", "vsftpd", "python3")
	for _, kind := range netlab.ServerKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			topo := netlab.NewTopology(t, netlab.Options{})
			certs := netlab.NewTLSFiles(t, netlab.ServerAddr4.String(), netlab.ServerAddr6.String())
			srv := netlab.StartServer(t, topo.Server, kind, netlab.ServerOptions{TLS: certs})
			for _, r := range netlab.RunAll(ctx, topo.Client, tlsMatrix(t, srv, certs.CA, nil), 6) {
				if err := srv.Verify(r); err != nil {
					t.Errorf("%v directly: %v", r.Transfer, err)
				} else if !r.SentCommand("PROT") {
					t.Errorf("%v: no PROT P sent\n%s", r.Transfer, r.Summary())
				}
			}
			if kind != netlab.Vsftpd {
				return
			}
			x := srv.Transfer(t, netlab.FTPLibStock, netlab.PASV, netlab.Retr, netlab.IPv4)
			x.TLS, x.CAFile = netlab.TLSExplicit, certs.CA
			r := netlab.RunTransfer(ctx, topo.Client, x)
			if r.Err == nil || !strings.Contains(r.Stderr, "522") {
				t.Errorf("stock ftplib (no session reuse) was not refused by vsftpd:\n%s", r.Summary())
			}
		})
	}
}

// ftpsArgs are the ftpalg flags of reverse mode terminating TLS with the
// certificate certs (issued for the gateway's outside addresses), an
// implicit FTPS listener on port 990, and extra.
func ftpsArgs(backend string, certs *netlab.TLSFiles, extra ...string) []string {
	args := append(reverseArgs(backend), "--tls", "terminate", "--tls-cert", certs.Cert, "--tls-key", certs.Key,
		"--tls-implicit-listen", netip.AddrPortFrom(gwOutside(netlab.IPv4), 990).String(),
		"--tls-implicit-listen", netip.AddrPortFrom(gwOutside(netlab.IPv6), 990).String())
	return append(args, extra...)
}

// implicitMatrix is a set of implicit FTPS transfers (TLS from the first
// byte, port 990) for every client, passive and active, both families.
func implicitMatrix(t *testing.T, srv *netlab.Server, ca string) []netlab.Transfer {
	var xs []netlab.Transfer
	for _, x := range tlsMatrix(t, srv, ca, func(f netlab.Family) netip.AddrPort {
		return netip.AddrPortFrom(gwOutside(f), 990)
	}) {
		if x.Op == netlab.Retr || x.Mode == netlab.EPSV {
			x.TLS = netlab.TLSImplicit
			xs = append(xs, x)
		}
	}
	return xs
}

// TestFTPSReverse: FTPS through the strict firewall with ftpalg
// terminating TLS in reverse mode, with the iptables backend (the relay's
// pool ports let in per transfer) and the relay backend alone (sidecar).
// Upstreams: a plain vsftpd (TLS offload: the client sees FTPS, the server
// needs no change), a vsftpd with ssl_enable and require_ssl_reuse (ftpalg
// resumes its own control session on every data connection), and
// pure-ftpd with TLS required on both channels. Every client (curl
// --ssl-reqd and ftps://, lftp ssl-force/ssl-protect-data, ftplib
// FTP_TLS), passive and active, IPv4 and IPv6, RETR of the 10 MiB file by
// hash, STOR and LIST. Without ftpalg the same FTPS transfers fail on the
// same firewall with only the control port forwarded. A client whose data
// connection does not resume its control session (stock ftplib) is refused
// with a 425 and one log line.
func TestFTPSReverse(t *testing.T) {
	type upstream struct {
		name string
		kind netlab.ServerKind
		tls  string // --tls-upstream
	}
	cases := []struct {
		backend string
		up      upstream
	}{
		{"iptables", upstream{"offload-vsftpd", netlab.Vsftpd, "plain"}},
		{"iptables", upstream{"ftps-vsftpd", netlab.Vsftpd, "explicit"}},
		{"iptables", upstream{"ftps-pure-ftpd", netlab.PureFTPd, "explicit"}},
		{"relay", upstream{"offload-vsftpd", netlab.Vsftpd, "plain"}},
	}
	for _, c := range cases {
		t.Run(c.backend+"/"+c.up.name, func(t *testing.T) {
			t.Parallel()
			netlab.RequireTools(t, "python3")
			topo, ctx := gatewayTopo(t)
			opts := netlab.ServerOptions{}
			var extra []string
			if c.up.tls != "plain" {
				opts.TLS = netlab.NewTLSFiles(t, netlab.ClientAddr4.String(), netlab.ClientAddr6.String(),
					gwOutside(netlab.IPv4).String(), gwOutside(netlab.IPv6).String())
				extra = append(extra, "--tls-upstream", c.up.tls, "--tls-upstream-ca", opts.TLS.CA)
			}
			srv := netlab.StartServer(t, topo.Client, c.up.kind, opts)
			certs := netlab.NewTLSFiles(t, gwOutside(netlab.IPv4).String(), gwOutside(netlab.IPv6).String())
			xs := tlsMatrix(t, srv, certs.CA, publicAddr)

			if c.backend == "iptables" && c.up.name == "ftps-vsftpd" {
				// Without ftpalg: the control port forwarded to the FTPS
				// server (its certificate names the public addresses
				// too), data blocked; and no ALG could read the
				// encrypted announcements.
				undo := portForward21(t, ctx, topo)
				var without []netlab.Transfer
				for _, x := range xs {
					if x.Op == netlab.List && x.Mode.Passive() {
						x.Timeout = 12 * time.Second
						x.CAFile = opts.TLS.CA
						without = append(without, x)
					}
				}
				for i, r := range netlab.RunAll(ctx, topo.Server, without, 8) {
					if r.Err == nil {
						t.Errorf("%v succeeded through a control-port forward without ftpalg", without[i])
					} else if !r.SentCommand("PROT") {
						t.Errorf("%v failed before TLS was up: not the firewall's doing\n%s", without[i], r.Summary())
					}
				}
				undo()
			}
			if c.backend == "relay" {
				for _, f := range netlab.Families {
					if err := topo.GW.IPTables(ctx, f, "-A", "INPUT", "-p", "tcp", "-m", "multiport",
						"--dports", "21,990,45000:45099", "-j", "ACCEPT"); err != nil {
						t.Fatal(err)
					}
				}
			}

			a := startALG(t, topo.GW, ftpsArgs(c.backend, certs, extra...)...)
			if c.up.kind == netlab.Vsftpd || c.up.tls == "plain" {
				xs = append(xs, implicitMatrix(t, srv, certs.CA)...)
			}
			for _, r := range netlab.RunAll(ctx, topo.Server, xs, 4) {
				if err := srv.Verify(r); err != nil {
					t.Errorf("%v through ftpalg (%s, %s): %v", r.Transfer, c.backend, c.up.name, err)
				}
			}
			if r := a.Logs("refused"); len(r) > 0 {
				t.Errorf("ftpalg refused something from real peers: %v", r)
			}

			// The stock ftplib does not resume the control session on its
			// data connection: refused, with the reply and one log line.
			x := srv.Transfer(t, netlab.FTPLibStock, netlab.PASV, netlab.Retr, netlab.IPv4)
			x.TLS, x.CAFile, x.Server = netlab.TLSExplicit, certs.CA, publicAddr(netlab.IPv4)
			r := netlab.RunTransfer(ctx, topo.Server, x)
			if r.Err == nil {
				t.Errorf("a data connection that did not resume the TLS session was relayed:\n%s", r.Summary())
			}
			if c.up.kind == netlab.PureFTPd {
				// pure-ftpd sends no final reply for a transfer whose
				// data TLS was reset; there is no reply to replace.
			} else if !slicesContains(r.Replies, "425 ftpalg: data connection refused") {
				t.Errorf("no 425 refusal reached the client:\n%s", r.Summary())
			}
			refused := a.Logs("refused")
			if len(refused) != 1 || refused[0]["what"] != "data TLS" {
				t.Errorf("want one refusal log line for the data TLS, got %v", refused)
			}
			if c.backend == "iptables" {
				waitNoPinholes(t, topo.GW, 15*time.Second)
			}
			a.StopClean()
		})
	}
}

func slicesContains(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// TestFTPSRequire: with --tls-require and --tls-require-prot a plain FTP
// client is refused at USER (a 530 and one log line) while FTPS clients,
// which protect their data, pass.
func TestFTPSRequire(t *testing.T) {
	netlab.RequireTools(t, "python3")
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Client, netlab.Vsftpd, netlab.ServerOptions{})
	certs := netlab.NewTLSFiles(t, gwOutside(netlab.IPv4).String(), gwOutside(netlab.IPv6).String())
	a := startALG(t, topo.GW, ftpsArgs("iptables", certs, "--tls-require", "--tls-require-prot")...)

	plain := srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.List, netlab.IPv4)
	plain.Server = publicAddr(netlab.IPv4)
	r := netlab.RunTransfer(ctx, topo.Server, plain)
	if r.Err == nil || !slicesContains(r.Replies, "530 ftpalg: TLS required") {
		t.Errorf("a plain FTP client was not refused at login:\n%s", r.Summary())
	}
	refused := a.Logs("refused")
	if len(refused) != 1 || refused[0]["what"] != "USER" {
		t.Errorf("want one refusal log line for USER, got %v", refused)
	}
	var xs []netlab.Transfer
	for _, tool := range tlsTools {
		x := srv.Transfer(t, tool, netlab.EPSV, netlab.List, netlab.IPv6)
		x.TLS, x.CAFile, x.Server = netlab.TLSExplicit, certs.CA, publicAddr(netlab.IPv6)
		xs = append(xs, x)
	}
	for _, r := range netlab.RunAll(ctx, topo.Server, xs, 3) {
		if err := srv.Verify(r); err != nil {
			t.Errorf("%v with TLS required: %v", r.Transfer, err)
		}
	}
	if n := len(a.Logs("refused")); n != 1 {
		t.Errorf("FTPS clients were refused: %v", a.Logs("refused"))
	}
	a.StopClean()
}
