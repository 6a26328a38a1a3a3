package test

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// BenchmarkRelayVsKernel measures the download throughput of a published
// server through ftpalg's relay backend as a ratio against the kernel's
// forwarding path (the iptables backend: DNAT, the data never enters
// userspace), in the same topology and the same run. One op is one RETR of
// a 256 MiB file with curl (passive, IPv4), start-up included.
//
//	go test -run NONE -bench RelayVsKernel -benchtime 3x ./test/
func BenchmarkRelayVsKernel(b *testing.B) {
	netlab.RequireNetlab(b)
	netlab.RequireTools(b, "curl", "vsftpd")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	topo := netlab.NewTopology(b, netlab.Options{})
	srv := netlab.StartServer(b, topo.Client, netlab.Vsftpd, netlab.ServerOptions{})
	const size = 256 << 20
	if _, err := netlab.WriteRandomFile(srv.LocalPath("/pub/huge.bin"), size, 7); err != nil {
		b.Fatal(err)
	}
	local := filepath.Join(b.TempDir(), "huge.bin")

	measure := func(backend string) float64 {
		a := startALG(b, topo.GW, reverseArgs(backend)...)
		defer a.Stop()
		var total time.Duration
		for range b.N {
			x := netlab.Transfer{Tool: netlab.Curl, Mode: netlab.EPSV, Op: netlab.Retr,
				Server: publicAddr(netlab.IPv4), User: srv.User, Pass: srv.Pass,
				Remote: "/pub/huge.bin", Local: local, Timeout: 2 * time.Minute}
			r := netlab.RunTransfer(ctx, topo.Server, x)
			if r.Err != nil || r.Bytes != size {
				b.Fatalf("%s: %d bytes, %v\n%s", backend, r.Bytes, r.Err, r.Summary())
			}
			total += r.Duration
		}
		return float64(size) * float64(b.N) / total.Seconds() / 1e6
	}
	b.ResetTimer()
	kernel := measure("iptables")
	relay := measure("relay")
	b.ReportMetric(kernel, "kernel-MB/s")
	b.ReportMetric(relay, "relay-MB/s")
	b.ReportMetric(relay/kernel, "relay/kernel")
}

// BenchmarkFTPSVsDirect measures FTPS download throughput through ftpalg
// terminating TLS (reverse mode, iptables backend, data relayed) as a
// ratio to the same client directly against an FTPS vsftpd (ssl_enable,
// require_ssl_reuse), in the same topology and the same run: once with
// that FTPS vsftpd as ftpalg's upstream (TLS on both legs), once with a
// plain vsftpd behind ftpalg (TLS offload). One op is one RETR of a 256 MiB
// file with curl --ssl-reqd (EPSV, IPv4), start-up included.
//
//	go test -run NONE -bench FTPSVsDirect -benchtime 3x ./test/
func BenchmarkFTPSVsDirect(b *testing.B) {
	netlab.RequireNetlab(b)
	netlab.RequireTools(b, "curl", "vsftpd")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	topo := netlab.NewTopology(b, netlab.Options{})
	srvCerts := netlab.NewTLSFiles(b, netlab.ClientAddr4.String(), netlab.ClientAddr6.String())
	ftpsSrv := netlab.StartServer(b, topo.Client, netlab.Vsftpd, netlab.ServerOptions{TLS: srvCerts})
	plainSrv := netlab.StartServer(b, topo.Client, netlab.Vsftpd, netlab.ServerOptions{Port: 2100, PasvMin: 40100, PasvMax: 40199})
	const size = 256 << 20
	for _, s := range []*netlab.Server{ftpsSrv, plainSrv} {
		if _, err := netlab.WriteRandomFile(s.LocalPath("/pub/huge.bin"), size, 7); err != nil {
			b.Fatal(err)
		}
	}
	algCerts := netlab.NewTLSFiles(b, gwOutside(netlab.IPv4).String())
	local := filepath.Join(b.TempDir(), "huge.bin")

	run := func(what string, server netip.AddrPort, ca string) float64 {
		var total time.Duration
		for range b.N {
			x := netlab.Transfer{Tool: netlab.Curl, Mode: netlab.EPSV, Op: netlab.Retr,
				Server: server, User: ftpsSrv.User, Pass: ftpsSrv.Pass, TLS: netlab.TLSExplicit, CAFile: ca,
				Remote: "/pub/huge.bin", Local: local, Timeout: 3 * time.Minute}
			r := netlab.RunTransfer(ctx, topo.Server, x)
			if r.Err != nil || r.Bytes != size {
				b.Fatalf("%s: %d bytes, %v\n%s", what, r.Bytes, r.Err, r.Summary())
			}
			total += r.Duration
		}
		return float64(size) * float64(b.N) / total.Seconds() / 1e6
	}
	through := func(upstream netip.AddrPort, extra ...string) float64 {
		args := []string{"--mode", "reverse", "--backend", "iptables",
			"--listen", publicAddr(netlab.IPv4).String(), "--upstream", upstream.String(),
			"--data-ports", "45000-45099", "--tls", "terminate", "--tls-cert", algCerts.Cert, "--tls-key", algCerts.Key}
		a := startALG(b, topo.GW, append(args, extra...)...)
		defer a.Stop()
		return run("through ftpalg", publicAddr(netlab.IPv4), algCerts.CA)
	}
	b.ResetTimer()
	direct := run("direct", netip.AddrPortFrom(netlab.ClientAddr4, 21), srvCerts.CA)
	ftps := through(netip.AddrPortFrom(netlab.ClientAddr4, 21), "--tls-upstream", "explicit", "--tls-upstream-ca", srvCerts.CA)
	offload := through(netip.AddrPortFrom(netlab.ClientAddr4, 2100))
	b.ReportMetric(direct, "direct-MB/s")
	b.ReportMetric(ftps, "ftps-upstream-MB/s")
	b.ReportMetric(offload, "offload-MB/s")
	b.ReportMetric(ftps/direct, "ftps-upstream/direct")
	b.ReportMetric(offload/direct, "offload/direct")
}
