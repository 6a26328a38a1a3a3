package lab

// Explicit FTPS (RFC 4217) for the lab's server, when Server.TLS is set:
// the FTPS server of act 4's "without ftpalg" step, whose encrypted PASV
// reply no firewall can read. Kept apart from ftpserver.go, which stays a
// plain FTP server when TLS is nil.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/alg/ftps"
)

// selfSignedTLS returns a server configuration with a certificate for
// names (alg/ftps.SelfSigned) and a pool that trusts it.
func selfSignedTLS(names ...string) (*tls.Config, *x509.CertPool, error) {
	caPEM, certPEM, keyPEM, err := ftps.SelfSigned(names...)
	if err != nil {
		return nil, nil, fmt.Errorf("making a certificate for %v: %w", names, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("loading the certificate for %v: %w", names, err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, roots, nil
}

// handleTLS runs AUTH, PBSZ and PROT when the server speaks FTPS. It
// reports whether it handled cmd; an error means the control connection
// failed.
func (ss *serverSession) handleTLS(ctx context.Context, cmd ftp.Command) (bool, error) {
	cfg := ss.s.TLS
	if cfg == nil {
		return false, nil
	}
	_, secure := ss.c.(*tls.Conn)
	switch cmd.Verb {
	case "AUTH":
		switch {
		case secure:
			return true, ss.reply(503, "Already using TLS.")
		case !strings.EqualFold(cmd.Arg, "TLS") && !strings.EqualFold(cmd.Arg, "TLS-C"):
			return true, ss.reply(504, "Unknown AUTH type.")
		case ss.lr.Buffered() > 0:
			// Bytes after AUTH that came before our 234 are not part of
			// the handshake we are about to start.
			return true, fmt.Errorf("starting TLS: %d bytes pipelined after AUTH", ss.lr.Buffered())
		}
		if err := ss.reply(234, "Proceed with negotiation."); err != nil {
			return true, err
		}
		tc := tls.Server(ss.c, cfg)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			return true, fmt.Errorf("TLS handshake on the control connection: %w", err)
		}
		ss.c = tc
		ss.lr = ftp.NewLineReader(tc, ftp.DefaultMaxLine)
		return true, nil
	case "PBSZ":
		if !secure {
			return true, ss.reply(503, "PBSZ needs a secure control connection (AUTH TLS).")
		}
		return true, ss.reply(200, "PBSZ=0")
	case "PROT":
		switch {
		case !secure:
			return true, ss.reply(503, "PROT needs a secure control connection (AUTH TLS).")
		case strings.EqualFold(cmd.Arg, "P"):
			ss.prot = true
			return true, ss.reply(200, "PROT now Private.")
		case strings.EqualFold(cmd.Arg, "C"):
			ss.prot = false
			return true, ss.reply(200, "PROT now Clear.")
		}
		return true, ss.reply(536, "PROT level not supported.")
	}
	return false, nil
}

// protect makes data connection dc TLS (the server's side, as RFC 4217
// wants in both modes). On failure it closes dc and returns nil and the
// text of the 425 reply.
func (ss *serverSession) protect(ctx context.Context, dc net.Conn) (net.Conn, string) {
	tc := tls.Server(dc, ss.s.TLS)
	hctx, cancel := context.WithTimeout(ctx, ss.s.dataTimeout())
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		dc.Close()
		ss.s.log().Info("data TLS handshake failed", "peer", ss.peer.String(), "err", err)
		return nil, "TLS handshake on the data connection failed."
	}
	return tc, ""
}
