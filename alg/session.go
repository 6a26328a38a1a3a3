package alg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/rules"
)

// Session relays one FTP control connection between a client and a server,
// rewrites the data-channel announcements through its Planner and opens the
// matching pinholes through its Backend before it forwards them.
//
// Typical usage:
//
//	s := &alg.Session{ID: "s1", Client: c, Server: u, Planner: p, Backend: b, Log: log}
//	err := s.Run(ctx)
//
// Run owns both conns: it closes them when it returns, and every pinhole the
// session opened is closed by then.
type Session struct {
	// ID names the session in logs and pinhole IDs.
	ID string
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
	// OnPinholeOpen, if set, is called just before a pinhole is made live;
	// OnPinholeClose after it is closed, or after it failed to open (reason:
	// "used", "failed", "ttl", "replaced", "refused", "session end").
	OnPinholeOpen  func(p rules.Pinhole)
	OnPinholeClose func(p rules.Pinhole, reason string)

	log *slog.Logger
	pol Policy
	ep  Endpoints

	// wmu serialises writes to Client and keeps them in FIFO order: it is
	// held from the pop of an entry until its reply (and any local replies
	// queued behind it) are written. Lock order: wmu, then mu.
	wmu sync.Mutex

	mu     sync.Mutex
	room   *sync.Cond // signalled when the FIFO shrinks or the session ends
	fifo   []*entry   // outstanding commands, oldest first
	cur    *pinhole   // the announced, not yet used pinhole
	live   map[*pinhole]struct{}
	nextPH int
	used   *pinhole // the pinhole of the transfer in progress (after its 1xx)
	ended  bool

	lastActive atomic.Int64 // unix nanoseconds of the last line either way
	loggedIn   atomic.Bool
	blind      atomic.Bool // after AUTH TLS (AllowTLS): bytes relayed unread
	refusals   int         // lines refused so far (client side only)
	authRes    chan bool   // set while an AUTH awaits its reply (AllowTLS only)
}

// entry is one outstanding command, or a reply ftpalg composed itself that
// must reach the client after the replies to the commands before it.
type entry struct {
	verb  string
	local []byte
}

type pinhole struct {
	p       rules.Pinhole
	release func()
	timer   *time.Timer
	closed  bool
}

// closeAttempts is how often closing a pinhole is tried before the session
// gives up on it (and logs an error).
const closeAttempts = 3

// errEnd ends a session after a refusal that leaves no sane way to go on.
var errEnd = errors.New("session ended by policy")

// transferVerbs open a data connection.
var transferVerbs = map[string]bool{
	"RETR": true, "STOR": true, "STOU": true, "APPE": true,
	"LIST": true, "NLST": true, "MLSD": true,
}

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
	s.ep = Endpoints{unmap(s.ep.Client), unmap(s.ep.Dialled), unmap(s.ep.Upstream), unmap(s.ep.Server)}
	l := s.Log
	if l == nil {
		l = slog.Default()
	}
	s.log = l.With("session", s.ID, "client", s.ep.Client.String(), "server", s.ep.Server.String())
	s.room = sync.NewCond(&s.mu)
	s.live = make(map[*pinhole]struct{})
	// The server speaks first: its greeting answers the connection itself.
	s.fifo = []*entry{{verb: ""}}
	return nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
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
	s.lastActive.Store(time.Now().UnixNano())
	go func() { done <- result{true, s.clientToServer(ctx)} }()
	go func() { done <- result{false, s.serverToClient(ctx)} }()
	timedOut := make(chan error, 1)
	stopWatch := s.watchTimeouts(timedOut)
	defer stopWatch()

	var first result
	select {
	case first = <-done:
	case err := <-timedOut:
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
		case <-time.After(s.pol.DrainTimeout):
		case <-ctx.Done():
		}
	}
	s.Client.Close()
	s.Server.Close()
	s.mu.Lock()
	s.ended = true
	s.room.Broadcast()
	s.mu.Unlock()
	if !secondDone {
		// Closed conns and the ended flag unblock it; an Open in flight is
		// bounded by OpenTimeout. Waiting means no pinhole can be opened
		// after closeAll.
		<-done
	}
	s.closeAll("session end")
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

// errTimeout ends a session that timed out (login or idle).
var errTimeout = errors.New("session timed out")

// watchTimeouts enforces LoginTimeout and IdleTimeout: on expiry it answers
// the client with 421, logs one line, closes both conns and reports on
// timedOut. It returns the function that stops it.
func (s *Session) watchTimeouts(timedOut chan<- error) func() {
	tick := min(s.pol.LoginTimeout, s.pol.IdleTimeout) / 4
	tick = max(min(tick, time.Second), 10*time.Millisecond)
	start := time.Now()
	t := time.NewTicker(tick)
	stop := make(chan struct{})
	go func() {
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				if s.blind.Load() {
					return
				}
				var what, reply string
				// transferring before lastActive: a reply is stamped before
				// it is popped, so a transfer that just ended is seen with
				// its fresh stamp.
				busy := s.transferring()
				idle := now.Sub(time.Unix(0, s.lastActive.Load()))
				switch {
				case !s.loggedIn.Load() && now.Sub(start) >= s.pol.LoginTimeout:
					what, reply = "login timeout", fmt.Sprintf("421 ftpalg: not logged in after %v; closing the connection", s.pol.LoginTimeout)
				case idle >= s.pol.IdleTimeout && !busy:
					what, reply = "idle timeout", fmt.Sprintf("421 ftpalg: idle for %v; closing the connection", s.pol.IdleTimeout)
				default:
					continue
				}
				// A write stuck on a client that does not read holds wmu:
				// the deadline frees it, so the 421 can go out.
				s.Client.SetWriteDeadline(time.Now().Add(time.Second))
				s.refuseEnd(what, fmt.Sprintf("%s after %v", what, now.Sub(start).Round(time.Millisecond)), reply)
				s.Client.Close()
				s.Server.Close()
				timedOut <- errTimeout
				return
			}
		}
	}()
	return func() { close(stop) }
}

// transferring reports whether a transfer command awaits its final reply.
func (s *Session) transferring() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.fifo {
		if transferVerbs[e.verb] {
			return true
		}
	}
	return false
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

// --- client -> server ---

func (s *Session) clientToServer(ctx context.Context) error {
	lr := ftp.NewLineReader(s.Client, s.pol.MaxLine)
	syntaxErrs := 0
	for {
		line, err := lr.ReadLine()
		if err != nil {
			return s.clientReadError(err)
		}
		s.lastActive.Store(time.Now().UnixNano())
		cmd, err := ftp.ParseCommand(line)
		if err != nil {
			syntaxErrs++
			ref, end := RefuseSyntax(s.pol, line, err, syntaxErrs)
			what := "syntax"
			if end {
				what = "garbage"
				s.refuseEnd(what, ref.Why, ref.Reply)
				return errEnd
			}
			if err := s.refuse(ctx, what, ref.Why, ref.Reply); err != nil {
				return err
			}
			continue
		}
		syntaxErrs = 0
		if err := s.handleCommand(ctx, cmd, line); err != nil {
			return err
		}
	}
}

func (s *Session) clientReadError(err error) error {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil
	case errors.Is(err, ftp.ErrLineTooLong):
		ref, _ := RefuseLineTooLong(s.pol.MaxLine)
		s.refuseEnd("line too long", ref.Why, ref.Reply)
		return errEnd
	case errors.Is(err, ftp.ErrNUL):
		ref, _ := RefuseNUL()
		s.refuseEnd("NUL", ref.Why, ref.Reply)
		return errEnd
	}
	return err
}

func (s *Session) handleCommand(ctx context.Context, cmd ftp.Command, line []byte) error {
	switch cmd.Verb {
	case "LPRT", "LPSV", "AUTH":
		if ref := CheckCommand(s.pol, cmd.Verb); ref != nil {
			return s.refuse(ctx, cmd.Verb, ref.Why, ref.Reply)
		}
		// Only AUTH with AllowTLS gets here.
		return s.forwardAuth(ctx, cmd, line)
	case "PORT", "EPRT":
		out, ref := s.active(ctx, cmd, line)
		if ref != nil {
			return s.refuse(ctx, cmd.Verb, ref.Why, ref.Reply)
		}
		return s.forward(ctx, cmd.Verb, out)
	case "REIN":
		s.closeCurrent("reinitialised")
	}
	return s.forward(ctx, cmd.Verb, line)
}

// forward queues verb in the FIFO and sends line to the server.
func (s *Session) forward(ctx context.Context, verb string, line []byte) error {
	if err := s.push(&entry{verb: verb}); err != nil {
		return err
	}
	if _, err := s.Server.Write(line); err != nil {
		return fmt.Errorf("writing to server: %w", err)
	}
	return nil
}

// push appends e to the FIFO, waiting while it is full.
func (s *Session) push(e *entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.fifo) >= s.pol.MaxPending && !s.ended {
		s.room.Wait()
	}
	if s.ended {
		return net.ErrClosed
	}
	s.fifo = append(s.fifo, e)
	return nil
}

// refuse answers the client with reply (in FIFO order, after the replies
// to the commands before it) and logs one line. The session goes on.
func (s *Session) refuse(ctx context.Context, what, why, reply string) error {
	if s.refusals++; s.refusals > s.pol.MaxRefusals {
		s.refuseEnd("too many refusals", fmt.Sprintf("%d lines refused in this session", s.refusals-1),
			"421 ftpalg: too many refused commands; closing the connection")
		return errEnd
	}
	s.log.Warn("refused", "what", what, "why", why, "reply", reply)
	b := []byte(reply + "\r\n")
	// Wait for room first (without wmu, so replies can drain the FIFO).
	s.mu.Lock()
	for len(s.fifo) >= s.pol.MaxPending && !s.ended {
		s.room.Wait()
	}
	s.mu.Unlock()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return net.ErrClosed
	}
	if len(s.fifo) > 0 {
		s.fifo = append(s.fifo, &entry{local: b})
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if _, err := s.Client.Write(b); err != nil {
		return fmt.Errorf("writing to client: %w", err)
	}
	return nil
}

// refuseEnd answers the client at once (the session is ending, so FIFO
// order no longer matters) and logs one line.
func (s *Session) refuseEnd(what, why, reply string) {
	s.log.Warn("refused", "what", what, "why", why, "reply", reply, "end", true)
	// The deadline first: it also frees a reply write stuck on a client
	// that does not read, which holds wmu.
	s.Client.SetWriteDeadline(time.Now().Add(time.Second))
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.Client.SetWriteDeadline(time.Now().Add(time.Second))
	s.Client.Write([]byte(reply + "\r\n"))
}

// active checks and translates a PORT or EPRT: it returns the line to
// forward, or the refusal.
func (s *Session) active(ctx context.Context, cmd ftp.Command, line []byte) ([]byte, *Refusal) {
	a, ref := CheckActive(s.ep, s.pol, cmd.Verb, cmd.Arg)
	if ref != nil {
		return nil, ref
	}
	plan, err := s.openPinhole(ctx, a)
	if err != nil {
		return nil, refusal("425", "cannot open data connection: "+err.Error(), err.Error())
	}
	if plan.Announce == a.Addr {
		return line, nil
	}
	var arg string
	if a.Kind == EPRT {
		arg = ftp.FormatEPRT(plan.Announce)
	} else if arg, err = ftp.FormatPORT(plan.Announce); err != nil {
		s.closeCurrent("refused")
		return nil, refusal("425", "cannot open data connection: "+err.Error(), err.Error())
	}
	return []byte(cmd.Verb + " " + arg + lineEnd(line)), nil
}

func lineEnd(line []byte) string {
	if bytes.HasSuffix(line, []byte("\r\n")) {
		return "\r\n"
	}
	return "\n"
}

// forwardAuth forwards an AUTH (only with AllowTLS) and waits for its reply
// before reading on: after a 234 the client speaks TLS, and the session
// relays bytes without looking at them.
func (s *Session) forwardAuth(ctx context.Context, cmd ftp.Command, line []byte) error {
	res := make(chan bool, 1)
	s.mu.Lock()
	s.authRes = res
	s.mu.Unlock()
	if err := s.forward(ctx, cmd.Verb, line); err != nil {
		return err
	}
	select {
	case blind := <-res:
		if !blind {
			return nil
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	s.log.Warn("control channel encrypted: ALG is blind, no pinholes for this session", "what", "AUTH")
	s.closeCurrent("blind")
	_, err := io.Copy(s.Server, s.Client)
	return err
}

// --- server -> client ---

func (s *Session) serverToClient(ctx context.Context) error {
	// An AUTH still waiting for its reply when the server side ends gets
	// "not blind", so that the client side does not wait for ever.
	defer func() {
		s.mu.Lock()
		res := s.authRes
		s.authRes = nil
		s.mu.Unlock()
		if res != nil {
			res <- false
		}
	}()
	rr := ftp.NewReplyReader(s.Server, s.pol.MaxLine, s.pol.MaxReplyLines)
	for {
		r, err := rr.ReadReply()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				return nil
			case errors.Is(err, ftp.ErrLineTooLong), errors.Is(err, ftp.ErrReplyTooLong),
				errors.Is(err, ftp.ErrNUL), errors.Is(err, ftp.ErrSyntax):
				ref, _ := RefuseServerReply(err)
				s.refuseEnd("server reply", ref.Why, ref.Reply)
				return errEnd
			}
			return err
		}
		s.lastActive.Store(time.Now().UnixNano())
		if r.Code == 230 {
			s.loggedIn.Store(true)
		}
		blind, err := s.handleReply(ctx, r)
		if err != nil {
			return err
		}
		if blind {
			// Encrypted from here: no login or idle to watch (the 230 is
			// inside TLS); the peers' own timeouts apply.
			s.blind.Store(true)
			_, err := io.Copy(s.Client, s.Server)
			return err
		}
	}
}

func (s *Session) head() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fifo) == 0 {
		return ""
	}
	return s.fifo[0].verb
}

// handleReply forwards one reply, translating it where it answers one of
// this session's PASV/EPSV. It reports whether the session turned blind
// (a 234 to AUTH with AllowTLS).
func (s *Session) handleReply(ctx context.Context, r ftp.Reply) (bool, error) {
	out := r.Bytes()
	verb := s.head()
	final := !r.Preliminary()
	blind := false
	if final && transferVerbs[verb] {
		s.awaitData(ctx)
	}
	switch {
	case r.Preliminary() && transferVerbs[verb]:
		s.markUsed()
	case r.Code == 425 || r.Code == 426:
		s.closeCurrent("failed")
		s.closeGrace("failed")
	case verb == "PASV" && r.Code == 227, verb == "EPSV" && r.Code == 229:
		out = s.passive(ctx, verb, r)
	case (verb == "PORT" || verb == "EPRT") && r.Code >= 400:
		s.closeCurrent("failed")
	case verb == "REIN" && r.Code == 220:
		s.closeCurrent("reinitialised")
	case verb == "FEAT" && r.Code == 211 && !s.pol.AllowTLS:
		out = stripAuth(r)
	case verb == "AUTH":
		s.mu.Lock()
		res := s.authRes
		s.authRes = nil
		s.mu.Unlock()
		blind = r.Code == 234
		if res != nil {
			defer func() { res <- blind }()
		}
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.Client.Write(out); err != nil {
		return false, fmt.Errorf("writing to client: %w", err)
	}
	if !final {
		return false, nil
	}
	// Pop the answered command, then send the replies ftpalg composed for
	// the commands that came right after it.
	var locals [][]byte
	s.mu.Lock()
	if len(s.fifo) > 0 {
		s.fifo = s.fifo[1:]
	}
	for len(s.fifo) > 0 && s.fifo[0].local != nil {
		locals = append(locals, s.fifo[0].local)
		s.fifo = s.fifo[1:]
	}
	s.room.Broadcast()
	s.mu.Unlock()
	for _, b := range locals {
		if _, err := s.Client.Write(b); err != nil {
			return false, fmt.Errorf("writing to client: %w", err)
		}
	}
	return blind, nil
}

// passive translates the reply to this session's PASV or EPSV and opens the
// pinhole before the reply is forwarded. A reply that cannot be honoured is
// replaced by a 425 to the client.
func (s *Session) passive(ctx context.Context, verb string, r ftp.Reply) []byte {
	refuse := func(ref *Refusal) []byte {
		s.log.Warn("refused", "what", verb+" reply", "why", ref.Why, "reply", ref.Reply)
		return []byte(ref.Reply + "\r\n")
	}
	a, start, end, ref := CheckPassive(s.ep, s.pol, r)
	if ref != nil {
		return refuse(ref)
	}
	raw := r.Lines[0]
	text := r.Text()
	plan, err := s.openPinhole(ctx, a)
	if err != nil {
		return refuse(refusal("425", "cannot open data connection: "+err.Error(), err.Error()))
	}
	var repl string
	if a.Kind == PASV {
		if plan.Announce == a.Addr {
			return r.Bytes()
		}
		if repl, err = ftp.FormatPORT(plan.Announce); err != nil {
			s.closeCurrent("refused")
			return refuse(refusal("425", "cannot translate passive reply", err.Error()))
		}
	} else {
		if plan.Announce.Port() == a.Addr.Port() {
			return r.Bytes()
		}
		d := text[start]
		repl = fmt.Sprintf("%c%c%c%d%c", d, d, d, plan.Announce.Port(), d)
	}
	// raw = "227 " + text + line end: replace only the numbers.
	var b bytes.Buffer
	b.Write(raw[:4])
	b.WriteString(text[:start])
	b.WriteString(repl)
	b.WriteString(text[end:])
	b.Write(raw[4+len(text):])
	return b.Bytes()
}

// stripAuth removes the AUTH feature lines from a FEAT reply, so that
// clients do not try TLS the policy refuses.
func stripAuth(r ftp.Reply) []byte {
	if !r.Multiline() {
		return r.Bytes()
	}
	var b bytes.Buffer
	for i, l := range r.Lines {
		f := strings.ToUpper(strings.TrimSpace(string(l)))
		if i > 0 && i < len(r.Lines)-1 && (f == "AUTH" || strings.HasPrefix(f, "AUTH ")) {
			continue
		}
		b.Write(l)
	}
	return b.Bytes()
}

// --- pinholes ---

// openPinhole plans a, checks the plan against the policy invariant, closes
// the unused previous pinhole and opens the new one.
func (s *Session) openPinhole(ctx context.Context, a Announcement) (Plan, error) {
	ctx, cancel := context.WithTimeout(ctx, s.pol.OpenTimeout)
	defer cancel()
	// The unused previous pinhole goes first: its pool port is free again
	// for the new one.
	s.closeCurrent("replaced")
	plan, err := s.Planner.Plan(ctx, s.ep, a)
	if err != nil {
		return Plan{}, err
	}
	release := func() {
		if plan.Release != nil {
			plan.Release()
		}
	}
	if err := checkPlan(s.ep, a, plan, s.pol.MinDataPort); err != nil {
		release()
		s.log.Error("planner broke the pinhole invariant", "err", err)
		return Plan{}, errors.New("internal error")
	}
	s.mu.Lock()
	s.nextPH++
	plan.Pinhole.ID = fmt.Sprintf("%s.p%d", s.ID, s.nextPH)
	s.mu.Unlock()
	plan.Pinhole.Session = s.ID
	plan.Pinhole.TTL = s.pol.PinholeTTL
	plan.Pinhole.Passive = a.Kind.Passive()
	// Observers learn of the pinhole before it is live, so that a
	// connection through it cannot come first.
	if s.OnPinholeOpen != nil {
		s.OnPinholeOpen(plan.Pinhole)
	}
	if err := s.Backend.Open(ctx, plan.Pinhole); err != nil {
		s.log.Error("opening pinhole", "pinhole", plan.Pinhole.String(), "err", err)
		// Whatever part of it the backend could not take back is closed
		// like any pinhole (retried; its port kept if that fails).
		s.close(&pinhole{p: plan.Pinhole, release: plan.Release}, "failed")
		return Plan{}, errors.New("firewall error")
	}
	ph := &pinhole{p: plan.Pinhole, release: plan.Release}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		s.close(ph, "session end")
		return Plan{}, net.ErrClosed
	}
	s.cur = ph
	s.live[ph] = struct{}{}
	ph.timer = time.AfterFunc(s.pol.PinholeTTL, func() { s.close(ph, "ttl") })
	s.mu.Unlock()
	s.log.Info("pinhole open", "pinhole", ph.p.String(), "kind", a.Kind.String(),
		"announced", a.Addr.String(), "rewritten", plan.Announce.String())
	return plan, nil
}

// markUsed starts the grace period of the current pinhole: its transfer has
// begun.
func (s *Session) markUsed() {
	s.mu.Lock()
	ph := s.cur
	s.cur = nil
	if ph != nil && !ph.closed {
		ph.timer.Reset(s.pol.UseGrace)
	}
	if ph != nil {
		s.used = ph
	}
	s.mu.Unlock()
}

// awaitData holds the final reply of a transfer until a backend that
// carries the data connection itself (the relay) has connected it: a
// server may finish writing into the relay, and send 226, before the relay
// reached the client, and clients such as curl then fail.
func (s *Session) awaitData(ctx context.Context) {
	s.mu.Lock()
	ph := s.used
	s.used = nil
	s.mu.Unlock()
	c, ok := s.Backend.(rules.Connector)
	if ph == nil || !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.pol.OpenTimeout)
	defer cancel()
	if err := c.Connected(ctx, ph.p); err != nil {
		s.log.Warn("data connection not relayed", "pinhole", ph.p.ID, "err", err)
	}
}

// PinholeUsed tells the session that the data connection of pinhole id was
// seen (e.g. in conntrack): it is closed at once.
func (s *Session) PinholeUsed(id string) {
	s.mu.Lock()
	var ph *pinhole
	for p := range s.live {
		if p.p.ID == id {
			ph = p
		}
	}
	s.mu.Unlock()
	if ph != nil {
		s.close(ph, "used")
	}
}

func (s *Session) closeCurrent(reason string) {
	s.mu.Lock()
	ph := s.cur
	s.mu.Unlock()
	if ph != nil {
		s.close(ph, reason)
	}
}

// closeGrace closes the pinholes whose transfer has begun.
func (s *Session) closeGrace(reason string) {
	s.mu.Lock()
	var list []*pinhole
	for ph := range s.live {
		if ph != s.cur {
			list = append(list, ph)
		}
	}
	s.mu.Unlock()
	for _, ph := range list {
		s.close(ph, reason)
	}
}

func (s *Session) closeAll(reason string) {
	s.mu.Lock()
	list := make([]*pinhole, 0, len(s.live))
	for ph := range s.live {
		list = append(list, ph)
	}
	s.mu.Unlock()
	for _, ph := range list {
		s.close(ph, reason)
	}
}

// close closes ph once, whatever calls it first.
func (s *Session) close(ph *pinhole, reason string) {
	s.mu.Lock()
	if ph.closed {
		s.mu.Unlock()
		return
	}
	ph.closed = true
	if ph.timer != nil {
		ph.timer.Stop()
	}
	if s.cur == ph {
		s.cur = nil
	}
	delete(s.live, ph)
	s.mu.Unlock()
	// Not the session's context: a pinhole must close even when the session
	// is being cancelled. A failure (xtables lock busy, say) is retried: a
	// pinhole left open is the one thing this helper must not do.
	var err error
	for attempt := range closeAttempts {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.pol.OpenTimeout)
		err = s.Backend.Close(ctx, ph.p)
		cancel()
		if err == nil {
			break
		}
		s.log.Warn("closing pinhole failed, retrying", "pinhole", ph.p.ID, "attempt", attempt+1, "err", err)
	}
	if err != nil {
		// Its pool port stays taken: handing it out again while a stale
		// DNAT rule for it may remain would misroute the next transfer.
		s.log.Error("closing pinhole", "pinhole", ph.p.String(), "reason", reason, "err", err)
	} else {
		s.log.Info("pinhole closed", "pinhole", ph.p.ID, "reason", reason)
		if ph.release != nil {
			ph.release()
		}
	}
	if s.OnPinholeClose != nil {
		s.OnPinholeClose(ph.p, reason)
	}
}
