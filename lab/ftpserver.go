package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// Server is the lab's FTP server: enough of RFC 959 and RFC 2428 to log in
// and download files in every data-connection mode (PASV, EPSV, PORT, EPRT),
// over IPv4 and IPv6. It serves Files from memory, read-only.
//
// Like vsftpd with its defaults, it checks that both channels come from one
// peer: a PORT or EPRT naming another address than the control connection's
// peer is refused, and a passive data connection from another address is
// closed. That is what makes NAT without an ALG fail in active mode, and why
// ftpalg SNATs data connections to the address of the control connection.
//
// The zero value is not useful: set Files, User and Pass. Dial and Listen
// let the caller create data sockets in the right network namespace.
type Server struct {
	// Files maps absolute paths ("/lab.bin") to their content.
	Files map[string][]byte
	// User and Pass are the only credentials accepted.
	User, Pass string
	// Dial opens active-mode data connections. If nil, a net.Dialer is used.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Listen opens passive-mode data listeners. If nil, net.Listen is used.
	Listen func(network, addr string) (net.Listener, error)
	// DataTimeout bounds the wait for a data connection (passive) or its
	// establishment (active). If zero, 5s.
	DataTimeout time.Duration
	// OnNote, if set, is called with every data-channel line the server
	// receives (PORT, EPRT) or sends (227, 229), as it is on the wire.
	OnNote func(Note)
	// Log receives one line per session and per refusal. If nil, nothing is
	// logged.
	Log *slog.Logger
	// TLS, if set, makes the server speak explicit FTPS (RFC 4217: AUTH
	// TLS, PBSZ, PROT; ftpserver_tls.go). If nil, it knows nothing of TLS.
	TLS *tls.Config
}

// Note is one data-channel line as the server saw it.
type Note struct {
	// Peer is the client address of the control connection.
	Peer netip.AddrPort
	// Sent is true for a reply the server sent, false for a command it
	// received.
	Sent bool
	// Line is the line without its terminator.
	Line string
}

// Serve accepts control connections on ln until ctx is done or ln fails.
// It closes ln and, when ctx is done, every session. It returns nil after
// ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting FTP control connections: %w", err)
		}
		wg.Go(func() { s.serveConn(ctx, c) })
	}
}

// Start serves ln in the background (Serve) and returns a function that
// stops it: it ends every session, waits for Serve to return and returns
// Serve's error.
func (s *Server) Start(ln net.Listener) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	return func() error {
		cancel()
		return <-done
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) dataTimeout() time.Duration {
	if s.DataTimeout <= 0 {
		return 5 * time.Second
	}
	return s.DataTimeout
}

// serverSession is one control connection.
type serverSession struct {
	s      *Server
	c      net.Conn
	peer   netip.AddrPort
	local  netip.AddrPort
	lr     *ftp.LineReader
	user   string
	authed bool
	prot   bool           // PROT P: data connections are TLS
	pasv   net.Listener   // pending passive listener
	active netip.AddrPort // pending active endpoint
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	ss := &serverSession{s: s, c: c, peer: addrPortOf(c.RemoteAddr()), local: addrPortOf(c.LocalAddr())}
	defer ss.resetData()
	log := s.log().With("peer", ss.peer.String())
	log.Debug("ftp session start")
	if err := ss.reply(220, "ftpalg lab FTP server ready."); err != nil {
		return
	}
	ss.lr = ftp.NewLineReader(c, ftp.DefaultMaxLine)
	for {
		line, err := ss.lr.ReadLine()
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				log.Debug("ftp session end", "err", err)
			}
			return
		}
		cmd, err := ftp.ParseCommand(line)
		if err != nil {
			if ss.reply(500, "Syntax error.") != nil {
				return
			}
			continue
		}
		quit, err := ss.handle(ctx, cmd)
		if err != nil {
			log.Debug("ftp session end", "err", err)
			return
		}
		if quit {
			return
		}
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

func (ss *serverSession) reply(code int, text string) error {
	b, err := ftp.FormatReply(code, text)
	if err != nil {
		return err
	}
	if code == 227 || code == 229 {
		ss.note(true, strings.TrimRight(string(b), "\r\n"))
	}
	ss.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := ss.c.Write(b); err != nil {
		return fmt.Errorf("sending reply %d: %w", code, err)
	}
	return nil
}

func (ss *serverSession) note(sent bool, line string) {
	if ss.s.OnNote != nil {
		ss.s.OnNote(Note{Peer: ss.peer, Sent: sent, Line: line})
	}
}

// resetData forgets the pending data-connection setup.
func (ss *serverSession) resetData() {
	if ss.pasv != nil {
		ss.pasv.Close()
		ss.pasv = nil
	}
	ss.active = netip.AddrPort{}
}

// handle runs one command. It reports whether the session is over; an
// error means the control connection failed.
func (ss *serverSession) handle(ctx context.Context, cmd ftp.Command) (quit bool, err error) {
	if done, err := ss.handleTLS(ctx, cmd); done {
		return false, err
	}
	switch cmd.Verb {
	case "QUIT":
		return true, ss.reply(221, "Goodbye.")
	case "USER":
		ss.user, ss.authed = cmd.Arg, false
		return false, ss.reply(331, "Please specify the password.")
	case "PASS":
		if ss.user == ss.s.User && cmd.Arg == ss.s.Pass {
			ss.authed = true
			return false, ss.reply(230, "Login successful.")
		}
		return false, ss.reply(530, "Login incorrect.")
	case "SYST":
		return false, ss.reply(215, "UNIX Type: L8")
	case "NOOP":
		return false, ss.reply(200, "NOOP ok.")
	case "FEAT":
		ss.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err := io.WriteString(ss.c, "211-Features:\r\n EPRT\r\n EPSV\r\n PASV\r\n SIZE\r\n211 End\r\n")
		return false, err
	}
	if !ss.authed {
		return false, ss.reply(530, "Please login with USER and PASS.")
	}
	switch cmd.Verb {
	case "TYPE":
		switch strings.ToUpper(cmd.Arg) {
		case "I", "L 8":
			return false, ss.reply(200, "Switching to Binary mode.")
		case "A", "A N":
			return false, ss.reply(200, "Switching to ASCII mode.")
		}
		return false, ss.reply(504, "Bad TYPE command.")
	case "PWD":
		return false, ss.reply(257, `"/" is the current directory`)
	case "CWD":
		if cmd.Arg == "/" {
			return false, ss.reply(250, "Directory successfully changed.")
		}
		return false, ss.reply(550, "Failed to change directory.")
	case "SIZE":
		if data, ok := ss.file(cmd.Arg); ok {
			return false, ss.reply(213, strconv.Itoa(len(data)))
		}
		return false, ss.reply(550, "Could not get file size.")
	case "PASV", "EPSV":
		return false, ss.passive(cmd)
	case "PORT", "EPRT":
		ss.note(false, cmd.String())
		return false, ss.port(cmd)
	case "RETR":
		return false, ss.retr(ctx, cmd.Arg)
	}
	return false, ss.reply(502, "Command not implemented.")
}

func (ss *serverSession) file(name string) ([]byte, bool) {
	data, ok := ss.s.Files[path.Clean("/"+name)]
	return data, ok
}

func (ss *serverSession) passive(cmd ftp.Command) error {
	ss.resetData()
	local := ss.local.Addr()
	if cmd.Verb == "PASV" && !local.Is4() {
		return ss.reply(522, "PASV is IPv4 only: use EPSV.")
	}
	if cmd.Verb == "EPSV" && cmd.Arg != "" {
		switch strings.ToUpper(cmd.Arg) {
		case "1", "2", "ALL":
		default:
			return ss.reply(522, "Network protocol not supported, use (1,2)")
		}
	}
	listen := ss.s.Listen
	if listen == nil {
		listen = net.Listen
	}
	ln, err := listen("tcp", netip.AddrPortFrom(local, 0).String())
	if err != nil {
		ss.s.log().Warn("opening passive listener", "err", err)
		return ss.reply(425, "Cannot open passive connection.")
	}
	ss.pasv = ln
	ap := addrPortOf(ln.Addr())
	if cmd.Verb == "EPSV" {
		return ss.reply(229, ftp.Format229(ap.Port()))
	}
	text, err := ftp.Format227(netip.AddrPortFrom(local, ap.Port()))
	if err != nil {
		return fmt.Errorf("formatting 227: %w", err)
	}
	return ss.reply(227, text)
}

func (ss *serverSession) port(cmd ftp.Command) error {
	ss.resetData()
	var ap netip.AddrPort
	var err error
	if cmd.Verb == "PORT" {
		ap, err = ftp.ParsePORT(cmd.Arg)
	} else {
		ap, err = ftp.ParseEPRT(cmd.Arg)
	}
	if err != nil {
		return ss.reply(501, "Illegal "+cmd.Verb+" command.")
	}
	if ap.Addr().Unmap() != ss.peer.Addr() || ap.Port() < 1024 {
		ss.s.log().Info("refused "+cmd.Verb, "peer", ss.peer.String(), "announced", ap.String())
		return ss.reply(500, "Illegal "+cmd.Verb+" command.")
	}
	ss.active = ap
	return ss.reply(200, cmd.Verb+" command successful. Consider using PASV.")
}

// dataConn establishes the data connection that PASV/EPSV or PORT/EPRT set
// up. On failure it returns nil and the text of the 425 reply.
func (ss *serverSession) dataConn(ctx context.Context) (net.Conn, string) {
	defer ss.resetData()
	timeout := ss.s.dataTimeout()
	switch {
	case ss.pasv != nil:
		ln := ss.pasv
		defer context.AfterFunc(ctx, func() { ln.Close() })()
		if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
			d.SetDeadline(time.Now().Add(timeout))
		}
		c, err := ln.Accept()
		if err != nil {
			return nil, "Failed to establish connection."
		}
		if from := addrPortOf(c.RemoteAddr()).Addr(); from != ss.peer.Addr() {
			c.Close()
			ss.s.log().Info("refused data connection", "peer", ss.peer.String(), "from", from.String())
			return nil, "Security: Bad IP connecting."
		}
		return c, ""
	case ss.active.IsValid():
		dial := ss.s.Dial
		if dial == nil {
			d := &net.Dialer{}
			dial = d.DialContext
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c, err := dial(dctx, "tcp", ss.active.String())
		if err != nil {
			ss.s.log().Info("active data connection failed", "to", ss.active.String(), "err", err)
			return nil, "Failed to establish connection."
		}
		return c, ""
	}
	return nil, "Use PORT or PASV first."
}

func (ss *serverSession) retr(ctx context.Context, name string) error {
	data, ok := ss.file(name)
	if !ok {
		ss.resetData()
		return ss.reply(550, "Failed to open file.")
	}
	dc, why := ss.dataConn(ctx)
	if dc == nil {
		return ss.reply(425, why)
	}
	defer dc.Close()
	if err := ss.reply(150, fmt.Sprintf("Opening BINARY mode data connection for %s (%d bytes).", path.Base(name), len(data))); err != nil {
		return err
	}
	if ss.prot { // the handshake follows the 150, as the client expects
		if dc, why = ss.protect(ctx, dc); dc == nil {
			return ss.reply(425, why)
		}
	}
	dc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := dc.Write(data); err != nil {
		return ss.reply(426, "Failure writing network stream.")
	}
	if err := dc.Close(); err != nil {
		return ss.reply(426, "Failure closing network stream.")
	}
	return ss.reply(226, "Transfer complete.")
}
