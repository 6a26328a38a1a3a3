package lab

// One download through the gateway, narrated: the announcement, ftpalg's
// rewrite, the pinhole while it is open, the data and the pinhole closing.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// transferStep runs and narrates one download.
func (r *runner) transferStep(ctx context.Context, x transfer) {
	if ctx.Err() != nil {
		return
	}
	title := x.title()
	r.step++
	r.n.Step(r.step, totalSteps, title)
	ok, detail := r.transfer(ctx, x)
	if ctx.Err() != nil {
		r.n.Text("(interrupted)")
		return
	}
	r.record(title, ok, detail)
}

func (r *runner) transfer(ctx context.Context, x transfer) (bool, string) {
	n, t := r.n, r.t
	expectFail := x.mode == ""
	c := &Client{Dial: t.client.DialContext, Timeout: 5 * time.Second}
	target := r.controlTarget(x)
	if _, err := c.Connect(ctx, t.client.DialContext, target.String()); err != nil {
		return false, err.Error()
	}
	defer c.Close()
	if x.tls {
		if err := r.startTLS(ctx, c, x.v6); err != nil {
			return false, err.Error()
		}
	}
	if err := c.Login(ctx, labUser, labPass); err != nil {
		return false, err.Error()
	}
	via := "through the firewall's port-21 rule"
	switch x.mode {
	case "gateway":
		via = "intercepted by ftpalg on the gateway"
	case "reverse":
		via = "ftpalg's listener on the gateway's public address"
	}
	n.Field("control", fmt.Sprintf("%s -> %s, %s: logged in", c.LocalAddr().Addr(), target, via))

	mark := 0
	if r.alg != nil {
		mark = r.alg.log.mark()
	}
	nm := r.noteMark()
	var ap netip.AddrPort
	var ln net.Listener
	if x.passive() {
		a, rep, err := c.Passive(ctx, x.extended())
		if err != nil {
			return false, err.Error()
		}
		ap = a
		sent, got := r.lastNote(nm, true), replyLine(rep)
		n.Field("server sent", sent)
		r.changed("client got", sent, got)
	} else {
		var err error
		ln, err = t.client.Listen("tcp", netip.AddrPortFrom(t.hostAddr(t.client, x.v6), 0).String())
		if err != nil {
			return false, fmt.Sprintf("listening for the data connection: %v", err)
		}
		defer ln.Close()
		line, rep, err := c.Active(ctx, x.extended(), ln)
		n.Field("client sent", line)
		if rep.Code != 0 {
			r.changed("server got", line, r.lastNote(nm, false))
		}
		if err != nil {
			var re *ReplyError
			if expectFail && errors.As(err, &re) && re.Reply.Code >= 500 {
				n.Field("server said", replyLine(re.Reply))
				n.Text(
					fmt.Sprintf("%sThe server sees the control connection come from %s (MASQUERADE) and", indent, netlab.OutsideGW4),
					indent+"will not connect to the private address the client announced. Even if it",
					indent+"tried, the firewall would drop the connection: nothing expects it.",
				)
				return true, "the download failed, as it must without ftpalg: NAT broke the announcement"
			}
			return false, err.Error()
		}
	}

	var id string
	if r.alg != nil {
		var ok bool
		var detail string
		if id, ok, detail = r.showPinhole(ctx, mark); !ok {
			return false, detail
		}
	}

	var d Download
	var err error
	if x.passive() {
		dctx, cancel := context.WithTimeout(ctx, c.Timeout)
		if expectFail {
			// The data connection is dropped: do not wait long for it.
			dctx, cancel = context.WithTimeout(ctx, dropWait)
		}
		d, err = c.RetrPassive(dctx, labFile, ap)
		cancel()
	} else {
		d, err = c.RetrActive(ctx, labFile, ln)
	}
	if expectFail {
		switch {
		case err == nil:
			n.Field("transfer", r.transferLine(d))
			return false, "the download worked without ftpalg: the firewall is not strict"
		case isTimeout(err):
			n.Field("data", fmt.Sprintf("%s -> %s: no answer within %v: the firewall dropped it",
				c.LocalAddr().Addr(), ap, dropWait))
			return true, "the download failed, as it must without ftpalg: nothing opened the announced port"
		}
		return false, "the download failed, but not because of the firewall: " + err.Error()
	}
	if err != nil {
		return false, err.Error()
	}
	n.Field("transfer", r.transferLine(d))
	if d.Bytes != int64(len(r.file)) || d.SHA256 != r.hash {
		return false, fmt.Sprintf("the download is not the server's file (%d bytes, sha256 %x)", d.Bytes, d.SHA256[:8])
	}
	if ok, detail := r.showClose(ctx, mark, id); !ok {
		return false, detail
	}
	if x.tls {
		r.showRelay(ctx, mark, id)
	} else {
		r.showCount(ctx, mark, id)
	}
	_, _ = c.Cmd(ctx, "QUIT")
	return true, fmt.Sprintf("%s arrived intact through a pinhole that is closed again", formatBytes(float64(d.Bytes)))
}

// changed prints what the other side received, highlighted when it
// differs from what was sent.
func (r *runner) changed(label, sent, got string) {
	if got == sent {
		r.n.Field(label, got)
		return
	}
	r.n.Highlight(label, got)
}

// indent lines up continuation text with the value column of Field.
var indent = strings.Repeat(" ", 3+labelWidth+1-2)

func (r *runner) transferLine(d Download) string {
	check := "sha256 matches the server's file"
	if d.SHA256 != r.hash {
		check = "sha256 DIFFERS from the server's file"
	}
	return fmt.Sprintf("RETR %s: %s in %s (%s), %s", strings.TrimPrefix(labFile, "/"),
		formatBytes(float64(d.Bytes)), formatDuration(d.Duration), formatRate(d.Bytes, d.Duration), check)
}

// showPinhole waits for ftpalg's "pinhole open" line after mark, narrates
// the announcement, the rewrite and the pinhole, and shows the pinhole's
// rules as the firewall lists them. It returns the pinhole's ID.
func (r *runner) showPinhole(ctx context.Context, mark int) (id string, ok bool, detail string) {
	ev, err := r.alg.log.wait(ctx, mark, 3*time.Second, func(e event) bool {
		return e.Msg == "pinhole open" || e.Msg == "refused"
	})
	if err != nil {
		return "", false, fmt.Sprintf("ftpalg logged no pinhole: %v", err)
	}
	if ev.Msg == "refused" {
		return "", false, fmt.Sprintf("ftpalg refused %s: %s", ev.str("what"), ev.str("why"))
	}
	id = ev.pinholeID()
	kind, announced, rewritten := ev.str("kind"), ev.str("announced"), ev.str("rewritten")
	if announced == rewritten {
		r.n.Field("ftpalg", fmt.Sprintf("%s announces %s: kept as it is, the address is right for the other side", kind, announced))
	} else {
		r.n.Highlight("ftpalg", fmt.Sprintf("%s announces %s: rewritten to %s", kind, announced, rewritten))
	}
	r.n.Field("pinhole", ev.str("pinhole"))
	rules, err := r.pinholeRules(ctx, id)
	if err != nil {
		return id, false, err.Error()
	}
	prog := "iptables"
	if len(rules) > 0 {
		prog = xtables(rules[0].v6)
	}
	var lines []string
	for _, rl := range rules {
		lines = append(lines, rl.short())
	}
	r.n.Lines("firewall", prog+" -S, while the pinhole is open:", lines)
	if len(rules) == 0 {
		return id, false, "the firewall shows no rule for pinhole " + id
	}
	return id, true, ""
}

// pinholeRules returns the firewall rules of pinhole id.
func (r *runner) pinholeRules(ctx context.Context, id string) ([]ruleLine, error) {
	all, err := r.t.ftpalgRules(ctx)
	if err != nil {
		return nil, err
	}
	var out []ruleLine
	for _, rl := range all {
		if strings.Contains(rl.rule, ":"+id+`"`) {
			out = append(out, rl)
		}
	}
	return out, nil
}

// closeReasons explains ftpalg's reasons for closing a pinhole.
var closeReasons = map[string]string{
	"used":        "its data connection appeared in conntrack",
	"ttl":         "its time ran out",
	"failed":      "the transfer failed",
	"session end": "the control session ended",
	"replaced":    "a new announcement replaced it",
}

// showClose waits for pinhole id to close and checks that its rules are
// gone.
func (r *runner) showClose(ctx context.Context, mark int, id string) (bool, string) {
	ev, err := r.alg.log.wait(ctx, mark, 5*time.Second, func(e event) bool {
		return e.Msg == "pinhole closed" && e.pinholeID() == id
	})
	if err != nil {
		return false, fmt.Sprintf("pinhole %s did not close: %v", id, err)
	}
	rules, err := r.pinholeRules(ctx, id)
	if err != nil {
		return false, err.Error()
	}
	if len(rules) > 0 {
		return false, fmt.Sprintf("pinhole %s closed, but %d of its rules are still in the firewall", id, len(rules))
	}
	reason := ev.str("reason")
	why := closeReasons[reason]
	if why == "" {
		why = reason
	}
	r.n.Field("closed", fmt.Sprintf("pinhole %s closed (%s: %s); none of its rules is left", id, reason, why))
	return true, ""
}

// showCount narrates ftpalg's "transfer" line for pinhole id: the kernel's
// byte and packet counters of the data connection. The line comes when
// conntrack forgets the finished connection; dumping the table makes the
// kernel reap it without waiting for its garbage collector. A line that
// does not come within a few seconds is mentioned, not failed.
func (r *runner) showCount(ctx context.Context, mark int, id string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev, err := r.alg.log.wait(ctx, mark, 200*time.Millisecond, func(e event) bool {
			return e.Msg == "transfer" && e.pinholeID() == id
		})
		if err == nil {
			bytes, packets := ev.num("bytes_orig"), ev.num("packets_orig")
			if rb := ev.num("bytes_reply"); rb > bytes {
				bytes, packets = rb, ev.num("packets_reply")
			}
			r.n.Field("conntrack", fmt.Sprintf("%s -> %s, reply %s -> %s",
				ev.str("flow_src"), ev.str("flow_dst"), ev.str("flow_reply_src"), ev.str("flow_reply_dst")))
			r.n.Text(fmt.Sprintf("%s%s in %.0f packets (IP, the data's direction), forwarded by the kernel;",
				indent, formatBytes(bytes), packets), indent+"none of it passed through ftpalg.")
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			r.n.Field("conntrack", "(ftpalg had not yet reported the end of the data connection)")
			return
		}
		if _, err := r.ct.Dump(nil); err != nil {
			r.log.Debug("dumping conntrack", "err", err)
		}
	}
}
