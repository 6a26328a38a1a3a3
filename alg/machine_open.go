package alg

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/rules"
)

// The steps of an Opening: plan, open, forward. See Machine.

// passive checks the reply r to this session's PASV or EPSV and starts the
// Opening of its pinhole. A reply that cannot be honoured is replaced by a
// 425 to the client.
func (m *Machine) passive(acts []Action, verb string, r ftp.Reply) []Action {
	a, start, end, ref := CheckPassive(m.ep, m.pol, r)
	if ref != nil {
		return m.refusePassive(acts, verb, ref)
	}
	return m.plan(acts, &Opening{Announcement: a, verb: verb, reply: r, span: [2]int{start, end}})
}

// refusePassive replaces the server's passive reply with ref's reply. It is
// logged but does not count as a refusal of the client's.
func (m *Machine) refusePassive(acts []Action, verb string, ref *Refusal) []Action {
	acts = append(acts, Action{Kind: ActRefused, What: verb + " reply", Refusal: ref})
	return m.reply(acts, []byte(ref.Reply+"\r\n"), true)
}

// plan closes the unused previous pinhole (its pool port is free again for
// the new one once the close is done: the caller completes the closes
// before it plans) and asks the caller to plan op.
func (m *Machine) plan(acts []Action, op *Opening) []Action {
	if acts == nil && m.cur != nil {
		acts = make([]Action, 0, 2) // the close and the plan, in one allocation
	}
	acts = m.closeCurrent(acts, "replaced")
	return append(acts, Action{Kind: ActPlan, Opening: op})
}

// Planned reports the planner's decision for op (or its error). It returns
// the ActOpen of the pinhole, or the refusal.
func (m *Machine) Planned(op *Opening, plan Plan, err error) []Action {
	if op.state != stepPlan {
		panic("alg: Planned out of order")
	}
	op.state = stepOpen
	if err != nil {
		op.state = stepDone
		return m.refuseOpening(nil, op, refusal("425", "cannot open data connection: "+err.Error(), err.Error()))
	}
	if err := checkPlan(m.ep, op.Announcement, plan, m.pol.MinDataPort); err != nil {
		op.state = stepDone
		if plan.Release != nil {
			plan.Release()
		}
		acts := []Action{{Kind: ActError, Err: fmt.Errorf("planner broke the pinhole invariant: %w", err)}}
		return m.refuseOpening(acts, op, refusal("425", "cannot open data connection: internal error", "internal error"))
	}
	m.nextN++
	plan.Pinhole.ID = rules.PinholeID{Session: m.id, N: m.nextN}
	plan.Pinhole.TTL = m.pol.PinholeTTL
	plan.Pinhole.Passive = op.Announcement.Kind.Passive()
	plan.Pinhole.TLS = m.dataTLS()
	op.Plan = plan
	op.h = hole{p: plan.Pinhole, release: plan.Release}
	op.hole = &op.h // one allocation less on the reply path
	return []Action{{Kind: ActOpen, Opening: op, Pinhole: plan.Pinhole}}
}

// OpenFailed reports that op's pinhole could not be made live: whatever
// part of it the backend could not take back is closed like any pinhole
// (reason "failed"), and the announcement is refused with a 425.
func (m *Machine) OpenFailed(op *Opening, err error) []Action {
	if op.state != stepOpen {
		panic("alg: OpenFailed out of order")
	}
	op.state = stepDone
	h := op.hole
	acts := []Action{{Kind: ActClose, Pinhole: h.p, Release: h.release, Reason: "failed"}}
	if m.ended {
		return acts
	}
	return m.refuseOpening(acts, op, refusal("425", "cannot open data connection: firewall error", "firewall error"))
}

// Opened reports that op's pinhole is live at now. It returns the
// announcement to forward, rewritten.
func (m *Machine) Opened(op *Opening, now time.Time) []Action {
	if op.state != stepOpen {
		panic("alg: Opened out of order")
	}
	op.state = stepDone
	h := op.hole
	h.deadline = now.Add(m.pol.PinholeTTL)
	m.live[h.p.ID] = h
	if m.ended {
		return m.close(nil, h, "session end")
	}
	// Another Opening that finished meanwhile left its pinhole current:
	// one pending pinhole per session.
	acts := m.closeCurrent(nil, "replaced")
	m.cur = h
	out, err := m.rewrite(op)
	if err != nil {
		acts = m.close(acts, h, "refused")
		return m.refuseOpening(acts, op, err.(*Refusal))
	}
	if op.Announcement.Kind.Passive() {
		return m.reply(acts, out, true)
	}
	return m.forward(acts, op.verb, out)
}

// refuseOpening refuses op's announcement with ref.
func (m *Machine) refuseOpening(acts []Action, op *Opening, ref *Refusal) []Action {
	if op.Announcement.Kind.Passive() {
		return m.refusePassive(acts, op.verb, ref)
	}
	return m.refuse(acts, op.verb, op.verb, ref)
}

// rewrite returns op's line with the planned endpoint in place of the
// announced one; only the numbers change.
func (m *Machine) rewrite(op *Opening) ([]byte, error) {
	a, plan := op.Announcement, op.Plan
	switch a.Kind {
	case PORT, EPRT:
		if plan.Announce == a.Addr {
			return op.line, nil
		}
		var arg string
		if a.Kind == EPRT {
			arg = ftp.FormatEPRT(plan.Announce)
		} else {
			var err error
			if arg, err = ftp.FormatPORT(plan.Announce); err != nil {
				return nil, refusal("425", "cannot open data connection: "+err.Error(), err.Error())
			}
		}
		return []byte(op.verb + " " + arg + lineEnd(op.line)), nil
	}
	r := op.reply
	if a.Kind == PASV && plan.Announce == a.Addr || a.Kind == EPSV && plan.Announce.Port() == a.Addr.Port() {
		return r.Bytes(), nil
	}
	// raw = "227 " + text + line end (r.Text() without the copy): replace
	// only the numbers, in one buffer (the reply path).
	raw := r.Lines[0]
	text := raw[4:len(trimEOL(raw))]
	start, end := op.span[0], op.span[1]
	b := make([]byte, 0, len(raw)+len("255,255,255,255,255,255"))
	b = append(b, raw[:4+start]...)
	if a.Kind == PASV {
		var err error
		if b, err = ftp.AppendPORT(b, plan.Announce); err != nil {
			return nil, refusal("425", "cannot translate passive reply", err.Error())
		}
	} else {
		d := text[start]
		b = append(b, d, d, d)
		b = strconv.AppendUint(b, uint64(plan.Announce.Port()), 10)
		b = append(b, d)
	}
	b = append(b, text[end:]...)
	return append(b, raw[4+len(text):]...), nil
}

// trimEOL is ftp's: line without its "\n" or "\r\n".
func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	return line
}

func lineEnd(line []byte) string {
	if bytes.HasSuffix(line, []byte("\r\n")) {
		return "\r\n"
	}
	return "\n"
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

func errorsIs(err, target error) bool { return errors.Is(err, target) }
