package inspect

// The client side of an inspected session.

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftp"
)

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
		ref, end := refusalIn(s.m.ClientError(err))
		s.violate(t, DirClient, "line-too-long", ref.Why, ref.Reply, end)
		// The server answers the line somehow, perhaps more than once.
		s.uncertain = true
	case errors.Is(err, ftp.ErrNUL):
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: err.Error()})
		ref, end := refusalIn(s.m.ClientError(err))
		s.violate(t, DirClient, "nul", ref.Why, ref.Reply, end)
		s.uncertain = true
	default:
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: err.Error()})
	}
}

// command hands a command line to the session's Machine (a mirror: the
// server got the line whatever ftpalg would do) and records what it
// decides, in the report's terms.
func (s *sess) command(t time.Time, line []byte) {
	if s.m.Pending() >= maxFIFO {
		s.m.DropOldest()
		s.uncertain = true
	}
	cmd, err := ftp.ParseCommand(line)
	acts := s.m.ClientLine(t, line)
	ref, end := refusalIn(acts)
	if err != nil {
		s.event(Event{Time: t, Dir: DirClient, Kind: "invalid", Line: quoteLine(line)})
		what := "syntax"
		if end {
			what = "garbage"
		}
		s.violate(t, DirClient, what, ref.Why, ref.Reply, end)
		if alg.Binary(line) {
			// Binary junk may split into any number of "lines" and
			// get any number of replies.
			s.uncertain = true
		}
		return
	}
	ev := Event{Time: t, Dir: DirClient, Kind: "command", Line: clip(cmd.String())}
	if ref != nil && (cmd.Verb == "LPRT" || cmd.Verb == "LPSV" || cmd.Verb == "AUTH") {
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
		s.active(t, cmd, clip(strings.TrimRight(string(line), "\r\n")), acts, ref)
	}
}

// refusalIn returns the refusal among acts, and whether it ends the
// session.
func refusalIn(acts []alg.Action) (*alg.Refusal, bool) {
	for _, a := range acts {
		switch a.Kind {
		case alg.ActRefused:
			return a.Refusal, false
		case alg.ActEnd:
			return a.Refusal, true
		}
	}
	return nil, false
}

// active records the Machine's decision on a PORT or EPRT: refused, or
// planned (its pinhole).
func (s *sess) active(t time.Time, cmd ftp.Command, line string, acts []alg.Action, ref *alg.Refusal) {
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
	s.plan(t, acts, line)
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
