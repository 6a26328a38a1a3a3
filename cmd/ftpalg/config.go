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
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

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

	// TLSConfig is --tls terminate's (tls.go); embedded, its keys are
	// top-level like every other.
	TLSConfig
}

// Duration is a time.Duration written as "30s" in the file and on the
// command line.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		// "missing unit", not `time: missing unit in duration "5"`: the
		// caller names the value already.
		why := strings.TrimPrefix(err.Error(), "time: ")
		if i := strings.Index(why, " in duration "); i >= 0 {
			why = why[:i]
		}
		if strings.HasPrefix(why, "invalid duration") {
			return errors.New(`want a duration such as "30s" or "2m"`)
		}
		return fmt.Errorf(`want a duration such as "30s" or "2m" (%s)`, why)
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
	tlsModes   = []string{"refuse", "passthrough", "terminate"}
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
		TLSConfig:       TLSConfig{TLSUpstream: "plain"},
	}
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
		return bad("tls", "%q: want refuse, passthrough or terminate", c.TLS)
	}
	if err := c.validateTLS(); err != nil {
		return err
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
	c.tlsPolicy(&p)
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
	return append(out, tlsRestart(a, b)...)
}
