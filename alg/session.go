package alg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// Session relays one FTP control connection between a client and a server.
// It is the I/O shell around a Machine, which decides everything: the
// Session reads lines and replies, hands them to the Machine, and performs
// its Actions (writes, plans and opens pinholes through its Planner and
// Backend before it forwards the announcements, queues closes).
//
// Typical usage:
//
//	s := &alg.Session{ID: 1, Client: c, Server: u, Planner: p, Backend: b, Log: log}
//	err := s.Run(ctx)
//
// Run owns both conns: it closes them when it returns, and every pinhole the
// session opened is closed by then.
//
// Goroutines: one reads the client, one the server; writes to the client
// leave in the Machine's order (clientWriter); a closer closes pinholes
// (with retries), so that neither reading side waits for a close; one
// timer, on Clock, at the Machine's next deadline.
type Session struct {
	// ID numbers the session; its pinholes are rules.PinholeID{ID, n}. In
	// logs it is "s<ID>".
	ID uint64
	// Client and Server are the two control connections.
	Client, Server net.Conn
	// Endpoints are the real addresses of the session. If zero, they are
	// taken from the conns (Dialled = Client.LocalAddr).
	Endpoints Endpoints
	// Planner and Backend decide and open pinholes. Both are required.
	Planner Planner
	Backend rules.Backend
	// Policy; if zero, DefaultPolicy.
	Policy Policy
	// Log; if nil, slog.Default.
	Log *slog.Logger
	// Observer, if set, learns of every pinhole's life.
	Observer Observer
	// Clock; if nil, the system clock.
	Clock          Clock
	TLSTermination // the TLS side under TLSTerminate (tls.go)

	log   *slog.Logger
	pol   Policy
	ep    Endpoints
	clock Clock

	mu    sync.Mutex // guards m and timer
	room  *sync.Cond // signalled after every step: the FIFO may have shrunk
	m     *Machine
	timer interface{ Stop() bool }
	due   time.Time // when timer fires

	w       *clientWriter
	closer  *closer
	authRes chan bool     // the answer to an AUTH under passthrough
	srvDone chan struct{} // closed when the server side stops
	endOnce sync.Once
	ended   chan error // the reason a Machine's ActEnd gave
}

// Observer learns of the life of each pinhole, e.g. to watch for its data
// connection in conntrack. Its methods are called from the session's
// goroutines and must not block.
type Observer interface {
	// PinholeOpening is called just before p is made live, so that a
	// connection through it cannot come first.
	PinholeOpening(p rules.Pinhole)
	// PinholeClosed is called after p is closed, or after it failed to
	// open (reason: "used", "failed", "ttl", "replaced", "refused",
	// "reinitialised", "blind", "session end").
	PinholeClosed(p rules.Pinhole, reason string)
}

// errEnd ends a session after a refusal that leaves no sane way to go on.
var errEnd = errors.New("session ended by policy")

// errTimeout ends a session that timed out (login or idle).
var errTimeout = errors.New("session timed out")

func (s *Session) init() error {
	if s.Client == nil || s.Server == nil || s.Planner == nil || s.Backend == nil {
		return errors.New("session needs Client, Server, Planner and Backend")
	}
	s.pol = s.Policy
	if s.pol == (Policy{}) {
		s.pol = DefaultPolicy()
	}
	if err := s.pol.Validate(); err != nil {
		return err
	}
	s.ep = s.Endpoints
	if s.ep == (Endpoints{}) {
		s.ep = Endpoints{
			Client:   addrPort(s.Client.RemoteAddr()),
			Dialled:  addrPort(s.Client.LocalAddr()),
			Upstream: addrPort(s.Server.LocalAddr()),
			Server:   addrPort(s.Server.RemoteAddr()),
		}
	}
	s.ep = unmapEndpoints(s.ep)
	l := s.Log
	if l == nil {
		l = slog.Default()
	}
	s.log = l.With("session", rules.SessionName(s.ID), "client", s.ep.Client.String(), "server", s.ep.Server.String())
	s.clock = s.Clock
	if s.clock == nil {
		s.clock = realClock{}
	}
	s.room = sync.NewCond(&s.mu)
	if err := s.initTLS(); err != nil {
		return err
	}
	s.w = newClientWriter(s.Client)
	s.closer = newCloser(s.backend, s.pol.OpenTimeout, s.log, s.Observer)
	s.mu.Lock()
	s.m = NewMachine(s.ID, s.ep, s.pol, s.clock.Now())
	s.m.SetTLS(s.ClientTLS, s.TLS)
	s.mu.Unlock()
	s.authRes = make(chan bool, 1)
	s.srvDone = make(chan struct{})
	s.ended = make(chan error, 1)
	return nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Run relays until either side ends, then closes both conns and every
// pinhole of the session. It returns nil when a peer closed the connection,
// otherwise the reason the session ended.
func (s *Session) Run(ctx context.Context) error {
	if err := s.init(); err != nil {
		s.Client.Close()
		s.Server.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		s.Client.Close()
		s.Server.Close()
	})
	defer stop()

	type result struct {
		fromClient bool
		err        error
	}
	done := make(chan result, 2)
	s.mu.Lock()
	s.arm()
	s.mu.Unlock()
	go func() { done <- result{true, s.clientToServer(ctx)} }()
	go func() { done <- result{false, s.serverToClient(ctx)} }()

	var first result
	select {
	case first = <-done:
	case err := <-s.ended:
		// The conns are closed: both directions end at once.
		first = <-done
		first.err = err
	}
	secondDone := false
	// When the client ended, the server may still owe replies (the 221 to
	// QUIT): half-close and let them drain. When the server ended, nothing
	// more can come for the client.
	if first.err == nil && first.fromClient {
		closeWrite(s.Server)
		select {
		case second := <-done:
			secondDone = true
			// Errors from our own half-close are expected; only a policy
			// end still counts.
			if errors.Is(second.err, errEnd) {
				first.err = second.err
			}
		case err := <-s.ended:
			first.err = err
		case <-time.After(s.pol.DrainTimeout):
		case <-ctx.Done():
		}
	}
	// What the writer still holds (the 221 to QUIT) goes out first, if
	// the client reads.
	s.Client.SetWriteDeadline(time.Now().Add(s.pol.DrainTimeout))
	s.w.flush()
	s.Client.Close()
	s.Server.Close()
	s.mu.Lock()
	acts := s.m.End("session end")
	if s.timer != nil {
		s.timer.Stop()
	}
	s.room.Broadcast()
	s.mu.Unlock()
	s.perform(ctx, acts)
	if !secondDone {
		// Closed conns and the ended machine unblock it; an Open in
		// flight is bounded by OpenTimeout, and its pinhole is closed
		// when it reports to the ended machine.
		<-done
	}
	s.closer.finish()
	select {
	case err := <-s.ended:
		first.err = err
	default:
	}
	if errors.Is(first.err, net.ErrClosed) || errors.Is(first.err, io.ErrUnexpectedEOF) {
		first.err = nil
	}
	if errors.Is(first.err, errEnd) || errors.Is(first.err, errTimeout) {
		return first.err
	}
	if first.err != nil && ctx.Err() == nil {
		return first.err
	}
	return nil
}

// closeWrite half-closes c when it can, else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return
		}
	}
	c.Close()
}

// step runs one event through the Machine and returns the actions left
// to perform. Writes to the client are queued right here, under the lock,
// so that they leave in the order the Machine decided them; refusals are
// logged here too, before their replies leave.
func (s *Session) step(event func(m *Machine) []Action) []Action {
	s.mu.Lock()
	acts := event(s.m)
	rest := acts[:0] // in place: client writes are taken out
	for _, a := range acts {
		switch {
		case a.Kind == ActForward && a.To == Client:
			s.w.push(a.Line)
			continue
		case a.Kind == ActRefused:
			s.log.Warn("refused", "what", a.What, "why", a.Refusal.Why, "reply", a.Refusal.Reply)
			continue
		case a.Kind == ActError:
			s.log.Error("refusing an announcement", "err", a.Err)
			continue
		case a.Kind == ActStartTLS:
			// The 234 is queued: what comes after it waits for TLS.
			s.w.hold()
		}
		rest = append(rest, a)
	}
	s.arm()
	s.room.Broadcast()
	s.mu.Unlock()
	s.w.drain()
	return rest
}

// arm sets the timer to the Machine's next deadline, unless it fires
// earlier already (a Tick that comes early changes nothing and arms anew:
// the idle deadline moves with every line, and re-arming each time would
// cost more). s.mu is held.
func (s *Session) arm() {
	d := s.m.Deadline()
	if s.timer != nil && !s.due.IsZero() && !d.Before(s.due) {
		return
	}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.due = d
	if d.IsZero() {
		return
	}
	s.timer = s.clock.AfterFunc(d.Sub(s.clock.Now()), s.tick)
}

func (s *Session) tick() {
	acts := s.step(func(m *Machine) []Action {
		s.due = time.Time{} // fired: arm anew
		return m.Tick(s.clock.Now())
	})
	s.perform(context.Background(), acts)
}

// perform carries out actions in order. It reports an error that ends the
// goroutine's loop (a failed write to the server, the session's end).
func (s *Session) perform(ctx context.Context, acts []Action) error {
	for _, a := range acts {
		switch a.Kind {
		case ActForward: // to the server; client writes were queued in step
			if _, err := s.Server.Write(a.Line); err != nil {
				return fmt.Errorf("writing to server: %w", err)
			}
		case ActClose:
			if a.Reason == "replaced" {
				// An ActPlan follows: see closer.
				s.closer.closeNow(a.Pinhole, a.Release, a.Reason)
				continue
			}
			s.closer.close(a.Pinhole, a.Release, a.Reason)
		case ActPlan:
			if err := s.open(ctx, a.Opening); err != nil {
				return err
			}
		case ActHoldClient:
			// Handled by the client loop.
		case ActTLS:
			s.authRes <- a.Blind
		case ActEnd:
			s.log.Warn("refused", "what", a.What, "why", a.Refusal.Why, "reply", a.Refusal.Reply, "end", true)
			s.w.last(a.Line)
			err := errEnd
			if a.What == "login timeout" || a.What == "idle timeout" {
				err = errTimeout
			}
			s.endOnce.Do(func() { s.ended <- err })
			s.Client.Close()
			s.Server.Close()
			return err
		}
	}
	return nil
}
