package ftp

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// transcript is one recorded control session (see testdata/transcripts/README.md).
type transcript struct {
	name   string
	events []event
	// Per-direction byte streams; tails are the unterminated bytes sent
	// before the connection closed (C~ / S~ records).
	client, server         []byte
	clientTail, serverTail []byte
}

type event struct {
	client bool
	raw    []byte // one line incl. terminator
}

func loadTranscript(t testing.TB, path string) transcript {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tr := transcript{name: strings.TrimSuffix(filepath.Base(path), ".txt")}
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			t.Fatalf("%s: last record has no newline", path)
		}
		rec := data[:i+1]
		data = data[i+1:]
		switch {
		case bytes.HasPrefix(rec, []byte("# ")):
		case bytes.HasPrefix(rec, []byte("C: ")):
			tr.events = append(tr.events, event{client: true, raw: rec[3:]})
			tr.client = append(tr.client, rec[3:]...)
		case bytes.HasPrefix(rec, []byte("S: ")):
			tr.events = append(tr.events, event{raw: rec[3:]})
			tr.server = append(tr.server, rec[3:]...)
		case bytes.HasPrefix(rec, []byte("C~ ")):
			tr.clientTail = rec[3:i]
		case bytes.HasPrefix(rec, []byte("S~ ")):
			tr.serverTail = rec[3:i]
		default:
			t.Fatalf("%s: bad record %q", path, rec)
		}
	}
	return tr
}

// Passive port ranges the recording servers were configured with.
var serverPorts = map[string][2]uint16{
	"vsftpd":    {40000, 40099},
	"pureftpd":  {40100, 40199},
	"proftpd":   {40200, 40299},
	"pyftpdlib": {40300, 40399},
}

// modeWant lists, per client/mode part of a transcript name, what the
// session must contain: "C:VERB" for a parsed command, "S:NNN" for a reply
// code, "multi:NNN" for a multi-line reply, "bad" for a command line that
// ParseCommand must refuse, "tail" for unterminated client bytes at EOF.
var modeWant = map[string][]string{
	"curl-epsv":       {"C:EPSV", "S:229", "C:STOR", "C:LIST", "C:RETR", "C:QUIT", "S:221"},
	"curl-pasv":       {"C:PASV", "S:227", "C:STOR", "C:LIST", "C:RETR", "C:QUIT"},
	"curl-eprt":       {"C:EPRT", "C:STOR", "C:LIST", "C:RETR", "C:QUIT"},
	"curl-port":       {"C:PORT", "C:STOR", "C:LIST", "C:RETR", "C:QUIT"},
	"curl-epsv6":      {"C:EPSV", "S:229", "C:STOR", "C:LIST", "C:RETR", "C:QUIT"},
	"curl-eprt6":      {"C:EPRT", "C:STOR", "C:LIST", "C:RETR", "C:QUIT"},
	"lftp-pasv":       {"C:FEAT", "multi:211", "C:PASV", "S:227", "C:LIST", "C:RETR", "C:STOR", "C:QUIT"},
	"lftp-epsv":       {"C:FEAT", "multi:211", "C:EPSV", "S:229", "C:LIST", "C:RETR", "C:STOR", "C:QUIT"},
	"lftp-active":     {"C:FEAT", "multi:211", "C:PORT", "C:LIST", "C:RETR", "C:STOR", "C:QUIT"},
	"lftp-active6":    {"C:FEAT", "multi:211", "C:EPRT"},
	"ftplib":          {"C:FEAT", "multi:211", "C:PASV", "S:227", "C:PORT", "C:LIST", "C:RETR", "C:STOR", "C:QUIT"},
	"ftplib6":         {"C:FEAT", "multi:211", "C:EPSV", "S:229", "C:EPRT", "C:LIST", "C:RETR", "C:STOR", "C:QUIT"},
	"ftplib-misc":     {"C:STAT", "C:HELP", "multi:214", "C:LPSV", "C:XPWD", "C:STOR", "C:NLST", "C:QUIT"},
	"ftplib-abort":    {"C:RETR", "bad"},
	"tnftp-abort":     {"C:EPSV", "S:229", "C:RETR", "C:ABOR"},
	"inetutils-abort": {"C:PORT", "C:RETR", "C:ABOR"},
	"lftp-abort":      {"C:PASV", "S:227", "C:RETR", "tail"},
}

func transcriptFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 50 {
		t.Fatalf("found %d transcripts, want the recorded set of at least 50", len(files))
	}
	return files
}

// TestTranscripts replays every recorded session through the codec: every
// client line through LineReader and ParseCommand, the server stream through
// ReplyReader, and every announcement through its parser, checking the
// values against what the recording setup used.
func TestTranscripts(t *testing.T) {
	modesSeen := map[string]bool{}
	for _, path := range transcriptFiles(t) {
		tr := loadTranscript(t, path)
		server, mode, _ := strings.Cut(tr.name, "-")
		ports, ok := serverPorts[server]
		if !ok {
			t.Errorf("%s: unknown server %q", tr.name, server)
			continue
		}
		want, ok := modeWant[mode]
		if !ok {
			t.Errorf("%s: unknown mode %q", tr.name, mode)
			continue
		}
		modesSeen[mode] = true
		t.Run(tr.name, func(t *testing.T) {
			checkTranscript(t, tr, ports, want, strings.HasSuffix(mode, "6"))
		})
	}
	for mode := range modeWant {
		if !modesSeen[mode] {
			t.Errorf("no transcript for mode %q", mode)
		}
	}
}

func checkTranscript(t *testing.T, tr transcript, ports [2]uint16, want []string, v6 bool) {
	// Both streams, read whole (pipelined) and one byte per read, give
	// the recorded lines and replies.
	var clientLines [][]byte
	var serverLines [][]byte
	for _, ev := range tr.events {
		if ev.client {
			clientLines = append(clientLines, ev.raw)
		} else {
			serverLines = append(serverLines, ev.raw)
		}
	}
	for _, oneByte := range []bool{false, true} {
		var r io.Reader = bytes.NewReader(slices.Concat(tr.client, tr.clientTail))
		if oneByte {
			r = iotest.OneByteReader(r)
		}
		lr := NewLineReader(r, 0)
		for i, wantLine := range clientLines {
			got, err := lr.ReadLine()
			if err != nil || !bytes.Equal(got, wantLine) {
				t.Fatalf("oneByte=%v: client line %d = %q, %v; want %q", oneByte, i, got, err, wantLine)
			}
		}
		wantErr := io.EOF
		if len(tr.clientTail) > 0 {
			wantErr = io.ErrUnexpectedEOF
		}
		if _, err := lr.ReadLine(); err != wantErr {
			t.Fatalf("oneByte=%v: client stream end: %v, want %v", oneByte, err, wantErr)
		}

		r = bytes.NewReader(slices.Concat(tr.server, tr.serverTail))
		if oneByte {
			r = iotest.OneByteReader(r)
		}
		rr := NewReplyReader(r, 0, 0)
		var got [][]byte
		for {
			rep, err := rr.ReadReply()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("oneByte=%v: reply after %d lines: %v", oneByte, len(got), err)
			}
			if len(rep.Lines) == 0 || rep.Multiline() != (len(rep.Lines) > 1) {
				t.Fatalf("bad reply %+v", rep)
			}
			got = append(got, rep.Lines...)
		}
		if len(got) != len(serverLines) {
			t.Fatalf("oneByte=%v: replies hold %d lines, want %d", oneByte, len(got), len(serverLines))
		}
		for i := range got {
			if !bytes.Equal(got[i], serverLines[i]) {
				t.Fatalf("oneByte=%v: server line %d = %q, want %q", oneByte, i, got[i], serverLines[i])
			}
		}
	}

	// Walk the session in order, pairing each final reply with the oldest
	// unanswered command as a Session does.
	seen := map[string]bool{}
	var pending []Command
	rr := NewReplyReader(bytes.NewReader(tr.server), 0, 0)
	greeted := false
	for i := 0; i < len(tr.events); i++ {
		ev := tr.events[i]
		if ev.client {
			cmd, err := ParseCommand(ev.raw)
			if err != nil {
				if !errors.Is(err, ErrSyntax) {
					t.Errorf("ParseCommand(%q) = %v, not ErrSyntax", ev.raw, err)
				}
				// The only bad lines recorded: Python's urgent
				// "ABOR\r\n" whose LF went out of band.
				if !bytes.Contains(trimEOL(ev.raw), []byte("\r")) {
					t.Errorf("ParseCommand(%q): %v", ev.raw, err)
				}
				seen["bad"] = true
				pending = append(pending, Command{Verb: "?"})
				continue
			}
			checkCommand(t, ev.raw, cmd, v6)
			seen["C:"+cmd.Verb] = true
			pending = append(pending, cmd)
			continue
		}
		rep, err := rr.ReadReply()
		if err != nil {
			t.Fatalf("reading reply at event %d: %v", i, err)
		}
		i += len(rep.Lines) - 1 // the reply's other lines are events too
		if !bytes.Equal(rep.Bytes(), slices.Concat(rep.Lines...)) {
			t.Errorf("Bytes() differs from the lines")
		}
		seen["S:"+strconv.Itoa(rep.Code)] = true
		if rep.Multiline() {
			seen["multi:"+strconv.Itoa(rep.Code)] = true
		}
		if !greeted {
			greeted = true
			if rep.Code != 220 {
				t.Errorf("greeting %d, want 220", rep.Code)
			}
			continue
		}
		if len(pending) == 0 {
			t.Fatalf("reply %q answers no command", rep.Bytes())
		}
		cmd := pending[0]
		if rep.Preliminary() {
			continue
		}
		pending = pending[1:]
		checkReply(t, cmd, rep, ports)
	}
	if len(tr.clientTail) > 0 {
		seen["tail"] = true
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("transcript lacks %s", w)
		}
	}
}

// checkCommand checks a parsed recorded command against the raw line and,
// for PORT/EPRT, the address the recording used.
func checkCommand(t *testing.T, raw []byte, cmd Command, v6 bool) {
	t.Helper()
	// Independent split: drop the Telnet prefix and the terminator.
	line := string(bytes.TrimRight(bytes.TrimLeft(raw, "\xff\xf4\xf2"), "\r\n"))
	verb, arg, _ := strings.Cut(line, " ")
	if cmd.Verb != strings.ToUpper(verb) || cmd.Arg != arg {
		t.Errorf("ParseCommand(%q) = %+v, want %q %q", raw, cmd, verb, arg)
	}
	if raw[0] == 0xFF && cmd.Verb != "ABOR" {
		t.Errorf("Telnet prefix before %q", cmd.Verb)
	}
	if IsLongPassive(cmd.Verb) != (cmd.Verb == "LPSV" || cmd.Verb == "LPRT") {
		t.Errorf("IsLongPassive(%q) wrong", cmd.Verb)
	}
	switch cmd.Verb {
	case "PORT":
		ap, err := ParsePORT(cmd.Arg)
		if err != nil {
			t.Fatalf("ParsePORT(%q): %v", cmd.Arg, err)
		}
		if ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() < 1024 {
			t.Errorf("ParsePORT(%q) = %v, want 127.0.0.1 and an ephemeral port", cmd.Arg, ap)
		}
		if s, err := FormatPORT(ap); err != nil || s != cmd.Arg {
			t.Errorf("FormatPORT(%v) = %q, %v; want the client's %q", ap, s, err, cmd.Arg)
		}
	case "EPRT":
		ap, err := ParseEPRT(cmd.Arg)
		if err != nil {
			t.Fatalf("ParseEPRT(%q): %v", cmd.Arg, err)
		}
		ok := ap.Addr() == netip.MustParseAddr("127.0.0.1")
		if v6 {
			// lftp announces the unspecified address "::".
			ok = ap.Addr() == netip.IPv6Loopback() || ap.Addr() == netip.IPv6Unspecified()
		}
		if !ok || ap.Port() < 1024 {
			t.Errorf("ParseEPRT(%q) = %v: wrong family/address or port", cmd.Arg, ap)
		}
		if s := FormatEPRT(ap); s != cmd.Arg {
			t.Errorf("FormatEPRT(%v) = %q, want the client's %q", ap, s, cmd.Arg)
		}
	}
}

// checkReply checks a final reply against the command it answers.
func checkReply(t *testing.T, cmd Command, rep Reply, ports [2]uint16) {
	t.Helper()
	text := rep.Text()
	switch {
	case cmd.Verb == "PASV" && rep.Code == 227:
		ap, start, end, err := Find227(text)
		if err != nil {
			t.Fatalf("Find227(%q): %v", text, err)
		}
		if ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() < ports[0] || ap.Port() > ports[1] {
			t.Errorf("Find227(%q) = %v, want 127.0.0.1 and a port in %v", text, ap, ports)
		}
		hp, _ := FormatPORT(ap)
		if text[start:end] != hp {
			t.Errorf("Find227(%q) span %q, want %q", text, text[start:end], hp)
		}
		// Rewriting the span gives a text announcing the new endpoint.
		nap := netip.MustParseAddrPort("203.0.113.7:61000")
		nhp, _ := FormatPORT(nap)
		rewritten := text[:start] + nhp + text[end:]
		if got, _, _, err := Find227(rewritten); err != nil || got != nap {
			t.Errorf("Find227(%q) = %v, %v; want %v", rewritten, got, err, nap)
		}
	case cmd.Verb == "EPSV" && rep.Code == 229:
		port, start, end, err := Find229(text)
		if err != nil {
			t.Fatalf("Find229(%q): %v", text, err)
		}
		if port < ports[0] || port > ports[1] {
			t.Errorf("Find229(%q) = %d, want a port in %v", text, port, ports)
		}
		if text[start:end] != "|||"+strconv.Itoa(int(port))+"|" {
			t.Errorf("Find229(%q) span %q", text, text[start:end])
		}
	case rep.Code == 227 || rep.Code == 229:
		t.Errorf("reply %d answers %s", rep.Code, cmd.Verb)
	case cmd.Verb == "PORT" || cmd.Verb == "EPRT":
		if rep.Code != 200 && rep.Code != 500 && rep.Code != 501 {
			t.Errorf("%s answered %d", cmd.Verb, rep.Code)
		}
	}
}
