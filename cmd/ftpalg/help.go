package main

// The -h texts: run's synopsis and grouped flags, and the flag lists of the
// other subcommands in the same style.

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

func runUsage(fs *flag.FlagSet) func() {
	return func() {
		w := fs.Output()
		fmt.Fprint(w, `usage: ftpalg run [--config FILE] [--check-config] --mode gateway --intercept IFACE[,IFACE] [flags]
       ftpalg run [--config FILE] [--check-config] --mode reverse --listen ADDR:PORT --upstream HOST:PORT [flags]

Runs the ALG: a transparent proxy for the FTP control channel that opens
exactly the announced data endpoint in the firewall for a short time. Every
flag is also a key of the TOML file given with --config (the same name);
flags override the file. SIGHUP re-reads the file: the reloadable settings
apply to new sessions, running sessions keep theirs. Needs CAP_NET_ADMIN
(root, or the systemd unit) except reverse mode with --backend relay.

examples:
  # a router intercepting the FTP traffic its LAN interface receives
  ftpalg run --mode gateway --intercept eth1
  # publishing the FTP server 192.0.2.2 on 203.0.113.1:21
  ftpalg run --mode reverse --listen 203.0.113.1:21 --upstream 192.0.2.2:21

`)
		for _, g := range groups {
			fmt.Fprintf(w, "%s:\n", g)
			if g == "general" {
				printFlag(w, fs.Lookup("config"))
				printFlag(w, fs.Lookup("check-config"))
			}
			for _, o := range options {
				if o.group == g {
					printFlag(w, fs.Lookup(o.name))
				}
			}
			fmt.Fprintln(w)
		}
	}
}

// metavar names the value of a flag in -h and the man page ("" for a
// boolean).
func metavar(flagName string, v flag.Value) string {
	switch v := v.(type) {
	case *Duration:
		return "DURATION"
	case *intVar:
		return "N"
	case enumVar:
		return strings.Join(slices.DeleteFunc(slices.Clone(v.in), func(s string) bool { return s == "" }), "|")
	case *listVar, *stringVar:
		if m := metavars[flagName]; m != "" {
			return m
		}
		return "VALUE"
	}
	return ""
}

// metavars name the value of each string flag.
var metavars = map[string]string{
	"listen": "ADDR:PORT", "metrics-listen": "ADDR:PORT", "tls-implicit-listen": "ADDR:PORT",
	"upstream": "HOST:PORT", "intercept": "IFACE[,IFACE]", "public-addr": "ADDR", "data-ports": "LO-HI",
	"status-socket": "auto|off|PATH", "tls-cert": "FILE", "tls-key": "FILE", "tls-upstream-ca": "FILE",
	"tls-upstream-name": "NAME",
	// lab, inspect, status
	"capture": "FILE", "color": "auto|always|never", "size": "BYTES", "ports": "PORT[,PORT]",
	"socket": "auto|PATH", "max-line": "N", "min-data-port": "N",
}

// printDefaults prints every flag of fs the way run -h does (--name VALUE,
// the usage indented below), for the other subcommands' -h.
func printDefaults(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) { printFlag(fs.Output(), f) })
}

func printFlag(w io.Writer, f *flag.Flag) {
	usage, name := f.Usage, metavar(f.Name, f.Value)
	if f.Name == "config" {
		name = "FILE"
	}
	if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); name == "" && !(ok && bf.IsBoolFlag()) {
		// A flag of the flag package (the other subcommands): its name
		// from metavars, `backquotes` in the usage, or its type.
		name, usage = flag.UnquoteUsage(f)
		name = strings.ToUpper(name)
		if m := metavars[f.Name]; m != "" {
			name = m
		}
	}
	dashes := "--"
	if len(f.Name) == 1 {
		dashes = "-"
	}
	if name == "" {
		fmt.Fprintf(w, "  %s%s\n", dashes, f.Name)
	} else {
		fmt.Fprintf(w, "  %s%s %s\n", dashes, f.Name, name)
	}
	if f.DefValue != "" && f.DefValue != "false" {
		usage += fmt.Sprintf(" (default %s)", f.DefValue)
	}
	fmt.Fprintf(w, "        %s\n", usage)
}
