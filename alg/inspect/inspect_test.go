package inspect

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const (
	cli  = "192.0.2.1:40312"
	srv  = "203.0.113.2:21"
	cli6 = "[2001:db8::1]:40312"
	srv6 = "[2001:db8::2]:21"
)

func inspectBytes(t testing.TB, data []byte, opts Options) *Report {
	t.Helper()
	rep, err := Inspect(context.Background(), bytes.NewReader(data), opts)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	return rep
}

// findings renders the announcements and violations of s compactly.
func findings(s *Session) []string {
	var out []string
	for _, a := range s.Announcements {
		l := fmt.Sprintf("%s %s %s", a.Kind, a.Announced, a.Verdict)
		if a.Pinhole != nil {
			l += " [" + a.Pinhole.Rule + "]"
		}
		if a.Rewritten.IsValid() {
			l += " as " + a.Rewritten.String()
		}
		if a.Used {
			l += fmt.Sprintf(" used %s->%s", a.Data.From, a.Data.To)
		}
		out = append(out, l)
	}
	for _, v := range s.Violations {
		l := fmt.Sprintf("! %s %s", v.Dir, v.What)
		if v.Reply != "" {
			l += " reply=" + v.Reply
		}
		if v.End {
			l += " end"
		}
		out = append(out, l)
	}
	return out
}

// timeline renders the events of s as "dir kind [code] line [answers]".
func timeline(s *Session) []string {
	var out []string
	for _, e := range s.Events {
		l := e.Dir[:1] + " " + e.Kind
		if e.Code != 0 {
			l += fmt.Sprintf(" %d", e.Code)
		}
		l += " " + e.Line
		if e.Answers != "" {
			l += " <" + e.Answers + ">"
		}
		out = append(out, l)
	}
	return out
}

func check(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot:\n\t%s\nwant:\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func oneSession(t *testing.T, rep *Report) *Session {
	t.Helper()
	if len(rep.Sessions) != 1 {
		var b bytes.Buffer
		rep.WriteText(&b)
		t.Fatalf("got %d sessions, want 1:\n%s", len(rep.Sessions), b.String())
	}
	return rep.Sessions[0]
}

// passiveCapture is a plain passive session with one listing.
func passiveCapture(t testing.TB) *capBuilder {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 (vsFTPd 3.0.3)")
	c.C("USER anonymous")
	c.S("331 Please specify the password.")
	c.C("PASS secret")
	c.S("230 Login successful.")
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	b.dataSYN("192.0.2.1:51000", "203.0.113.2:50000")
	c.C("LIST")
	c.S("150 Here comes the directory listing.")
	c.S("226 Directory send OK.")
	c.C("QUIT")
	c.S("221 Goodbye.")
	c.close()
	return b
}

var passiveTimeline = []string{
	"s reply 220 220 (vsFTPd 3.0.3) <connect>",
	"c command USER anonymous",
	"s reply 331 331 Please specify the password. <USER>",
	"c command PASS ****",
	"s reply 230 230 Login successful. <PASS>",
	"c command PASV",
	"s reply 227 227 Entering Passive Mode (203,0,113,2,195,80). <PASV>",
	"c command LIST",
	"s preliminary 150 150 Here comes the directory listing. <LIST>",
	"s reply 226 226 Directory send OK. <LIST>",
	"c command QUIT",
	"s reply 221 221 Goodbye. <QUIT>",
	"c close no more data from the client",
	"s close no more data from the server",
}

var passiveFindings = []string{
	"PASV 203.0.113.2:50000 pinhole [s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50000 snat 192.0.2.1] used 192.0.2.1:51000->203.0.113.2:50000",
}

func TestPassiveSession(t *testing.T) {
	rep := inspectBytes(t, passiveCapture(t).pcap(), Options{})
	s := oneSession(t, rep)
	if s.Client.String() != cli || s.Server.String() != srv || s.State != "closed" || s.ID != "s1" {
		t.Errorf("session %s client %s server %s state %s", s.ID, s.Client, s.Server, s.State)
	}
	check(t, "timeline", timeline(s), passiveTimeline)
	check(t, "findings", findings(s), passiveFindings)
	if rep.Format != "pcap" || rep.Packets != 20 || len(rep.Warnings) != 0 {
		t.Errorf("format %s, %d packets, warnings %q", rep.Format, rep.Packets, rep.Warnings)
	}
}

func TestPcapng(t *testing.T) {
	rep := inspectBytes(t, passiveCapture(t).pcapng(), Options{})
	s := oneSession(t, rep)
	check(t, "findings", findings(s), passiveFindings)
	if rep.Format != "pcapng" || len(s.Events) != len(passiveTimeline) {
		t.Errorf("format %s, %d events", rep.Format, len(s.Events))
	}
}

func TestActiveSession(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("PORT 192,0,2,1,195,81")
	c.S("200 PORT command successful.")
	c.C("RETR file")
	b.dataSYN("203.0.113.2:20", "192.0.2.1:50001")
	c.S("150 Opening BINARY mode data connection.")
	c.S("226 Transfer complete.")
	c.C("EPRT |1|192.0.2.1|50002|")
	c.S("200 EPRT command successful.")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{DataPortLo: 41000, DataPortHi: 41009}))
	check(t, "findings", findings(s), []string{
		"PORT 192.0.2.1:50001 pinhole [s1.p1 tcp 203.0.113.2 -> 192.0.2.1:41000 dnat 192.0.2.1:50001] as 192.0.2.1:41000 used 203.0.113.2:20->192.0.2.1:50001",
		"EPRT 192.0.2.1:50002 pinhole [s1.p2 tcp 203.0.113.2 -> 192.0.2.1:41001 dnat 192.0.2.1:50002] as 192.0.2.1:41001",
	})
}

func TestHostileClient(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("PORT 198,51,100,7,0,25") // bounce to a mail server
	c.S("200 PORT command successful.")
	c.C("RETR evil")
	b.dataSYN("203.0.113.2:20", "198.51.100.7:25") // the server obeyed
	c.S("150 Opening data connection.")
	c.S("226 Transfer complete.")
	c.C("EPRT |1|192.0.2.1|25|") // privileged port
	c.S("200 EPRT command successful.")
	c.C("PORT 192,0,2,256,195,80") // octet overflow
	c.S("501 Illegal PORT command.")
	c.C("EPRT |2|2001:db8::1|50000|") // other family
	c.S("522 Bad network protocol.")
	c.C("LPRT 4,4,192,0,2,1,2,195,80")
	c.S("502 LPRT not implemented.")
	c.C("AUTH TLS")
	c.S("504 AUTH not supported.")
	c.C("NOOP")
	c.S("200 NOOP ok.")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	check(t, "findings", findings(s), []string{
		"PORT 198.51.100.7:25 refused used 203.0.113.2:20->198.51.100.7:25",
		"EPRT 192.0.2.1:25 refused",
		"EPRT [2001:db8::1]:50000 refused",
		"! client bounce reply=500 ftpalg: PORT address must be your own (192.0.2.1); refused",
		"! client privileged-port reply=504 ftpalg: data port 25 is below 1024; refused",
		"! client malformed reply=501 ftpalg: malformed PORT argument",
		"! client family reply=522 ftpalg: network protocol not supported, use (1)",
		"! client long-address reply=502 ftpalg: LPRT not supported; use EPRT/EPSV or PORT/PASV",
		"! client auth reply=534 ftpalg: AUTH refused by policy; continue without TLS",
	})
	// The session goes on after each refusal: the last command is paired.
	last := timeline(s)[len(s.Events)-3]
	if last != "s reply 200 200 NOOP ok. <NOOP>" {
		t.Errorf("last reply %q", last)
	}
}

func TestHostileServer(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("NOOP")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).") // unsolicited
	c.C("STAT")
	// A 227 inside a multi-line reply is text, not an announcement.
	c.S("211-FTP server status:", "227 Entering Passive Mode (203,0,113,2,195,82).", "211 End of status")
	c.C("PASV")
	c.S("227 Entering Passive Mode (198,51,100,9,195,83).") // third host
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,1,44).") // port 300
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,300,1).") // octet overflow
	c.C("PASV")
	c.S("227-Entering Passive Mode (203,0,113,2,195,84).", "227 OK") // multi-line
	c.C("EPSV")
	c.S("229 Entering Extended Passive Mode (|||50005|)")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	check(t, "findings", findings(s), []string{
		"PASV 198.51.100.9:50003 pinhole [s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50003 snat 192.0.2.1] as 203.0.113.2:50003",
		"PASV 203.0.113.2:300 refused",
		"PASV 203.0.113.2:50004 refused",
		"EPSV 203.0.113.2:50005 pinhole [s1.p2 tcp 192.0.2.1 -> 203.0.113.2:50005 snat 192.0.2.1]",
		"! server unsolicited",
		"! server third-party",
		"! server privileged-port reply=425 ftpalg: server offered data port 300, below 1024; refused",
		"! server malformed reply=425 ftpalg: malformed 227 reply from server",
		"! server multiline-passive reply=425 ftpalg: cannot use a multi-line passive reply",
	})
	if v := s.Violations[0]; v.Why != "227 reply answers NOOP, not PASV: ftpalg passes it on as plain text and opens nothing" {
		t.Errorf("unsolicited why %q", v.Why)
	}
}

func TestInvalidLines(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("USER " + strings.Repeat("a", 5000)) // over-long: resync at the next line
	c.S("500 too long")
	c.C("NO\x00OP")
	c.S("500 NUL")
	c.C("HELLO WORLD")
	c.S("500 Unknown command.")
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	c.S("this is not a reply")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	check(t, "findings", findings(s), []string{
		"PASV 203.0.113.2:50000 pinhole [s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50000 snat 192.0.2.1]",
		"! client line-too-long reply=500 ftpalg: command line too long (limit 4096 bytes); closing the connection end",
		"! client nul reply=500 ftpalg: NUL byte in command; closing the connection end",
		"! client syntax reply=500 ftpalg: syntax error, not an FTP command",
		"! server invalid-reply reply=421 ftpalg: the server sent an invalid reply; closing the connection end",
	})
	tl := timeline(s)
	for _, want := range []string{
		"c skipped 911 bytes skipped to the next line end",
		"c command PASV",
	} {
		if !slices.Contains(tl, want) {
			t.Errorf("timeline lacks %q:\n\t%s", want, strings.Join(tl, "\n\t"))
		}
	}
}

func TestAuthTLSStopsSession(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("FEAT")
	c.S("211-Features:", " AUTH TLS", " EPSV", "211 End")
	c.C("AUTH TLS")
	c.S("234 Proceed with negotiation.")
	c.send(true, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03PASV\r\n")
	c.send(false, "\x16\x03\x03\x00\x7a\x02\x00\x00\x76227 (1,2,3,4,5,6)\r\n")
	c.close()
	for _, allow := range []bool{false, true} {
		pol := alg.DefaultPolicy()
		pol.AllowTLS = allow
		s := oneSession(t, inspectBytes(t, b.pcap(), Options{Policy: pol}))
		var want []string
		if !allow {
			want = []string{"! client auth reply=534 ftpalg: AUTH refused by policy; continue without TLS"}
		}
		check(t, "findings", findings(s), want)
		if s.State != "encrypted" {
			t.Errorf("state %q, want encrypted", s.State)
		}
		tl := timeline(s)
		check(t, "timeline", tl[:6], []string{
			"s reply 220 220 ready <connect>",
			"c command FEAT",
			"s reply 211 211-Features:\n AUTH TLS\n EPSV\n211 End <FEAT>",
			"c command AUTH TLS",
			"s reply 234 234 Proceed with negotiation. <AUTH>",
			"s encrypted TLS after AUTH: the rest of the session is not inspected",
		})
		if note := s.Events[2].Note; (note == "ftpalg removes the AUTH lines from this reply") == allow {
			t.Errorf("allow TLS %v: FEAT note %q", allow, note)
		}
		for _, l := range tl[6:] {
			if !strings.Contains(l, "close") {
				t.Errorf("event after encryption: %q", l)
			}
		}
	}
}

func TestOutOfOrderAndRetransmitted(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 (vsFTPd 3.0.3)")
	// "USER anonymous\r\n" in three segments: the last first, the first
	// twice, the middle one overlapping both.
	c.at(true, 10, "mous\r\n", 0)
	c.at(true, 0, "USER a", 0)
	c.at(true, 0, "USER a", 0)
	c.at(true, 4, " anonym", 0)
	c.skip(true, len("USER anonymous\r\n"))
	c.S("331 Please specify the password.")
	c.send(false, "331 Please specify the password.\r\n"[:0]) // a bare ACK
	c.C("PASS secret")
	// The reply retransmitted whole.
	c.at(false, 0, "230 Login successful.\r\n", 0)
	c.S("230 Login successful.")
	c.C("PASV")
	// The 227 split, second half first, then both again.
	r227 := "227 Entering Passive Mode (203,0,113,2,195,80).\r\n"
	c.at(false, 20, r227[20:], 0)
	c.at(false, 0, r227[:20], 0)
	c.at(false, 0, r227, 0)
	c.skip(false, len(r227))
	b.dataSYN("192.0.2.1:51000", "203.0.113.2:50000")
	b.dataSYN("192.0.2.1:51000", "203.0.113.2:50000") // SYN retransmitted
	c.C("LIST")
	c.S("150 Here comes the directory listing.")
	c.S("226 Directory send OK.")
	c.C("QUIT")
	c.S("221 Goodbye.")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	check(t, "timeline", timeline(s), passiveTimeline)
	check(t, "findings", findings(s), passiveFindings)
}

func TestMissingSegment(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("USER anonymous")
	c.S("331 Password?")
	c.skip(true, len("PASS secr")) // the capture lost this part of "PASS secret\r\n"
	c.send(true, "et\r\n")
	c.S("230 Login successful.")
	c.C("EPSV")
	c.S("229 Entering Extended Passive Mode (|||50000|)")
	// Two seconds of capture time pass before the hole is given up.
	c.C("NOOP")
	b.now = b.now.Add(3 * 1e9)
	c.S("200 NOOP ok.")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	check(t, "findings", findings(s), []string{
		"EPSV 203.0.113.2:50000 pinhole [s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50000 snat 192.0.2.1]",
	})
	tl := timeline(s)
	for _, want := range []string{
		"c gap 9 bytes missing from the capture",
		"c skipped 4 bytes skipped to the next line end",
		"c command EPSV",
		"s reply 229 229 Entering Extended Passive Mode (|||50000|) <EPSV>",
	} {
		if !slices.Contains(tl, want) {
			t.Errorf("timeline lacks %q:\n\t%s", want, strings.Join(tl, "\n\t"))
		}
	}
}

func TestSnapLength(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	c.at(true, 0, "RETR a-rather-long-file-name\r\n", 10) // cut by the snap length
	c.skip(true, len("RETR a-rather-long-file-name\r\n"))
	c.S("150 Opening.")
	c.close()
	rep := inspectBytes(t, b.pcap(), Options{})
	s := oneSession(t, rep)
	check(t, "findings", findings(s), []string{
		"PASV 203.0.113.2:50000 pinhole [s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50000 snat 192.0.2.1]",
	})
	if s.State != "truncated" {
		t.Errorf("state %q, want truncated", s.State)
	}
	tl := timeline(s)
	if !slices.Contains(tl, "c truncated the capture cut a segment short by 10 bytes (snap length); the rest of this session is not inspected") {
		t.Errorf("no truncation event:\n\t%s", strings.Join(tl, "\n\t"))
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "snap length") {
		t.Errorf("warnings %q", rep.Warnings)
	}
}

func TestFileCutShort(t *testing.T) {
	data := passiveCapture(t).pcap()
	for _, cut := range []int{1, 69, 100, len(data) / 2} {
		rep := inspectBytes(t, data[:len(data)-cut], Options{})
		if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "ends in the middle of a record") {
			t.Errorf("cut %d: warnings %q", cut, rep.Warnings)
		}
		if len(rep.Sessions) != 1 {
			t.Fatalf("cut %d: %d sessions", cut, len(rep.Sessions))
		}
		// Cut 1 and 69 lose part of the last ACK: both FINs are in. Cut
		// 100 loses the server's FIN too, but the client's FIN after the
		// 221 is in: closed all the same. Half the file is cut before
		// the goodbye: open.
		if st := rep.Sessions[0].State; (cut <= 100) != (st == "closed") {
			t.Errorf("cut %d: state %s", cut, st)
		}
	}
	ng := passiveCapture(t).pcapng()
	rep := inspectBytes(t, ng[:len(ng)-7], Options{})
	if len(rep.Warnings) != 1 || len(rep.Sessions) != 1 {
		t.Errorf("pcapng cut: warnings %q, %d sessions", rep.Warnings, len(rep.Sessions))
	}
}

func TestNotACapture(t *testing.T) {
	for _, data := range []string{"", "hello world, this is text", "\x0a\x0d\x0d\x0a\x10\x00\x00\x00"} {
		if _, err := Inspect(context.Background(), strings.NewReader(data), Options{}); err == nil {
			t.Errorf("Inspect(%q) succeeded", data)
		}
	}
}

func TestIPv6(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli6, srv6)
	c.S("220 ready")
	c.C("EPSV")
	c.S("229 Entering Extended Passive Mode (|||50000|)")
	b.dataSYN("[2001:db8::1]:51000", "[2001:db8::2]:50000")
	c.C("LIST")
	c.S("150 Here comes the directory listing.", "226 Directory send OK.")
	c.C("EPRT |2|2001:db8::1|50001|")
	c.S("200 EPRT command successful.")
	c.C("EPRT |2|::|50002|") // "my address"
	c.S("200 EPRT command successful.")
	c.C("EPRT |2|2001:db8::99|50003|")
	c.S("200 EPRT command successful.")
	c.C("PASV")
	c.S("227 Entering Passive Mode (192,0,2,2,195,80).")
	c.C("PORT 192,0,2,1,195,81")
	c.S("500 Illegal PORT command.")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{DataPortLo: 41000, DataPortHi: 41000}))
	if s.Client.String() != cli6 || s.Server.String() != srv6 {
		t.Errorf("peers %s %s", s.Client, s.Server)
	}
	check(t, "findings", findings(s), []string{
		"EPSV [2001:db8::2]:50000 pinhole [s1.p1 tcp 2001:db8::1 -> [2001:db8::2]:50000 snat 2001:db8::1] used [2001:db8::1]:51000->[2001:db8::2]:50000",
		"EPRT [2001:db8::1]:50001 pinhole [s1.p2 tcp 2001:db8::2 -> [2001:db8::1]:41000 dnat [2001:db8::1]:50001] as [2001:db8::1]:41000",
		"EPRT [2001:db8::1]:50002 pinhole [s1.p3 tcp 2001:db8::2 -> [2001:db8::1]:41000 dnat [2001:db8::1]:50002] as [2001:db8::1]:41000",
		"EPRT [2001:db8::99]:50003 refused",
		"PASV 192.0.2.2:50000 refused",
		"PORT 192.0.2.1:50001 refused",
		"! client bounce reply=500 ftpalg: EPRT address must be your own (2001:db8::1); refused",
		"! server family reply=425 ftpalg: PASV cannot work over IPv6; use EPSV",
		"! client family reply=501 ftpalg: PORT cannot name an IPv4 address on an IPv6 connection; use EPRT",
	})
}

func TestMidstreamCapture(t *testing.T) {
	b := newCapture(t)
	c := b.midstream(cli, srv)
	c.S("226 Transfer complete.") // answers something before the capture began
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,195,81).")
	c.C("NOOP")
	c.S("227 Entering Passive Mode (203,0,113,2,195,82).") // now it is known to be unsolicited
	c.reset()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	check(t, "findings", findings(s), []string{
		"PASV 203.0.113.2:50001 pinhole [s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50001 snat 192.0.2.1]",
		"! server unsolicited",
	})
	if s.State != "reset" || s.Client.String() != cli {
		t.Errorf("state %s client %s", s.State, s.Client)
	}
}

func TestControlPorts(t *testing.T) {
	b := newCapture(t)
	c := b.open("192.0.2.1:40000", "203.0.113.2:2121")
	c.S("220 ready")
	c.C("PASV")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	c.close()
	if rep := inspectBytes(t, b.pcap(), Options{}); len(rep.Sessions) != 0 {
		t.Errorf("port 2121 inspected without being asked: %d sessions", len(rep.Sessions))
	}
	rep := inspectBytes(t, b.pcap(), Options{Ports: []uint16{21, 2121}})
	if s := oneSession(t, rep); len(s.Announcements) != 1 {
		t.Errorf("announcements %v", findings(s))
	}
}

func TestStrayPacketsAfterClose(t *testing.T) {
	b := passiveCapture(t)
	c := b.open("192.0.2.1:40313", srv)
	c.S("220 ready")
	c.close()
	c.close() // retransmitted FINs after the connection is gone
	rep := inspectBytes(t, b.pcap(), Options{})
	if len(rep.Sessions) != 2 || rep.Sessions[1].ID != "s2" {
		t.Errorf("got %d sessions", len(rep.Sessions))
	}
}

func TestLimits(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.S("220 ready")
	for range 50 {
		c.C("NOOP")
		c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	}
	c2 := b.open("192.0.2.1:40313", srv)
	c2.S("220 ready")
	long := []string{"211-" + strings.Repeat("x", 1000)}
	for range 29 {
		long = append(long, " line")
	}
	c.C("STAT")
	c.S(append(long, "211 end")...)
	if s := inspectBytes(t, b.pcap(), Options{}).Sessions[0]; !strings.HasSuffix(s.Events[len(s.Events)-1].Line, "\n... (11 more lines)") ||
		!strings.HasPrefix(s.Events[len(s.Events)-1].Line, "211-"+strings.Repeat("x", 508)+"...\n line\n") {
		t.Errorf("long reply recorded as %q", s.Events[len(s.Events)-1].Line)
	}
	rep := inspectBytes(t, b.pcap(), Options{MaxEvents: 20, MaxSessions: 1})
	s := oneSession(t, rep)
	if n := len(s.Events) + len(s.Violations) + len(s.Announcements); n != 20 || s.DroppedEvents == 0 {
		t.Errorf("%d events recorded, %d dropped", n, s.DroppedEvents)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "over the limit") {
		t.Errorf("warnings %q", rep.Warnings)
	}
}

// TestGolden pins the text and JSON output of a capture with every kind of
// finding; go test -update rewrites the files.
func TestGolden(t *testing.T) {
	b := passiveCapture(t)
	c := b.open("192.0.2.1:40313", srv)
	c.S("220 ready")
	c.C("PORT 192,0,2,1,195,81")
	c.S("200 PORT command successful.")
	c.C("PORT 198,51,100,7,0,25")
	c.S("200 PORT command successful.")
	c.C("NOOP")
	c.S("227 Entering Passive Mode (203,0,113,2,195,80).")
	c.send(true, "\x16\x03\x01junk\r\n")
	c.reset()
	rep := inspectBytes(t, b.pcapng(), Options{})
	var txt, js bytes.Buffer
	if err := rep.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.txt", txt.Bytes())
	golden(t, "report.json", js.Bytes())
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not read back: %v", err)
	}
	if back.Violations() != rep.Violations() || back.Sessions[1].Announcements[0].Pinhole.Dst != rep.Sessions[1].Announcements[0].Pinhole.Dst {
		t.Errorf("JSON round trip differs")
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\n%s", name, got)
	}
}

// ngBlock builds a little-endian pcapng block.
func ngBlock(typ uint32, body []byte) []byte {
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	n := uint32(12 + len(body))
	b := binary.LittleEndian.AppendUint32(nil, typ)
	b = binary.LittleEndian.AppendUint32(b, n)
	b = append(b, body...)
	return binary.LittleEndian.AppendUint32(b, n)
}

func le32(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

func TestHostileCaptureFiles(t *testing.T) {
	shb := ngBlock(ngSHB, append(le32(0x1A2B3C4D, 1), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
	idb := func(opts ...byte) []byte {
		return ngBlock(ngIDB, append(le32(1, 65535), opts...))
	}
	frame := frame(t, seg{from: netip.MustParseAddrPort(cli), to: netip.MustParseAddrPort(srv), seq: 1, syn: true})
	epb := func(ifid, caplen uint32, data []byte) []byte {
		return ngBlock(ngEPB, append(le32(ifid, 0, 0, caplen, uint32(len(frame))), data...))
	}
	pcapHdr := append(le32(0xa1b2c3d4), 2, 0, 4, 0)
	pcapHdr = append(pcapHdr, le32(0, 0, 0xffffffff, 1)...)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tt := range []struct {
		name string
		data []byte
		warn string // "" means a clean read
	}{
		{"good pcapng", cat(shb, idb(), epb(0, uint32(len(frame)), frame)), ""},
		{"resolution 10^-64", cat(shb, idb(9, 0, 1, 0, 0x40, 0, 0, 0, 0, 0, 0, 0), epb(0, uint32(len(frame)), frame)), "timestamp resolution"},
		{"resolution 2^-127", cat(shb, idb(9, 0, 1, 0, 0xff, 0, 0, 0, 0, 0, 0, 0), epb(0, uint32(len(frame)), frame)), "timestamp resolution"},
		{"option past block", cat(shb, idb(2, 0, 0xf0, 0x0f), epb(0, uint32(len(frame)), frame)), "option longer"},
		{"huge captured length", cat(shb, idb(), epb(0, 1<<30, frame)), "captured length"},
		{"undeclared interface", cat(shb, idb(), epb(3, uint32(len(frame)), frame)), "undeclared interface"},
		{"huge block", cat(shb, idb(), le32(ngEPB, 1<<31)), "length"},
		{"block before section", cat(idb(), shb), ""},
		{"pcap huge record", cat(pcapHdr, le32(0, 0, 1<<31-1, 1<<31-1)), "exceeds snap length"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			rep, err := Inspect(context.Background(), bytes.NewReader(tt.data), Options{})
			runtime.ReadMemStats(&after)
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 32<<20 {
				t.Errorf("allocated %d MiB", grew>>20)
			}
			if tt.name == "block before section" {
				if err == nil {
					t.Errorf("Inspect accepted a pcapng without section header")
				}
				return
			}
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			switch {
			case tt.warn == "" && (len(rep.Warnings) != 0 || rep.Packets != 1):
				t.Errorf("warnings %q, %d packets", rep.Warnings, rep.Packets)
			case tt.warn != "" && (len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], tt.warn)):
				t.Errorf("warnings %q, want one with %q", rep.Warnings, tt.warn)
			}
		})
	}
}

// TestNoLeakedLoops checks that every reader loop ends with the inspection,
// whatever state the sessions are left in.
func TestNoLeakedLoops(t *testing.T) {
	before := runtime.NumGoroutine()
	b := newCapture(t)
	for i := range 20 {
		c := b.open(fmt.Sprintf("192.0.2.1:%d", 41000+i), srv)
		c.S("220-multi-line greeting that never ends")
		c.send(true, "USER half a line")
	}
	c := b.open(cli, srv)
	c.S("220 ready")
	c.C("AUTH TLS")
	c.S("234 go")
	c.send(true, "\x16\x03\x01")
	inspectBytes(t, b.pcap(), Options{})
	for range 100 {
		if runtime.NumGoroutine() <= before {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%d goroutines after the inspection, %d before", runtime.NumGoroutine(), before)
}

func TestLinkTypes(t *testing.T) {
	b := passiveCapture(t)
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"linux cooked v2 (tcpdump -i any)", b.pcapLink(276, sll2)},
		{"raw IP", b.pcapLink(101, rawIP)},
		{"IPv4", b.pcapLink(228, rawIP)},
	} {
		rep := inspectBytes(t, tt.data, Options{})
		if len(rep.Sessions) != 1 {
			t.Errorf("%s: %d sessions", tt.name, len(rep.Sessions))
			continue
		}
		check(t, tt.name, findings(rep.Sessions[0]), passiveFindings)
	}
	rep := inspectBytes(t, b.pcapLink(147, rawIP), Options{})
	if len(rep.Sessions) != 0 || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "link type 147 is not supported") {
		t.Errorf("unknown link type: %d sessions, warnings %q", len(rep.Sessions), rep.Warnings)
	}
}
