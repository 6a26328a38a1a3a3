package alg

// TLS termination in the Machine (policy TLSTerminate).
//
// ftpalg holds the certificate: the client's AUTH TLS is answered by
// ftpalg (234), its control connection continues inside TLS that the
// Session terminates, and the control channel stays readable, so
// announcements are checked, translated and opened as for plain FTP.
// PBSZ, PROT and CCC are answered by ftpalg and never reach the server:
// toward a plain server (TLS offload) they mean nothing to it, and toward
// an FTPS server ftpalg secured the upstream control connection itself
// before the session started (ftps.Session.SecureUpstream). The pinholes
// of protected data connections carry the data TLS (rules.Pinhole.TLS):
// the relay terminates the client's data TLS, which must resume this
// control session, and speaks plain or TLS to the server.
//
// Refused here: CCC (534: the control channel never goes back to the
// clear, so the pinholes stay decided on what ftpalg can read), REIN (502:
// RFC 2228 has it reset the security state, which ftpalg cannot do for the
// server's side), and AUTH TLS after a USER sent in the clear (503: RFC
// 2228 has an accepted AUTH require a new login, which the server, never
// seeing the AUTH, would not).

import (
	"bytes"
	"strings"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/rules"
)

// termState is the TLS side of a terminating Machine.
type termState struct {
	secure   bool // the client's control connection is TLS
	starting bool // the 234 went out, the handshake is under way
	pbsz     bool // PBSZ after TLS
	user     bool // a USER went to the server in the clear
	protP    bool // PROT P: the client's data connections are TLS
	upTLS    bool // the server leg of data connections is TLS
	data     func(clientTLS bool) rules.DataTLS
}

// SetTLS prepares a terminating Machine: clientSecure says the client's
// control connection is TLS from the start (implicit FTPS); t makes the
// TLS wrapping of each data connection (nil: no termination).
func (m *Machine) SetTLS(clientSecure bool, t *ftps.Session) {
	if t == nil {
		return
	}
	m.term = termState{secure: clientSecure, upTLS: t.UpstreamTLS(), data: t.Data}
}

// TLSStarted reports that the handshake after ActStartTLS succeeded: the
// client's control connection is TLS from here.
func (m *Machine) TLSStarted() {
	m.term.starting = false
	m.term.secure = true
}

// Announced returns the announced pinhole whose transfer has not begun
// (no preliminary reply yet), if any.
func (m *Machine) Announced() (rules.Pinhole, bool) {
	if m.cur == nil {
		return rules.Pinhole{}, false
	}
	return m.cur.p, true
}

// dataTLS is the TLS wrapping of the next data connection, or nil when the
// kernel can carry it (nothing to terminate on either leg).
func (m *Machine) dataTLS() rules.DataTLS {
	t := m.term
	if m.tls != TLSTerminate || t.data == nil || (!t.protP && !t.upTLS) {
		return nil
	}
	return t.data(t.protP)
}

// tlsCommand handles the commands of TLS termination and the policy's
// requirements; handled reports whether it did (answered or refused).
func (m *Machine) tlsCommand(cmd ftp.Command) (acts []Action, handled bool) {
	t := &m.term
	arg := strings.ToUpper(strings.TrimSpace(cmd.Arg))
	switch cmd.Verb {
	case "AUTH":
		switch {
		case t.secure || t.starting:
			return m.refuse(nil, "AUTH", "AUTH", refusal("503", "already using TLS", "AUTH on a control connection already in TLS")), true
		case arg != "TLS" && arg != "TLS-C" && arg != "SSL":
			return m.refuse(nil, "AUTH", "AUTH", refusal("504", "AUTH "+arg+" not supported; use AUTH TLS", "AUTH "+arg+" is not a TLS mechanism")), true
		case len(m.fifo) > 0:
			return m.refuse(nil, "AUTH", "AUTH", refusal("503", "AUTH TLS must wait for the replies to the commands before it",
				"AUTH TLS pipelined behind unanswered commands")), true
		case t.user:
			// RFC 2228: an accepted AUTH requires the user to log in
			// again; the server, which never sees this AUTH, would keep
			// the USER (or login) it got in the clear.
			return m.refuse(nil, "AUTH", "AUTH", refusal("503", "AUTH TLS must come before USER; reconnect and start with AUTH TLS",
				"AUTH TLS after a USER sent in the clear")), true
		}
		t.starting = true
		return []Action{
			{Kind: ActForward, To: Client, Line: []byte("234 ftpalg: AUTH TLS OK, start the TLS handshake\r\n")},
			{Kind: ActStartTLS},
		}, true
	case "PBSZ":
		if !t.secure {
			return m.refuse(nil, "PBSZ", "PBSZ", refusal("503", "PBSZ needs AUTH TLS first", "PBSZ before AUTH TLS")), true
		}
		t.pbsz = true
		return m.answer(nil, "200 PBSZ=0"), true
	case "PROT":
		switch {
		case !t.secure || !t.pbsz:
			return m.refuse(nil, "PROT", "PROT", refusal("503", "PROT needs AUTH TLS and PBSZ first", "PROT before AUTH TLS and PBSZ")), true
		case arg == "P":
			t.protP = true
			return m.answer(nil, "200 Data protection level set to Private"), true
		case arg == "C" && m.pol.RequireProtP:
			return m.refuse(nil, "PROT", "PROT", refusal("534", "data connections must be protected (PROT P)",
				"PROT C while the policy requires protected data")), true
		case arg == "C":
			t.protP = false
			return m.answer(nil, "200 Data protection level set to Clear"), true
		case arg == "S" || arg == "E":
			return m.refuse(nil, "PROT", "PROT", refusal("536", "protection level "+arg+" not supported by TLS; use PROT P or PROT C",
				"PROT "+arg+" is not supported")), true
		}
		// RFC 2228: 504 for an argument that is no protection level.
		return m.refuse(nil, "PROT", "PROT", refusal("504", "PROT takes C, S, E or P; use PROT P or PROT C",
			"PROT with an unknown level")), true
	case "CCC":
		return m.refuse(nil, "CCC", "CCC", refusal("534", "CCC refused by policy",
			"CCC would make the control channel cleartext again")), true
	case "USER":
		if !t.secure && m.pol.RequireTLS {
			return m.refuse(nil, "USER", "USER", refusal("530", "TLS required; use AUTH TLS first",
				"login before AUTH TLS while the policy requires TLS")), true
		}
		if !t.secure {
			t.user = true
		}
	case "REIN":
		// REIN must also reset the security state (RFC 2228), which
		// ftpalg cannot do for the server's side: the upstream TLS and
		// its PBSZ/PROT were set up once, before the session began, and
		// a plain server would take the client's protection for granted.
		// REIN is optional (RFC 959: 502).
		return m.refuse(nil, "REIN", "REIN", refusal("502", "REIN not implemented under TLS termination; reconnect instead",
			"REIN under TLS termination")), true
	case "PASV", "EPSV", "PORT", "EPRT":
		if !t.protP && m.pol.RequireProtP {
			return m.refuse(nil, cmd.Verb, cmd.Verb, refusal("521", "data connections must be protected; use PROT P first",
				"unprotected data connection while the policy requires PROT P")), true
		}
	}
	return nil, false
}

// answer sends a reply ftpalg composed for a command it handles itself, in
// FIFO order after the replies to the commands before it.
func (m *Machine) answer(acts []Action, reply string) []Action {
	b := []byte(reply + "\r\n")
	if len(m.fifo) > 0 {
		m.fifo = append(m.fifo, pending{local: b})
		return acts
	}
	return append(acts, Action{Kind: ActForward, To: Client, Line: b})
}

// tlsFEAT rewrites the server's FEAT reply for a terminating session: the
// server's own AUTH, PBSZ and PROT lines go (they are not what the client
// talks to) and ftpalg's go in, before the end line.
func tlsFEAT(r ftp.Reply) []byte {
	ours := []string{" AUTH TLS\r\n", " PBSZ\r\n", " PROT\r\n"}
	if !r.Multiline() {
		return []byte("211-Features:\r\n" + strings.Join(ours, "") + "211 End\r\n")
	}
	var b bytes.Buffer
	last := len(r.Lines) - 1
	for i, l := range r.Lines {
		f := strings.ToUpper(strings.TrimSpace(string(l)))
		if i > 0 && i < last && (f == "AUTH" || strings.HasPrefix(f, "AUTH ") || f == "PBSZ" || f == "PROT" ||
			strings.HasPrefix(f, "PBSZ ") || strings.HasPrefix(f, "PROT ")) {
			continue
		}
		if i == last {
			for _, o := range ours {
				b.WriteString(o)
			}
		}
		b.Write(l)
	}
	return b.Bytes()
}
