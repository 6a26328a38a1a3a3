package relay

// Relayed data connections: accepting, dialling the target, copying.

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// acceptLoop waits for the expected peer of h, refusing any other, and
// starts the transfer of the first right one.
func (r *Backend) acceptLoop(h *relayHole) {
	defer r.wg.Done()
	defer close(h.done)
	p := h.p
	refused := 0
	defer func() {
		if refused > maxRefusalLogs {
			r.log.Warn("relay refused connections", "session", p.Session(), "pinhole", p.String(),
				"refused", refused, "logged", maxRefusalLogs)
		}
	}()
	var backoff time.Duration
	for {
		c, err := h.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				r.settle(p.ID, errRelayUnused)
				return // Close, TTL or Shutdown
			}
			// Like net/http: a transient failure (EMFILE, ECONNABORTED)
			// must not kill the pinhole. Close or the TTL end the wait.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			r.log.Warn("relay accept failed", "session", p.Session(), "pinhole", p.String(), "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		from := addrOf(c.RemoteAddr())
		if from.Addr() != p.Src {
			refused++
			if refused <= maxRefusalLogs {
				r.log.Warn("relay refused connection", "session", p.Session(), "pinhole", p.String(),
					"from", from, "why", "source address is not the expected peer "+p.Src.String())
			}
			abort(c)
			continue
		}
		r.retire(h) // single use
		t := &relayTransfer{p: p, peer: c}
		if !r.addTransfer(t) {
			abort(c) // Shutdown came first
			r.settle(p.ID, errRelayShutDown)
			return
		}
		go r.relay(t)
		return
	}
}

// addTransfer registers t unless the relay is shut down.
func (r *Backend) addTransfer(t *relayTransfer) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutDown {
		return false
	}
	r.transfers[t] = struct{}{}
	r.wg.Add(1)
	return true
}

// relay dials the target of t and copies both directions until both have
// ended, then logs the transfer.
func (r *Backend) relay(t *relayTransfer) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.transfers, t)
		r.mu.Unlock()
	}()
	p := t.p
	peer := addrOf(t.peer.RemoteAddr())
	target := p.Target()
	start := time.Now()

	d := net.Dialer{Timeout: r.dialTimeout}
	if p.SNAT.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(p.SNAT, 0))
	}
	network := "tcp4"
	if p.Is6() {
		network = "tcp6"
	}
	conn, err := d.DialContext(r.ctx, network, target.String())
	if err != nil {
		r.settle(p.ID, err)
		abort(t.peer)
		r.log.Warn("relay dial failed", "session", p.Session(), "pinhole", p.String(),
			"peer", peer, "target", target, "err", err)
		return
	}
	if !t.setTarget(conn) {
		r.settle(p.ID, errRelayShutDown)
		abort(conn) // Shutdown cut the transfer while dialling
		return
	}
	var from, to net.Conn = t.peer, conn
	if p.TLS != nil {
		// The handshakes end the wait of Connected: a refusal (a client
		// that did not resume its control session) reaches the session,
		// which answers it on the control channel.
		from, to, err = r.secure(p, t.peer, conn)
		r.settle(p.ID, err)
		if err != nil {
			abort(t.peer)
			abort(conn)
			// The one log line of the refusal; the session replaces the
			// transfer's final reply (see Connected).
			r.log.Warn("refused", "session", p.Session(), "what", "data TLS", "pinhole", p.String(),
				"peer", peer.String(), "why", err.Error())
			return
		}
	} else {
		r.settle(p.ID, nil)
	}

	// The conns are passed as they are (*net.TCPConn inside net.Conn), so
	// io.Copy takes the ReaderFrom path: splice(2) on Linux.
	var up, down copyResult
	var wg sync.WaitGroup
	wg.Add(2)
	go relayCopy(to, from, &up, &wg)
	go relayCopy(from, to, &down, &wg)
	wg.Wait()
	from.Close()
	to.Close()

	args := []any{"session", p.Session(), "pinhole", p.String(), "peer", peer,
		"source", addrOf(conn.LocalAddr()), "target", target,
		"bytes_to_target", up.n, "bytes_from_target", down.n,
		"duration", time.Since(start).Round(time.Microsecond)}
	if err := firstErr(up.err, down.err); err != nil {
		args = append(args, "err", err)
	}
	r.log.Info("relayed transfer ended", args...)
}

// setTarget records the dialled connection unless the transfer was cut.
func (t *relayTransfer) setTarget(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.killed {
		return false
	}
	t.target = c
	return true
}

// kill cuts the transfer: both connections are reset.
func (t *relayTransfer) kill() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.killed = true
	abort(t.peer)
	if t.target != nil {
		abort(t.target)
	}
}

// copyResult is the outcome of one direction of a transfer.
type copyResult struct {
	n   int64
	err error
}

// relayCopy copies src to dst until src ends. On a clean end (EOF) it
// half-closes dst, so that the other direction goes on until it ends too.
// On an error it resets both connections, which also ends the other
// direction: an aborted transfer must not look complete to either side.
func relayCopy(dst, src net.Conn, res *copyResult, wg *sync.WaitGroup) {
	defer wg.Done()
	res.n, res.err = io.Copy(dst, src)
	if res.err != nil {
		abort(src)
		abort(dst)
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}

// abort closes c, with a reset rather than a FIN for TCP.
func abort(c net.Conn) {
	if l, ok := c.(interface{ Raw() net.Conn }); ok {
		c = l.Raw() // a TLS leg: reset the TCP connection beneath
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// firstErr returns the first error that is not the consequence of an
// abort by the other direction (a closed connection).
func firstErr(errs ...error) error {
	var closed error
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, net.ErrClosed):
			closed = err
		default:
			return err
		}
	}
	return closed
}

// addrOf returns the address and port of a TCP endpoint, IPv4 unmapped.
func addrOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	if ta, ok := a.(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	} else if a != nil {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
