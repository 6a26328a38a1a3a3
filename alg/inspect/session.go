package inspect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/rules"
)

// Pseudo-verbs in the FIFO of outstanding commands.
const (
	verbConnect = "connect"        // the greeting answers the connection
	verbInvalid = "(invalid line)" // a line that is not a command; servers answer 500
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

	// fifo holds the verbs of the commands not yet answered (finally).
	fifo []string
	// uncertain: commands or replies may be missing (capture started in the
	// middle of the session, or a gap), so an unpaired reply proves nothing.
	uncertain  bool
	syntaxErrs int
	blind      bool // encrypted after AUTH, or given up (truncated)
	finished   bool
	nextPH     int
	payload    int  // bytes of payload seen
	syn        bool // the capture shows the connection's start
	closed     [2]bool
	fins       int
	reset      bool
	cli, srv   pump
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
	if syn {
		s.fifo = []string{verbConnect}
	} else {
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
	case s.fins == 2:
		s.rep.State = "closed"
	}
}

// worth reports whether the session belongs in the report: a connection
// start or payload was seen (not only a stray ACK or FIN).
func (s *sess) worth() bool { return s.syn || s.payload > 0 }

// --- client to server ---

func (s *sess) clientLoop(r io.Reader) {
	lr := ftp.NewLineReader(r, s.pol.MaxLine)
	for !s.blind {
		line, err := lr.ReadLine()
		if err != nil {
			s.clientError(err, lr.Buffered())
			return
		}
		s.command(s.cli.t, line)
	}
}

func (s *sess) clientError(err error, buffered int) {
	t := s.cli.t
	switch {
	case errors.Is(err, errStopped), err == io.EOF:
	case errors.Is(err, io.ErrUnexpectedEOF):
		s.event(Event{Time: t, Dir: DirClient, Kind: "incomplete",
			Line: fmt.Sprintf("the stream ends inside a command line (%d bytes)", buffered)})
	case errors.Is(err, ftp.ErrLineTooLong):
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: err.Error()})
		ref, end := alg.RefuseLineTooLong(s.pol.MaxLine)
		s.violate(t, DirClient, "line-too-long", ref.Why, ref.Reply, end)
		// The server answers the line somehow, perhaps more than once.
		s.push(verbInvalid)
		s.uncertain = true
	case errors.Is(err, ftp.ErrNUL):
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: err.Error()})
		ref, end := alg.RefuseNUL()
		s.violate(t, DirClient, "nul", ref.Why, ref.Reply, end)
		s.push(verbInvalid)
		s.uncertain = true
	default:
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: err.Error()})
	}
}

func (s *sess) command(t time.Time, line []byte) {
	cmd, err := ftp.ParseCommand(line)
	if err != nil {
		s.syntaxErrs++
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: quoteLine(line)})
		ref, end := alg.RefuseSyntax(s.pol, line, err, s.syntaxErrs)
		what := "syntax"
		if end {
			what = "garbage"
		}
		s.violate(t, DirClient, what, ref.Why, ref.Reply, end)
		if alg.Binary(line) {
			// Binary junk may split into any number of "lines" and
			// get any number of replies.
			s.uncertain = true
		} else {
			s.push(verbInvalid)
		}
		return
	}
	s.syntaxErrs = 0
	ev := Event{Time: t, Dir: DirClient, Kind: "command", Line: clip(cmd.String())}
	if ref := alg.CheckCommand(s.pol, cmd.Verb); ref != nil {
		what := "long-address"
		ev.Note = "ftpalg refuses it"
		if cmd.Verb == "AUTH" {
			what = "auth"
			ev.Note = "ftpalg refuses it; the client may go on without TLS"
		}
		s.violate(t, DirClient, what, ref.Why, ref.Reply, false)
	}
	s.event(ev)
	if cmd.Verb == "PORT" || cmd.Verb == "EPRT" {
		s.active(t, cmd, clip(strings.TrimRight(string(line), "\r\n")))
	}
	s.push(cmd.Verb)
}

func (s *sess) push(verb string) {
	if len(s.fifo) >= maxFIFO {
		s.fifo = s.fifo[1:]
		s.uncertain = true
	}
	s.fifo = append(s.fifo, verb)
}

// active checks a PORT or EPRT as alg.Session does and plans its pinhole.
func (s *sess) active(t time.Time, cmd ftp.Command, line string) {
	a, ref := alg.CheckActive(s.ep, s.pol, cmd.Verb, cmd.Arg)
	if ref != nil {
		what, ap := classifyActive(s.ep, s.pol, cmd.Verb, cmd.Arg)
		s.violate(t, DirClient, what, ref.Why, ref.Reply, false)
		if ap.IsValid() {
			kind := alg.PORT
			if cmd.Verb == "EPRT" {
				kind = alg.EPRT
			}
			s.announce(t, alg.Announcement{Kind: kind, Addr: ap}, line, nil)
		}
		return
	}
	s.plan(t, a, line)
}

// classifyActive names the rule a refused PORT/EPRT broke and returns the
// announced endpoint when it parses.
func classifyActive(ep alg.Endpoints, pol alg.Policy, verb, arg string) (string, netip.AddrPort) {
	var ap netip.AddrPort
	var err error
	if verb == "EPRT" {
		ap, err = ftp.ParseEPRT(arg)
	} else {
		ap, err = ftp.ParsePORT(arg)
	}
	if err != nil {
		return "malformed", netip.AddrPort{}
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	client := ep.Client.Addr()
	if ap.Addr().IsUnspecified() && ap.Addr().Is4() == client.Is4() {
		ap = netip.AddrPortFrom(client, ap.Port())
	}
	switch {
	case ap.Addr().Is4() != client.Is4():
		return "family", ap
	case ap.Addr() != client:
		return "bounce", ap
	case ap.Port() < pol.MinDataPort:
		return "privileged-port", ap
	}
	return "refused", ap
}

// --- server to client ---

func (s *sess) serverLoop(r io.Reader) {
	rr := ftp.NewReplyReader(r, s.pol.MaxLine, s.pol.MaxReplyLines)
	for !s.blind {
		rep, err := rr.ReadReply()
		if err != nil {
			if !s.serverError(err, rr.Buffered()) {
				return
			}
			continue
		}
		s.reply(s.srv.t, rep)
	}
}

// serverError records a reply the codec rejects; it reports whether the
// reader can go on.
func (s *sess) serverError(err error, buffered int) bool {
	t := s.srv.t
	switch {
	case errors.Is(err, errStopped), err == io.EOF:
		return false
	case errors.Is(err, io.ErrUnexpectedEOF):
		s.event(Event{Time: t, Dir: DirServer, Kind: "incomplete",
			Line: fmt.Sprintf("the stream ends inside a reply (%d bytes)", buffered)})
		return false
	case errors.Is(err, ftp.ErrLineTooLong), errors.Is(err, ftp.ErrReplyTooLong),
		errors.Is(err, ftp.ErrNUL), errors.Is(err, ftp.ErrSyntax):
		s.event(Event{Time: t, Dir: DirServer, Kind: "invalid", Line: err.Error()})
		ref, end := alg.RefuseServerReply(err)
		s.violate(t, DirServer, "invalid-reply", ref.Why, ref.Reply, end)
		s.uncertain = true
		// Syntax and too many lines leave the reader at a line boundary;
		// the line errors are sticky and need a fresh reader.
		return errors.Is(err, ftp.ErrSyntax) || errors.Is(err, ftp.ErrReplyTooLong)
	}
	s.event(Event{Time: t, Dir: DirServer, Kind: "invalid", Line: err.Error()})
	return false
}

func (s *sess) reply(t time.Time, r ftp.Reply) {
	passiveCode := r.Code == 227 || r.Code == 229
	if s.uncertain && passiveCode {
		// Resynchronise on the PASV/EPSV this reply most likely answers.
		want := map[int]string{227: "PASV", 229: "EPSV"}[r.Code]
		for i, v := range s.fifo {
			if v == want {
				s.fifo = s.fifo[i:]
				break
			}
		}
	}
	verb := ""
	if len(s.fifo) > 0 {
		verb = s.fifo[0]
	}
	ev := Event{Time: t, Dir: DirServer, Kind: "reply", Code: r.Code, Line: replyText(r), Answers: verb}
	if r.Preliminary() {
		ev.Kind = "preliminary"
	}
	switch {
	case verb == "PASV" && r.Code == 227, verb == "EPSV" && r.Code == 229:
		s.event(ev)
		s.passive(t, verb, r)
	case passiveCode:
		s.event(ev)
		if !s.uncertain {
			answers := "no command"
			if verb != "" {
				answers = verb
			}
			want := map[int]string{227: "PASV", 229: "EPSV"}[r.Code]
			s.violate(t, DirServer, "unsolicited",
				fmt.Sprintf("%d reply answers %s, not %s: ftpalg passes it on as plain text and opens nothing", r.Code, answers, want), "", false)
		}
	case verb == "AUTH" && r.Code == 234:
		ev.Note = "the control channel is encrypted from here; ftpalg would be blind (with --allow-tls) or would have refused the AUTH"
		s.event(ev)
		s.event(Event{Time: t, Dir: DirServer, Kind: "encrypted", Line: "TLS after AUTH: the rest of the session is not inspected"})
		s.rep.State = "encrypted"
		s.stop()
		return
	case verb == "FEAT" && r.Code == 211 && s.pol.TLSMode() == alg.TLSRefuse && hasAuthFeature(r):
		ev.Note = "ftpalg removes the AUTH lines from this reply"
		s.event(ev)
	default:
		s.event(ev)
	}
	if !r.Preliminary() && len(s.fifo) > 0 {
		s.fifo = s.fifo[1:]
		if len(s.fifo) == 0 {
			// Everything known has been answered: unpaired replies from
			// here on are really unpaired.
			s.uncertain = false
		}
	}
}

// passive checks a 227/229 answering this session's PASV/EPSV as
// alg.Session does and plans its pinhole.
func (s *sess) passive(t time.Time, verb string, r ftp.Reply) {
	line := replyText(r)
	a, _, _, ref := alg.CheckPassive(s.ep, s.pol, r)
	if ref != nil {
		what, ap := classifyPassive(s.ep, s.pol, r)
		s.violate(t, DirServer, what, ref.Why, ref.Reply, false)
		if ap.IsValid() {
			kind := alg.PASV
			if verb == "EPSV" {
				kind = alg.EPSV
			}
			s.announce(t, alg.Announcement{Kind: kind, Addr: ap}, line, nil)
		}
		return
	}
	if a.Kind == alg.PASV && a.Addr.Addr() != s.ep.Server.Addr() {
		s.violate(t, DirServer, "third-party",
			fmt.Sprintf("227 names %s, the server is %s: ftpalg announces the server's address instead and opens the pinhole to the server only",
				a.Addr.Addr(), s.ep.Server.Addr()), "", false)
	}
	s.plan(t, a, line)
}

// classifyPassive names the rule a refused 227/229 broke and returns the
// announced endpoint when it parses.
func classifyPassive(ep alg.Endpoints, pol alg.Policy, r ftp.Reply) (string, netip.AddrPort) {
	var ap netip.AddrPort
	var err error
	if r.Code == 227 {
		ap, _, _, err = ftp.Find227(r.Text())
	} else {
		var port uint16
		port, _, _, err = ftp.Find229(r.Text())
		ap = netip.AddrPortFrom(ep.Server.Addr(), port)
	}
	if err != nil {
		ap = netip.AddrPort{}
	}
	switch {
	case r.Multiline():
		return "multiline-passive", ap
	case err != nil:
		return "malformed", ap
	case r.Code == 227 && !ep.Server.Addr().Is4():
		return "family", ap
	case ap.Port() < pol.MinDataPort:
		return "privileged-port", ap
	}
	return "refused", ap
}

// plan asks the gateway planner for the pinhole of an accepted
// announcement, as alg.Session would before forwarding it.
func (s *sess) plan(t time.Time, a alg.Announcement, line string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.pol.OpenTimeout)
	defer cancel()
	p, err := s.ins.planner.Plan(ctx, s.ep, a)
	if err != nil {
		dir := DirServer
		if !a.Kind.Passive() {
			dir = DirClient
		}
		s.violate(t, dir, "plan", err.Error(), "425 ftpalg: cannot open data connection: "+err.Error(), false)
		s.announce(t, a, line, nil)
		return
	}
	// Nothing is opened: the port goes back to the pool at once. The pool
	// hands ports out round-robin, so the next announcement still gets
	// another one, as it would while this pinhole were open.
	if p.Release != nil {
		p.Release()
	}
	s.nextPH++
	p.Pinhole.ID = rules.PinholeID{Session: s.num, N: uint32(s.nextPH)}
	p.Pinhole.TTL = s.pol.PinholeTTL
	if err := p.Pinhole.Validate(); err != nil {
		s.violate(t, DirServer, "plan", err.Error(), "425 ftpalg: cannot open data connection: internal error", false)
		s.announce(t, a, line, nil)
		return
	}
	s.announce(t, a, line, &p)
}

// announce records an announcement; plan is nil when ftpalg refuses it.
func (s *sess) announce(t time.Time, a alg.Announcement, line string, plan *alg.Plan) {
	if s.full(len(line)) {
		return
	}
	an := Announcement{Time: t, Kind: a.Kind.String(), Line: line, Announced: a.Addr, Verdict: VerdictRefused}
	if plan != nil {
		an.Verdict = VerdictPinhole
		an.Pinhole = pinholeOf(plan.Pinhole)
		changed := plan.Announce != a.Addr
		if a.Kind == alg.EPSV {
			changed = plan.Announce.Port() != a.Addr.Port()
		}
		if changed {
			an.Rewritten = plan.Announce
		}
	}
	s.rep.Announcements = append(s.rep.Announcements, an)
	idx := len(s.rep.Announcements) - 1
	// The peer expected to connect: the client in passive mode, the server
	// in active mode.
	from := s.ep.Client.Addr()
	if !a.Kind.Passive() {
		from = s.ep.Server.Addr()
	}
	s.ins.expect(a.Addr, annRef{s: s, idx: idx, from: from, t: t})
	if a.Kind == alg.PASV && a.Addr.Addr() != s.ep.Server.Addr() {
		// Clients often ignore the 227 address and use the server's.
		s.ins.expect(netip.AddrPortFrom(s.ep.Server.Addr(), a.Addr.Port()), annRef{s: s, idx: idx, from: from, t: t})
	}
}

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
