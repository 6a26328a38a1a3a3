package ftp

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
	"testing/iotest"
)

// The fuzz targets are seeded from the table tests and the recorded
// transcripts. Each checks that the parser never panics, that memory stays
// bounded, and that whatever parses survives a round trip through its
// formatter in canonical form: format(parse(format(x))) == format(x).

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// refLines is the reference model of LineReader: the lines of data and the
// error that ends them, independent of how the stream is chunked.
func refLines(data []byte, max int) ([]string, error) {
	var lines []string
	for {
		if len(data) == 0 {
			return lines, io.EOF
		}
		window := data[:min(len(data), max)]
		nl := bytes.IndexByte(window, '\n')
		region := window
		if nl >= 0 {
			region = window[:nl]
		}
		switch {
		case bytes.IndexByte(region, 0) >= 0:
			return lines, ErrNUL
		case nl >= 0:
			lines = append(lines, string(window[:nl+1]))
			data = data[nl+1:]
		case len(data) >= max:
			return lines, ErrLineTooLong
		default:
			return lines, io.ErrUnexpectedEOF
		}
	}
}

func FuzzLineReader(f *testing.F) {
	for _, tt := range lineTests {
		f.Add([]byte(tt.in), uint16(max(tt.max, 0)), uint8(3))
	}
	for _, path := range transcriptFiles(f) {
		tr := loadTranscript(f, path)
		f.Add(append(tr.client, tr.clientTail...), uint16(0), uint8(1))
		f.Add(tr.server, uint16(64), uint8(200))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxLine uint16, chunk uint8) {
		maxLine %= 512 // small bounds reach the edges
		lr := NewLineReader(chunkReader{bytes.NewReader(data), int(chunk) + 1}, int(maxLine))
		bound := lr.Max()
		wantLines, wantErr := refLines(data, bound)
		for i := 0; ; i++ {
			line, err := lr.ReadLine()
			if err != nil {
				if i != len(wantLines) || !errors.Is(err, wantErr) {
					t.Fatalf("after %d lines: %v; want %d lines then %v", i, err, len(wantLines), wantErr)
				}
				if lr.Buffered() > bound {
					t.Fatalf("buffered %d > max %d", lr.Buffered(), bound)
				}
				return
			}
			if len(line) > bound || line[len(line)-1] != '\n' || bytes.IndexByte(line, 0) >= 0 {
				t.Fatalf("line %q breaks the bound %d, the terminator or the NUL rule", line, bound)
			}
			if i >= len(wantLines) || string(line) != wantLines[i] {
				t.Fatalf("line %d = %q, want %q", i, line, wantLines)
			}
		}
	})
}

func FuzzParseCommand(f *testing.F) {
	for _, tt := range commandTests {
		f.Add([]byte(tt.in))
	}
	for _, path := range transcriptFiles(f) {
		for _, ev := range loadTranscript(f, path).events {
			if ev.client {
				f.Add(ev.raw)
			}
		}
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := ParseCommand(line)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			return
		}
		if n := len(cmd.Verb); n < 3 || n > 4 {
			t.Fatalf("verb %q", cmd.Verb)
		}
		for i := 0; i < len(cmd.Verb); i++ {
			if c := cmd.Verb[i]; c < 'A' || c > 'Z' {
				t.Fatalf("verb %q", cmd.Verb)
			}
		}
		for i := 0; i < len(cmd.Arg); i++ {
			if c := cmd.Arg[i]; c < 0x20 && c != '\t' || c == 0x7F {
				t.Fatalf("arg %q has control byte", cmd.Arg)
			}
		}
		canon := cmd.Verb
		if cmd.Arg != "" {
			canon += " " + cmd.Arg
		}
		again, err := ParseCommand([]byte(canon + "\r\n"))
		if err != nil || again != cmd {
			t.Fatalf("%q parses to %+v, its canonical form %q to %+v, %v", line, cmd, canon, again, err)
		}
	})
}

// readReplies reads replies until an error.
func readReplies(r io.Reader, maxLine, maxLines int) ([]Reply, error) {
	rr := NewReplyReader(r, maxLine, maxLines)
	var out []Reply
	for {
		rep, err := rr.ReadReply()
		if err != nil {
			return out, err
		}
		out = append(out, rep)
	}
}

func FuzzReplyReader(f *testing.F) {
	for _, tt := range replyTests {
		f.Add([]byte(tt.in), uint8(max(tt.maxLines, 0)))
	}
	for _, path := range transcriptFiles(f) {
		tr := loadTranscript(f, path)
		f.Add(append(tr.server, tr.serverTail...), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxLines uint8) {
		const maxLine = 80
		ml := int(maxLines % 16)
		replies, err := readReplies(bytes.NewReader(data), maxLine, ml)
		if ml == 0 {
			ml = DefaultMaxReplyLines
		}
		known := []error{io.EOF, io.ErrUnexpectedEOF, ErrSyntax, ErrLineTooLong, ErrNUL, ErrReplyTooLong}
		if !slicesContainsErr(known, err) {
			t.Fatalf("unexpected error %v", err)
		}
		var consumed []byte
		for _, rep := range replies {
			if rep.Code < 100 || rep.Code > 699 || len(rep.Lines) == 0 || len(rep.Lines) > ml {
				t.Fatalf("bad reply %d with %d lines", rep.Code, len(rep.Lines))
			}
			for i, l := range rep.Lines {
				code, sep, ok := replyCode(l)
				switch {
				case len(l) > maxLine || l[len(l)-1] != '\n':
					t.Fatalf("line %q", l)
				case i == 0 && (!ok || code != rep.Code || (sep == '-') != rep.Multiline()):
					t.Fatalf("first line %q of reply %d", l, rep.Code)
				case i > 0 && i < len(rep.Lines)-1 && ok && code == rep.Code && sep != '-':
					t.Fatalf("reply %d goes on after its last line %q", rep.Code, l)
				case i > 0 && i == len(rep.Lines)-1 && (!ok || code != rep.Code || sep == '-'):
					t.Fatalf("reply %d ends with %q", rep.Code, l)
				}
			}
			consumed = append(consumed, rep.Bytes()...)
		}
		if !bytes.HasPrefix(data, consumed) {
			t.Fatalf("replies %q are not the stream's start", consumed)
		}
		if err == io.EOF && len(consumed) != len(data) {
			t.Fatalf("io.EOF with %d of %d bytes", len(consumed), len(data))
		}
		// However the stream is split, the result is the same.
		replies2, err2 := readReplies(iotest.OneByteReader(bytes.NewReader(data)), maxLine, ml)
		if len(replies2) != len(replies) || !sameErrClass(err, err2, known) {
			t.Fatalf("one byte per read: %d replies, %v; whole: %d, %v", len(replies2), err2, len(replies), err)
		}
		for i := range replies {
			if !bytes.Equal(replies[i].Bytes(), replies2[i].Bytes()) {
				t.Fatalf("reply %d differs by chunking", i)
			}
		}
	})
}

func slicesContainsErr(known []error, err error) bool {
	for _, k := range known {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}

func sameErrClass(a, b error, known []error) bool {
	for _, k := range known {
		if errors.Is(a, k) != errors.Is(b, k) {
			return false
		}
	}
	return true
}

func FuzzPORT(f *testing.F) {
	for _, tt := range portTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParsePORT(arg)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("ParsePORT(%q) = %v", arg, ap)
		}
		s, err := FormatPORT(ap)
		if err != nil {
			t.Fatalf("FormatPORT(%v): %v", ap, err)
		}
		ap2, err := ParsePORT(s)
		if err != nil || ap2 != ap {
			t.Fatalf("ParsePORT(FormatPORT(%v) = %q) = %v, %v", ap, s, ap2, err)
		}
		if s2, _ := FormatPORT(ap2); s2 != s {
			t.Fatalf("not canonical: %q then %q", s, s2)
		}
	})
}

func Fuzz227(f *testing.F) {
	for _, tt := range find227Tests {
		f.Add(tt.in)
	}
	other := netip.MustParseAddrPort("203.0.113.7:61000")
	otherHP, _ := FormatPORT(other)
	f.Fuzz(func(t *testing.T, text string) {
		ap, start, end, err := Find227(text)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			return
		}
		if start < 0 || end > len(text) || start >= end {
			t.Fatalf("span [%d,%d) of %d bytes", start, end, len(text))
		}
		// The span is exactly a PORT argument for the same endpoint.
		if ap2, err := ParsePORT(text[start:end]); err != nil || ap2 != ap {
			t.Fatalf("span %q parses to %v, %v; want %v", text[start:end], ap2, err, ap)
		}
		s, err := Format227(ap)
		if err != nil {
			t.Fatalf("Format227(%v): %v", ap, err)
		}
		ap2, _, _, err := Find227(s)
		if err != nil || ap2 != ap {
			t.Fatalf("Find227(Format227(%v) = %q) = %v, %v", ap, s, ap2, err)
		}
		if s2, _ := Format227(ap2); s2 != s {
			t.Fatalf("not canonical: %q then %q", s, s2)
		}
		// Rewriting just the span, as a Session does, announces the new
		// endpoint at the same place.
		rewritten := text[:start] + otherHP + text[end:]
		ap3, start3, end3, err := Find227(rewritten)
		if err != nil || ap3 != other || start3 != start || end3 != start+len(otherHP) {
			t.Fatalf("rewritten %q: %v [%d,%d), %v", rewritten, ap3, start3, end3, err)
		}
	})
}

func FuzzEPRT(f *testing.F) {
	for _, tt := range eprtTests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		ap, err := ParseEPRT(arg)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			return
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().Is4In6() {
			t.Fatalf("ParseEPRT(%q) = %v", arg, ap)
		}
		s := FormatEPRT(ap)
		ap2, err := ParseEPRT(s)
		if err != nil || ap2 != ap {
			t.Fatalf("ParseEPRT(FormatEPRT(%v) = %q) = %v, %v", ap, s, ap2, err)
		}
		if s2 := FormatEPRT(ap2); s2 != s {
			t.Fatalf("not canonical: %q then %q", s, s2)
		}
	})
}

func Fuzz229(f *testing.F) {
	for _, tt := range find229Tests {
		f.Add(tt.in)
	}
	f.Fuzz(func(t *testing.T, text string) {
		port, start, end, err := Find229(text)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			return
		}
		if port == 0 || start < 1 || end >= len(text) || text[start-1] != '(' || text[end] != ')' {
			t.Fatalf("Find229(%q) = %d [%d,%d)", text, port, start, end)
		}
		s := Format229(port)
		port2, _, _, err := Find229(s)
		if err != nil || port2 != port {
			t.Fatalf("Find229(Format229(%d) = %q) = %d, %v", port, s, port2, err)
		}
		if s2 := Format229(port2); s2 != s {
			t.Fatalf("not canonical: %q then %q", s, s2)
		}
		rewritten := text[:start] + "|||61000|" + text[end:]
		if p, st, _, err := Find229(rewritten); err != nil || p != 61000 || st != start {
			t.Fatalf("rewritten %q: %d at %d, %v", rewritten, p, st, err)
		}
	})
}
