package alg

// The events from the peers: command lines, replies, read errors.

import (
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/rules"
)

// ClientLine is one command line from the client, terminator included.
func (m *Machine) ClientLine(now time.Time, line []byte) []Action {
	if m.ended {
		return nil
	}
	m.last = now
	cmd, err := ftp.ParseCommand(line)
	if err != nil {
		m.syntaxErrs++
		ref, end := RefuseSyntax(m.pol, line, err, m.syntaxErrs)
		if end {
			if m.mirror && !Binary(line) {
				// The server answers it (binary junk may split into
				// any number of lines and get any number of replies).
				m.fifo = append(m.fifo, pending{verb: VerbInvalid})
			}
			return m.end(nil, "garbage", ref)
		}
		return m.refuse(nil, VerbInvalid, "syntax", ref)
	}
	m.syntaxErrs = 0
	if m.tls == TLSTerminate {
		if acts, handled := m.tlsCommand(cmd); handled {
			return acts
		}
	}
	var acts []Action
	switch cmd.Verb {
	case "LPRT", "LPSV", "AUTH":
		if ref := CheckCommand(m.pol, cmd.Verb); ref != nil {
			if cmd.Verb == "AUTH" && m.mirror {
				m.auth = authPending // its 234 still turns the capture blind
			}
			return m.refuse(nil, cmd.Verb, cmd.Verb, ref)
		}
		// Only AUTH under TLS passthrough gets here: its reply decides
		// whether the client speaks TLS next.
		m.auth = authPending
		return append(m.forward(nil, cmd.Verb, line), Action{Kind: ActHoldClient})
	case "PORT", "EPRT":
		a, ref := CheckActive(m.ep, m.pol, cmd.Verb, cmd.Arg)
		if ref != nil {
			return m.refuse(nil, cmd.Verb, cmd.Verb, ref)
		}
		return m.plan(nil, &Opening{Announcement: a, verb: cmd.Verb, line: line})
	case "REIN":
		acts = m.closeCurrent(acts, "reinitialised")
	}
	return m.forward(acts, cmd.Verb, line)
}

// ClientError reports the error that stopped reading the client: an
// over-long line or a NUL byte ends the session.
func (m *Machine) ClientError(err error) []Action {
	var ref *Refusal
	var what string
	switch {
	case errorsIs(err, ftp.ErrLineTooLong):
		ref, _ = RefuseLineTooLong(m.pol.MaxLine)
		what = "line too long"
	case errorsIs(err, ftp.ErrNUL):
		ref, _ = RefuseNUL()
		what = "NUL"
	default:
		return nil
	}
	if m.mirror {
		m.fifo = append(m.fifo, pending{verb: VerbInvalid}) // the server answers it somehow
	}
	return m.end(nil, what, ref)
}

// ServerError reports the error that stopped reading the server: a reply
// that is not FTP (too long, NUL, syntax) ends the session.
func (m *Machine) ServerError(err error) []Action {
	if !errorsIs(err, ftp.ErrLineTooLong) && !errorsIs(err, ftp.ErrReplyTooLong) &&
		!errorsIs(err, ftp.ErrNUL) && !errorsIs(err, ftp.ErrSyntax) {
		return nil
	}
	ref, _ := RefuseServerReply(err)
	return m.end(nil, "server reply", ref)
}

// forward queues verb in the FIFO and sends line to the server.
func (m *Machine) forward(acts []Action, verb string, line []byte) []Action {
	m.fifo = append(m.fifo, pending{verb: verb})
	return append(acts, Action{Kind: ActForward, To: Server, Line: line})
}

// AwaitData returns the pinhole of the transfer that the final reply r
// ends, when there is one, and forgets it. The Session asks before it
// hands r to ServerReply, and holds r until a backend that carries the
// data connection itself (the relay) has connected it.
func (m *Machine) AwaitData(r ftp.Reply) (rules.Pinhole, bool) {
	if r.Preliminary() || !transferVerbs[m.Head()] || m.used == nil {
		return rules.Pinhole{}, false
	}
	h := m.used
	m.used = nil
	return h.p, true
}

// ServerReply is one complete reply from the server.
func (m *Machine) ServerReply(now time.Time, r ftp.Reply) []Action {
	if m.ended {
		return nil
	}
	m.last = now
	if r.Code == 230 {
		m.loggedIn = true
	}
	verb := m.Head()
	out := r.Bytes()
	var acts []Action
	var after []Action
	switch {
	case r.Preliminary() && transferVerbs[verb]:
		// The transfer begins: its pinhole gets the grace period.
		if h := m.cur; h != nil {
			m.cur = nil
			h.deadline = now.Add(m.pol.UseGrace)
			m.used = h
		}
	case r.Code == 425 || r.Code == 426:
		acts = m.closeCurrent(acts, "failed")
		for _, h := range m.sortedLive() {
			acts = m.close(acts, h, "failed")
		}
	case verb == "PASV" && r.Code == 227, verb == "EPSV" && r.Code == 229:
		return m.passive(acts, verb, r)
	case (verb == "PORT" || verb == "EPRT") && r.Code >= 400:
		acts = m.closeCurrent(acts, "failed")
	case verb == "REIN" && r.Code == 220:
		acts = m.closeCurrent(acts, "reinitialised")
		// Logged out: the login timeout counts again, from now.
		m.loggedIn, m.start = false, now
	case verb == "FEAT" && r.Code == 211 && m.tls == TLSTerminate:
		out = tlsFEAT(r)
	case verb == "FEAT" && r.Code == 211 && m.tls == TLSRefuse:
		out = stripAuth(r)
	case verb == "AUTH" && m.auth == authPending:
		blind := r.Code == 234
		m.auth = authNone
		if blind {
			m.auth = authBlind
			acts = m.closeCurrent(acts, "blind")
		}
		after = append(after, Action{Kind: ActTLS, Blind: blind})
	}
	acts = m.reply(acts, out, !r.Preliminary())
	return append(acts, after...)
}

// reply forwards out to the client; a final reply pops the command it
// answers and releases the replies ftpalg composed for the commands right
// after it.
func (m *Machine) reply(acts []Action, out []byte, final bool) []Action {
	acts = append(acts, Action{Kind: ActForward, To: Client, Line: out})
	if !final {
		return acts
	}
	if len(m.fifo) > 0 {
		m.fifo = m.fifo[1:]
	}
	for len(m.fifo) > 0 && m.fifo[0].local != nil {
		acts = append(acts, Action{Kind: ActForward, To: Client, Line: m.fifo[0].local})
		m.fifo = m.fifo[1:]
	}
	return acts
}
