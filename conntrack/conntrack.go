// Package conntrack observes FTP data connections through the kernel's
// connection tracking (netfilter conntrack) over netlink: it reports when a
// pinhole is first used and, when the data connection ends, what it carried.
//
// A Watcher subscribes to the conntrack NEW, UPDATE and DESTROY event groups
// of the network namespace it is created in. Callers register an
// expectation per pinhole (Expect); the first TCP flow whose original
// direction matches it fires OnUse once, so the session can close the
// pinhole at once, and is then tracked until it ends, which fires OnEnd once
// with the tuples, the byte and packet counters and the duration.
//
// Typical usage:
//
//	w, err := conntrack.NewWatcher(conntrack.Config{
//		Log:   log,
//		OnUse: func(id rules.PinholeID, f conntrack.Flow) { sessions.pinholeUsed(id) },
//		OnEnd: func(id rules.PinholeID, f conntrack.FlowEnd) {
//			log.LogAttrs(ctx, slog.LevelInfo, "transfer", append(f.LogAttrs(), slog.String("pinhole", id.String()))...)
//		},
//	})
//	if err != nil { ... }
//	go w.Run(ctx)
//	...
//	w.Expect(p.ID, conntrack.Match{Src: p.Src, Dst: p.Dst}) // before the pinhole goes live
//	...
//	w.Forget(p.ID) // pinhole closed; a no-op if it was used
//
// The events come from github.com/ti-mo/conntrack (decoding) on a
// github.com/mdlayher/netlink socket: github.com/vishvananda/netlink can list
// and delete conntrack entries but cannot subscribe to conntrack events, which
// is why this package depends on ti-mo/conntrack.
//
// # When a transfer ends
//
// Conntrack follows each TCP connection through coarse states, and sends an
// UPDATE event at every change: ESTABLISHED; FIN_WAIT after the first FIN
// (either side); CLOSE_WAIT once that FIN is acknowledged; LAST_ACK after
// the second FIN; TIME_WAIT once that is acknowledged; CLOSE after a reset
// (RST). The first FIN is not the end: it finishes one direction only, and
// the other may still send (a client that half-closes and then reads). In
// LAST_ACK both sides have sent everything but the last FIN is
// unacknowledged. So a tracked flow ends when its state reaches TIME_WAIT
// (both directions finished and acknowledged) or CLOSE (reset; FlowEnd.Reset
// is set). Its counters are then read from the entry (UPDATE events carry
// none) and OnEnd fires with End = the event's arrival; the flow is no
// longer tracked, so its DESTROY event later is ignored. If the last ACK
// never comes (a peer vanished in LAST_ACK), or the UPDATE event was lost, or
// the entry is deleted or times out while open, the DESTROY event ends the
// flow instead, later: a closed entry lingers in TIME_WAIT for
// net.netfilter.nf_conntrack_tcp_timeout_time_wait (120s by default), in
// LAST_ACK for nf_conntrack_tcp_timeout_last_ack (30s), and an expired
// entry is destroyed when the kernel's garbage collector next passes
// (seconds to about a minute later), so End then includes that delay.
//
// Conntrack does not record which side sent a FIN: a retransmitted first
// FIN can take it to LAST_ACK, and the next ACK to TIME_WAIT, while the
// other side has not finished. The end is then reported early and what the
// other side sends afterwards is not counted. On an FTP data connection only
// one side sends data and it closes first, so at most the receiver's FIN
// and last ACK go uncounted.
//
// # Cost
//
// UPDATE events fire at every state change of every connection in the
// namespace, NEW and DESTROY events once per connection, whatever the
// protocol. A classic BPF filter on the event socket (the kernel's
// netlink-attribute extensions) drops in the kernel all but TCP NEW and
// DESTROY events and UPDATE events to TIME_WAIT or CLOSE: about three small
// messages per TCP connection reach the socket. Those are read into a reused
// buffer and peeked at without allocating; only a NEW event whose addresses
// a pending expectation matches, and UPDATE and DESTROY events of tracked
// flows (by conntrack id), are decoded and queued. A close costs one lookup
// of the entry, for its counters and start time; none when neither
// nf_conntrack_acct nor nf_conntrack_timestamp is on (it would read
// nothing the event did not say).
//
// A NEW event takes its expectation as it is read, not when it is
// dispatched: the flow has used the pinhole then, so a Forget that comes
// while the event waits in the queue (a short transfer whose session ended
// while a callback held up dispatching) does not lose the use. The kernel
// queues the NEW event before the flow's first packet leaves, and a
// goroutine of its own reads the socket, so only a Forget within moments of
// that first packet (sooner than closing a pinhole's rules takes) could
// still come first.
//
// # Kernel settings
//
// Per network namespace: net.netfilter.nf_conntrack_events must not be 0
// (no events); net.netfilter.nf_conntrack_acct=1 makes the kernel count
// bytes and packets (FlowEnd.Counted says whether it did);
// net.netfilter.nf_conntrack_timestamp=1 gives exact start times (otherwise
// the NEW event's arrival is used). Conntrack only tracks connections in a
// namespace where something uses it (a stateful or NAT rule).
//
// # Lost events
//
// Events that do not fit the socket's buffer are lost (ENOBUFS). The Watcher
// logs that and resynchronizes from a dump of the table: pending
// expectations that a live flow matches are used, tracked flows that the
// dump shows closed end with its counters, and tracked flows that no longer
// exist end with FlowEnd.Lost set.
package conntrack

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Match describes the first packet of an expected data connection in its
// original direction, as conntrack records it (before NAT): TCP from Src (any
// source port) to exactly Dst.
type Match struct {
	// Src is the only source address that may open the connection.
	Src netip.Addr
	// Dst is the destination address and port of the first packet.
	Dst netip.AddrPort
}

// String formats the match as "src:* -> dst".
func (m Match) String() string {
	return fmt.Sprintf("tcp %s:* -> %s", m.Src, m.Dst)
}

// normalize unmaps IPv4-mapped IPv6 addresses (conntrack reports IPv4 flows
// with IPv4 addresses) and checks that the match is exact.
func (m Match) normalize() (Match, error) {
	m.Src = m.Src.Unmap()
	m.Dst = netip.AddrPortFrom(m.Dst.Addr().Unmap(), m.Dst.Port())
	switch {
	case !m.Src.IsValid() || !m.Dst.IsValid():
		return m, errors.New("source address and destination are required")
	case m.Dst.Port() == 0:
		return m, errors.New("destination port 0")
	case m.Src.Is4() != m.Dst.Addr().Is4():
		return m, errors.New("source and destination of different address families")
	case m.Src.Zone() != "" || m.Dst.Addr().Zone() != "":
		return m, errors.New("addresses with a zone")
	}
	return m, nil
}

// matches reports whether a connection with original tuple orig matches.
// m must be normalized.
func (m Match) matches(orig Tuple) bool {
	return orig.Src.Addr() == m.Src && orig.Dst == m.Dst
}

// Tuple is one direction of a connection: source and destination of the
// packets travelling that way.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// String formats the tuple as "src -> dst".
func (t Tuple) String() string { return t.Src.String() + " -> " + t.Dst.String() }

// reverse swaps source and destination.
func (t Tuple) reverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src} }

// Flow is a TCP connection as conntrack saw it start.
type Flow struct {
	// ID is the kernel's conntrack id (as in `conntrack -L -o id`).
	ID uint32
	// Zone is the conntrack zone (0 unless zones are used).
	Zone uint16
	// Orig is the original direction, as the first packet arrived (before
	// NAT): initiator -> responder.
	Orig Tuple
	// Reply is the reply direction conntrack expects. Without NAT it is Orig
	// reversed; with DNAT Reply.Src is the real responder, with SNAT Reply.Dst
	// is the initiator's translated address.
	Reply Tuple
	// Start is when the connection started: the kernel's timestamp when
	// nf_conntrack_timestamp is on (only known at the end), else when the
	// NEW event arrived.
	Start time.Time
}

// NAT reports whether conntrack translates the connection.
func (f Flow) NAT() bool { return f.Reply != f.Orig.reverse() }

// FlowEnd is a tracked connection that ended.
type FlowEnd struct {
	Flow
	// End is when the connection ended. Normally that is when conntrack
	// saw it close, as the UPDATE event arrived: its TCP state reached
	// TIME_WAIT (both sides sent their FIN and the last one was
	// acknowledged) or CLOSE (a reset). If that was not seen (the event was
	// lost, or the entry was deleted or expired while open), it is when
	// conntrack destroyed the entry: the kernel's timestamp when
	// nf_conntrack_timestamp is on, else when the DESTROY event arrived;
	// for a closed TCP connection that includes the TIME_WAIT linger and
	// the garbage collector's delay (see the package documentation).
	End time.Time
	// Counted reports whether the kernel counted the connection's packets and
	// bytes (net.netfilter.nf_conntrack_acct=1 when the connection started).
	// When false the counters are zero and mean nothing.
	Counted bool
	// OrigPackets and OrigBytes count the original direction (from
	// Orig.Src), ReplyPackets and ReplyBytes the reply direction, up to
	// the end: read from the entry right after the close, or from the
	// DESTROY event. Bytes are IP packet sizes, headers included.
	OrigPackets, OrigBytes   uint64
	ReplyPackets, ReplyBytes uint64
	// Reset reports that the connection ended with a TCP reset (conntrack's
	// state CLOSE) rather than with a FIN from each side: typically an
	// aborted transfer.
	Reset bool
	// Lost reports that the end was found without its events (the event
	// socket overflowed) by comparing with the conntrack table: End is when
	// that was noticed (or the close, if that was seen) and nothing was
	// counted.
	Lost bool
}

// Duration is End - Start.
func (f FlowEnd) Duration() time.Duration { return f.End.Sub(f.Start) }

// Log attribute keys of FlowEnd.LogAttrs.
const (
	keySrc          = "flow_src"
	keyDst          = "flow_dst"
	keyReplySrc     = "flow_reply_src"
	keyReplyDst     = "flow_reply_dst"
	keyStart        = "flow_start"
	keyDuration     = "flow_duration"
	keyCounted      = "flow_counted"
	keyReset        = "flow_reset"
	keyLost         = "flow_lost"
	keyOrigBytes    = "bytes_orig"
	keyReplyBytes   = "bytes_reply"
	keyOrigPackets  = "packets_orig"
	keyReplyPackets = "packets_reply"
)

// LogAttrs describes the ended connection for one log line, with constant
// keys: flow_src, flow_dst (original direction), flow_reply_src,
// flow_reply_dst (reply direction, shows NAT), flow_start, flow_duration,
// flow_counted, and when counted bytes_orig, bytes_reply, packets_orig,
// packets_reply; flow_reset=true when a reset ended it, flow_lost=true when
// the end was found without its events.
func (f FlowEnd) LogAttrs() []slog.Attr {
	attrs := make([]slog.Attr, 0, 13)
	attrs = append(attrs,
		slog.String(keySrc, f.Orig.Src.String()),
		slog.String(keyDst, f.Orig.Dst.String()),
		slog.String(keyReplySrc, f.Reply.Src.String()),
		slog.String(keyReplyDst, f.Reply.Dst.String()),
		slog.Time(keyStart, f.Start),
		slog.Duration(keyDuration, f.Duration()),
		slog.Bool(keyCounted, f.Counted),
	)
	if f.Counted {
		attrs = append(attrs,
			slog.Uint64(keyOrigBytes, f.OrigBytes),
			slog.Uint64(keyReplyBytes, f.ReplyBytes),
			slog.Uint64(keyOrigPackets, f.OrigPackets),
			slog.Uint64(keyReplyPackets, f.ReplyPackets),
		)
	}
	if f.Reset {
		attrs = append(attrs, slog.Bool(keyReset, true))
	}
	if f.Lost {
		attrs = append(attrs, slog.Bool(keyLost, true))
	}
	return attrs
}
