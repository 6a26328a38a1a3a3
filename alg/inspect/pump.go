package inspect

import (
	"bytes"
	"errors"
	"io"
	"iter"
	"time"
)

// errStopped is what a pump's reader returns once the pump abandons it.
var errStopped = errors.New("reader abandoned")

// A pump drives one of the codec's pull readers (ftp.LineReader,
// ftp.ReplyReader) with bytes pushed as reassembly delivers them. The reader
// loop runs as a coroutine (iter.Pull): push hands it a chunk and returns
// once the loop has consumed it and waits for more, so every complete line
// in the chunk has been handled by then, in order with the other direction.
//
// The loop's reader returns at most one line per Read. After a sticky codec
// error (line too long, NUL) the loop returns and the codec's buffer holds
// nothing beyond the offending line, so the pump resynchronises by skipping
// to the next line end and starting a fresh loop.
type pump struct {
	// loop reads from r until r or the codec fails for good.
	loop func(r io.Reader)
	// onSkipped reports the bytes dropped while resynchronising.
	onSkipped func(n int)
	// lineStart reports whether b, the first bytes after a gap, look like
	// the start of a line, so that nothing needs to be skipped.
	lineStart func(b []byte) bool
	// t is the capture time of the chunk being pushed.
	t time.Time

	f    feeder
	next func() (struct{}, bool)
	stop func()
	// skip: drop bytes up to and including the next '\n'.
	skip     bool
	skipped  int
	afterGap bool
	// dead: ignore everything (session encrypted or given up).
	dead bool
	// running: the loop runs (we are inside next); it cannot be stopped
	// from within, so kill only marks the pump dead then.
	running bool
}

// feeder is the reader a pump's loop reads from.
type feeder struct {
	chunk   []byte
	eof     bool
	yield   func(struct{}) bool
	lineEnd bool // the last byte handed out was '\n'
}

func (f *feeder) Read(p []byte) (int, error) {
	for len(f.chunk) == 0 {
		if f.eof {
			return 0, io.EOF
		}
		if !f.yield(struct{}{}) {
			return 0, errStopped
		}
	}
	n := len(f.chunk)
	if i := bytes.IndexByte(f.chunk, '\n'); i >= 0 {
		n = i + 1
	}
	n = copy(p, f.chunk[:n])
	if n > 0 {
		f.lineEnd = f.chunk[n-1] == '\n'
	}
	f.chunk = f.chunk[n:]
	return n, nil
}

func (p *pump) start() {
	p.f = feeder{}
	p.next, p.stop = iter.Pull(func(yield func(struct{}) bool) {
		p.f.yield = yield
		p.loop(&p.f)
	})
}

// push hands b (captured at t) to the loop. b is not retained.
func (p *pump) push(t time.Time, b []byte) {
	p.t = t
	if p.dead {
		p.release()
		return
	}
	if p.afterGap && len(b) > 0 {
		p.afterGap = false
		if p.lineStart != nil && p.lineStart(b) {
			p.skip = false
		}
	}
	for len(b) > 0 && !p.dead {
		if p.skip {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				p.skipped += len(b)
				return
			}
			p.skipped += i + 1
			b = b[i+1:]
			p.skip = false
			if p.onSkipped != nil {
				p.onSkipped(p.skipped)
			}
			p.skipped = 0
			continue
		}
		if p.next == nil {
			p.start()
		}
		p.f.chunk = b
		p.running = true
		_, ok := p.next()
		p.running = false
		if p.dead {
			p.release()
			return
		}
		if ok {
			p.f.chunk = nil
			return // consumed; the loop waits for more
		}
		// The loop ended: a sticky codec error.
		b = p.f.chunk
		p.reset(!p.f.lineEnd)
	}
}

// reset abandons the current loop; the next push starts a fresh one,
// after skipping to the next line end when skip is set.
func (p *pump) reset(skip bool) {
	if p.stop != nil {
		p.stop()
	}
	p.next, p.stop = nil, nil
	p.f = feeder{}
	p.skip = skip
	p.skipped = 0
	p.afterGap = false
}

// gap abandons the line in progress: bytes are missing from the stream.
// When the data after the gap starts like a line (resync says so), it is
// read from its first byte; otherwise the pump skips to the next line end.
func (p *pump) gap() {
	p.reset(true)
	p.afterGap = true
}

// eof ends the stream: the loop sees io.EOF (or io.ErrUnexpectedEOF in
// the middle of a line) and returns.
func (p *pump) eof(t time.Time) {
	p.t = t
	if p.next != nil && !p.dead {
		p.f.eof = true
		p.running = true
		p.next()
		p.running = false
	}
	if p.skip && p.skipped > 0 && p.onSkipped != nil {
		p.onSkipped(p.skipped)
	}
	p.reset(false)
}

// kill marks the pump dead: it ignores everything from now on. It may be
// called from within a loop (a reply that ends the session), so it only
// marks; the loop is released by the next push or by release, which run
// outside every loop.
func (p *pump) kill() {
	p.dead = true
}

// release stops the loop of a dead pump. It must not be called from
// within a loop.
func (p *pump) release() {
	if p.dead && !p.running {
		p.reset(false)
	}
}
