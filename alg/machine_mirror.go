package alg

// The mirror: the Machine deciding over a capture (alg/inspect).

// VerbInvalid stands for a line that is not a command in the FIFO of a
// mirror (see SetMirror): servers answer it with 500.
const VerbInvalid = "(invalid line)"

// SetMirror makes m decide over traffic that was not proxied (a capture):
// every line reached its peer as it was, so a line m refuses still went to
// the server and gets its reply, no composed reply is queued, an ActEnd
// does not end the machine, and MaxRefusals does not apply (every refusal
// is reported). The decisions are the same as the proxy's.
func (m *Machine) SetMirror() { m.mirror = true }

// SetID numbers the session, for the pinholes planned from now on (a
// capture names its sessions once they show payload).
func (m *Machine) SetID(id uint64) { m.id = id }

// Midstream forgets the greeting the machine expects first: the capture
// does not show the connection's start.
func (m *Machine) Midstream() { m.fifo = nil }

// Pending is the number of commands (and composed replies) awaiting replies.
func (m *Machine) Pending() int { return len(m.fifo) }

// DropOldest forgets the oldest outstanding command.
func (m *Machine) DropOldest() {
	if len(m.fifo) > 0 {
		m.fifo = m.fifo[1:]
	}
}

// Resync drops the outstanding commands before the oldest verb, when one
// is outstanding: a reply only verb gets (227 to PASV) shows where the
// server is.
func (m *Machine) Resync(verb string) {
	for i, p := range m.fifo {
		if p.verb == verb {
			m.fifo = m.fifo[i:]
			return
		}
	}
}
