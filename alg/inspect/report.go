package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// Schema names the version of the JSON report.
const Schema = "ftpalg-inspect/1"

// Report is the result of inspecting one capture. The package doc describes
// its JSON form.
type Report struct {
	Schema string `json:"schema"`
	// Format is "pcap" or "pcapng".
	Format string `json:"format"`
	// Packets is the number of records read.
	Packets int `json:"packets"`
	// ControlPorts are the ports whose connections were inspected.
	ControlPorts []uint16 `json:"control_ports"`
	// Assumptions says how the pinholes were planned.
	Assumptions []string `json:"assumptions"`
	// Warnings are problems of the capture: truncation, corrupt records,
	// snap length, sessions over the limit.
	Warnings []string `json:"warnings,omitempty"`
	// Sessions are the control sessions in order of their first packet.
	Sessions []*Session `json:"sessions"`
}

// Session is one FTP control connection.
type Session struct {
	ID     string         `json:"id"`
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	Start  time.Time      `json:"start"`
	End    time.Time      `json:"end"`
	// State is how the capture leaves the session: "closed" (FIN from both
	// sides, or from one after the server's 221 or 421), "reset"
	// (RST), "open" (the capture ends first), "encrypted" (after AUTH) or
	// "truncated" (the capture's snap length cut a segment).
	State string `json:"state"`
	// Linked is the ID of the other leg of the same proxied session, when
	// the capture holds both (taken on the gateway); Leg says which leg
	// this is: LegClient or LegServer.
	Linked        string         `json:"linked,omitempty"`
	Leg           string         `json:"leg,omitempty"`
	Events        []Event        `json:"events"`
	Announcements []Announcement `json:"announcements"`
	Violations    []Violation    `json:"violations"`
	// DroppedEvents counts events, announcements and violations over the
	// per-session limit (Options.MaxEvents).
	DroppedEvents int `json:"dropped_events,omitempty"`
}

// Directions of an event or violation: who sent the bytes.
const (
	DirClient = "client"
	DirServer = "server"
)

// Event is one step of a session: a command, a reply, or something the
// capture shows about the stream (gap, end).
type Event struct {
	Time time.Time `json:"time"`
	Dir  string    `json:"dir"`
	// Kind is one of command, reply, preliminary, invalid, incomplete, gap,
	// skipped, truncated, encrypted, close, reset.
	Kind string `json:"kind"`
	// Code is the reply code (replies only).
	Code int `json:"code,omitempty"`
	// Line is the command (PASS/ACCT masked), the reply text, or a
	// description.
	Line string `json:"line,omitempty"`
	// Answers is the verb of the command a reply answers, "connect" for the
	// greeting; empty when the reply could not be paired.
	Answers string `json:"answers,omitempty"`
	// Note says what ftpalg would do differently with this line, if anything.
	Note string `json:"note,omitempty"`
}

// Announcement is one data-channel endpoint announced in a session and what
// ftpalg would open for it.
type Announcement struct {
	Time time.Time `json:"time"`
	// Kind is PASV, EPSV, PORT or EPRT.
	Kind string `json:"kind"`
	// Line is the command or reply that carried the announcement.
	Line      string         `json:"line"`
	Announced netip.AddrPort `json:"announced"`
	// Verdict is "pinhole" or "refused" (see the session's violations).
	Verdict string `json:"verdict"`
	// Pinhole is what ftpalg would open (verdict "pinhole").
	Pinhole *Pinhole `json:"pinhole,omitempty"`
	// Rewritten is the endpoint ftpalg would announce instead, when it
	// differs from the announced one.
	Rewritten netip.AddrPort `json:"rewritten,omitzero"`
	// Used reports whether the capture shows a data connection to the
	// announced endpoint after the announcement, accepted: its SYN and the
	// SYN-ACK answering it.
	Used bool `json:"used"`
	// Data is the first data connection attempted to the announced
	// endpoint (its SYN). Used false with Data set: it was never
	// accepted (dropped by a firewall, refused, or the SYN-ACK is not in
	// the capture).
	Data *DataConn `json:"data,omitempty"`
}

// Verdicts of an announcement.
const (
	VerdictPinhole = "pinhole"
	VerdictRefused = "refused"
)

// Pinhole is the firewall opening ftpalg would make (see rules.Pinhole).
type Pinhole struct {
	ID   string         `json:"id"`
	Src  netip.Addr     `json:"src"`
	Dst  netip.AddrPort `json:"dst"`
	DNAT netip.AddrPort `json:"dnat,omitzero"`
	SNAT netip.Addr     `json:"snat,omitzero"`
	// Rule is the pinhole as ftpalg logs it.
	Rule string `json:"rule"`
}

func pinholeOf(p rules.Pinhole) *Pinhole {
	return &Pinhole{ID: p.ID.String(), Src: p.Src, Dst: p.Dst, DNAT: p.DNAT, SNAT: p.SNAT, Rule: p.String()}
}

// DataConn is the first packet (SYN) of a data connection seen in the
// capture.
type DataConn struct {
	Time time.Time      `json:"time"`
	From netip.AddrPort `json:"from"`
	To   netip.AddrPort `json:"to"`
}

// Violation is a line ftpalg would refuse or report.
type Violation struct {
	Time time.Time `json:"time"`
	Dir  string    `json:"dir"`
	// What classifies the violation (see the package doc).
	What string `json:"what"`
	// Why names the offending values, as ftpalg would log it.
	Why string `json:"why"`
	// Reply is the FTP reply ftpalg would send instead; empty when ftpalg
	// would pass the line and the inspector only reports it.
	Reply string `json:"reply,omitempty"`
	// End reports that ftpalg would end the session here.
	End bool `json:"end,omitempty"`
}

// Violations counts the violations of all sessions.
func (r *Report) Violations() int {
	n := 0
	for _, s := range r.Sessions {
		n += len(s.Violations)
	}
	return n
}

// Announcements counts the announcements of all sessions.
func (r *Report) Announcements() int {
	n := 0
	for _, s := range r.Sessions {
		n += len(s.Announcements)
	}
	return n
}

// WriteJSON writes the report as one indented JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("writing JSON report: %w", err)
	}
	return nil
}
