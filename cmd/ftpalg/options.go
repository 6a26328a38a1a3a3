package main

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// option is one flag and file key.
type option struct {
	name, group, usage string
	// reload says a change applies to new sessions on SIGHUP; the others
	// need a restart.
	reload bool
	bind   func(c *Config) flag.Value
}

// Option groups, in the order -h and the man page list them.
var groups = []string{"general", "gateway mode", "reverse mode", "policy (reloadable)", "limits (reloadable)", "daemon"}

var options = []option{
	{"mode", "general", "gateway: intercept port 21 crossing this router; reverse: publish one FTP server (--upstream)", false,
		func(c *Config) flag.Value { return enumVar{(*string)(&c.Mode), modes} }},
	{"listen", "general", "proxy listener ADDR:PORT, repeatable (gateway default [::]:2121, dual-stack; reverse: required)", false,
		func(c *Config) flag.Value { return &listVar{p: &c.Listen} }},
	{"backend", "general", "pinhole backend: auto, nftables, iptables, or relay (userspace, unprivileged; reverse mode)", false,
		func(c *Config) flag.Value { return enumVar{&c.Backend, backends} }},
	{"data-ports", "general", "pool of this host's ports for translated data endpoints (LO-HI)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.DataPorts) }},
	{"no-conntrack", "general", "do not watch conntrack (no first-use close, no per-transfer log and metrics)", false,
		func(c *Config) flag.Value { return (*boolVar)(&c.NoConntrack) }},
	{"lock-wait", "general", "bound on waiting for the xtables lock, per iptables command", false,
		func(c *Config) flag.Value { return &c.LockWait }},
	{"repair-interval", "general", "how often ftpalg checks that its firewall rules are still installed", false,
		func(c *Config) flag.Value { return &c.RepairEvery }},
	{"drain", "general", "on SIGTERM/SIGINT, how long running sessions may finish (a second signal cuts it short)", true,
		func(c *Config) flag.Value { return &c.Drain }},
	{"connect-timeout", "general", "bound on dialling the server", true,
		func(c *Config) flag.Value { return &c.ConnectTimout }},

	{"intercept", "gateway mode", "interfaces whose port-21 traffic is intercepted, comma-separated or repeated", false,
		func(c *Config) flag.Value { return &listVar{p: &c.Intercept, comma: true} }},

	{"upstream", "reverse mode", "the published server HOST:PORT, repeatable (one per family; a name may resolve to both)", false,
		func(c *Config) flag.Value { return &listVar{p: &c.Upstream} }},
	{"public-addr", "reverse mode", "address announced to clients (default: the address the client dialled)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.PublicAddr) }},

	{"min-data-port", "policy (reloadable)", "data ports below this are refused", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MinDataPort) }},
	{"tls", "policy (reloadable)", "AUTH TLS/SSL: refuse (clients fall back to plain FTP), passthrough (blind: nothing is opened) or terminate (ftpalg holds the certificate; reverse mode; turning it on or off needs a restart)", true,
		func(c *Config) flag.Value { return enumVar{&c.TLS, tlsModes} }},
	{"allow-tls", "policy (reloadable)", "deprecated: the same as --tls passthrough", true,
		func(c *Config) flag.Value { return (*boolVar)(&c.AllowTLS) }},
	{"max-line", "policy (reloadable)", "longest command or reply line, in bytes (terminator included)", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxLine) }},
	{"max-reply-lines", "policy (reloadable)", "most lines in one multi-line reply", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxReplyLines) }},
	{"max-pending", "policy (reloadable)", "most commands forwarded and not yet answered", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxPending) }},
	{"max-syntax-errors", "policy (reloadable)", "non-FTP lines in a row that end a session", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxSyntaxErrors) }},
	{"max-refusals", "policy (reloadable)", "refused lines that end a session", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxRefusals) }},
	{"pinhole-ttl", "policy (reloadable)", "how long an announced, unused pinhole stays open", true,
		func(c *Config) flag.Value { return &c.PinholeTTL }},
	{"use-grace", "policy (reloadable)", "how long a pinhole stays open after its transfer began (150/125)", true,
		func(c *Config) flag.Value { return &c.UseGrace }},
	{"open-timeout", "policy (reloadable)", "bound on planning and opening one pinhole", true,
		func(c *Config) flag.Value { return &c.OpenTimeout }},
	{"session-drain", "policy (reloadable)", "how long one direction of a session may run after the other ended", true,
		func(c *Config) flag.Value { return &c.SessionDrain }},
	{"login-timeout", "policy (reloadable)", "end a session not logged in (no 230) by then", true,
		func(c *Config) flag.Value { return &c.LoginTimeout }},
	{"idle-timeout", "policy (reloadable)", "end a session whose control channel is idle this long (never during a transfer)", true,
		func(c *Config) flag.Value { return &c.IdleTimeout }},

	{"max-sessions", "limits (reloadable)", "concurrent control sessions", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxSessions) }},
	{"max-sessions-per-client", "limits (reloadable)", "concurrent control sessions per client address", true,
		func(c *Config) flag.Value { return (*intVar)(&c.MaxPerClient) }},

	{"metrics-listen", "daemon", "ADDR:PORT for Prometheus /metrics, /healthz and /readyz (default off)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.MetricsListen) }},
	{"status-socket", "daemon", "root-only unix socket for `ftpalg status`: auto (/run/ftpalg, per network namespace), a path, or off", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.StatusSocket) }},
	{"log-format", "daemon", "log format: text or json", false,
		func(c *Config) flag.Value { return enumVar{&c.LogFormat, logFormats} }},
	{"log-level", "daemon", "log level: debug, info, warn, error", true,
		func(c *Config) flag.Value { return enumVar{&c.LogLevel, logLevels} }},
	{"log-target", "daemon", "where logs go: stderr, syslog or journald (the local syslog socket, which journald reads)", false,
		func(c *Config) flag.Value { return enumVar{&c.LogTarget, logTargets} }},
}

// --- flag.Value types over Config fields ---

type stringVar string

func (v *stringVar) String() string     { return string(*v) }
func (v *stringVar) Set(s string) error { *v = stringVar(s); return nil }

type intVar int

func (v *intVar) String() string { return strconv.Itoa(int(*v)) }
func (v *intVar) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want a whole number")
	}
	*v = intVar(n)
	return nil
}

type boolVar bool

func (v *boolVar) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolVar) IsBoolFlag() bool { return true }
func (v *boolVar) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	*v = boolVar(b)
	return nil
}

// enumVar is a string restricted to one of in.
type enumVar struct {
	p  *string
	in []string
}

func (v enumVar) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v enumVar) Set(s string) error {
	if !slices.Contains(v.in, s) {
		return fmt.Errorf("want one of %s", strings.Join(v.in, ", "))
	}
	*v.p = s
	return nil
}

// listVar is a repeatable flag: the first use on the command line replaces
// the file's list, later ones append. With comma, one use may list several.
type listVar struct {
	p     *[]string
	comma bool
	set   bool
}

func (v *listVar) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v *listVar) Set(s string) error {
	if !v.set {
		*v.p = nil
		v.set = true
	}
	if v.comma {
		*v.p = append(*v.p, splitList(s)...)
	} else {
		*v.p = append(*v.p, s)
	}
	return nil
}
