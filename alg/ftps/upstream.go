package ftps

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// SecureUpstream makes the control connection c to an FTPS server secure
// before the Session sees it, so that the Session deals with one TLS side
// only (the client's): toward explicit FTPS it reads the greeting, sends
// AUTH TLS and runs the handshake; toward implicit FTPS it runs the
// handshake first. Then it sends PBSZ 0 and PROT P (every data connection
// toward the server is TLS, resuming this control session) and waits for
// the server's session ticket. The returned conn replays the server's
// greeting first, as if nothing had happened. Toward a plain server it
// returns c.
func (s *Session) SecureUpstream(ctx context.Context, c net.Conn, mode UpstreamMode) (net.Conn, error) {
	if mode == UpstreamPlain {
		return c, nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*defaultHandshakeTimeout)
		defer cancel()
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
		defer c.SetDeadline(time.Time{})
	}
	var conn net.Conn = c
	var greeting ftp.Reply
	var err error
	if mode == UpstreamImplicit {
		if conn, err = s.DialControl(ctx, c); err != nil {
			return nil, err
		}
		if greeting, err = readFinal(ftp.NewReplyReader(conn, 0, 0)); err != nil {
			return nil, fmt.Errorf("reading the server's greeting: %w", err)
		}
		if greeting.Code != 220 {
			return nil, fmt.Errorf("server greeting %q", greeting.Bytes())
		}
	} else {
		rr := ftp.NewReplyReader(c, 0, 0)
		if greeting, err = readFinal(rr); err != nil {
			return nil, fmt.Errorf("reading the server's greeting: %w", err)
		}
		if greeting.Code != 220 {
			return nil, fmt.Errorf("server greeting %q", greeting.Bytes())
		}
		if _, err := command(c, rr, "AUTH TLS", 234); err != nil {
			return nil, err
		}
		if rr.Buffered() > 0 {
			return nil, fmt.Errorf("server sent more after its 234 reply to AUTH TLS")
		}
		if conn, err = s.DialControl(ctx, c); err != nil {
			return nil, err
		}
	}
	rr := ftp.NewReplyReader(conn, 0, 0)
	if _, err := command(conn, rr, "PBSZ 0", 200); err != nil {
		return nil, err
	}
	if _, err := command(conn, rr, "PROT P", 200); err != nil {
		return nil, err
	}
	if rr.Buffered() > 0 {
		return nil, fmt.Errorf("server sent an unsolicited reply after PROT P")
	}
	// A session ticket, if the server issues any, has come by now: in
	// TLS 1.2 within the handshake, in TLS 1.3 before the server's first
	// reply. Without one, data connections make full handshakes (a
	// server with require_ssl_reuse refuses them; the reply says so).
	select {
	case <-s.ticket:
		s.resumable = true
	default:
	}
	return &replayConn{Conn: conn, r: io.MultiReader(bytes.NewReader(greeting.Bytes()), conn)}, nil
}

// readFinal reads replies until a final one (a greeting may be preceded
// by 120 "service ready in n minutes").
func readFinal(rr *ftp.ReplyReader) (ftp.Reply, error) {
	for {
		r, err := rr.ReadReply()
		if err != nil || !r.Preliminary() {
			return r, err
		}
	}
}

// command sends line and checks the final reply's code.
func command(w io.Writer, rr *ftp.ReplyReader, line string, want int) (ftp.Reply, error) {
	if _, err := io.WriteString(w, line+"\r\n"); err != nil {
		return ftp.Reply{}, fmt.Errorf("sending %s to the server: %w", line, err)
	}
	r, err := readFinal(rr)
	if err != nil {
		return r, fmt.Errorf("reading the server's reply to %s: %w", line, err)
	}
	if r.Code != want {
		return r, fmt.Errorf("server answered %s with %q", line, bytes.TrimSpace(r.Bytes()))
	}
	return r, nil
}

// replayConn reads the replayed greeting, then the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// CloseWrite ends the TLS stream (close_notify) and half-closes TCP.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
