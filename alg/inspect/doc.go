// Package inspect analyses the FTP control sessions in a packet capture
// (pcap or pcapng) with the same codec (alg/ftp) and the same policy (alg)
// as the running ALG, and reports what ftpalg would have done: the pinhole
// for every data-channel announcement and every policy violation.
//
// Typical usage:
//
//	f, err := os.Open("ftp.pcapng")
//	...
//	rep, err := inspect.Inspect(ctx, f, inspect.Options{Ports: []uint16{21, 2121}})
//	if err != nil {
//		return err // not a capture, or unreadable
//	}
//	rep.WriteText(os.Stdout) // or rep.WriteJSON(os.Stdout)
//
// # How a capture is read
//
// Packets are decoded with gopacket (Ethernet, Linux cooked v1 and v2 as tcpdump -i any writes them, raw IP, BSD
// loopback; IPv4 and IPv6) and the TCP connections to or from a control
// port are reassembled with gopacket's reassembly package, which puts
// out-of-order segments in order and drops bytes it has already delivered
// (retransmissions; a retransmission with other content than the first copy
// is not noticed). The two byte streams of each
// connection then go through the codec exactly as in alg.Session: client
// bytes through ftp.LineReader and ftp.ParseCommand, server bytes through
// ftp.ReplyReader, and every line goes to the session's alg.Machine, the
// proxy's own control-channel state machine, in mirror mode (the lines
// reached their peers whatever ftpalg would have done): it pairs replies
// with commands (the greeting answers the connection, 1xx replies are
// preliminary, only a final 227/229 answering a PASV/EPSV is an
// announcement), refuses what ftpalg refuses and plans the pinholes; this
// package names its decisions for the report.
// TestTranscriptsSameDecisions replays the recorded transcripts through a
// Machine and through this package and requires the same decision for
// every line.
//
// Damaged captures do not stop the inspection:
//   - A hole in a stream (segments missing from the capture) is given up as
//     soon as the receiver acknowledges the missing bytes (no retransmission
//     will come, and the data behind the hole must be read before the
//     acknowledging packet), or when it stays open for Options.GapTimeout of
//     capture time. It is reported as a "gap" event; the stream
//     resynchronises at the next line. Around a gap the pairing of replies
//     with commands is uncertain, so an unpaired 227/229 is then not
//     reported as unsolicited.
//   - A segment cut short by the capture's snap length ends the inspection
//     of its session ("truncated" event): the rest of that session cannot be
//     read reliably.
//   - A capture file that ends in the middle of a record, or a corrupt
//     record, ends the reading; what was read is reported, with a warning.
//
// After "AUTH TLS" answered by 234 the session is encrypted: the inspection
// of that session stops there ("encrypted" event).
//
// # What is assumed
//
// A capture does not show how ftpalg would be deployed. The inspector plans
// every pinhole as if ftpalg ran in gateway mode (nat.Gateway) at the
// capture point without NAT: its upstream address is the client's own
// address, the address the client dialled is the server's. Active-mode
// announcements are translated to a port of the data-port pool
// (Options.DataPortLo-DataPortHi), as `ftpalg run --data-ports` does.
// Report.Assumptions says so in every report.
//
// # JSON schema (Report.WriteJSON)
//
// The schema is stable; fields are only ever added. Addresses are
// "ip:port" strings ("[2001:db8::1]:21" for IPv6), times are RFC 3339 with
// nanoseconds, as in the capture.
//
//	{
//	  "schema": "ftpalg-inspect/1",
//	  "format": "pcap" | "pcapng",
//	  "packets": 123,                 // records read
//	  "control_ports": [21],
//	  "assumptions": ["..."],
//	  "warnings": ["..."],            // capture problems (omitted when none)
//	  "sessions": [{
//	    "id": "s1",                   // in order of the first packet
//	    "client": "192.0.2.1:40312",
//	    "server": "203.0.113.2:21",
//	    "start": "...", "end": "...", // first and last packet seen
//	    "state": "closed" | "reset" | "open" | "encrypted" | "truncated",
//	    "linked": "s2", "leg": "client" | "server", // the other leg of one proxied session (omitted when none)
//	    "events": [{
//	      "time": "...",
//	      "dir": "client" | "server", // who sent it
//	      "kind": "command" | "reply" | "preliminary" | "invalid" | "incomplete" |
//	              "gap" | "skipped" | "truncated" | "encrypted" | "close" | "reset",
//	      "code": 227,                // replies only
//	      "line": "...",              // command (PASS/ACCT argument masked), reply
//	                                  // text (lines joined by "\n", CRLF removed), or
//	                                  // a description for the other kinds
//	      "answers": "PASV",          // replies: the command answered; "connect"
//	                                  // for the greeting; omitted when unpaired
//	      "note": "..."               // what ftpalg would do differently, if anything
//	    }],
//	    "announcements": [{
//	      "time": "...",
//	      "kind": "PASV" | "EPSV" | "PORT" | "EPRT",
//	      "line": "...",              // the command or reply that announced it
//	      "announced": "ip:port",     // as announced (EPSV: server address + port)
//	      "verdict": "pinhole" | "refused",
//	      "pinhole": {                // verdict "pinhole" only
//	        "id": "s1.p1",
//	        "src": "192.0.2.1",       // the only source allowed
//	        "dst": "203.0.113.2:40000", // destination as the first packet arrives
//	        "dnat": "ip:port",        // omitted when no DNAT
//	        "snat": "ip",             // omitted when no SNAT
//	        "rule": "s1.p1 tcp 192.0.2.1 -> 203.0.113.2:40000 snat 192.0.2.1"
//	      },
//	      "rewritten": "ip:port",     // what ftpalg would announce instead (omitted if unchanged)
//	      "used": true,               // a data connection to it was seen accepted (SYN, SYN-ACK)
//	      "data": {"time": "...", "from": "ip:port", "to": "ip:port"} // its SYN; set and used false: never accepted
//	    }],
//	    "violations": [{
//	      "time": "...",
//	      "dir": "client" | "server",
//	      "what": "bounce" | "privileged-port" | "malformed" | "family" |
//	              "multiline-passive" | "unsolicited" | "third-party" |
//	              "long-address" | "auth" | "line-too-long" | "nul" | "syntax" |
//	              "garbage" | "invalid-reply" | "plan",
//	      "why": "...",               // one line naming the offending values
//	      "reply": "...",             // the reply ftpalg would send instead (omitted when
//	                                  // ftpalg would pass the line and only reports it)
//	      "end": true                 // ftpalg would end the session here
//	    }],
//	    "dropped_events": 0           // events over Options.MaxEvents (omitted when 0)
//	  }]
//	}
//
// Violation kinds: "bounce" a PORT/EPRT naming another host than the
// client; "privileged-port" a data port below the policy's floor;
// "malformed" a PORT/EPRT argument or 227/229 text that does not parse (an
// octet above 255, a wrong count of numbers, port 0); "family" an address of
// the other IP family; "multiline-passive" a multi-line 227/229 answering
// PASV/EPSV; "unsolicited" a 227/229 that answers no PASV/EPSV (ftpalg passes
// it as plain text and opens nothing; suspicious); "third-party" a 227 naming
// another address than the server's (ftpalg announces the server's address
// instead and opens the pinhole to the server only); "long-address"
// LPRT/LPSV; "auth" AUTH TLS/SSL refused by policy; "line-too-long", "nul",
// "syntax", "garbage" for command lines ftpalg refuses; "invalid-reply" a
// server reply ftpalg cannot read; "plan" a pinhole the planner could not
// make.
package inspect
