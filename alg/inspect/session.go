package inspect

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/alg/ftps"
)

// Pseudo-verbs in the FIFO of outstanding commands.
const (
	verbConnect = "connect" // the greeting answers the connection
)

// maxFIFO bounds the commands awaiting a reply in one session. A real
// client keeps a handful outstanding; beyond the bound the oldest are
// dropped and the pairing is marked uncertain.
const maxFIFO = 1024

// sess analyses one control session: it mirrors alg.Session, reading what
// the capture shows instead of relaying it.
type sess struct {
	ins *inspector
	rep *Session
	num uint64 // the session's number (rep.ID is its text form)
	ep  alg.Endpoints
	pol alg.Policy

	// m decides, as in alg.Session: a mirror (the capture's lines all
	// reached their peers), which pairs replies with commands.
	m *alg.Machine
	// uncertain: commands or replies may be missing (capture started in the
	// middle of the session, or a gap), so an unpaired reply proves nothing.
	uncertain bool
	blind     bool // encrypted after AUTH, or given up (truncated)
	finished  bool
	payload   int  // bytes of payload seen
	syn       bool // the capture shows the connection's start
	closed    [2]bool
	fins      int
	goodbye   bool // the server said goodbye (221, 421): no more replies
	reset     bool
	cli, srv  pump
}

func newSess(ins *inspector, client, server netip.AddrPort, t time.Time, syn bool) *sess {
	s := &sess{
		ins: ins,
		rep: &Session{
			Client: client, Server: server, Start: t, End: t, State: "open",
			Events: []Event{}, Announcements: []Announcement{}, Violations: []Violation{},
		},
		// As the inspector plans: ftpalg at the capture point, no NAT.
		ep:  alg.Endpoints{Client: client, Dialled: server, Upstream: client, Server: server},
		pol: ins.pol,
		syn: syn,
	}
	s.m = alg.NewMachine(0, s.ep, s.pol, t)
	s.m.SetMirror()
	if !syn {
		s.m.Midstream()
		s.uncertain = true
	}
	s.cli = pump{loop: s.clientLoop, lineStart: commandStart,
		onSkipped: func(n int) { s.skipped(DirClient, n) }}
	s.srv = pump{loop: s.serverLoop, lineStart: replyStart,
		onSkipped: func(n int) { s.skipped(DirServer, n) }}
	return s
}

// --- recording ---

// Bounds on what the report keeps of a line, and on all text recorded in
// one report: a hostile capture must not turn into gigabytes of report.
const (
	maxShownLines = 20
	maxShownLine  = 512
	maxRecorded   = 64 << 20
)

// full reports (and counts) that nothing more may be recorded for s; size
// is the text the next item would add.
func (s *sess) full(size int) bool {
	n := len(s.rep.Events) + len(s.rep.Announcements) + len(s.rep.Violations)
	if n >= s.ins.opts.MaxEvents || s.ins.recorded+size > maxRecorded {
		s.rep.DroppedEvents++
		s.ins.overBudget = s.ins.overBudget || n < s.ins.opts.MaxEvents
		return true
	}
	s.ins.recorded += size + 64
	return false
}

func (s *sess) event(e Event) {
	if !s.full(len(e.Line) + len(e.Note)) {
		s.rep.Events = append(s.rep.Events, e)
	}
}

func (s *sess) violate(t time.Time, dir, what, why, reply string, end bool) {
	why = clip(why) // may quote a whole hostile line
	if !s.full(len(why) + len(reply)) {
		s.rep.Violations = append(s.rep.Violations, Violation{Time: t, Dir: dir, What: what, Why: why, Reply: reply, End: end})
	}
}

// touch notes a packet of the session at t.
func (s *sess) touch(t time.Time) {
	if t.After(s.rep.End) {
		s.rep.End = t
	}
}

// --- stream events from reassembly ---

func (s *sess) pumpOf(dir string) *pump {
	if dir == DirClient {
		return &s.cli
	}
	return &s.srv
}

// data delivers in-order bytes of one direction.
func (s *sess) data(t time.Time, dir string, b []byte) {
	s.touch(t)
	if s.blind {
		return
	}
	if s.payload == 0 && ftps.IsTLSRecord(b) {
		// Implicit FTPS (port 990 style): TLS from the first byte.
		s.payload += len(b)
		s.event(Event{Time: t, Dir: dir, Kind: "encrypted",
			Line: "TLS from the first byte (implicit FTPS): the session is opaque to a capture; ftpalg with --tls terminate reads it inside the TLS it holds"})
		s.rep.State = "encrypted"
		s.stop()
		return
	}
	s.payload += len(b)
	s.pumpOf(dir).push(t, b)
}

// gap reports n bytes missing before the next data of dir.
func (s *sess) gap(t time.Time, dir string, n int) {
	if s.blind {
		return
	}
	s.uncertain = true
	s.event(Event{Time: t, Dir: dir, Kind: "gap", Line: fmt.Sprintf("%d bytes missing from the capture", n),
		Note: "pairing of replies with commands is uncertain from here"})
	s.pumpOf(dir).gap()
}

func (s *sess) skipped(dir string, n int) {
	s.event(Event{Time: s.pumpOf(dir).t, Dir: dir, Kind: "skipped",
		Line: fmt.Sprintf("%d bytes skipped to the next line end", n)})
}

// end reports the end of dir's stream (FIN, RST, or the end of the capture
// when fin and rst are both false).
func (s *sess) end(t time.Time, dir string, fin, rst bool) {
	i := dirIndex(dir)
	if s.closed[i] {
		return
	}
	s.closed[i] = true
	s.touch(t)
	if !s.blind {
		s.pumpOf(dir).eof(t)
	}
	switch {
	case rst:
		s.reset = true
		s.event(Event{Time: t, Dir: dir, Kind: "reset", Line: "connection reset"})
	case fin:
		s.fins++
		s.event(Event{Time: t, Dir: dir, Kind: "close", Line: "no more data from the " + dir})
	}
}

// truncated stops the session: the capture cut a segment of dir short.
func (s *sess) truncated(t time.Time, dir string, missing int) {
	if s.blind {
		return
	}
	s.event(Event{Time: t, Dir: dir, Kind: "truncated",
		Line: fmt.Sprintf("the capture cut a segment short by %d bytes (snap length); the rest of this session is not inspected", missing)})
	s.rep.State = "truncated"
	s.stop()
}

func (s *sess) stop() {
	s.blind = true
	s.cli.kill()
	s.srv.kill()
}

// finish ends the analysis at the end of the capture or of the connection.
func (s *sess) finish(t time.Time) {
	if s.finished {
		return
	}
	s.end(t, DirClient, false, false)
	s.end(t, DirServer, false, false)
	s.finished = true
	s.cli.kill()
	s.srv.kill()
	s.cli.release()
	s.srv.release()
	switch {
	case s.rep.State != "open":
	case s.reset:
		s.rep.State = "reset"
	case s.fins == 2, s.fins == 1 && s.goodbye:
		// Both sides finished; or one did after the server's goodbye
		// and the capture missed the other FIN (it ended, or dropped
		// it): the session is over either way.
		s.rep.State = "closed"
	}
}

// worth reports whether the session belongs in the report: a connection
// start or payload was seen (not only a stray ACK or FIN).
func (s *sess) worth() bool { return s.syn || s.payload > 0 }

// --- client to server ---

// --- server to client ---

// --- helpers ---

// replyText is the reply without line terminators, lines joined by "\n",
// cut to maxShownLines lines of at most maxShownLine bytes.
func replyText(r ftp.Reply) string {
	var b strings.Builder
	for i, l := range r.Lines {
		if i == maxShownLines {
			fmt.Fprintf(&b, "\n... (%d more lines)", len(r.Lines)-i)
			break
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(clip(strings.TrimRight(string(l), "\r\n")))
	}
	return b.String()
}

// clip cuts a line for the report.
func clip(s string) string {
	if len(s) > maxShownLine {
		return s[:maxShownLine] + "..."
	}
	return s
}

// hasAuthFeature reports whether a FEAT reply offers AUTH.
func hasAuthFeature(r ftp.Reply) bool {
	for i, l := range r.Lines {
		f := strings.ToUpper(strings.TrimSpace(string(l)))
		if i > 0 && i < len(r.Lines)-1 && (f == "AUTH" || strings.HasPrefix(f, "AUTH ")) {
			return true
		}
	}
	return false
}

// quoteLine renders a hostile line for the report: Go-quoted, cut short.
func quoteLine(b []byte) string {
	const max = 80
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "..."
	}
	return strconv.Quote(string(b))
}

// commandStart reports whether b starts like a command line: 3-4 letters,
// then a space or the line end.
func commandStart(b []byte) bool {
	n := 0
	for n < len(b) && n < 5 && ('a' <= b[n] && b[n] <= 'z' || 'A' <= b[n] && b[n] <= 'Z') {
		n++
	}
	return (n == 3 || n == 4) && n < len(b) && (b[n] == ' ' || b[n] == '\r' || b[n] == '\n')
}

// replyStart reports whether b starts like a reply line: a code 100-699,
// then a space, '-' or the line end.
func replyStart(b []byte) bool {
	return len(b) >= 4 && b[0] >= '1' && b[0] <= '6' && isDigit(b[1]) && isDigit(b[2]) &&
		(b[3] == ' ' || b[3] == '-' || b[3] == '\r' || b[3] == '\n')
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
