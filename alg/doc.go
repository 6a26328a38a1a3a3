// Package alg is the FTP application layer gateway: a transparent proxy for
// the control channel that opens, in the firewall, exactly the data
// connections the control channel announces.
//
// Typical usage:
//
//	p := &alg.Proxy{Upstream: alg.FixedUpstream(srv), Planner: pl, Backend: b, Log: log}
//	err := p.Serve(ctx, ln)
//
// # Design
//
// One place decides: Machine, the control-channel state machine of one
// session. It does no I/O and reads no clock. Events go in, each with the
// time it happened: a command line (ClientLine), a reply (ServerReply), a
// read error, the result of planning and opening a pinhole (Planned,
// Opened, OpenFailed), a pinhole's first use (PinholeUsed), time passing
// (Tick, at Deadline). Decisions come out as Actions: forward a line to a
// peer, log a refusal (its reply is forwarded in FIFO order), plan, open
// or close a pinhole, hold the client while an AUTH is answered, go blind
// after TLS (passthrough), end the session with a reply. An announcement
// (PORT/EPRT, or 227/229 to this session's own PASV/EPSV) is forwarded
// only by Opened, after its pinhole is live; a refused one is replaced by
// a 425.
//
// Session is the I/O shell around a Machine: one goroutine reads the client
// (ftp.LineReader), one the server (ftp.ReplyReader); writes to the client
// leave in the Machine's order; a per-session closer closes pinholes, with
// retries, off both reading paths (only the pinhole a new announcement
// replaces is tried once first, so that its pool port is free for the new
// one); one timer, on the session's Clock, fires at the Machine's next
// deadline (pinhole TTL, grace after first use, login and idle timeouts).
// The planner (package nat) decides the translation and the pinhole; the
// Backend (rules.Backend) makes it live; the context of an Open carries
// Policy.OpenTimeout to the backend.
//
// The capture inspector (alg/inspect) drives a Machine of its own per
// control session over the reassembled streams, in mirror mode (SetMirror:
// the lines reached their peers whatever ftpalg would have done), with the
// same planner: the policy the daemon enforces and the one inspect reports
// are decided in one place. Captures that start mid-session or miss
// segments resynchronise the Machine's FIFO (Midstream, Resync,
// DropOldest). TestTranscriptsSameDecisions in alg/inspect replays the
// recorded transcripts through a Machine and through inspect and requires
// the same decision for every line.
//
// Pinholes are named by rules.PinholeID{Session, N}, built only by the
// Machine. Proxy.PinholeUsed routes a first use (seen by conntrack) to its
// session with one map lookup; an Observer learns of every pinhole's
// opening and closing (cmd/ftpalg has conntrack watch for them).
//
// # Data flow
//
//	alg/ftp    bytes -> command lines and replies; host-port formats (pure, fuzzed)
//	alg        Proxy accepts and dials; Session relays; Machine decides (policy, FIFO, pinhole lifetimes)
//	nat        announcement + session endpoints -> rewritten endpoint + rules.Pinhole (port pool)
//	rules      Pinhole, PinholeID, Backend; backends beneath: rules/iptables, rules/relay (rules/nftables)
//	conntrack  kernel conntrack events -> PinholeUsed (first use) and transfer lines (flow end)
//	alg/inspect a capture -> reassembled streams -> a mirror Machine per session -> report
//	cmd/ftpalg flags -> wiring: Proxy + planner + backend + conntrack Observer
//
// Nothing in alg or alg/ftp knows about iptables, nftables or netlink.
package alg
