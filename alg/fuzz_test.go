package alg_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// FuzzSession drives a whole Session with arbitrary bytes from both peers and
// checks the policy on every pinhole it opens: only the other real peer may
// connect, only to the real announcing peer, never below port 1024, and
// nothing stays open after the session.
func FuzzSession(f *testing.F) {
	seeds := [][2]string{
		{"USER a\r\nPASV\r\nRETR f\r\nQUIT\r\n", "331 pw\r\n227 Entering Passive Mode (203,0,113,2,156,64).\r\n150 ok\r\n226 done\r\n221 bye\r\n"},
		{"EPSV\r\nLIST\r\n", "229 Entering Extended Passive Mode (|||40000|)\r\n150 here\r\n226 ok\r\n"},
		{"PORT 192,0,2,2,195,80\r\nLIST\r\n", "200 ok\r\n150 ok\r\n226 ok\r\n"},
		{"EPRT |1|192.0.2.2|50000|\r\nRETR x\r\n", "200 ok\r\n425 no\r\n"},
		{"PORT 198,51,100,7,0,25\r\n", "200 ok\r\n"},
		{"PASV\r\n", "227 Entering Passive Mode (198,51,100,7,0,21)\r\n"},
		{"STAT\r\n", "211-x\r\n227 Entering Passive Mode (198,51,100,7,156,64)\r\n211 end\r\n"},
		{"\xff\xf4\xff\xf2ABOR\r\nAUTH TLS\r\nLPRT 4,4,1,2,3,4,2,0,25\r\n", "226 ok\r\n"},
		{"PASV\r\nEPSV\r\nPASV\r\n", "227 (203,0,113,2,156,64)\r\n229 (|||40001|)\r\n227 =203,0,113,2,156,66\r\n"},
		{"FEAT\r\n", "211-Features:\r\n AUTH TLS\r\n EPSV\r\n211 End\r\n"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, fromClient, fromServer string) {
		cc, cp := net.Pipe()
		sc, sp := net.Pipe()
		pool, _ := nat.NewPool(40000, 40003)
		fake := &rules.Fake{}
		pol := alg.DefaultPolicy()
		pol.MaxLine = 512
		pol.DrainTimeout = 50 * time.Millisecond
		pol.UseGrace = 10 * time.Millisecond
		s := &alg.Session{
			ID: 1, Client: cp, Server: sp, Endpoints: ep4,
			Planner: &nat.Gateway{Pool: pool}, Backend: fake, Policy: pol,
			Log: slog.New(slog.DiscardHandler),
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(context.Background()) }()
		go io.Copy(io.Discard, cc)
		go io.Copy(io.Discard, sc)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); cc.Write([]byte(fromClient)) }()
		go func() { defer wg.Done(); sc.Write([]byte("220 hi\r\n" + fromServer)) }()
		wgDone := make(chan struct{})
		go func() { wg.Wait(); close(wgDone) }()
		select {
		case <-wgDone:
		case <-done:
			done <- nil
		case <-time.After(5 * time.Second):
			t.Fatal("peers' writes did not complete")
		}
		cc.Close()
		sc.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("session did not end")
		}
		for _, c := range fake.Calls() {
			if c.Op != "open" {
				continue
			}
			p := c.Pinhole
			tgt := p.Target()
			passive := p.Src == ep4.Client.Addr() && tgt.Addr() == ep4.Server.Addr()
			active := p.Src == ep4.Server.Addr() && tgt.Addr() == ep4.Client.Addr()
			if !passive && !active {
				t.Fatalf("pinhole %v lets a peer reach a third party", p)
			}
			if tgt.Port() < 1024 {
				t.Fatalf("pinhole %v targets a privileged port", p)
			}
		}
		if open := fake.OpenPinholes(); len(open) != 0 {
			t.Fatalf("pinholes left open after the session: %v", open)
		}
		if pool.InUseCount() != 0 {
			t.Fatalf("%d pool ports leaked", pool.InUseCount())
		}
	})
}

// BenchmarkSessionLine measures one command line and its reply through a
// Session (parse, FIFO, forward both ways) over in-memory conns.
func BenchmarkSessionLine(b *testing.B) {
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
	cmd := []byte("CWD /pub/some/directory\r\n")
	reply := []byte("250 Directory successfully changed.\r\n")
	buf := make([]byte, 256)
	sc.Write([]byte("220 hi\r\n"))
	io.ReadFull(cc, buf[:8])
	b.ReportAllocs()
	b.SetBytes(int64(len(cmd) + len(reply)))
	b.ResetTimer()
	for b.Loop() {
		cc.Write(cmd)
		io.ReadFull(sc, buf[:len(cmd)])
		sc.Write(reply)
		io.ReadFull(cc, buf[:len(reply)])
	}
	b.StopTimer()
	cc.Close()
	sc.Close()
	<-done
}
