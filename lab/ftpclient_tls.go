package lab

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// StartTLS makes the control connection FTPS (explicit, RFC 4217): AUTH
// TLS, the handshake, PBSZ 0 and PROT P. The data connections are TLS from
// then on, with DataTLS, which is cfg: its ClientSessionCache lets them
// resume the control connection's TLS session, as FTPS servers (and
// ftpalg) demand.
func (c *Client) StartTLS(ctx context.Context, cfg *tls.Config) (tls.ConnectionState, error) {
	if _, err := c.Expect(ctx, "AUTH TLS", 234); err != nil {
		return tls.ConnectionState{}, err
	}
	tc := tls.Client(c.c, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return tls.ConnectionState{}, fmt.Errorf("TLS handshake on the control connection: %w", err)
	}
	c.c = tc
	c.rr = ftp.NewReplyReader(tc, ftp.DefaultMaxLine, ftp.DefaultMaxReplyLines)
	c.DataTLS = cfg
	if _, err := c.Expect(ctx, "PBSZ 0", 200); err != nil {
		return tls.ConnectionState{}, err
	}
	if _, err := c.Expect(ctx, "PROT P", 200); err != nil {
		return tls.ConnectionState{}, err
	}
	return tc.ConnectionState(), nil
}
