package lab

// Act 4 of the story: FTPS. The control channel is encrypted, so no
// firewall (and no kernel ALG) can read the announcements (the first step,
// ftps_blocked.go, shows it); ftpalg holds
// the certificate, reads the control channel inside the TLS it terminates,
// opens one pinhole per transfer as before, and relays the data, whose TLS
// it terminates too.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/lab/netlab"
)

// ftpsSteps is the number of steps of act 4.
const ftpsSteps = 5

// ftpsAct tells act 4. revArgs are ftpalg's arguments in reverse mode.
func (r *runner) ftpsAct(ctx context.Context, revArgs []string) {
	n := r.n
	n.Act("Act 4: FTPS, ftpalg holds the TLS")
	n.Para(
		"The client now insists on FTPS (AUTH TLS, then PROT P): the control channel and the data",
		"are encrypted. A firewall cannot read an encrypted PASV.",
	)
	if !r.ftpsBlocked(ctx) {
		return
	}
	n.Para(
		"So operators open a wide port range for FTPS. ftpalg can do better, because it is a proxy.",
		"The cables are as in act 3 again, the server inside speaks plain FTP again. ftpalg presents its own",
		"certificate (generated for the gateway's public addresses just now), reads the control channel",
		"inside the TLS it terminates, and still opens exactly one endpoint per transfer. The data comes",
		"through ftpalg (the kernel cannot forward what must be decrypted): TLS toward the client,",
		"plain toward this server, which knows nothing of TLS (TLS offload).",
	)
	dir, err := os.MkdirTemp("", Prefix+"ftps-")
	if err != nil {
		r.fail(ctx, "writing ftpalg's certificate", err)
		return
	}
	defer os.RemoveAll(dir)
	caPEM, certPEM, keyPEM, err := ftps.SelfSigned(netlab.OutsideGW4.String(), netlab.OutsideGW6.String())
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err == nil {
		err = errors.Join(os.WriteFile(cert, certPEM, 0o600), os.WriteFile(key, keyPEM, 0o600))
	}
	if err != nil {
		r.fail(ctx, "writing ftpalg's certificate", err)
		return
	}
	r.tlsRoots = x509.NewCertPool()
	r.tlsRoots.AppendCertsFromPEM(caPEM)
	args := append(append([]string(nil), revArgs...), "--tls", "terminate", "--tls-cert", cert, "--tls-key", key,
		"--tls-require", "--tls-require-prot")
	if !r.startALG(ctx, args) {
		return
	}
	r.transferStep(ctx, transfer{mode: "reverse", verb: "EPSV", tls: true})
	r.transferStep(ctx, transfer{mode: "reverse", verb: "PORT", tls: true})
	r.notResumedStep(ctx)
	r.stopStep(ctx, "reverse, FTPS")
}

// clientTLS is the client's TLS configuration for one control session: it
// trusts ftpalg's certificate, and its session cache lets the data
// connections resume the control connection's TLS session.
func (r *runner) clientTLS(v6 bool) *tls.Config {
	name := netlab.OutsideGW4.String()
	if v6 {
		name = netlab.OutsideGW6.String()
	}
	return &tls.Config{RootCAs: r.tlsRoots, ServerName: name, ClientSessionCache: tls.NewLRUClientSessionCache(2)}
}

// startTLS secures a lab client's control connection and narrates it.
func (r *runner) startTLS(ctx context.Context, c *Client, v6 bool) error {
	cs, err := c.StartTLS(ctx, r.clientTLS(v6))
	if err != nil {
		return err
	}
	r.n.Field("tls", fmt.Sprintf("AUTH TLS, %s with ftpalg's certificate (%s), PBSZ 0, PROT P: encrypted from here",
		tls.VersionName(cs.Version), cs.PeerCertificates[0].Subject.CommonName))
	return nil
}

// showRelay narrates the relay's line for pinhole id: the data passed
// through ftpalg, TLS terminated on the client's leg.
func (r *runner) showRelay(ctx context.Context, mark int, id string) {
	ev, err := r.alg.log.wait(ctx, mark, 5*time.Second, func(e event) bool {
		return e.Msg == "relayed transfer ended" && e.pinholeID() == id
	})
	if err != nil {
		r.n.Field("relay", "(ftpalg had not yet reported the end of the relayed data connection)")
		return
	}
	r.n.Field("relay", fmt.Sprintf("%s -> ftpalg -> %s: %s relayed; the client's TLS (resuming its control",
		ev.str("peer"), ev.str("target"), formatBytes(max(ev.num("bytes_to_target"), ev.num("bytes_from_target")))))
	r.n.Text(indent + "session) ended in ftpalg, the server got plain FTP data.")
}

// notResumedStep: a client whose data connection does not resume its
// control session's TLS session (it could come from anyone) is refused.
func (r *runner) notResumedStep(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	title := "FTPS: a data connection that does not resume the control session is refused"
	r.step++
	r.n.Step(r.step, totalSteps, title)
	ok, detail := r.notResumed(ctx)
	if ctx.Err() != nil {
		r.n.Text("(interrupted)")
		return
	}
	r.record(title, ok, detail)
}

func (r *runner) notResumed(ctx context.Context) (bool, string) {
	t := r.t
	c := &Client{Dial: t.client.DialContext, Timeout: 5 * time.Second}
	target := netip.AddrPortFrom(netlab.OutsideGW4, 21)
	if _, err := c.Connect(ctx, t.client.DialContext, target.String()); err != nil {
		return false, err.Error()
	}
	defer c.Close()
	if err := r.startTLS(ctx, c, false); err != nil {
		return false, err.Error()
	}
	if err := c.Login(ctx, labUser, labPass); err != nil {
		return false, err.Error()
	}
	mark := r.alg.log.mark()
	ap, _, err := c.Passive(ctx, true)
	if err != nil {
		return false, err.Error()
	}
	// A fresh TLS configuration: no session to resume.
	c.DataTLS = &tls.Config{RootCAs: r.tlsRoots, ServerName: netlab.OutsideGW4.String()}
	r.n.Field("client", "opens the data connection with a new TLS session instead of resuming its control session's")
	_, err = c.RetrPassive(ctx, labFile, ap)
	if err == nil {
		return false, "the download worked: ftpalg relayed a data connection from an unproven peer"
	}
	final, rerr := c.read(ctx)
	if rerr != nil {
		return false, fmt.Sprintf("no final reply after the refused data connection: %v", rerr)
	}
	r.n.Field("client got", replyLine(final))
	ev, werr := r.alg.log.wait(ctx, mark, 3*time.Second, func(e event) bool {
		return e.Msg == "refused" && e.str("what") == "data TLS"
	})
	if werr != nil {
		return false, "ftpalg logged no refusal"
	}
	r.n.Field("ftpalg", "refused: "+ev.str("why"))
	if !strings.HasPrefix(replyLine(final), "425 ftpalg:") {
		return false, "the client did not get ftpalg's 425"
	}
	return true, "refused with a 425 on the control channel and one log line"
}
