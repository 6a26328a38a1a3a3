package ftps

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
)

// leg is a TLS data connection whose CloseWrite ends the stream properly:
// close_notify, then a TCP half-close (tls.Conn.CloseWrite does only the
// former).
type leg struct {
	*tls.Conn
	raw net.Conn
}

// CloseWrite sends close_notify and half-closes the TCP connection.
func (l leg) CloseWrite() error {
	err := l.Conn.CloseWrite()
	if cw, ok := l.raw.(interface{ CloseWrite() error }); ok {
		err = errors.Join(err, cw.CloseWrite())
	}
	return err
}

// Raw returns the TCP connection beneath, for a reset on abort.
func (l leg) Raw() net.Conn { return l.raw }

// IsTLSRecord reports whether b starts like a TLS record (a ClientHello
// sent where an FTP command was expected: an FTPS client on a plain port).
func IsTLSRecord(b []byte) bool {
	return len(b) >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

// versionName is for logs.
func versionName(v uint16) string {
	return strings.TrimPrefix(tls.VersionName(v), "TLS ")
}

// Describe summarises a TLS connection made by this package for a log
// line: version and whether the session was resumed.
func Describe(c net.Conn) string {
	l, ok := c.(leg)
	if !ok {
		return "plain"
	}
	cs := l.ConnectionState()
	s := "TLS " + versionName(cs.Version)
	if cs.DidResume {
		s += " resumed"
	}
	return s
}
