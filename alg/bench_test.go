package alg_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// Benchmark227 measures the time from a server's 227 arriving at the
// Session to the rewritten 227 leaving it toward the client (gateway mode,
// fake backend, in-memory conns). Every PASV after the first also replaces
// the previous, unused pinhole. The figure is reported as ns/227; the PASV
// that precedes each 227 is not timed.
func Benchmark227(b *testing.B) {
	cc, cp := net.Pipe()
	sc, sp := net.Pipe()
	pool, _ := nat.NewPool(40000, 40003)
	s := &alg.Session{
		ID: 1, Client: cp, Server: sp, Endpoints: ep4,
		Planner: &nat.Gateway{Pool: pool}, Backend: &rules.Fake{},
		Log: slog.New(slog.DiscardHandler),
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	cmd := []byte("PASV\r\n")
	reply := []byte("227 Entering Passive Mode (198,51,100,7,156,64).\r\n")
	want := "227 Entering Passive Mode (203,0,113,2,156,64).\r\n"
	buf := make([]byte, 256)
	sc.Write([]byte("220 hi\r\n"))
	io.ReadFull(cc, buf[:8])
	var total time.Duration
	b.ReportAllocs()
	for b.Loop() {
		cc.Write(cmd)
		io.ReadFull(sc, buf[:len(cmd)])
		t0 := time.Now()
		sc.Write(reply)
		io.ReadFull(cc, buf[:len(want)])
		total += time.Since(t0)
	}
	if got := string(buf[:len(want)]); got != want {
		b.Fatalf("client got %q, want %q", got, want)
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/227")
	cc.Close()
	sc.Close()
	<-done
}
