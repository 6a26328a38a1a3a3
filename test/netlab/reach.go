package netlab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// EchoServer is a TCP listener in a namespace that echoes one line per
// connection and records who connected.
type EchoServer struct {
	l     net.Listener
	mu    sync.Mutex
	peers []netip.AddrPort
	wg    sync.WaitGroup
}

// StartEcho listens on addr (e.g. "203.0.113.2:5000" or "[::]:5000") in the
// namespace and serves until t's cleanup. It fails t if it cannot listen.
func (n *NS) StartEcho(t testing.TB, addr string) *EchoServer {
	t.Helper()
	l, err := n.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &EchoServer{l: l}
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(func() {
		_ = l.Close()
		e.wg.Wait()
	})
	return e
}

func (e *EchoServer) serve() {
	defer e.wg.Done()
	for {
		c, err := e.l.Accept()
		if err != nil {
			return
		}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			e.mu.Lock()
			e.peers = append(e.peers, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			e.mu.Unlock()
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, line)
		}()
	}
}

// Addr returns the address the server listens on.
func (e *EchoServer) Addr() netip.AddrPort {
	return netip.MustParseAddrPort(e.l.Addr().String())
}

// Peers returns the source addresses of the connections accepted so far
// (IPv4-mapped addresses unmapped).
func (e *EchoServer) Peers() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]netip.AddrPort(nil), e.peers...)
}

// CanConnect reports whether a TCP connection to addr can be opened from the
// namespace within timeout: nil if the handshake completed.
func (n *NS) CanConnect(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// CheckEcho connects to addr from the namespace within timeout, sends a
// random line and expects it back: nil proves that an EchoServer at addr
// was reached through whatever lies between.
func (n *NS) CheckEcho(ctx context.Context, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return fmt.Errorf("reading nonce: %w", err)
	}
	want := hex.EncodeToString(nonce[:]) + "\n"
	if _, err := io.WriteString(c, want); err != nil {
		return fmt.Errorf("writing to %s from %s: %w", addr, n.Name, err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading echo from %s in %s: %w", addr, n.Name, err)
	}
	if got != want {
		return errors.New("echo from " + addr + " does not match")
	}
	return nil
}
