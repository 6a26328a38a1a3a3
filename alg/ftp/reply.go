package ftp

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
)

// DefaultMaxReplyLines is the default bound on the lines of one reply.
const DefaultMaxReplyLines = 1000

// Reply is one complete server reply, single-line or RFC 959 multi-line.
type Reply struct {
	// Code is the three-digit reply code, 100-699.
	Code int
	// Lines are the raw lines including their terminators, exactly as
	// received. The Reply owns them (they are copies).
	Lines [][]byte
}

// Multiline reports whether the reply spans more than one line.
func (r Reply) Multiline() bool { return len(r.Lines) > 1 }

// Text returns the text of the first line after "NNN " or "NNN-", without
// the line terminator. For a 227 or 229 reply this is where the announced
// endpoint is.
func (r Reply) Text() string {
	if len(r.Lines) == 0 {
		return ""
	}
	l := trimEOL(r.Lines[0])
	if len(l) <= 4 {
		return ""
	}
	return string(l[4:])
}

// Bytes returns all raw lines concatenated: the reply exactly as received.
func (r Reply) Bytes() []byte {
	if len(r.Lines) == 1 {
		return r.Lines[0]
	}
	return bytes.Join(r.Lines, nil)
}

// Preliminary reports whether the reply is a positive preliminary reply
// (1xx): another reply to the same command follows.
func (r Reply) Preliminary() bool { return r.Code >= 100 && r.Code < 200 }

// ReplyReader assembles server replies from a stream.
//
// A reply starts with a line of three digits (the first 1-6) followed by a
// space (single-line), a '-' (multi-line) or the end of the line (a bare
// code, which some servers send). A multi-line reply ends with the first
// later line that starts with the same code followed by a space or the end
// of the line. The lines in between are opaque text: they may start with
// other digits, or even with the same code and '-', so "227 Entering..."
// inside a "211-" reply is just text.
//
// A ReplyReader is not safe for concurrent use.
type ReplyReader struct {
	lr       *LineReader
	maxLines int
	ends     []int // scratch: end offset of each line in the reply buffer
}

// NewReplyReader returns a ReplyReader reading from r. maxLine bounds each
// line (terminator included; <= 0 means DefaultMaxLine) and maxLines the
// lines of one reply (<= 0 means DefaultMaxReplyLines), so one reply never
// takes more than about maxLine*maxLines bytes.
func NewReplyReader(r io.Reader, maxLine, maxLines int) *ReplyReader {
	if maxLines <= 0 {
		maxLines = DefaultMaxReplyLines
	}
	return &ReplyReader{lr: NewLineReader(r, maxLine), maxLines: maxLines}
}

// Buffered returns the number of bytes read from the stream but not yet
// returned as part of a reply.
func (rr *ReplyReader) Buffered() int { return rr.lr.Buffered() }

// ReadReply reads the next complete reply.
//
// Errors: io.EOF at a reply boundary; io.ErrUnexpectedEOF inside a line or
// a multi-line reply; ErrLineTooLong and ErrNUL from the line bound and NUL
// check (see LineReader.ReadLine); ErrReplyTooLong when a multi-line reply
// exceeds maxLines; ErrSyntax when the first line does not start with a
// reply code.
func (rr *ReplyReader) ReadReply() (Reply, error) {
	line, err := rr.lr.ReadLine()
	if err != nil {
		return Reply{}, err
	}
	code, sep, ok := replyCode(line)
	if !ok {
		return Reply{}, fmt.Errorf("reply line %s: does not start with a reply code: %w", quote(line), ErrSyntax)
	}
	if sep != '-' {
		buf := make([]byte, len(line))
		copy(buf, line)
		return Reply{Code: code, Lines: [][]byte{buf}}, nil
	}
	buf := append([]byte(nil), line...)
	rr.ends = append(rr.ends[:0], len(buf))
	for {
		if len(rr.ends) >= rr.maxLines {
			return Reply{}, fmt.Errorf("reply %d: no last line within %d lines: %w", code, rr.maxLines, ErrReplyTooLong)
		}
		line, err := rr.lr.ReadLine()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return Reply{}, err
		}
		buf = append(buf, line...)
		rr.ends = append(rr.ends, len(buf))
		if c, sep, ok := replyCode(line); ok && c == code && sep != '-' {
			break
		}
	}
	lines := make([][]byte, len(rr.ends))
	start := 0
	for i, end := range rr.ends {
		lines[i] = buf[start:end:end]
		start = end
	}
	return Reply{Code: code, Lines: lines}, nil
}

// replyCode parses the reply code at the start of line. sep is ' ', '-' or
// '\n' for a bare code.
func replyCode(line []byte) (code int, sep byte, ok bool) {
	l := trimEOL(line)
	if len(l) < 3 || l[0] < '1' || l[0] > '6' || !isDigit(l[1]) || !isDigit(l[2]) {
		return 0, 0, false
	}
	code = int(l[0]-'0')*100 + int(l[1]-'0')*10 + int(l[2]-'0')
	switch {
	case len(l) == 3:
		return code, '\n', true
	case l[3] == ' ' || l[3] == '-':
		return code, l[3], true
	}
	return 0, 0, false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// FormatReply formats a single-line reply "NNN text\r\n", as a Session sends
// its own refusals. Control bytes in text (CR, LF, NUL, ...) are replaced by
// spaces so that text from elsewhere (an error message quoting a peer) cannot
// inject lines. code must be 100-699.
func FormatReply(code int, text string) ([]byte, error) {
	if code < 100 || code > 699 {
		return nil, fmt.Errorf("formatting reply: code %d out of range 100-699: %w", code, ErrSyntax)
	}
	b := make([]byte, 0, 4+len(text)+2)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c < 0x20 || c == 0x7F {
			c = ' '
		}
		b = append(b, c)
	}
	return append(b, '\r', '\n'), nil
}
