package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// manpage writes ftpalg(8) in roff, generated from the option table, so
// that the man page and `ftpalg run -h` cannot disagree. `make deb` runs
// it; it is not listed among the commands.
func init() {
	commands["manpage"] = command{"", func(_ context.Context, args []string, stdout, _ io.Writer) error {
		if len(args) > 0 {
			return usagef("manpage takes no arguments")
		}
		writeManPage(stdout)
		return nil
	}}
}

func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func writeManPage(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p(`.TH FTPALG 8 "%s" "ftpalg %s" "System Administration"`, time.Now().UTC().Format("2006-01-02"), roff(version()))
	p(".SH NAME")
	p(`ftpalg \- FTP\-aware firewall helper (application layer gateway) for Linux`)
	p(".SH SYNOPSIS")
	p(`.B ftpalg run`)
	p(`[\fB\-\-config\fR \fIFILE\fR] [\fB\-\-check\-config\fR] [\fIflags\fR]`)
	p(".br")
	p(`.B ftpalg status\fR [\fB\-\-json\fR]`)
	p(".br")
	p(`.B ftpalg rules\fR \fBlist\fR|\fBflush\fR`)
	p(".br")
	p(`.B ftpalg lab\fR | \fBinspect\fR \fIFILE\fR | \fBversion\fR`)
	p(".SH DESCRIPTION")
	p(`ftpalg is a transparent proxy for the FTP control channel. It reads every command and reply,
rewrites the data\-channel announcements (PORT, EPRT, 227, 229) for NAT and opens exactly the
announced data endpoint in the kernel firewall for a short time. The data itself is forwarded
by the kernel.`)
	p(".PP")
	p(`In \fBgateway\fR mode a router intercepts the port\-21 traffic crossing it; in \fBreverse\fR
mode ftpalg publishes one FTP server (a fixed upstream), e.g. as a sidecar.`)
	p(".SH CONFIGURATION")
	p(`Settings come from the defaults, then the TOML file named by \fB\-\-config\fR, then the
flags. Every flag below is a key of the file with the same name (without the dashes), e.g.
\fBmax\-sessions\-per\-client = 8\fR, \fBpinhole\-ttl = "30s"\fR, \fBintercept = ["eth1"]\fR.
An unknown key or a bad value is an error naming the key and its line (exit status 2).`)
	p(".PP")
	p(`SIGHUP re\-reads the file and the flags. Settings marked \fIreloadable\fR apply to new
sessions at once; running sessions keep the policy they started with. A file that does not
parse, or that changes a setting that needs a restart, is refused with one log line and the
running configuration stays.`)
	p(".SH OPTIONS")
	p(".TP")
	p(`\fB\-\-config\fR \fIFILE\fR`)
	p(`TOML file of these settings; flags override it.`)
	p(".TP")
	p(`\fB\-\-check\-config\fR`)
	p(`Validate the configuration (file and flags) and exit.`)
	def := DefaultConfig()
	for _, g := range groups {
		p(".SS %s", roff(strings.ToUpper(g[:1])+g[1:]))
		for _, o := range options {
			if o.group != g {
				continue
			}
			p(".TP")
			v := o.bind(&def)
			arg := ""
			if m := metavar(o.name, v); m != "" {
				arg = ` \fI` + roff(m) + `\fR`
			}
			p(`\fB\-\-%s\fR%s`, roff(o.name), arg)
			text := roff(o.usage)
			if d := v.String(); d != "" && d != "false" {
				text += fmt.Sprintf(` (default: %s)`, roff(d))
			}
			if o.reload {
				text += ` Reloadable.`
			}
			p("%s", text)
		}
	}
	p(".SH SIGNALS")
	p(`\fBSIGHUP\fR reloads. The first \fBSIGTERM\fR or \fBSIGINT\fR stops accepting and lets running
sessions finish for \fB\-\-drain\fR; a second one ends the drain at once. Clients whose
session is closed get \fB421\fR. ftpalg then removes every firewall rule it added.`)
	p(".SH METRICS")
	p(`With \fB\-\-metrics\-listen\fR, Prometheus metrics (prefix \fBftpalg_\fR) on /metrics,
/healthz, and /readyz (200 once the firewall pieces are installed and every listener is up).`)
	p(".SH FILES")
	p(".TP")
	p(`/etc/ftpalg/ftpalg.toml`)
	p(`The configuration the systemd unit uses.`)
	p(".TP")
	p(`/run/ftpalg/`)
	p(`The per\-network\-namespace firewall lock and the root\-only status socket.`)
	p(".SH EXIT STATUS")
	p(`0 on success, 1 on a runtime error, 2 on a usage or configuration error.`)
	p(".SH SEE ALSO")
	p(`\fBiptables\fR(8), \fBconntrack\fR(8), \fBsystemctl\fR(1)`)
}
