package ftp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxLine is the default bound on one line, terminator included.
// RFC 959 sets no limit; real commands and replies stay far below it.
const DefaultMaxLine = 4096

// Sentinel errors. Errors returned by this package wrap one of them (or are
// io.EOF / io.ErrUnexpectedEOF, returned unwrapped), so callers tell them
// apart with errors.Is.
var (
	// ErrLineTooLong means a line did not end within the configured bound.
	ErrLineTooLong = errors.New("line too long")
	// ErrNUL means a line contains a NUL byte, which no FTP line may carry.
	ErrNUL = errors.New("NUL byte in line")
	// ErrSyntax means a malformed command, reply or host-port argument.
	ErrSyntax = errors.New("FTP syntax error")
	// ErrReplyTooLong means a multi-line reply has more lines than allowed.
	ErrReplyTooLong = errors.New("reply has too many lines")
)

// maxEmptyReads bounds consecutive (0, nil) results from the underlying
// reader before ReadLine gives up with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// LineReader reads CRLF- (or bare LF-) terminated lines from a stream with a
// bounded buffer. It never holds more than its bound in memory, so a peer
// that never ends a line costs a fixed amount.
//
// A LineReader is not safe for concurrent use.
type LineReader struct {
	r   io.Reader
	buf []byte // fixed size: the bound
	// buf[start:end] is read but not yet returned; buf[start:scan] is
	// known to contain neither '\n' nor NUL.
	start, scan, end int
	err              error // sticky protocol error (too long, NUL)
	rerr             error // read error not yet returned
}

// NewLineReader returns a LineReader reading from r. max bounds one line,
// terminator included; max <= 0 means DefaultMaxLine.
func NewLineReader(r io.Reader, max int) *LineReader {
	if max <= 0 {
		max = DefaultMaxLine
	}
	return &LineReader{r: r, buf: make([]byte, max)}
}

// Max returns the bound on one line, terminator included.
func (lr *LineReader) Max() int { return len(lr.buf) }

// Buffered returns the number of bytes read from the stream but not yet
// returned as part of a line (e.g. pipelined commands).
func (lr *LineReader) Buffered() int { return lr.end - lr.start }

// ReadLine returns the next raw line including its terminator ("\r\n" or
// "\n"). The slice is valid only until the next call.
//
// A line that does not end within the bound yields ErrLineTooLong (after at
// most Max bytes were buffered); a NUL byte anywhere yields ErrNUL. Both are
// sticky: the stream is out of step, and every later call returns the same
// error. End of stream at a line boundary yields io.EOF, in the middle of a
// line io.ErrUnexpectedEOF. Other errors of the underlying reader are
// returned unchanged and are not sticky: after a read deadline, say, the
// buffered part of a line is kept and a later call may complete it.
func (lr *LineReader) ReadLine() ([]byte, error) {
	if lr.err != nil {
		return nil, lr.err
	}
	empty := 0
	for {
		if line, ok, err := lr.scanLine(); ok || err != nil {
			return line, err
		}
		// No complete line buffered: now is the time for a read error
		// that came with the last data.
		if err := lr.rerr; err != nil {
			lr.rerr = nil
			if err == io.EOF && lr.end > lr.start {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if lr.end-lr.start >= len(lr.buf) {
			lr.err = fmt.Errorf("no end of line within %d bytes: %w", len(lr.buf), ErrLineTooLong)
			return nil, lr.err
		}
		if lr.end == len(lr.buf) { // room only at the front: compact
			n := copy(lr.buf, lr.buf[lr.start:lr.end])
			lr.scan -= lr.start
			lr.start, lr.end = 0, n
		}
		n, err := lr.r.Read(lr.buf[lr.end:])
		if n < 0 || n > len(lr.buf)-lr.end {
			return nil, fmt.Errorf("reading line: reader returned invalid count %d", n)
		}
		lr.end += n
		lr.rerr = err
		if n > 0 || err != nil {
			empty = 0
		} else if empty++; empty >= maxEmptyReads {
			return nil, io.ErrNoProgress
		}
	}
}

// scanLine looks at the bytes not yet scanned for the end of a line or a
// NUL byte.
func (lr *LineReader) scanLine() (line []byte, ok bool, err error) {
	unscanned := lr.buf[lr.scan:lr.end]
	i := bytes.IndexByte(unscanned, '\n')
	upto := unscanned
	if i >= 0 {
		upto = unscanned[:i]
	}
	if j := bytes.IndexByte(upto, 0); j >= 0 {
		lr.err = fmt.Errorf("%w at offset %d", ErrNUL, lr.scan+j-lr.start)
		return nil, false, lr.err
	}
	if i < 0 {
		lr.scan = lr.end
		return nil, false, nil
	}
	stop := lr.scan + i + 1
	line = lr.buf[lr.start:stop]
	lr.start, lr.scan = stop, stop
	if lr.start == lr.end { // drained: reuse the whole buffer
		lr.start, lr.scan, lr.end = 0, 0, 0
	}
	return line, true, nil
}

// trimEOL removes one trailing "\r\n" or "\n".
func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	return line
}

// quote renders a (possibly hostile) line for an error message: Go-quoted and
// cut to a length that keeps log lines readable.
func quote(b []byte) string {
	const max = 64
	if len(b) > max {
		return fmt.Sprintf("%q...", b[:max])
	}
	return fmt.Sprintf("%q", b)
}
