package test

import (
	"context"
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
