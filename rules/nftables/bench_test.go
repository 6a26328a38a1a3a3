package nftables

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/iptables"
	"github.com/vishvananda/netns"
)

// pinholeBackend is what the latency benchmark drives of either backend.
type pinholeBackend interface {
	rules.Backend
	Setup(ctx context.Context) error
	Teardown(ctx context.Context) error
}

// benchPinhole is a passive gateway pinhole with SNAT (two elements, or
// four iptables rules); i makes it unique.
func benchPinhole(i int) rules.Pinhole {
	return rules.Pinhole{
		ID:   rules.PinholeID{Session: 1, N: uint32(1 + i)},
		Src:  netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%200)}),
		Dst:  netip.AddrPortFrom(addr("203.0.113.5"), uint16(1024+i%60000)),
		SNAT: addr("203.0.113.1"), TTL: 10 * time.Minute, Passive: true,
	}
}

// BenchmarkPinholeLatency measures the latency of one pinhole Open (what a
// PASV reply waits for) and of its Close, with 0, 1,000 and 10,000 other
// pinholes live, for the nftables and the iptables backend side by side in
// one run, each in a namespace of its own. It reports p50 and p99 of each
// in microseconds (open-p50-us, ...); ns/op is one Open plus one Close.
//
//	go test -run NONE -bench PinholeLatency -benchtime 2000x ./rules/nftables/
func BenchmarkPinholeLatency(b *testing.B) {
	for _, live := range []int{0, 1000, 10000} {
		for _, kind := range []string{"nftables", "iptables"} {
			b.Run(fmt.Sprintf("live=%d/backend=%s", live, kind), func(b *testing.B) {
				requireRoot(b, "iptables", "ip6tables")
				defer enterNetns(b)()
				ctx := b.Context()
				quiet := slog.New(slog.DiscardHandler)
				var be pinholeBackend
				var err error
				if kind == "nftables" {
					var nb *Backend
					nb, err = New(Config{Log: quiet})
					if err == nil {
						defer nb.Release()
					}
					be = nb
				} else {
					be, err = iptables.New(iptables.Config{Log: quiet})
				}
				if err != nil {
					b.Fatal(err)
				}
				if err := be.Setup(ctx); err != nil {
					b.Fatal(err)
				}
				defer be.Teardown(context.WithoutCancel(ctx))
				// The live pinholes, opened by 64 workers (the iptables
				// backend batches concurrent Opens). The iptables commands
				// run in the namespace of the calling thread: each worker
				// moves its thread here for good.
				here, err := netns.Get()
				if err != nil {
					b.Fatal(err)
				}
				defer here.Close()
				var wg sync.WaitGroup
				next := make(chan int)
				errs := make(chan error, 1)
				for range 64 {
					wg.Go(func() {
						runtime.LockOSThread() // never unlocked: Go discards the thread
						if err := netns.Set(here); err != nil {
							select {
							case errs <- err:
							default:
							}
							for range next {
							}
							return
						}
						for i := range next {
							if err := be.Open(ctx, benchPinhole(100000+i)); err != nil {
								select {
								case errs <- err:
								default:
								}
							}
						}
					})
				}
				for i := range live {
					next <- i
				}
				close(next)
				wg.Wait()
				select {
				case err := <-errs:
					b.Fatal(err)
				default:
				}
				// Measured on a goroutine of its own, not on this one's
				// locked thread, as a session calls Open in ftpalg: the
				// sockets already belong to the namespace. (The iptables
				// commands need the thread's namespace: they stay here.)
				var opens, closes []time.Duration
				var ferr error
				loop := func() {
					for i := range b.N {
						p := benchPinhole(i)
						p.Src = addr("198.51.100.7")
						t0 := time.Now()
						if ferr = be.Open(ctx, p); ferr != nil {
							return
						}
						t1 := time.Now()
						if ferr = be.Close(ctx, p); ferr != nil {
							return
						}
						opens, closes = append(opens, t1.Sub(t0)), append(closes, time.Since(t1))
					}
				}
				b.ResetTimer()
				if kind == "nftables" {
					done := make(chan struct{})
					go func() { defer close(done); loop() }()
					<-done
				} else {
					loop()
				}
				b.StopTimer()
				if ferr != nil && kind == "iptables" {
					// The iptables backend gives up beyond its bounds (at
					// 10,000 live, a Close outlasts the 15 s the restore
					// may take): say so, with what was measured before.
					b.Logf("iptables backend failed after %d of %d ops: %v", len(closes), b.N, ferr)
					b.ReportMetric(float64(len(closes)), "ops-before-failure")
				} else if ferr != nil {
					b.Fatal(ferr)
				}
				b.ReportMetric(percentile(opens, 50), "open-p50-us")
				b.ReportMetric(percentile(opens, 99), "open-p99-us")
				b.ReportMetric(percentile(closes, 50), "close-p50-us")
				b.ReportMetric(percentile(closes, 99), "close-p99-us")
			})
		}
	}
}

// percentile returns the p-th percentile of ds in microseconds.
func percentile(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return float64(s[i].Nanoseconds()) / 1e3
}
