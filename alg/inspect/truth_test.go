package inspect

import (
	"bytes"
	"strings"
	"testing"
)

// TestDroppedDataConnectionNotUsed: a data connection whose SYN was never
// answered (a firewall dropped it) did not use the pinhole; one answered
// later to the same endpoint did.
func TestDroppedDataConnectionNotUsed(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	b.dataSYNOnly("192.0.2.1:51000", "203.0.113.2:50000")
	b.dataSYNOnly("192.0.2.1:51000", "203.0.113.2:50000") // retransmitted, still unanswered
	c.C("LIST")
	c.S("425 Failed to establish connection.")
	c.C("EPSV")
	c.S("229 Entering Extended Passive Mode (|||50001|)")
	b.dataSYN("192.0.2.1:51001", "203.0.113.2:50001")
	c.C("LIST")
	c.S("150 Here comes the directory listing.")
	c.S("226 Directory send OK.")
	c.close()
	rep := inspectBytes(t, b.pcap(), Options{})
	s := oneSession(t, rep)
	if len(s.Announcements) != 2 {
		t.Fatalf("announcements %v", findings(s))
	}
	if a := s.Announcements[0]; a.Used || a.Data == nil || a.Data.From.String() != "192.0.2.1:51000" {
		t.Errorf("dropped data connection: used=%v data=%+v, want tried and not used", a.Used, a.Data)
	}
	if a := s.Announcements[1]; !a.Used {
		t.Errorf("accepted data connection not used: %+v", a)
	}
	var txt bytes.Buffer
	if err := rep.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(txt.String(), "not used: 192.0.2.1:51000 -> 203.0.113.2:50000 tried at") {
		t.Errorf("text report does not say the dropped connection was not used:\n%s", txt.String())
	}
}

// TestClosedAfterGoodbye: a session that ended (QUIT, 221, the server's
// FIN) is closed even when the capture lacks the client's FIN; one that
// just stops is still open.
func TestClosedAfterGoodbye(t *testing.T) {
	for _, tc := range []struct {
		name    string
		goodbye bool
		want    string
	}{{"goodbye", true, "closed"}, {"no goodbye", false, "open"}} {
		t.Run(tc.name, func(t *testing.T) {
			b := newCapture(t)
			c := b.open(cli, srv)
			c.S("220 ready")
			c.C("QUIT")
			if tc.goodbye {
				c.S("221 Goodbye.")
			} else {
				c.S("200 not yet")
			}
			// Only the server's FIN is in the capture.
			from, to, seq, ack := c.ends(false)
			b.add(seg{from: from, to: to, seq: *seq, ack: *ack, ackf: true, fin: true})
			s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
			if s.State != tc.want {
				t.Errorf("state %q, want %q", s.State, tc.want)
			}
		})
	}
}

// TestLinkedLegs: a capture on the gateway holds the client's intercepted
// connection and ftpalg's own connection to the same server; they are one
// session's two legs. An unrelated session to the same server is not
// linked.
func TestLinkedLegs(t *testing.T) {
	b := newCapture(t)
	in := b.open("192.0.2.1:40312", "203.0.113.2:21")
	out := b.open("203.0.113.1:41000", "203.0.113.2:21")
	other := b.open("192.0.2.9:40400", "203.0.113.2:21")
	for _, c := range []*tcpConn{out, in} {
		c.S("220 ready")
	}
	other.S("220 ready")
	in.C("USER anonymous")
	out.C("USER anonymous")
	other.C("USER bob")
	for _, c := range []*tcpConn{out, in, other} {
		c.S("331 password")
	}
	in.C("PORT 192,0,2,1,195,80")
	out.C("PORT 203,0,113,1,156,64") // rewritten by ftpalg
	in.C("PASS x")
	out.C("PASS x")
	other.C("PASS y")
	rep := inspectBytes(t, b.pcap(), Options{})
	if len(rep.Sessions) != 3 {
		t.Fatalf("%d sessions", len(rep.Sessions))
	}
	got := ""
	for _, s := range rep.Sessions {
		got += s.ID + ":" + s.Client.String() + ":" + s.Leg + ":" + s.Linked + " "
	}
	want := "s1:192.0.2.1:40312:client:s2 s2:203.0.113.1:41000:server:s1 s3:192.0.2.9:40400:: "
	if got != want {
		t.Errorf("legs %q, want %q", got, want)
	}
	var txt bytes.Buffer
	if err := rep.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(txt.String(), "one proxied session with s2: ftpalg's connection to the server") {
		t.Errorf("text report does not link the legs:\n%s", txt.String())
	}
}
