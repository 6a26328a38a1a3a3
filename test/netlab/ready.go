package netlab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// waitReady waits until the server answers "220" on both families of
// loopback, or fails t.
func (s *Server) waitReady(t testing.TB) {
	t.Helper()
	s.waitReadyOn(t, "127.0.0.1", "::1")
}

// waitReadyOn waits until the server answers "220" on each host, or fails t.
func (s *Server) waitReadyOn(t testing.TB, hosts ...string) {
	t.Helper()
	for _, host := range hosts {
		addr := net.JoinHostPort(host, strconv.Itoa(s.Port))
		var last error
		err := waitFor(10*time.Second, func() bool {
			if exited, werr := s.Proc.Exited(); exited {
				last = fmt.Errorf("%s exited: %v", s.Kind, werr)
				return true
			}
			last = s.greet(addr)
			return last == nil
		})
		if err == nil {
			err = last
		}
		if err != nil {
			t.Fatalf("waiting for %s on %s: %v\n%s", s.Kind, addr, err, tail(s.Proc.Output(), 2048))
		}
	}
}

// greet connects to addr in the server's namespace and reads the greeting.
func (s *Server) greet(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := s.NS.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading greeting: %w", err)
		}
		if strings.HasPrefix(line, "220 ") {
			_, _ = io.WriteString(c, "QUIT\r\n")
			return nil
		}
		if !strings.HasPrefix(line, "220-") {
			return fmt.Errorf("unexpected greeting %q", line)
		}
	}
}

// waitFor polls cond every 20 ms until it is true or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
