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
