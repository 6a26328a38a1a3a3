package alg

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/rules"
)

// Machine is the control-channel state machine of one FTP session. It does
// no I/O and reads no clock: events go in (a command line, a reply, the
// result of planning or opening a pinhole, a pinhole's first use, the time
// passing), and decisions come out as Actions (forward a line, answer the
// client, plan, open or close a pinhole, end the session). Every event
// carries the time it happened.
//
// The Session is the I/O shell around a Machine; the capture inspector
// (package alg/inspect) drives one over reassembled streams. So there is
// one place that decides the policy.
//
// A Machine is not safe for concurrent use: the Session serialises its
// calls.
//
// # Opening before forwarding
//
// An announcement is never forwarded before its pinhole is live. The
// Machine answers an accepted PORT/EPRT (or 227/229 to its own PASV/EPSV)
// with an ActPlan that carries an *Opening and nothing to forward. The
// caller plans it (Planner) and reports the result with Planned, which
// returns an ActOpen; the caller makes the pinhole live and reports Opened
// (or OpenFailed). Only Opened returns the ActForward of the announcement,
// rewritten; OpenFailed returns the 425 that replaces it. Several Openings
// may be under way at once (a pipelined PORT while a 227 is being opened);
// each goes through its own steps.
type Machine struct {
	id  uint64
	ep  Endpoints
	pol Policy
	tls TLSPolicy

	fifo     []pending // outstanding commands, oldest first
	cur      *hole     // the announced, not yet used pinhole
	live     map[rules.PinholeID]*hole
	used     *hole // the pinhole of the transfer under way (after its 1xx)
	nextN    uint32
	loggedIn bool
	start    time.Time
	last     time.Time // the last line either way
	auth     authState
	ended    bool
	mirror   bool      // see SetMirror
	term     termState // under TLSTerminate, see machine_tls.go

	syntaxErrs, refusals int
}

// pending is one outstanding command, or a reply ftpalg composed itself
// that must reach the client after the replies to the commands before it.
type pending struct {
	verb  string
	local []byte
}

type hole struct {
	p        rules.Pinhole
	release  func()
	deadline time.Time
}

type authState uint8

const (
	authNone    authState = iota
	authPending           // AUTH forwarded (passthrough), reply awaited
	authBlind             // TLS from here: bytes relayed unread
)

// transferVerbs open a data connection.
var transferVerbs = map[string]bool{
	"RETR": true, "STOR": true, "STOU": true, "APPE": true,
	"LIST": true, "NLST": true, "MLSD": true,
}

// NewMachine returns the machine of session id (it numbers the pinholes)
// with endpoints ep under pol, started at now: the server's greeting is the
// first reply it expects. pol must be valid (Policy.Validate).
func NewMachine(id uint64, ep Endpoints, pol Policy, now time.Time) *Machine {
	return &Machine{
		id: id, ep: ep, pol: pol, tls: pol.TLSMode(),
		fifo:  []pending{{verb: ""}},
		live:  make(map[rules.PinholeID]*hole),
		start: now, last: now,
	}
}

// Peer is a side of the control session.
type Peer uint8

// The two peers.
const (
	Client Peer = iota + 1
	Server
)

func (p Peer) String() string {
	if p == Server {
		return "server"
	}
	return "client"
}

// ActionKind says what an Action asks of the caller.
type ActionKind uint8

// The actions, in the order the caller must perform them.
const (
	// ActForward: write Line to To, in order with every other write to To.
	ActForward ActionKind = iota + 1
	// ActRefused: log the refusal Refusal of What (one line); the reply
	// itself comes as an ActForward, now or after the replies owed before
	// it.
	ActRefused
	// ActPlan: plan Opening (Planner) and report with Planned.
	ActPlan
	// ActOpen: make Pinhole live and report with Opened or OpenFailed.
	ActOpen
	// ActClose: close Pinhole (Reason for the log), then call Release
	// when it is set and the close succeeded. Closing must not hold up
	// the caller's reading: the Session queues it.
	ActClose
	// ActHoldClient: read nothing more from the client until the AUTH
	// forwarded just before is answered (ActTLS).
	ActHoldClient
	// ActTLS: the AUTH was answered; Blind says the control channel is
	// encrypted from here (TLS passthrough): relay bytes unread.
	ActTLS
	// ActStartTLS: the 234 to the client's AUTH TLS is queued (TLS
	// termination): once it is written, run the TLS handshake on the
	// client's connection, read on inside TLS and report TLSStarted. Read
	// nothing before: the client's next bytes are its handshake.
	ActStartTLS
	// ActEnd: end the session: write Line (the reply ending it) to the
	// client at once, log Refusal of What, close both connections.
	ActEnd
	// ActError: log Err (an internal error: a planner broke the
	// invariant) at error level.
	ActError
)

// Action is one decision of the Machine. Which fields are set depends on
// Kind.
type Action struct {
	Kind    ActionKind
	To      Peer
	Line    []byte
	What    string
	Refusal *Refusal
	Opening *Opening
	Pinhole rules.Pinhole
	Release func()
	Reason  string
	Blind   bool
	Err     error
}

// Opening is one announcement on its way to a live pinhole: see Machine.
type Opening struct {
	// Announcement is what to plan.
	Announcement Announcement
	// Plan is the planner's decision, once Planned accepted it.
	Plan Plan

	verb  string    // the command (active) or the one the reply answers
	line  []byte    // active: the client's line
	reply ftp.Reply // passive: the server's reply
	span  [2]int    // passive: the numbers in reply.Text()
	hole  *hole     // once planned: &h
	h     hole
	prev  *hole       // the pinhole it replaces
	state openingStep // guards the order of the steps
}

type openingStep uint8

const (
	stepPlan openingStep = iota
	stepOpen
	stepDone
)

// Full reports whether MaxPending commands (or composed replies) await
// their replies: the caller reads no client line until one is answered.
func (m *Machine) Full() bool { return len(m.fifo) >= m.pol.MaxPending }

// Blind reports whether the control channel is encrypted (TLS
// passthrough after a 234 to AUTH).
func (m *Machine) Blind() bool { return m.auth == authBlind }

// LoggedIn reports whether the server accepted a login (230).
func (m *Machine) LoggedIn() bool { return m.loggedIn }

// Head is the command the next final reply answers ("" for the greeting
// or when nothing is outstanding).
func (m *Machine) Head() string {
	if len(m.fifo) == 0 {
		return ""
	}
	return m.fifo[0].verb
}

// transferring reports whether a transfer command awaits its final reply.
func (m *Machine) transferring() bool {
	return slices.ContainsFunc(m.fifo, func(p pending) bool { return transferVerbs[p.verb] })
}

// Deadline is when Tick must next be called; zero when nothing is timed.
func (m *Machine) Deadline() time.Time {
	var d time.Time
	earlier := func(t time.Time) {
		if d.IsZero() || t.Before(d) {
			d = t
		}
	}
	for _, h := range m.live {
		earlier(h.deadline)
	}
	if m.ended || m.auth == authBlind {
		return d
	}
	if !m.loggedIn {
		earlier(m.start.Add(m.pol.LoginTimeout))
	}
	if !m.transferring() {
		earlier(m.last.Add(m.pol.IdleTimeout))
	}
	return d
}

// Tick tells the machine the time is now: pinholes past their TTL (or
// their grace after first use) close, and a session past its login or
// idle timeout ends.
func (m *Machine) Tick(now time.Time) []Action {
	var acts []Action
	for _, h := range m.sortedLive() {
		if !now.Before(h.deadline) {
			acts = m.close(acts, h, "ttl")
		}
	}
	if m.ended || m.auth == authBlind {
		return acts
	}
	var what, reply string
	switch {
	case !m.loggedIn && now.Sub(m.start) >= m.pol.LoginTimeout:
		what, reply = "login timeout", fmt.Sprintf("421 ftpalg: not logged in after %v; closing the connection", m.pol.LoginTimeout)
	case now.Sub(m.last) >= m.pol.IdleTimeout && !m.transferring():
		what, reply = "idle timeout", fmt.Sprintf("421 ftpalg: idle for %v; closing the connection", m.pol.IdleTimeout)
	default:
		return acts
	}
	why := fmt.Sprintf("%s after %v", what, now.Sub(m.start).Round(time.Millisecond))
	return m.end(acts, what, &Refusal{Reply: reply, Why: why})
}

// End ends the session (a peer left, or the caller is shutting down): every
// live pinhole closes with reason, and an Opening still under way closes
// its pinhole when it reports.
func (m *Machine) End(reason string) []Action {
	m.ended = true
	var acts []Action
	for _, h := range m.sortedLive() {
		acts = m.close(acts, h, reason)
	}
	return acts
}

// Ended reports whether the session ended (End, or an ActEnd).
func (m *Machine) Ended() bool { return m.ended }

// end ends the session with a reply to the client.
func (m *Machine) end(acts []Action, what string, ref *Refusal) []Action {
	m.ended = !m.mirror
	return append(acts, Action{Kind: ActEnd, What: what, Refusal: ref, Line: []byte(ref.Reply + "\r\n")})
}

// PinholeUsed tells the machine that the data connection of pinhole id was
// seen (e.g. in conntrack): the pinhole closes at once.
func (m *Machine) PinholeUsed(id rules.PinholeID) []Action {
	if h := m.live[id]; h != nil {
		return m.close(nil, h, "used")
	}
	return nil
}

// Live returns the pinholes open now, oldest first.
func (m *Machine) Live() []rules.Pinhole {
	var out []rules.Pinhole
	for _, h := range m.sortedLive() {
		out = append(out, h.p)
	}
	return out
}

func (m *Machine) sortedLive() []*hole {
	hs := make([]*hole, 0, len(m.live))
	for _, h := range m.live {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b *hole) int { return int(a.p.ID.N) - int(b.p.ID.N) })
	return hs
}

// close closes h once.
func (m *Machine) close(acts []Action, h *hole, reason string) []Action {
	if h == nil || m.live[h.p.ID] != h {
		return acts
	}
	delete(m.live, h.p.ID)
	if m.cur == h {
		m.cur = nil
	}
	return append(acts, Action{Kind: ActClose, Pinhole: h.p, Release: h.release, Reason: reason})
}

func (m *Machine) closeCurrent(acts []Action, reason string) []Action {
	return m.close(acts, m.cur, reason)
}

// refuse answers the client with ref (in FIFO order, after the replies to
// the commands before it) and logs it. Too many refusals end the session.
// verb is the refused command's ("(invalid line)" for a line that is not
// one): in a mirror it went to the server.
func (m *Machine) refuse(acts []Action, verb, what string, ref *Refusal) []Action {
	if m.mirror {
		// Every refusal is reported: the capture goes on regardless.
		m.fifo = append(m.fifo, pending{verb: verb})
		return append(acts, Action{Kind: ActRefused, What: what, Refusal: ref})
	}
	if m.refusals++; m.refusals > m.pol.MaxRefusals {
		return m.end(acts, "too many refusals", &Refusal{
			Reply: "421 ftpalg: too many refused commands; closing the connection",
			Why:   fmt.Sprintf("%d lines refused in this session", m.refusals-1),
		})
	}
	acts = append(acts, Action{Kind: ActRefused, What: what, Refusal: ref})
	b := []byte(ref.Reply + "\r\n")
	if len(m.fifo) > 0 {
		m.fifo = append(m.fifo, pending{local: b})
		return acts
	}
	return append(acts, Action{Kind: ActForward, To: Client, Line: b})
}

// unmapEndpoints normalises ep: no IPv4-mapped IPv6, no zones.
func unmapEndpoints(ep Endpoints) Endpoints {
	return Endpoints{unmap(ep.Client), unmap(ep.Dialled), unmap(ep.Upstream), unmap(ep.Server)}
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}
