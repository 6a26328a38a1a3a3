package alg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/rules"
)

// Proxy accepts control connections, dials the server each one is for and
// runs a Session per connection. It enforces the session limits and drains
// sessions on shutdown.
//
// Typical usage:
//
//	p := &alg.Proxy{Upstream: alg.FixedUpstream(srv), Planner: pl, Backend: b, Log: log}
//	err := p.Serve(ctx, ln)
type Proxy struct {
	// Upstream returns the server to dial for an accepted connection: the
	// original destination in gateway mode, a fixed server in reverse mode.
	// Required. Its error is quoted in the 421 reply to the client.
	Upstream func(c net.Conn) (netip.AddrPort, error)
	// Dial dials the server. If nil, a net.Dialer with ConnectTimeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Transparent says the client dialled the server itself and was
	// intercepted (gateway mode): the address it dialled is the server's.
	// Otherwise it dialled the listener (reverse mode).
	Transparent bool
	// Planner, Backend and Policy are handed to every Session. Set Policy
	// before Serve; change it later with Reload.
	Planner Planner
	Backend rules.Backend
	Policy  Policy
	// Log; if nil, slog.Default.
	Log *slog.Logger
	// MaxSessions bounds concurrent sessions (0: 1024). MaxPerClient bounds
	// them per client address (0: 32), so one address cannot starve the
	// others. A connection over a limit gets a 421 reply and is closed.
	MaxSessions, MaxPerClient int
	// ConnectTimeout bounds dialling the server (0: 10s).
	ConnectTimeout time.Duration
	// DrainTimeout is how long Serve waits for sessions after ctx ends
	// before it closes them (0: 10s).
	DrainTimeout time.Duration
	// Observer, if set, is handed to every Session.
	Observer Observer
	// TLS and TLSBackend terminate FTPS under TLSTerminate (see secure).
	TLS        *ftps.Terminator
	TLSBackend rules.Backend

	mu        sync.Mutex
	seq       uint64
	sessions  map[uint64]*Session
	started   map[uint64]time.Time
	perClient map[netip.Addr]int
	wg        sync.WaitGroup
	cut       chan struct{} // closed by EndDrain
	cutOnce   sync.Once
}

// Limits are the settings of a Proxy that Reload can change.
type Limits struct {
	Policy                    Policy
	MaxSessions, MaxPerClient int
	ConnectTimeout            time.Duration
	DrainTimeout              time.Duration
}

// Reload makes l the settings of every session accepted from now on.
// Running sessions keep the policy they started with.
func (p *Proxy) Reload(l Limits) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Policy = l.Policy
	p.MaxSessions, p.MaxPerClient = l.MaxSessions, l.MaxPerClient
	p.ConnectTimeout, p.DrainTimeout = l.ConnectTimeout, l.DrainTimeout
}

// EndDrain cuts the drain of Serve short: the sessions still running are
// told 421 and closed now. Safe to call at any time, more than once.
func (p *Proxy) EndDrain() {
	p.mu.Lock()
	p.initLocked()
	p.mu.Unlock()
	p.cutOnce.Do(func() { close(p.cut) })
}

func (p *Proxy) initLocked() {
	if p.sessions == nil {
		p.sessions = make(map[uint64]*Session)
		p.started = make(map[uint64]time.Time)
		p.perClient = make(map[netip.Addr]int)
		p.cut = make(chan struct{})
	}
}

// SessionInfo describes one running session, for status displays.
type SessionInfo struct {
	ID             string
	Client, Server netip.AddrPort
	Start          time.Time
	// State: "connecting" (dialling the server), "login" (no 230 yet),
	// "logged in", or "tls" (AUTH passed through: the proxy is blind).
	State string
}

// Snapshot lists the running sessions, oldest first.
func (p *Proxy) Snapshot() []SessionInfo {
	type entry struct {
		in SessionInfo
		s  *Session
	}
	p.mu.Lock()
	list := make([]entry, 0, len(p.sessions))
	for id, s := range p.sessions {
		list = append(list, entry{SessionInfo{ID: rules.SessionName(id), Start: p.started[id], State: "connecting"}, s})
	}
	p.mu.Unlock()
	out := make([]SessionInfo, 0, len(list))
	for _, e := range list {
		if e.s != nil {
			e.in.Client, e.in.Server = e.s.Endpoints.Client, e.s.Endpoints.Server
			e.in.State = e.s.state()
		}
		out = append(out, e.in)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return a.Start.Compare(b.Start) })
	return out
}

// state is the session's state for Snapshot.
func (s *Session) state() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.m == nil:
		return "connecting"
	case s.m.Blind():
		return "tls"
	case s.m.LoggedIn():
		return "logged in"
	}
	return "login"
}

// Accepted is the number of sessions accepted since the start (not counting
// connections refused by a limit).
func (p *Proxy) Accepted() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// FixedUpstream returns an Upstream that always names srv.
func FixedUpstream(srv netip.AddrPort) func(net.Conn) (netip.AddrPort, error) {
	return func(net.Conn) (netip.AddrPort, error) { return srv, nil }
}

func (p *Proxy) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

// Serve accepts on ln until ctx ends, then stops accepting, lets running
// sessions finish for DrainTimeout and closes the rest. It returns when
// every session has ended (and so every pinhole is closed).
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	if p.Upstream == nil || p.Planner == nil || p.Backend == nil {
		return errors.New("proxy needs Upstream, Planner and Backend")
	}
	// Several listeners may share one Proxy (and its limits).
	p.mu.Lock()
	p.initLocked()
	cut := p.cut
	p.mu.Unlock()
	sctx, cancelSessions := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSessions()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() != nil || errors.Is(aerr, net.ErrClosed) {
				break
			}
			// EMFILE, ENOBUFS, ...: transient; the daemon must not die of
			// them. Back off and go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log().Warn("accept failed", "err", aerr, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			continue
		}
		backoff = 0
		p.accept(sctx, c)
	}
	ln.Close()

	p.mu.Lock()
	drain := p.DrainTimeout
	p.mu.Unlock()
	if drain <= 0 {
		drain = 10 * time.Second
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	if n := p.Sessions(); n > 0 {
		p.log().Info("draining sessions", "sessions", n, "timeout", drain)
	}
	select {
	case <-done:
	case <-time.After(drain):
		p.log().Warn("drain timeout: closing sessions", "sessions", p.Sessions())
		p.goodbye()
		cancelSessions()
		<-done
	case <-cut:
		p.log().Warn("drain cut short: closing sessions", "sessions", p.Sessions())
		p.goodbye()
		cancelSessions()
		<-done
	}
	return nil
}

// goodbye tells the client of every running session that ftpalg closes it.
// A session's own writes are whole lines, each one Write, so this line
// does not land inside another.
func (p *Proxy) goodbye() {
	p.mu.Lock()
	var cs []net.Conn
	for _, s := range p.sessions {
		if s != nil {
			cs = append(cs, s.Client)
		}
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte("421 ftpalg: shutting down; closing the connection\r\n"))
	}
}

// Sessions is the number of running sessions.
func (p *Proxy) Sessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sessions)
}

// PinholeUsed routes an observation (e.g. conntrack saw the data
// connection) to the session that owns the pinhole, which closes it. It
// does not block: the close is queued.
func (p *Proxy) PinholeUsed(id rules.PinholeID) {
	p.mu.Lock()
	s := p.sessions[id.Session]
	p.mu.Unlock()
	if s != nil {
		s.PinholeUsed(id)
	}
}

func (p *Proxy) accept(ctx context.Context, c net.Conn) {
	client := unmap(addrPort(c.RemoteAddr()))
	p.mu.Lock()
	maxS, maxC := p.MaxSessions, p.MaxPerClient
	if maxS <= 0 {
		maxS = 1024
	}
	if maxC <= 0 {
		maxC = 32
	}
	var why string
	switch {
	case len(p.sessions) >= maxS:
		why = fmt.Sprintf("%d sessions running (limit %d)", len(p.sessions), maxS)
	case p.perClient[client.Addr()] >= maxC:
		why = fmt.Sprintf("%d sessions from this client (limit %d)", p.perClient[client.Addr()], maxC)
	}
	if why != "" {
		p.mu.Unlock()
		p.reject(c, client, netip.AddrPort{}, "limit", why, "421 ftpalg: too many connections; try again later")
		return
	}
	p.seq++
	id := p.seq
	p.sessions[id] = nil // reserved; set once the session runs
	p.started[id] = time.Now()
	p.perClient[client.Addr()]++
	p.wg.Add(1)
	p.mu.Unlock()

	go func() {
		defer p.wg.Done()
		defer func() {
			p.mu.Lock()
			delete(p.sessions, id)
			delete(p.started, id)
			if p.perClient[client.Addr()]--; p.perClient[client.Addr()] <= 0 {
				delete(p.perClient, client.Addr())
			}
			p.mu.Unlock()
		}()
		p.run(ctx, id, c, client)
	}()
}

func (p *Proxy) reject(c net.Conn, client, server netip.AddrPort, what, why, reply string) {
	attrs := []any{"client", client.String()}
	if server.IsValid() {
		attrs = append(attrs, "server", server.String())
	}
	p.log().Warn("refused", append(attrs, "what", what, "why", why, "reply", reply)...)
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write([]byte(reply + "\r\n"))
	c.Close()
}

func (p *Proxy) run(ctx context.Context, id uint64, c net.Conn, client netip.AddrPort) {
	c, implicit := unwrapImplicit(c)
	srv, err := p.Upstream(c)
	if err != nil {
		p.reject(c, client, netip.AddrPort{}, "upstream", err.Error(), "421 ftpalg: no server for this connection")
		return
	}
	p.mu.Lock()
	timeout, pol := p.ConnectTimeout, p.Policy
	p.mu.Unlock()
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := p.Dial
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	u, err := dial(dctx, "tcp", srv.String())
	if err != nil {
		// Not a refusal: the server is down or unreachable.
		reply := "421 ftpalg: cannot reach the server; try again later"
		p.log().Warn("server unreachable", "client", client.String(), "server", srv.String(), "err", err, "reply", reply)
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte(reply + "\r\n"))
		c.Close()
		return
	}
	var tsess *ftps.Session
	if tsess, c, u, err = p.secure(dctx, c, u, srv, implicit); err != nil {
		p.reject(c, client, srv, "TLS", err.Error(), "421 ftpalg: cannot set up TLS for this session")
		u.Close()
		return
	}
	dialled := srv
	if !p.Transparent {
		dialled = unmap(addrPort(c.LocalAddr()))
	}
	ep := Endpoints{
		Client:   client,
		Dialled:  dialled,
		Upstream: unmap(addrPort(u.LocalAddr())),
		Server:   unmap(addrPort(u.RemoteAddr())),
	}
	s := &Session{
		ID: id, Client: c, Server: u, Endpoints: ep,
		Planner: p.Planner, Backend: p.Backend, Policy: pol, Log: p.Log,
		Observer:       p.Observer,
		TLSTermination: TLSTermination{TLS: tsess, TLSBackend: p.TLSBackend, ClientTLS: implicit},
	}
	p.mu.Lock()
	p.sessions[id] = s
	p.mu.Unlock()
	log := p.log().With("session", rules.SessionName(s.ID), "client", client.String(), "server", ep.Server.String())
	log.Info("session start", "upstream", ep.Upstream.String())
	start := time.Now()
	err = s.Run(ctx)
	if err != nil {
		log.Info("session end", "duration", time.Since(start).Round(time.Millisecond), "err", err)
	} else {
		log.Info("session end", "duration", time.Since(start).Round(time.Millisecond))
	}
}
