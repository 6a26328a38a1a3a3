package lab

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// Client is the lab's FTP client. Unlike a library client it is driven one
// command at a time, so that the lab can look at the firewall between the
// announcement of a data endpoint and the data connection. It speaks every
// data-connection mode: PASV and EPSV (Passive), PORT and EPRT (Active).
type Client struct {
	// Dial opens passive-mode data connections. If nil, a net.Dialer is used.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds each exchange on the control connection and the
	// establishment of a data connection. If zero, 5s.
	Timeout time.Duration
	// DataTLS, when set (StartTLS), secures every data connection.
	DataTLS *tls.Config

	c  net.Conn
	rr *ftp.ReplyReader
}

// Download is the result of one RETR.
type Download struct {
	// Bytes is how many bytes arrived on the data connection.
	Bytes int64
	// Duration runs from the transfer command to the end of the data.
	Duration time.Duration
	// SHA256 is the hash of what arrived.
	SHA256 [32]byte
	// Final is the server's reply after the transfer (226 on success).
	Final ftp.Reply
}

// ReplyError is a reply other than the one expected.
type ReplyError struct {
	// Command is the command sent, with a password masked.
	Command string
	// Reply is the server's reply.
	Reply ftp.Reply
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("%s: server replied %q", e.Command, replyLine(e.Reply))
}

// replyLine returns the first line of r without its terminator.
func replyLine(r ftp.Reply) string {
	if len(r.Lines) == 0 {
		return ""
	}
	return strings.TrimRight(string(r.Lines[0]), "\r\n")
}

// Connect makes c's control connection with dial (nil: a net.Dialer) and
// reads the server's greeting. It returns the greeting.
func (c *Client) Connect(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string) (ftp.Reply, error) {
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	dctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	conn, err := dial(dctx, "tcp", addr)
	if err != nil {
		return ftp.Reply{}, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	c.c = conn
	c.rr = ftp.NewReplyReader(conn, ftp.DefaultMaxLine, ftp.DefaultMaxReplyLines)
	r, err := c.read(ctx)
	if err != nil {
		conn.Close()
		return ftp.Reply{}, fmt.Errorf("reading the greeting of %s: %w", addr, err)
	}
	if r.Code != 220 {
		conn.Close()
		return r, &ReplyError{Command: "(connect)", Reply: r}
	}
	return r, nil
}

// Close closes the control connection.
func (c *Client) Close() error {
	if c.c == nil {
		return nil
	}
	return c.c.Close()
}

// LocalAddr is the client's end of the control connection.
func (c *Client) LocalAddr() netip.AddrPort { return addrPortOf(c.c.LocalAddr()) }

// RemoteAddr is the address the control connection was made to.
func (c *Client) RemoteAddr() netip.AddrPort { return addrPortOf(c.c.RemoteAddr()) }

func (c *Client) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 5 * time.Second
	}
	return c.Timeout
}

func (c *Client) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(c.timeout())
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

func (c *Client) read(ctx context.Context) (ftp.Reply, error) {
	c.c.SetReadDeadline(c.deadline(ctx))
	stop := context.AfterFunc(ctx, func() { c.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	r, err := c.rr.ReadReply()
	if err != nil && ctx.Err() != nil {
		return r, ctx.Err()
	}
	return r, err
}

// Cmd sends one command line and returns the server's first reply to it.
func (c *Client) Cmd(ctx context.Context, line string) (ftp.Reply, error) {
	c.c.SetWriteDeadline(c.deadline(ctx))
	if _, err := io.WriteString(c.c, line+"\r\n"); err != nil {
		return ftp.Reply{}, fmt.Errorf("sending %s: %w", maskPass(line), err)
	}
	r, err := c.read(ctx)
	if err != nil {
		return r, fmt.Errorf("reading the reply to %s: %w", maskPass(line), err)
	}
	return r, nil
}

// Expect is Cmd that fails with a *ReplyError unless the reply has code.
func (c *Client) Expect(ctx context.Context, line string, code int) (ftp.Reply, error) {
	r, err := c.Cmd(ctx, line)
	if err != nil {
		return r, err
	}
	if r.Code != code {
		return r, &ReplyError{Command: maskPass(line), Reply: r}
	}
	return r, nil
}

func maskPass(line string) string {
	if cmd, err := ftp.ParseCommand([]byte(line)); err == nil {
		return cmd.String()
	}
	return line
}

// Login logs in and switches to binary mode.
func (c *Client) Login(ctx context.Context, user, pass string) error {
	if _, err := c.Expect(ctx, "USER "+user, 331); err != nil {
		return err
	}
	if _, err := c.Expect(ctx, "PASS "+pass, 230); err != nil {
		return err
	}
	_, err := c.Expect(ctx, "TYPE I", 200)
	return err
}

// Passive sends PASV (extended false) or EPSV (extended true) and returns
// the data endpoint the reply announces (for EPSV: the control connection's
// remote address with the announced port) and the reply.
func (c *Client) Passive(ctx context.Context, extended bool) (netip.AddrPort, ftp.Reply, error) {
	if !extended {
		r, err := c.Expect(ctx, "PASV", 227)
		if err != nil {
			return netip.AddrPort{}, r, err
		}
		ap, _, _, err := ftp.Find227(r.Text())
		return ap, r, err
	}
	r, err := c.Expect(ctx, "EPSV", 229)
	if err != nil {
		return netip.AddrPort{}, r, err
	}
	port, _, _, err := ftp.Find229(r.Text())
	return netip.AddrPortFrom(c.RemoteAddr().Addr(), port), r, err
}

// Active announces ln's address with PORT (extended false) or EPRT
// (extended true). It returns the command line it sent and the reply; a
// reply other than 200 is a *ReplyError.
func (c *Client) Active(ctx context.Context, extended bool, ln net.Listener) (string, ftp.Reply, error) {
	ap := addrPortOf(ln.Addr())
	var line string
	if extended {
		line = "EPRT " + ftp.FormatEPRT(ap)
	} else {
		hp, err := ftp.FormatPORT(ap)
		if err != nil {
			return "", ftp.Reply{}, fmt.Errorf("announcing %v: %w", ap, err)
		}
		line = "PORT " + hp
	}
	r, err := c.Expect(ctx, line, 200)
	return line, r, err
}

// RetrPassive connects to the announced endpoint ap and downloads name.
func (c *Client) RetrPassive(ctx context.Context, name string, ap netip.AddrPort) (Download, error) {
	dial := c.Dial
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	dctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	start := time.Now()
	dc, err := dial(dctx, "tcp", ap.String())
	if err != nil {
		return Download{}, fmt.Errorf("opening the data connection to %v: %w", ap, err)
	}
	defer dc.Close()
	return c.retr(ctx, name, start, func() (net.Conn, error) { return dc, nil })
}

// RetrActive downloads name over the connection the server makes to ln.
func (c *Client) RetrActive(ctx context.Context, name string, ln net.Listener) (Download, error) {
	return c.retr(ctx, name, time.Now(), func() (net.Conn, error) {
		if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
			d.SetDeadline(c.deadline(ctx))
		}
		dc, err := ln.Accept()
		if err != nil {
			return nil, fmt.Errorf("waiting for the server's data connection: %w", err)
		}
		return dc, nil
	})
}

// retr sends RETR, takes the data connection from data once the server
// accepted the command, reads it to the end and reads the final reply.
func (c *Client) retr(ctx context.Context, name string, start time.Time, data func() (net.Conn, error)) (Download, error) {
	r, err := c.Cmd(ctx, "RETR "+name)
	if err != nil {
		return Download{}, err
	}
	if r.Code != 150 && r.Code != 125 {
		return Download{}, &ReplyError{Command: "RETR " + name, Reply: r}
	}
	dc, err := data()
	if err != nil {
		return Download{}, err
	}
	if c.DataTLS != nil {
		dc = tls.Client(dc, c.DataTLS) // the client is the TLS client either way
	}
	defer dc.Close()
	dc.SetReadDeadline(time.Now().Add(30 * time.Second))
	stop := context.AfterFunc(ctx, func() { dc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	h := sha256.New()
	n, err := io.Copy(h, dc)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return Download{}, fmt.Errorf("reading %s after %d bytes: %w", name, n, err)
	}
	d := Download{Bytes: n, Duration: time.Since(start)}
	copy(d.SHA256[:], h.Sum(nil))
	d.Final, err = c.read(ctx)
	if err != nil {
		return d, fmt.Errorf("reading the reply after RETR %s: %w", name, err)
	}
	if d.Final.Code != 226 && d.Final.Code != 250 {
		return d, &ReplyError{Command: "RETR " + name, Reply: d.Final}
	}
	return d, nil
}

// isTimeout reports whether err is a timeout (a dropped connection attempt).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}
