package ftp

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"
)

// lineTests are streams and the lines and final error ReadLine yields.
// They also seed FuzzLineReader.
var lineTests = []struct {
	name    string
	in      string
	max     int
	lines   []string
	wantErr error // after the lines
}{
	{"empty stream", "", 0, nil, io.EOF},
	{"crlf", "USER anonymous\r\nPASV\r\n", 0, []string{"USER anonymous\r\n", "PASV\r\n"}, io.EOF},
	{"bare lf", "USER a\nPASS b\n", 0, []string{"USER a\n", "PASS b\n"}, io.EOF},
	{"mixed terminators", "A\r\nB\nC\r\n", 0, []string{"A\r\n", "B\n", "C\r\n"}, io.EOF},
	{"empty lines", "\r\n\n", 0, []string{"\r\n", "\n"}, io.EOF},
	{"bare cr is not a terminator", "ABOR\rQUIT\r\n", 0, []string{"ABOR\rQUIT\r\n"}, io.EOF},
	{"eof mid-line", "NOOP\r\nPAS", 0, []string{"NOOP\r\n"}, io.ErrUnexpectedEOF},
	{"eof after cr", "NOOP\r", 0, nil, io.ErrUnexpectedEOF},
	{"telnet bytes pass", "\xff\xf4\xff\xf2ABOR\r\n", 0, []string{"\xff\xf4\xff\xf2ABOR\r\n"}, io.EOF},
	{"utf-8", "STOR grüße-名前.txt\r\n", 0, []string{"STOR grüße-名前.txt\r\n"}, io.EOF},
	{"exactly max", "12345678\r\n", 10, []string{"12345678\r\n"}, io.EOF},
	{"max+1", "123456789\r\n", 10, nil, ErrLineTooLong},
	{"too long after good lines", "ok\r\n" + strings.Repeat("x", 20), 10, []string{"ok\r\n"}, ErrLineTooLong},
	{"lf at max+1", "1234567890\n", 10, nil, ErrLineTooLong},
	{"compaction", "0123456\r\n0123456\r\n0123456\r\n0123456\r\n", 10,
		[]string{"0123456\r\n", "0123456\r\n", "0123456\r\n", "0123456\r\n"}, io.EOF},
	{"max 1", "\n\n", 1, []string{"\n", "\n"}, io.EOF},
	{"max 1 too long", "a\n", 1, nil, ErrLineTooLong},
	{"nul", "NO\x00OP\r\n", 0, nil, ErrNUL},
	{"nul after a line", "NOOP\r\n\x00", 0, []string{"NOOP\r\n"}, ErrNUL},
	{"nul in the line after", "NOOP\r\nA\x00\r\nNOOP\r\n", 0, []string{"NOOP\r\n"}, ErrNUL},
	{"nul before eof", "NOOP\x00", 0, nil, ErrNUL},
	{"nul at start of long line", "\x00" + strings.Repeat("x", 20), 10, nil, ErrNUL},
	{"default max", strings.Repeat("x", DefaultMaxLine-2) + "\r\n", -1, []string{strings.Repeat("x", DefaultMaxLine-2) + "\r\n"}, io.EOF},
	{"default max exceeded", strings.Repeat("x", DefaultMaxLine-1) + "\r\n", 0, nil, ErrLineTooLong},
}

// readerKinds are the ways a stream can arrive: all at once (pipelined),
// one byte per Read (a command split over many segments), and others.
var readerKinds = []struct {
	name string
	wrap func(io.Reader) io.Reader
}{
	{"whole", func(r io.Reader) io.Reader { return r }},
	{"onebyte", iotest.OneByteReader},
	{"half", iotest.HalfReader},
	{"dataerr", iotest.DataErrReader},
}

func TestLineReader(t *testing.T) {
	for _, tt := range lineTests {
		for _, rk := range readerKinds {
			t.Run(tt.name+"/"+rk.name, func(t *testing.T) {
				lr := NewLineReader(rk.wrap(strings.NewReader(tt.in)), tt.max)
				for i, want := range tt.lines {
					got, err := lr.ReadLine()
					if err != nil || string(got) != want {
						t.Fatalf("line %d = %q, %v; want %q", i, got, err, want)
					}
				}
				_, err := lr.ReadLine()
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("after %d lines: %v, want %v", len(tt.lines), err, tt.wantErr)
				}
				if tt.wantErr == io.EOF || tt.wantErr == io.ErrUnexpectedEOF {
					if err != tt.wantErr {
						t.Fatalf("error %v is wrapped, want %v itself", err, tt.wantErr)
					}
				} else if _, err2 := lr.ReadLine(); err2 != err {
					t.Fatalf("protocol error not sticky: %v then %v", err, err2)
				}
			})
		}
	}
}

func TestLineReaderMax(t *testing.T) {
	for _, tc := range []struct{ in, want int }{{-5, DefaultMaxLine}, {0, DefaultMaxLine}, {1, 1}, {512, 512}} {
		if got := NewLineReader(strings.NewReader(""), tc.in).Max(); got != tc.want {
			t.Errorf("NewLineReader(max %d).Max() = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// countingReader serves an endless line and counts what was read.
type countingReader struct{ n int }

func (c *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	c.n += len(p)
	return len(p), nil
}

// A peer that never ends a line costs at most max bytes of buffer.
func TestLineReaderBoundedRead(t *testing.T) {
	for _, max := range []int{1, 7, 100, DefaultMaxLine} {
		cr := &countingReader{}
		lr := NewLineReader(cr, max)
		if _, err := lr.ReadLine(); !errors.Is(err, ErrLineTooLong) {
			t.Fatalf("max %d: %v, want ErrLineTooLong", max, err)
		}
		if cr.n > max {
			t.Errorf("max %d: read %d bytes", max, cr.n)
		}
		if lr.Buffered() > max {
			t.Errorf("max %d: buffered %d", max, lr.Buffered())
		}
	}
}

func TestLineReaderBuffered(t *testing.T) {
	lr := NewLineReader(strings.NewReader("PASV\r\nRETR f\r\nQUI"), 0)
	if _, err := lr.ReadLine(); err != nil {
		t.Fatal(err)
	}
	if got, want := lr.Buffered(), len("RETR f\r\nQUI"); got != want {
		t.Errorf("Buffered() = %d, want %d", got, want)
	}
}

// scriptedReader returns its steps in order, then io.EOF.
type scriptedReader []struct {
	data string
	err  error
}

func (s *scriptedReader) Read(p []byte) (int, error) {
	if len(*s) == 0 {
		return 0, io.EOF
	}
	step := (*s)[0]
	*s = (*s)[1:]
	return copy(p, step.data), step.err
}

// A read error such as a deadline is returned as is and keeps the part of
// the line read so far, so the caller may retry.
func TestLineReaderTransientError(t *testing.T) {
	r := &scriptedReader{
		{"RE", nil},
		{"TR a", os.ErrDeadlineExceeded},
		{"", os.ErrDeadlineExceeded},
		{"\r\nNOOP\r\n", nil},
	}
	lr := NewLineReader(r, 0)
	for i := 0; i < 2; i++ {
		if _, err := lr.ReadLine(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read %d: %v, want deadline", i, err)
		}
	}
	for _, want := range []string{"RETR a\r\n", "NOOP\r\n"} {
		got, err := lr.ReadLine()
		if err != nil || string(got) != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	if _, err := lr.ReadLine(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

// A line that arrives together with an error is returned first.
func TestLineReaderDataWithError(t *testing.T) {
	boom := errors.New("boom")
	r := &scriptedReader{{"NOOP\r\nPA", boom}}
	lr := NewLineReader(r, 0)
	if got, err := lr.ReadLine(); err != nil || string(got) != "NOOP\r\n" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := lr.ReadLine(); err != boom {
		t.Fatalf("got %v, want boom", err)
	}
}

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

func TestLineReaderNoProgress(t *testing.T) {
	if _, err := NewLineReader(emptyReader{}, 0).ReadLine(); err != io.ErrNoProgress {
		t.Fatalf("got %v, want io.ErrNoProgress", err)
	}
}

// The returned slice is reused: it is valid only until the next call, and
// the test documents that callers must copy.
func TestLineReaderReuse(t *testing.T) {
	lr := NewLineReader(strings.NewReader("AAAA\nBBBB\n"), 5)
	first, _ := lr.ReadLine()
	keep := bytes.Clone(first)
	second, err := lr.ReadLine()
	if err != nil || string(second) != "BBBB\n" || string(keep) != "AAAA\n" {
		t.Fatalf("got %q %q, %v", keep, second, err)
	}
}
