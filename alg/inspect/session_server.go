package inspect

// The server side of an inspected session, and the announcements.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftp"
)

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
	if r.Code == 221 || r.Code == 421 {
		s.goodbye = true
	}
	passiveCode := r.Code == 227 || r.Code == 229
	if s.uncertain && passiveCode {
		// Resynchronise on the PASV/EPSV this reply most likely answers.
		s.m.Resync(map[int]string{227: "PASV", 229: "EPSV"}[r.Code])
	}
	verb := s.m.Head()
	if s.m.Pending() > 0 && verb == "" {
		verb = verbConnect
	}
	pending := s.m.Pending()
	acts := s.m.ServerReply(t, r)
	ev := Event{Time: t, Dir: DirServer, Kind: "reply", Code: r.Code, Line: replyText(r), Answers: verb}
	if r.Preliminary() {
		ev.Kind = "preliminary"
	}
	switch {
	case verb == "PASV" && r.Code == 227, verb == "EPSV" && r.Code == 229:
		s.event(ev)
		s.passive(t, verb, r, acts)
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
		ev.Note = "the control channel is encrypted from here; ftpalg refuses the AUTH (--tls refuse), is blind (--tls passthrough), or holds the TLS itself and still reads the session (--tls terminate)"
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
	if !r.Preliminary() && pending > 0 && s.m.Pending() == 0 {
		// Everything known has been answered: unpaired replies from
		// here on are really unpaired.
		s.uncertain = false
	}
}

// passive records the Machine's decision on a 227/229 answering this
// session's PASV/EPSV: refused (replaced by a 425), or planned.
func (s *sess) passive(t time.Time, verb string, r ftp.Reply, acts []alg.Action) {
	line := replyText(r)
	if ref, _ := refusalIn(acts); ref != nil {
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
	for _, a := range acts {
		if a.Kind != alg.ActPlan {
			continue
		}
		if an := a.Opening.Announcement; an.Kind == alg.PASV && an.Addr.Addr() != s.ep.Server.Addr() {
			s.violate(t, DirServer, "third-party",
				fmt.Sprintf("227 names %s, the server is %s: ftpalg announces the server's address instead and opens the pinhole to the server only",
					an.Addr.Addr(), s.ep.Server.Addr()), "", false)
		}
	}
	s.plan(t, acts, line)
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

// plan carries out the Machine's ActPlan among acts, as alg.Session
// would before forwarding the announcement, and records the outcome. The
// pinhole is not opened: its port goes back to the pool at once (the pool
// hands ports out round-robin, so the next announcement still gets
// another one, as it would while this pinhole were open).
func (s *sess) plan(t time.Time, acts []alg.Action, line string) {
	for _, a := range acts {
		if a.Kind != alg.ActPlan {
			continue
		}
		op := a.Opening
		ctx, cancel := context.WithTimeout(context.Background(), s.pol.OpenTimeout)
		p, err := s.ins.planner.Plan(ctx, s.ep, op.Announcement)
		cancel()
		release := p.Release
		p.Release = nil
		decided := s.m.Planned(op, p, err)
		if release != nil {
			release()
		}
		for _, d := range decided {
			switch d.Kind {
			case alg.ActOpen:
				s.m.Opened(op, t)
				s.announce(t, op.Announcement, line, &op.Plan)
			case alg.ActRefused:
				dir := DirServer
				if !op.Announcement.Kind.Passive() {
					dir = DirClient
				}
				s.violate(t, dir, "plan", d.Refusal.Why, d.Refusal.Reply, false)
				s.announce(t, op.Announcement, line, nil)
			}
		}
	}
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
