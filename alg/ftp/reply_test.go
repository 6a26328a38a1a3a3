package ftp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

type wantReply struct {
	code  int
	lines int
	text  string
}

// replyTests are server streams and the replies ReplyReader assembles from
// them. They also seed FuzzReplyReader.
var replyTests = []struct {
	name     string
	in       string
	maxLine  int
	maxLines int
	replies  []wantReply
	wantErr  error // after the replies
}{
	{"vsftpd greeting", "220 (vsFTPd 3.0.3)\r\n", 0, 0, []wantReply{{220, 1, "(vsFTPd 3.0.3)"}}, io.EOF},
	{"pure-ftpd greeting",
		"220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n" +
			"220-You are user number 1 of 50 allowed.\r\n" +
			"220-Local time is now 20:46. Server port: 2122.\r\n" +
			"220-Only anonymous FTP is allowed here\r\n" +
			"220-IPv6 connections are also welcome on this server.\r\n" +
			"220 You will be disconnected after 15 minutes of inactivity.\r\n",
		0, 0, []wantReply{{220, 6, "--------- Welcome to Pure-FTPd [privsep] [TLS] ----------"}}, io.EOF},
	{"feat", "211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n211 End\r\n",
		0, 0, []wantReply{{211, 9, "Features:"}}, io.EOF},
	{"227 text inside 211-", "211-Status\r\n227 Entering Passive Mode (192,0,2,1,156,64).\r\n211-still text\r\n 211 not the end\r\n211 End\r\n",
		0, 0, []wantReply{{211, 5, "Status"}}, io.EOF},
	{"other code ends nothing", "150-Accepted data connection\r\n226 not mine\r\n150 19531.2 kbytes to download\r\n",
		0, 0, []wantReply{{150, 3, "Accepted data connection"}}, io.EOF},
	{"bare code last line", "211-Features:\r\n UTF8\r\n211\r\n", 0, 0, []wantReply{{211, 3, "Features:"}}, io.EOF},
	{"bare code single", "200\r\n", 0, 0, []wantReply{{200, 1, ""}}, io.EOF},
	{"empty text", "200 \r\n", 0, 0, []wantReply{{200, 1, ""}}, io.EOF},
	{"bare lf", "220 hi\n230 in\n", 0, 0, []wantReply{{220, 1, "hi"}, {230, 1, "in"}}, io.EOF},
	{"pipelined", "150 Opening\r\n226 Done\r\n227 Entering Passive Mode (127,0,0,1,156,106).\r\n",
		0, 0, []wantReply{{150, 1, "Opening"}, {226, 1, "Done"}, {227, 1, "Entering Passive Mode (127,0,0,1,156,106)."}}, io.EOF},
	{"rfc 2228 6xx", "631 base64data\r\n", 0, 0, []wantReply{{631, 1, "base64data"}}, io.EOF},
	{"text with 8-bit bytes", "257 \"/caf\xe9\" created\r\n", 0, 0, []wantReply{{257, 1, "\"/caf\xe9\" created"}}, io.EOF},
	{"max lines exact", "211-a\r\nb\r\n211 c\r\n", 0, 3, []wantReply{{211, 3, "a"}}, io.EOF},

	{"empty", "", 0, 0, nil, io.EOF},
	{"not a reply", "hello\r\n", 0, 0, nil, ErrSyntax},
	{"two digits", "22 x\r\n", 0, 0, nil, ErrSyntax},
	{"four digits", "2200 x\r\n", 0, 0, nil, ErrSyntax},
	{"letter after code", "220x\r\n", 0, 0, nil, ErrSyntax},
	{"first digit 0", "020 x\r\n", 0, 0, nil, ErrSyntax},
	{"first digit 7", "720 x\r\n", 0, 0, nil, ErrSyntax},
	{"leading space", " 220 x\r\n", 0, 0, nil, ErrSyntax},
	{"empty line", "\r\n", 0, 0, nil, ErrSyntax},
	{"garbage after reply", "220 ok\r\nSSH-2.0-OpenSSH\r\n", 0, 0, []wantReply{{220, 1, "ok"}}, ErrSyntax},
	{"eof in multi-line", "211-Features:\r\n EPRT\r\n", 0, 0, nil, io.ErrUnexpectedEOF},
	{"eof mid-line", "220 hel", 0, 0, nil, io.ErrUnexpectedEOF},
	{"eof mid-line in multi-line", "211-a\r\n211 en", 0, 0, nil, io.ErrUnexpectedEOF},
	{"too many lines", "211-a\r\nb\r\nc\r\n211 d\r\n", 0, 3, nil, ErrReplyTooLong},
	{"line too long", "220 " + strings.Repeat("x", 20) + "\r\n", 16, 0, nil, ErrLineTooLong},
	{"line too long in multi-line", "211-a\r\n " + strings.Repeat("x", 20) + "\r\n211 b\r\n", 16, 0, nil, ErrLineTooLong},
	{"nul", "220 a\x00b\r\n", 0, 0, nil, ErrNUL},
}

func TestReplyReader(t *testing.T) {
	for _, tt := range replyTests {
		for _, rk := range readerKinds {
			t.Run(tt.name+"/"+rk.name, func(t *testing.T) {
				rr := NewReplyReader(rk.wrap(strings.NewReader(tt.in)), tt.maxLine, tt.maxLines)
				var all []byte
				for i, want := range tt.replies {
					got, err := rr.ReadReply()
					if err != nil {
						t.Fatalf("reply %d: %v", i, err)
					}
					if got.Code != want.code || len(got.Lines) != want.lines || got.Text() != want.text {
						t.Fatalf("reply %d = %d, %d lines, text %q; want %+v", i, got.Code, len(got.Lines), got.Text(), want)
					}
					if got.Multiline() != (want.lines > 1) || got.Preliminary() != (want.code < 200) {
						t.Errorf("reply %d: Multiline %v, Preliminary %v", i, got.Multiline(), got.Preliminary())
					}
					all = append(all, got.Bytes()...)
				}
				_, err := rr.ReadReply()
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("after %d replies: %v, want %v", len(tt.replies), err, tt.wantErr)
				}
				if err == io.EOF && string(all) != tt.in {
					t.Errorf("replies' bytes %q, want the stream %q", all, tt.in)
				}
			})
		}
	}
}

// A Reply owns its lines: reading on does not change it.
func TestReplyOwnsLines(t *testing.T) {
	in := "211-a\r\n b\r\n211 c\r\n200 x\r\n227 Entering Passive Mode (1,2,3,4,5,6)\r\n"
	rr := NewReplyReader(strings.NewReader(in), 8, 0)
	first, err := rr.ReadReply()
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(first.Bytes())
	if _, err := rr.ReadReply(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), want) {
		t.Errorf("first reply changed to %q, want %q", first.Bytes(), want)
	}
	// Appending to one line must not overwrite the next.
	_ = append(first.Lines[0], "XXXX"...)
	if string(first.Lines[1]) != " b\r\n" {
		t.Errorf("line 1 = %q after append to line 0", first.Lines[1])
	}
	// The third reply's line is too long for maxLine 8.
	if _, err := rr.ReadReply(); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("got %v, want ErrLineTooLong", err)
	}
}

func TestReplyBuffered(t *testing.T) {
	rr := NewReplyReader(strings.NewReader("200 a\r\n226 b\r\n"), 0, 0)
	if _, err := rr.ReadReply(); err != nil {
		t.Fatal(err)
	}
	if got := rr.Buffered(); got != len("226 b\r\n") {
		t.Errorf("Buffered() = %d", got)
	}
}

func TestReplyZero(t *testing.T) {
	var r Reply
	if r.Text() != "" || r.Multiline() || r.Preliminary() || len(r.Bytes()) != 0 {
		t.Errorf("zero Reply: %q %v %v %q", r.Text(), r.Multiline(), r.Preliminary(), r.Bytes())
	}
}

func TestFormatReply(t *testing.T) {
	for _, tc := range []struct {
		code int
		text string
		want string
		err  bool
	}{
		{425, "Can't open data connection.", "425 Can't open data connection.\r\n", false},
		{500, "", "500 \r\n", false},
		{534, "AUTH refused\r\n227 Entering Passive Mode (1,2,3,4,5,6)", "534 AUTH refused  227 Entering Passive Mode (1,2,3,4,5,6)\r\n", false},
		{501, "nul\x00del\x7f", "501 nul del \r\n", false},
		{550, "grüße", "550 grüße\r\n", false},
		{99, "x", "", true},
		{700, "x", "", true},
	} {
		got, err := FormatReply(tc.code, tc.text)
		if tc.err {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("FormatReply(%d) = %q, %v; want ErrSyntax", tc.code, got, err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("FormatReply(%d, %q) = %q, %v; want %q", tc.code, tc.text, got, err, tc.want)
			continue
		}
		// What we send, we read back as one reply.
		rep, err := NewReplyReader(bytes.NewReader(got), 0, 0).ReadReply()
		if err != nil || rep.Code != tc.code || rep.Multiline() {
			t.Errorf("reading back %q: %+v, %v", got, rep, err)
		}
	}
}
