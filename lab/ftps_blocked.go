package lab

// Act 4's first step: FTPS without ftpalg. The cables as in act 1, the one
// rule for port 21, and a server that speaks FTPS itself: the PASV reply
// crosses the gateway encrypted, so nothing can open the data port.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// ftpsBlockedTitle is the title of the step.
var ftpsBlockedTitle = transfer{verb: "PASV", tls: true}.title()

// ftpsBlocked tells the step, from re-cabling for it to cabling for
// ftpalg in reverse mode again. It reports false when the act cannot go
// on.
func (r *runner) ftpsBlocked(ctx context.Context) bool {
	n, t := r.n, r.t
	n.Para(
		"First without ftpalg, as in act 1: the cables as they were then (client inside, server",
		"outside), the strict firewall with its one rule for port 21, and a server that speaks FTPS",
		"itself, with a certificate of its own.",
	)
	cfg, roots, err := selfSignedTLS(netlab.OutsideHost4.String())
	if err != nil {
		r.fail(ctx, "making the FTPS server's certificate", err)
		return false
	}
	if err := t.wire(layoutGateway); err != nil {
		r.fail(ctx, "swapping the cables back", err)
		return false
	}
	if err := r.restartServer(cfg); err != nil {
		r.fail(ctx, "starting the FTPS server", err)
		return false
	}
	if err := t.setControlRule(ctx, true); err != nil {
		r.fail(ctx, "opening the FTP control port", err)
		return false
	}
	if ctx.Err() != nil {
		return false
	}
	r.step++
	n.Step(r.step, totalSteps, ftpsBlockedTitle)
	ok, detail := r.ftpsBlockedTransfer(ctx, roots)
	if ctx.Err() != nil {
		n.Text("(interrupted)")
		return false
	}
	r.record(ftpsBlockedTitle, ok, detail)

	if err := t.setControlRule(ctx, false); err != nil {
		r.fail(ctx, "closing the FTP control port", err)
		return false
	}
	if err := r.restartServer(nil); err != nil {
		r.fail(ctx, "starting the plain FTP server again", err)
		return false
	}
	if err := t.wire(layoutReverse); err != nil {
		r.fail(ctx, "swapping the cables", err)
		return false
	}
	return ctx.Err() == nil
}

// restartServer stops the lab's FTP server and starts it again, speaking
// FTPS with cfg, or plain FTP if cfg is nil.
func (r *runner) restartServer(cfg *tls.Config) error {
	stop := r.srvStop
	r.srvStop = nil
	if err := stop(); err != nil {
		return fmt.Errorf("stopping the FTP server: %w", err)
	}
	return r.startServer(cfg)
}

// ftpsBlockedTransfer tries the download; it passes when the data
// connection times out.
func (r *runner) ftpsBlockedTransfer(ctx context.Context, roots *x509.CertPool) (bool, string) {
	n, t := r.n, r.t
	c := &Client{Dial: t.client.DialContext, Timeout: 5 * time.Second}
	target := netip.AddrPortFrom(netlab.OutsideHost4, 21)
	if _, err := c.Connect(ctx, t.client.DialContext, target.String()); err != nil {
		return false, err.Error()
	}
	defer c.Close()
	cs, err := c.StartTLS(ctx, &tls.Config{RootCAs: roots, ServerName: netlab.OutsideHost4.String(),
		ClientSessionCache: tls.NewLRUClientSessionCache(2)})
	if err != nil {
		return false, err.Error()
	}
	if err := c.Login(ctx, labUser, labPass); err != nil {
		return false, err.Error()
	}
	n.Field("tls", fmt.Sprintf("AUTH TLS, %s with the server's own certificate, PBSZ 0, PROT P: encrypted from here",
		tls.VersionName(cs.Version)))
	n.Field("control", fmt.Sprintf("%s -> %s, through the firewall's port-21 rule: logged in", c.LocalAddr().Addr(), target))
	nm := r.noteMark()
	ap, rep, err := c.Passive(ctx, false)
	if err != nil {
		return false, err.Error()
	}
	n.Field("server sent", r.lastNote(nm, true))
	n.Field("client got", replyLine(rep))
	n.Text(
		indent+"Between them, on both sides of the gateway, the reply was TLS records: the firewall",
		indent+"saw no 227 and no port. The kernel's FTP helper (nf_conntrack_ftp) could not help",
		indent+"either: it parses the same ciphertext, so it could expect no data connection.",
	)
	dctx, cancel := context.WithTimeout(ctx, dropWait)
	d, err := c.RetrPassive(dctx, labFile, ap)
	cancel()
	switch {
	case err == nil:
		n.Field("transfer", r.transferLine(d))
		return false, "the download worked without ftpalg: the firewall is not strict"
	case isTimeout(err):
		n.Field("data", fmt.Sprintf("%s -> %s: no answer within %v: the firewall dropped it",
			c.LocalAddr().Addr(), ap, dropWait))
		return true, "the download failed, as it must without ftpalg: nothing could read the encrypted announcement"
	}
	return false, "the download failed, but not because of the firewall: " + err.Error()
}
