package lab

// The story the lab tells: the steps in order, and starting and stopping
// ftpalg between them.

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// transfer is one download through the gateway.
type transfer struct {
	mode string // "" (no ftpalg), "gateway" or "reverse"
	verb string // PASV, EPSV, PORT or EPRT
	v6   bool
	tls  bool // FTPS (act 4)
}

func (x transfer) passive() bool  { return x.verb == "PASV" || x.verb == "EPSV" }
func (x transfer) extended() bool { return x.verb == "EPSV" || x.verb == "EPRT" }

func (x transfer) title() string {
	how := "active"
	if x.passive() {
		how = "passive"
	}
	fam := "IPv4"
	if x.v6 {
		fam = "IPv6"
	}
	mode := "without ftpalg"
	if x.mode != "" {
		mode = "ftpalg " + x.mode + " mode"
	}
	if x.tls {
		mode = "FTPS, " + mode
	}
	return fmt.Sprintf("%s, %s (%s), %s", mode, how, x.verb, fam)
}

// story runs the steps in order; it stops early only when ctx is done.
func (r *runner) story(ctx context.Context) {
	n, t := r.n, r.t

	n.Act("Act 1: without ftpalg")
	n.Para(
		"A common compromise: the firewall lets FTP control connections through (one rule:",
		"new TCP connections to port 21) and nothing else. The data connection is a second TCP",
		"connection, to an endpoint announced inside the control channel: nothing told the",
		"firewall to expect it. The added rule:",
	)
	n.Text("    " + n.paint(sgrDim, "-A "+strings.Join(quoteArgs(controlRule), " ")))
	if err := t.setControlRule(ctx, true); err != nil {
		r.fail(ctx, "opening the FTP control port", err)
		return
	}
	r.transferStep(ctx, transfer{verb: "PASV"})
	r.transferStep(ctx, transfer{verb: "PORT"})
	if err := t.setControlRule(ctx, false); err != nil {
		r.fail(ctx, "closing the FTP control port", err)
		return
	}
	if ctx.Err() != nil {
		return
	}

	n.Act("Act 2: ftpalg in gateway mode")
	n.Para(
		"The control-port rule is gone: the firewall is strict again. ftpalg starts on the gateway.",
		fmt.Sprintf("It intercepts port 21 arriving on %q (REDIRECT to its listener), proxies the control", netlab.IfInside),
		"channel, and for every announcement opens exactly one pinhole before it forwards the",
		"line. The data itself never passes through ftpalg: the kernel forwards it.",
	)
	// The lab narrates pinholes as iptables rules: it picks that backend.
	gwArgs := []string{"--mode", "gateway", "--backend", "iptables", "--intercept", netlab.IfInside, "--listen", "[::]:2121",
		"--pinhole-ttl", "10s", "--data-ports", dataPool, "--drain", "1s"}
	if !r.startALG(ctx, gwArgs) {
		return
	}
	r.transferStep(ctx, transfer{mode: "gateway", verb: "PASV"})
	r.transferStep(ctx, transfer{mode: "gateway", verb: "EPSV", v6: true})
	r.transferStep(ctx, transfer{mode: "gateway", verb: "PORT"})
	r.transferStep(ctx, transfer{mode: "gateway", verb: "EPRT", v6: true})
	r.stopStep(ctx, "gateway")
	if ctx.Err() != nil {
		return
	}

	n.Act("Act 3: ftpalg in reverse mode")
	n.Para(
		"Now the other way round: the server sits on the private network, and the gateway",
		"publishes it on its public address. The cables are swapped: the server is now inside",
		fmt.Sprintf("(%s), the client outside (%s); the firewall is unchanged. The server announces", netlab.InsideHost4, netlab.OutsideHost4),
		"its private address; ftpalg rewrites it to the public address and a port of its own,",
		"and the pinhole DNATs that port to the server.",
	)
	if err := t.wire(layoutReverse); err != nil {
		r.fail(ctx, "swapping the cables", err)
		return
	}
	revArgs := []string{"--mode", "reverse", "--backend", "iptables",
		"--listen", netip.AddrPortFrom(netlab.OutsideGW4, 21).String(), "--listen", netip.AddrPortFrom(netlab.OutsideGW6, 21).String(),
		"--upstream", netip.AddrPortFrom(netlab.InsideHost4, 21).String(), "--upstream", netip.AddrPortFrom(netlab.InsideHost6, 21).String(),
		"--pinhole-ttl", "10s", "--data-ports", dataPool, "--drain", "1s"}
	if !r.startALG(ctx, revArgs) {
		return
	}
	r.transferStep(ctx, transfer{mode: "reverse", verb: "PASV"})
	r.transferStep(ctx, transfer{mode: "reverse", verb: "EPSV", v6: true})
	r.transferStep(ctx, transfer{mode: "reverse", verb: "PORT"})
	r.stopStep(ctx, "reverse")
	if ctx.Err() != nil {
		return
	}
	r.ftpsAct(ctx, revArgs)
}

// quoteArgs quotes the arguments that contain spaces, as iptables -S does.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " :") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

// fail records a step that could not even start.
func (r *runner) fail(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	r.step++
	r.n.Step(r.step, totalSteps, what)
	r.n.Result(false, err.Error())
	r.results = append(r.results, StepResult{Title: what, Passed: false, Detail: err.Error()})
}

// record prints and records a step's verdict.
func (r *runner) record(title string, ok bool, detail string) {
	r.n.Result(ok, detail)
	r.results = append(r.results, StepResult{Title: title, Passed: ok, Detail: detail})
}

// startALG starts ftpalg in the gateway and shows its own rules.
func (r *runner) startALG(ctx context.Context, args []string) bool {
	r.n.Text("", r.n.paint(sgrBold, "$ ftpalg run "+strings.Join(args, " ")))
	a, err := startALG(ctx, r.t.gw, r.cfg.Ftpalg, args...)
	if err != nil {
		r.fail(ctx, "starting ftpalg", err)
		return false
	}
	r.alg = a
	rules, err := r.t.ftpalgRules(ctx)
	if err != nil {
		r.fail(ctx, "listing ftpalg's rules", err)
		return false
	}
	var own []string
	for _, l := range rules {
		if !l.v6 && (strings.Contains(l.rule, `"ftpalg:intercept"`) || strings.Contains(l.rule, `"ftpalg:listener"`)) {
			own = append(own, l.String())
		}
	}
	if len(own) > 0 {
		r.n.Text("Its standing rules (besides the jumps into its chains; the same for ip6tables):")
		for _, l := range own {
			r.n.Text("    " + r.n.paint(sgrDim, l))
		}
	} else {
		r.n.Text("It installed its chains (FTPALG-*), still empty: no pinhole is open.")
	}
	return true
}

// stopStep stops ftpalg and checks that it removed every rule it added.
func (r *runner) stopStep(ctx context.Context, mode string) {
	if ctx.Err() != nil {
		return
	}
	title := fmt.Sprintf("ftpalg (%s mode) stops and removes its rules", mode)
	r.step++
	r.n.Step(r.step, totalSteps, title)
	a := r.alg
	r.alg = nil
	if a == nil {
		r.record(title, false, "ftpalg was not running")
		return
	}
	r.n.Field("signal", fmt.Sprintf("SIGTERM to ftpalg (pid %d)", a.cmd.Process.Pid))
	if err := a.stop(); err != nil {
		r.record(title, false, err.Error())
		return
	}
	left, err := r.t.ftpalgRules(ctx)
	if err != nil {
		r.record(title, false, err.Error())
		return
	}
	if len(left) > 0 {
		var lines []string
		for _, l := range left {
			lines = append(lines, l.String())
		}
		r.n.Lines("left", "rules of ftpalg still in the firewall:", lines)
		r.record(title, false, fmt.Sprintf("%d ftpalg rules left behind", len(left)))
		return
	}
	r.n.Field("firewall", "iptables -S and ip6tables -S show no FTPALG chain and no ftpalg rule")
	r.record(title, true, "ftpalg exited and the firewall is as it was before it started")
}

// controlTarget is where the client dials the control connection.
func (r *runner) controlTarget(x transfer) netip.AddrPort {
	switch {
	case x.mode == "reverse" && x.v6:
		return netip.AddrPortFrom(netlab.OutsideGW6, 21)
	case x.mode == "reverse":
		return netip.AddrPortFrom(netlab.OutsideGW4, 21)
	case x.v6:
		return netip.AddrPortFrom(netlab.OutsideHost6, 21)
	}
	return netip.AddrPortFrom(netlab.OutsideHost4, 21)
}
