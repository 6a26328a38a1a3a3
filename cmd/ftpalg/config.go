package main

// The configuration of `ftpalg run`: one type, built from the defaults, then
// the TOML file (--config), then the flags, and validated in one place.
// Every flag is a key of the file with the same name, and every key a flag,
// so one table (options) drives both, the -h text and the man page.
//
// TOML rather than YAML: a flat list of typed keys is what TOML is for, it
// has no implicit typing ("no" becoming false, 010 an octal), comments are
// part of the format, and go-toml/v2's strict decoder names the unknown or
// mistyped key with its line.

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/nat"
)

// Mode is how ftpalg is deployed.
type Mode string

const (
	// ModeGateway intercepts port 21 traffic crossing this router.
	ModeGateway Mode = "gateway"
	// ModeReverse publishes one FTP server (a fixed upstream).
	ModeReverse Mode = "reverse"
)

// Config is everything `ftpalg run` needs. The TOML key of each field is the
// flag of the same name.
type Config struct {
	Mode          Mode     `toml:"mode"`
	Intercept     []string `toml:"intercept"`
	Listen        []string `toml:"listen"`
	Upstream      []string `toml:"upstream"`
	PublicAddr    string   `toml:"public-addr"`
	Backend       string   `toml:"backend"`
	DataPorts     string   `toml:"data-ports"`
	NoConntrack   bool     `toml:"no-conntrack"`
	LockWait      Duration `toml:"lock-wait"`
	RepairEvery   Duration `toml:"repair-interval"`
	Drain         Duration `toml:"drain"`
	ConnectTimout Duration `toml:"connect-timeout"`

	MaxSessions  int `toml:"max-sessions"`
	MaxPerClient int `toml:"max-sessions-per-client"`

	MinDataPort     int      `toml:"min-data-port"`
	TLS             string   `toml:"tls"`
	AllowTLS        bool     `toml:"allow-tls"`
	MaxLine         int      `toml:"max-line"`
	MaxReplyLines   int      `toml:"max-reply-lines"`
	MaxPending      int      `toml:"max-pending"`
	MaxSyntaxErrors int      `toml:"max-syntax-errors"`
	MaxRefusals     int      `toml:"max-refusals"`
	PinholeTTL      Duration `toml:"pinhole-ttl"`
	UseGrace        Duration `toml:"use-grace"`
	OpenTimeout     Duration `toml:"open-timeout"`
	SessionDrain    Duration `toml:"session-drain"`
	LoginTimeout    Duration `toml:"login-timeout"`
	IdleTimeout     Duration `toml:"idle-timeout"`

	MetricsListen string `toml:"metrics-listen"`
	StatusSocket  string `toml:"status-socket"`
	LogFormat     string `toml:"log-format"`
	LogLevel      string `toml:"log-level"`
	LogTarget     string `toml:"log-target"`
}

// Duration is a time.Duration written as "30s" in the file and on the
// command line.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration such as \"30s\" or \"2m\": %w", err)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
func (d Duration) String() string               { return time.Duration(d).String() }
func (d *Duration) Set(s string) error          { return d.UnmarshalText([]byte(s)) }

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Enumerated values.
var (
	modes      = []string{string(ModeGateway), string(ModeReverse)}
	backends   = []string{"auto", "nftables", "iptables", "relay"}
	tlsModes   = []string{"refuse", "passthrough"}
	logFormats = []string{"text", "json"}
	logLevels  = []string{"debug", "info", "warn", "error"}
	logTargets = []string{"stderr", "syslog", "journald"}
)

// DefaultConfig is the configuration with no file and no flags.
func DefaultConfig() Config {
	p := alg.DefaultPolicy()
	return Config{
		Mode:            ModeGateway,
		Backend:         "auto",
		DataPorts:       "40000-40999",
		LockWait:        Duration(5 * time.Second),
		RepairEvery:     Duration(2 * time.Second),
		Drain:           Duration(10 * time.Second),
		ConnectTimout:   Duration(10 * time.Second),
		MaxSessions:     1024,
		MaxPerClient:    32,
		MinDataPort:     int(p.MinDataPort),
		TLS:             "refuse",
		MaxLine:         p.MaxLine,
		MaxReplyLines:   p.MaxReplyLines,
		MaxPending:      p.MaxPending,
		MaxSyntaxErrors: p.MaxSyntaxErrors,
		MaxRefusals:     p.MaxRefusals,
		PinholeTTL:      Duration(p.PinholeTTL),
		UseGrace:        Duration(p.UseGrace),
		OpenTimeout:     Duration(p.OpenTimeout),
		SessionDrain:    Duration(p.DrainTimeout),
		LoginTimeout:    Duration(p.LoginTimeout),
		IdleTimeout:     Duration(p.IdleTimeout),
		StatusSocket:    "auto",
		LogFormat:       "text",
		LogLevel:        "info",
		LogTarget:       "stderr",
	}
}

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
	{"tls", "policy (reloadable)", "AUTH TLS/SSL: refuse (clients fall back to plain FTP) or passthrough (blind: nothing is opened)", true,
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

// bindFlags defines every option on fs, bound to c, and --config and
// --check-config bound to path and check.
func bindFlags(fs *flag.FlagSet, c *Config, path *string, check *bool) {
	fs.StringVar(path, "config", "", "TOML file of these settings (keys are the flag names); flags override it")
	fs.BoolVar(check, "check-config", false, "validate the configuration (file and flags) and exit")
	for _, o := range options {
		fs.Var(o.bind(c), o.name, o.usage)
	}
}

// loadConfig builds the configuration of `ftpalg run` from args: the
// defaults, then the file named by --config, then the flags, validated
// together. It returns the file's path ("" without one) and whether
// --check-config was given.
func loadConfig(args []string, fs *flag.FlagSet) (c Config, path string, check bool, err error) {
	// First pass: where the file is. The flags are parsed again below, over
	// the file's values.
	scratch := DefaultConfig()
	bindFlags(fs, &scratch, &path, &check)
	if err := parseFlags(fs, args); err != nil {
		return c, "", false, err
	}
	if fs.NArg() > 0 {
		return c, "", false, usagef("run: unexpected arguments %q", fs.Args())
	}
	c = DefaultConfig()
	var file []byte
	if path != "" {
		if file, err = os.ReadFile(path); err != nil {
			return c, path, check, usagef("reading the configuration: %w", err)
		}
		if err := decodeConfig(file, &c); err != nil {
			return c, path, check, usageError{withSource(err, path)}
		}
	}
	fs2 := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	fs2.SetOutput(io.Discard) // the first pass reported any flag error
	var p2 string
	var c2 bool
	bindFlags(fs2, &c, &p2, &c2)
	if err := fs2.Parse(args); err != nil {
		return c, path, check, err
	}
	c.fillDefaults()
	if err := c.Validate(); err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			fs2.Visit(func(f *flag.Flag) {
				if f.Name == ce.Key {
					ce.Flag = true
				}
			})
			if !ce.Flag && file != nil {
				ce.Src, ce.Line = path, keyLine(file, ce.Key)
			}
		}
		return c, path, check, usageError{err}
	}
	return c, path, check, nil
}

// readConfigFile reads, decodes and validates one file over the defaults
// (the reload path: no flags).
func readConfigFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading the configuration: %w", err)
	}
	c, err := parseConfig(b)
	if err != nil {
		return Config{}, withSource(err, path)
	}
	return c, nil
}

func withSource(err error, path string) error {
	var ce *configError
	if errors.As(err, &ce) {
		ce.Src = path
		return ce
	}
	return fmt.Errorf("%s: %w", path, err)
}

// configError is a bad key or value: Key is the flag or file key, Line its
// line in the file Src (0: not known); Flag says the value came from the
// command line.
type configError struct {
	Key  string
	Line int
	Msg  string
	Src  string
	Flag bool
}

func (e *configError) Error() string {
	switch {
	case e.Flag:
		return fmt.Sprintf("--%s: %s", e.Key, e.Msg)
	case e.Src != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s: %s", e.Src, e.Line, e.Key, e.Msg)
	case e.Src != "":
		return fmt.Sprintf("%s: %s: %s", e.Src, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Key, e.Msg)
}

// parseConfig decodes a TOML document over the defaults and validates it.
// Errors are *configError naming the key and, where known, the line.
func parseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	if err := decodeConfig(b, &c); err != nil {
		return c, err
	}
	c.fillDefaults()
	if err := c.Validate(); err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			ce.Line = keyLine(b, ce.Key)
		}
		return c, err
	}
	return c, nil
}

// decodeConfig decodes a TOML document over c: syntax, unknown keys and
// mistyped values. Errors are *configError with the line.
func decodeConfig(b []byte, c *Config) error {
	// Durations must be strings: go-toml hands a TextUnmarshaler nothing
	// for an integer, which would silently keep the default.
	var raw map[string]any
	if err := toml.Unmarshal(b, &raw); err != nil {
		return tomlError(err)
	}
	for k, v := range raw {
		if _, isDur := durationKeys[k]; isDur {
			if _, ok := v.(string); !ok {
				return &configError{Key: k, Line: keyLine(b, k), Msg: fmt.Sprintf("want a duration in quotes such as \"30s\", not %v", v)}
			}
		}
	}
	d := toml.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(c); err != nil {
		return tomlError(err)
	}
	return nil
}

var durationKeys = func() map[string]struct{} {
	m := map[string]struct{}{}
	c := DefaultConfig()
	for _, o := range options {
		if _, ok := o.bind(&c).(*Duration); ok {
			m[o.name] = struct{}{}
		}
	}
	return m
}()

// tomlError turns a go-toml error into a configError with its line.
func tomlError(err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		switch msg {
		case "unknown field":
			msg = "unknown key (see `ftpalg run -h` for the keys)"
		case "missing table":
			msg = "unknown table (the file has no tables: its keys are the flag names)"
		}
		if m := typeErr.FindStringSubmatch(msg); m != nil {
			want := map[string]string{"int": "a whole number", "bool": "true or false", "[]string": "a list of strings, [\"a\", \"b\"]"}[m[2]]
			if want == "" {
				want = "a string in quotes"
			}
			msg = fmt.Sprintf("want %s, not a TOML %s", want, m[1])
		}
		if key == "" {
			key = "syntax"
		}
		return &configError{Key: key, Line: line, Msg: msg}
	}
	var se *toml.StrictMissingError
	if errors.As(err, &se) && len(se.Errors) > 0 {
		return tomlError(&se.Errors[0])
	}
	return &configError{Key: "syntax", Msg: err.Error()}
}

var typeErr = regexp.MustCompile(`cannot decode TOML (\w+) into struct field \S+ of type (\S+)`)

// keyLine is the line of the first "key =" in a TOML document, 0 if none.
func keyLine(b []byte, key string) int {
	re := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(key) + `"?\s*=`)
	for i, l := range strings.Split(string(b), "\n") {
		if re.MatchString(l) {
			return i + 1
		}
	}
	return 0
}

func bad(key, format string, a ...any) error {
	return &configError{Key: key, Msg: fmt.Sprintf(format, a...)}
}

// fillDefaults sets the defaults that depend on the mode.
func (c *Config) fillDefaults() {
	if c.Mode == ModeGateway && len(c.Listen) == 0 {
		c.Listen = []string{"[::]:2121"}
	}
}

// Validate reports the first setting that cannot work, naming its key.
func (c *Config) Validate() error {
	switch c.Mode {
	case ModeGateway:
		if len(c.Intercept) == 0 {
			return bad("intercept", "gateway mode needs the interfaces to intercept (IFACE[,IFACE])")
		}
		if len(c.Upstream) > 0 {
			return bad("upstream", "is for reverse mode")
		}
		if c.PublicAddr != "" {
			return bad("public-addr", "is for reverse mode")
		}
		if c.Backend == "relay" {
			return bad("backend", "gateway mode intercepts with the firewall: want auto, nftables or iptables")
		}
		if len(c.Listen) > 1 {
			return bad("listen", "gateway mode takes one listener (dual-stack [::]:PORT covers both families)")
		}
	case ModeReverse:
		if len(c.Intercept) > 0 {
			return bad("intercept", "is for gateway mode")
		}
		if len(c.Upstream) == 0 {
			return bad("upstream", "reverse mode needs the server, HOST:PORT")
		}
		if len(c.Listen) == 0 {
			return bad("listen", "reverse mode needs a listener ADDR:PORT")
		}
	default:
		return bad("mode", "%q: want gateway or reverse", c.Mode)
	}
	for _, s := range c.Listen {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return bad("listen", "%q: want ADDR:PORT, e.g. 203.0.113.1:21 or [::]:2121", s)
		}
		if c.Mode == ModeGateway && (!ap.Addr().IsUnspecified() || ap.Addr().Is4()) {
			// REDIRECT delivers to the incoming interface's own address,
			// IPv4 and IPv6 alike: only the dual-stack wildcard gets both.
			return bad("listen", "gateway mode needs [::]:PORT (the dual-stack wildcard), not %s", s)
		}
	}
	for _, s := range c.Upstream {
		if _, _, err := splitHostPort(s); err != nil {
			return bad("upstream", "%q: %v", s, err)
		}
	}
	if c.PublicAddr != "" {
		if _, err := netip.ParseAddr(c.PublicAddr); err != nil {
			return bad("public-addr", "%q: not an IP address", c.PublicAddr)
		}
	}
	if !slices.Contains(backends, c.Backend) {
		return bad("backend", "%q: want one of %s", c.Backend, strings.Join(backends, ", "))
	}
	lo, _, err := nat.ParseRange(c.DataPorts)
	if err != nil {
		return bad("data-ports", "%v", err)
	}
	if c.MinDataPort < 1 || c.MinDataPort > 65535 {
		return bad("min-data-port", "%d out of range 1-65535", c.MinDataPort)
	}
	if int(lo) < c.MinDataPort {
		return bad("data-ports", "%s starts below min-data-port %d", c.DataPorts, c.MinDataPort)
	}
	if !slices.Contains(tlsModes, c.TLS) {
		return bad("tls", "%q: want refuse or passthrough", c.TLS)
	}
	if c.AllowTLS && c.TLS != "refuse" && c.TLS != "passthrough" {
		return bad("allow-tls", "contradicts tls = %q", c.TLS)
	}
	for _, e := range []struct {
		key string
		v   string
		in  []string
	}{{"log-format", c.LogFormat, logFormats}, {"log-level", c.LogLevel, logLevels}, {"log-target", c.LogTarget, logTargets}} {
		if !slices.Contains(e.in, e.v) {
			return bad(e.key, "%q: want one of %s", e.v, strings.Join(e.in, ", "))
		}
	}
	for _, e := range []struct {
		key string
		v   int
	}{{"max-sessions", c.MaxSessions}, {"max-sessions-per-client", c.MaxPerClient}, {"max-reply-lines", c.MaxReplyLines},
		{"max-pending", c.MaxPending}, {"max-syntax-errors", c.MaxSyntaxErrors}, {"max-refusals", c.MaxRefusals}} {
		if e.v < 1 {
			return bad(e.key, "%d: must be positive", e.v)
		}
	}
	if c.MaxLine < 64 {
		return bad("max-line", "%d: must be at least 64 bytes", c.MaxLine)
	}
	for _, e := range []struct {
		key string
		v   Duration
	}{{"drain", c.Drain}, {"connect-timeout", c.ConnectTimout}, {"pinhole-ttl", c.PinholeTTL}, {"open-timeout", c.OpenTimeout},
		{"session-drain", c.SessionDrain}, {"login-timeout", c.LoginTimeout}, {"idle-timeout", c.IdleTimeout},
		{"lock-wait", c.LockWait}, {"repair-interval", c.RepairEvery}} {
		if e.v <= 0 {
			return bad(e.key, "%v: must be positive", e.v)
		}
	}
	if c.UseGrace < 0 {
		return bad("use-grace", "%v: must not be negative", c.UseGrace)
	}
	if c.MetricsListen != "" {
		if _, _, err := splitHostPort(c.MetricsListen); err != nil {
			return bad("metrics-listen", "%q: %v", c.MetricsListen, err)
		}
	}
	if c.StatusSocket == "" {
		return bad("status-socket", "empty: want auto, off or a path")
	}
	if err := c.Policy().Validate(); err != nil {
		return bad("policy", "%v", err)
	}
	return nil
}

// splitHostPort checks HOST:PORT with a numeric or named port.
func splitHostPort(s string) (string, string, error) {
	host, port, err := splitHostPortStrict(s)
	if err != nil {
		return "", "", errors.New("want HOST:PORT")
	}
	return host, port, nil
}

func splitHostPortStrict(s string) (string, string, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || i == len(s)-1 {
		return "", "", errors.New("no port")
	}
	host, port := s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") {
		return "", "", errors.New("unbalanced brackets")
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if n, err := strconv.Atoi(port); err == nil && (n < 1 || n > 65535) {
		return "", "", errors.New("port out of range")
	}
	return host, port, nil
}

// Policy is the alg.Policy the configuration asks for.
func (c *Config) Policy() alg.Policy {
	p := alg.DefaultPolicy()
	p.MinDataPort = uint16(min(max(c.MinDataPort, 0), 65535))
	p.AllowTLS = c.TLS == "passthrough" || c.AllowTLS
	p.MaxLine = c.MaxLine
	p.MaxReplyLines = c.MaxReplyLines
	p.MaxPending = c.MaxPending
	p.MaxSyntaxErrors = c.MaxSyntaxErrors
	p.MaxRefusals = c.MaxRefusals
	p.PinholeTTL = c.PinholeTTL.D()
	p.UseGrace = c.UseGrace.D()
	p.OpenTimeout = c.OpenTimeout.D()
	p.DrainTimeout = c.SessionDrain.D()
	p.LoginTimeout = c.LoginTimeout.D()
	p.IdleTimeout = c.IdleTimeout.D()
	return p
}

// restartOnly lists the options whose value differs between a and b and
// that only a restart can change.
func restartOnly(a, b Config) []string {
	var out []string
	for _, o := range options {
		if o.reload {
			continue
		}
		if o.bind(&a).String() != o.bind(&b).String() {
			out = append(out, o.name)
		}
	}
	return out
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
