package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftps"
)

const reverseBase = "mode = \"reverse\"\nlisten = [\"203.0.113.1:21\"]\nupstream = [\"192.0.2.2:21\"]\n"

func TestParseConfigGood(t *testing.T) {
	def := DefaultConfig()
	for _, tc := range []struct {
		name string
		file string
		want func(c *Config)
	}{
		{"empty file is the defaults with intercept", "intercept = [\"eth1\"]\n", func(c *Config) {
			c.Intercept = []string{"eth1"}
			c.Listen = []string{"[::]:2121"}
		}},
		{"reverse", reverseBase, func(c *Config) {
			c.Mode = ModeReverse
			c.Listen = []string{"203.0.113.1:21"}
			c.Upstream = []string{"192.0.2.2:21"}
		}},
		{"every policy key", reverseBase + `
# policy
min-data-port = 2000
tls = "passthrough"
max-line = 512
max-reply-lines = 50
max-pending = 8
max-syntax-errors = 2
max-refusals = 5
pinhole-ttl = "10s"
use-grace = "500ms"
open-timeout = "3s"
session-drain = "1s"
login-timeout = "20s"
idle-timeout = "5m"
max-sessions = 100
max-sessions-per-client = 4
data-ports = "41000-41099"
lock-wait = "2s"
repair-interval = "10s"
drain = "30s"
connect-timeout = "4s"
backend = "relay"
public-addr = "198.51.100.1"
no-conntrack = true
metrics-listen = "127.0.0.1:9121"
status-socket = "off"
log-format = "json"
log-level = "debug"
log-target = "journald"
`, func(c *Config) {
			c.Mode = ModeReverse
			c.Listen = []string{"203.0.113.1:21"}
			c.Upstream = []string{"192.0.2.2:21"}
			c.MinDataPort, c.TLS, c.MaxLine, c.MaxReplyLines, c.MaxPending = 2000, "passthrough", 512, 50, 8
			c.MaxSyntaxErrors, c.MaxRefusals = 2, 5
			c.PinholeTTL, c.UseGrace, c.OpenTimeout = Duration(10*time.Second), Duration(500*time.Millisecond), Duration(3*time.Second)
			c.SessionDrain, c.LoginTimeout, c.IdleTimeout = Duration(time.Second), Duration(20*time.Second), Duration(5*time.Minute)
			c.MaxSessions, c.MaxPerClient, c.DataPorts = 100, 4, "41000-41099"
			c.LockWait, c.RepairEvery, c.Drain, c.ConnectTimout = Duration(2*time.Second), Duration(10*time.Second), Duration(30*time.Second), Duration(4*time.Second)
			c.Backend, c.PublicAddr, c.NoConntrack = "relay", "198.51.100.1", true
			c.MetricsListen, c.StatusSocket, c.LogFormat, c.LogLevel, c.LogTarget = "127.0.0.1:9121", "off", "json", "debug", "journald"
		}},
		{"allow-tls is the deprecated passthrough", reverseBase + "allow-tls = true\n", func(c *Config) {
			c.Mode = ModeReverse
			c.Listen = []string{"203.0.113.1:21"}
			c.Upstream = []string{"192.0.2.2:21"}
			c.AllowTLS = true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseConfig([]byte(tc.file))
			if err != nil {
				t.Fatal(err)
			}
			want := def
			tc.want(&want)
			if !configEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
	// The policy the file asks for reaches alg.Policy.
	c, err := parseConfig([]byte(reverseBase + "tls = \"passthrough\"\nmin-data-port = 2000\nmax-refusals = 7\npinhole-ttl = \"9s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := c.Policy()
	if p.TLSMode() != alg.TLSPassthrough || p.MinDataPort != 2000 || p.MaxRefusals != 7 || p.PinholeTTL != 9*time.Second {
		t.Errorf("Policy() = %+v", p)
	}
	c, _ = parseConfig([]byte(reverseBase + "allow-tls = true\n"))
	if c.Policy().TLSMode() != alg.TLSPassthrough {
		t.Error("allow-tls = true does not let TLS through")
	}
}

func configEqual(a, b Config) bool {
	for _, o := range options {
		if o.bind(&a).String() != o.bind(&b).String() {
			return false
		}
	}
	return true
}

func TestParseConfigBad(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string
		key  string
		line int
		msg  string
	}{
		{"syntax error", reverseBase + "max-sessions = \n", "syntax", 4, ""},
		{"unterminated string", "mode = \"reverse\n", "syntax", 1, ""},
		{"unknown key", reverseBase + "\nmax-session = 5\n", "max-session", 5, "unknown key; did you mean max-sessions?"},
		{"unknown key, nothing near", reverseBase + "\nsessions-maximum = 5\n", "sessions-maximum", 5, "unknown key (see `ftpalg run -h`"},
		{"flag spelling as key", reverseBase + "\npinhole_ttl = \"5s\"\n", "pinhole_ttl", 5, "did you mean pinhole-ttl?"},
		{"unknown table", reverseBase + "[policy]\nmin-data-port = 5\n", "policy", 4, "unknown table"},
		{"string for a number", reverseBase + "max-sessions = \"many\"\n", "max-sessions", 4, "want a whole number"},
		{"number for a string", reverseBase + "data-ports = 40000\n", "data-ports", 4, "want a string"},
		{"string for a list", "mode = \"reverse\"\nlisten = \"203.0.113.1:21\"\n", "listen", 2, "list of strings"},
		{"string for a bool", reverseBase + "no-conntrack = \"yes\"\n", "no-conntrack", 4, "true or false"},
		{"bad duration", reverseBase + "\n\npinhole-ttl = \"30 seconds\"\n", "pinhole-ttl", 6, "duration"},
		{"number for a duration", reverseBase + "idle-timeout = 600\n", "idle-timeout", 4, "in quotes"},
		{"bad mode", "mode = \"bridge\"\n", "mode", 1, "want gateway or reverse"},
		{"bad backend", reverseBase + "backend = \"pf\"\n", "backend", 4, "want one of"},
		{"bad tls", reverseBase + "tls = \"terminate-maybe\"\n", "tls", 4, "passthrough or terminate"},
		{"terminate without certificate", reverseBase + "tls = \"terminate\"\n", "tls-cert", 0, "needs tls-cert and tls-key"},
		{"terminate in gateway mode", "intercept = [\"eth1\"]\ntls = \"terminate\"\ntls-cert = \"c\"\ntls-key = \"k\"\n", "tls", 2, "reverse mode"},
		{"tls-cert without terminate", reverseBase + "tls-cert = \"c\"\n", "tls", 0, "need tls = \"terminate\""},
		{"bad tls upstream", reverseBase + "tls = \"terminate\"\ntls-cert = \"c\"\ntls-key = \"k\"\ntls-upstream = \"ssl\"\n", "tls-upstream", 7, "want plain, explicit or implicit"},
		{"bad log level", reverseBase + "log-level = \"loud\"\n", "log-level", 4, "want one of"},
		{"bad log target", reverseBase + "log-target = \"file\"\n", "log-target", 4, "want one of"},
		{"gateway without intercept", "mode = \"gateway\"\n", "intercept", 0, "needs the interfaces"},
		{"gateway with upstream", "intercept = [\"eth1\"]\nupstream = [\"192.0.2.2:21\"]\n", "upstream", 2, "reverse mode"},
		{"gateway IPv4 listener", "intercept = [\"eth1\"]\nlisten = [\"0.0.0.0:2121\"]\n", "listen", 2, "dual-stack"},
		{"gateway relay", "intercept = [\"eth1\"]\nbackend = \"relay\"\n", "backend", 2, "gateway mode"},
		{"reverse without upstream", "mode = \"reverse\"\nlisten = [\"203.0.113.1:21\"]\n", "upstream", 0, "needs the server"},
		{"reverse with intercept", reverseBase + "intercept = [\"eth0\"]\n", "intercept", 4, "gateway mode"},
		{"bad listen", "mode = \"reverse\"\nupstream = [\"192.0.2.2:21\"]\nlisten = [\"localhost\"]\n", "listen", 3, "ADDR:PORT"},
		{"bad upstream", "mode = \"reverse\"\nlisten = [\"203.0.113.1:21\"]\nupstream = [\"192.0.2.2\"]\n", "upstream", 3, "HOST:PORT"},
		{"bad public addr", reverseBase + "public-addr = \"example\"\n", "public-addr", 4, "not an IP"},
		{"bad data ports", reverseBase + "data-ports = \"9-1\"\n", "data-ports", 4, ""},
		{"data ports below the floor", reverseBase + "data-ports = \"1000-1100\"\n", "data-ports", 4, "below min-data-port"},
		{"min data port out of range", reverseBase + "min-data-port = 70000\n", "min-data-port", 4, "out of range"},
		{"zero sessions", reverseBase + "max-sessions = 0\n", "max-sessions", 4, "positive"},
		{"zero per client", reverseBase + "max-sessions-per-client = 0\n", "max-sessions-per-client", 4, "positive"},
		{"negative refusals", reverseBase + "max-refusals = -1\n", "max-refusals", 4, "positive"},
		{"tiny max line", reverseBase + "max-line = 10\n", "max-line", 4, "at least 64"},
		{"zero ttl", reverseBase + "pinhole-ttl = \"0s\"\n", "pinhole-ttl", 4, "positive"},
		{"negative grace", reverseBase + "use-grace = \"-1s\"\n", "use-grace", 4, "negative"},
		{"bad metrics listen", reverseBase + "metrics-listen = \"9121\"\n", "metrics-listen", 4, "HOST:PORT"},
		{"empty status socket", reverseBase + "status-socket = \"\"\n", "status-socket", 4, "auto, off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.file))
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v (%T), want a *configError", err, err)
			}
			if ce.Key != tc.key || ce.Line != tc.line || !strings.Contains(ce.Msg, tc.msg) {
				t.Errorf("got key %q line %d msg %q; want key %q line %d msg containing %q", ce.Key, ce.Line, ce.Msg, tc.key, tc.line, tc.msg)
			}
			// Through the command: exit status 2 and one line naming file, line and key.
			path := filepath.Join(t.TempDir(), "ftpalg.toml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errOut strings.Builder
			code := mainErr([]string{"run", "--config", path, "--check-config"}, &out, &errOut)
			wantPrefix := "ftpalg: " + path + ":"
			if tc.line > 0 {
				wantPrefix += itoa(tc.line) + ": " + tc.key + ":"
			} else {
				wantPrefix += " " + tc.key + ":"
			}
			if code != 2 || out.String() != "" || !strings.HasPrefix(errOut.String(), wantPrefix) || strings.Count(errOut.String(), "\n") != 1 {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit 2 and one line starting %q", code, out.String(), errOut.String(), wantPrefix)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestConfigFlagPrecedence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ftpalg.toml")
	file := "mode = \"reverse\"\nupstream = [\"192.0.2.2:21\"]\nmax-sessions-per-client = 4\npinhole-ttl = \"10s\"\nlisten = [\"203.0.113.1:21\", \"[2001:db8::1]:21\"]\n"
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(args ...string) (Config, error) {
		fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c, _, _, err := loadConfig(args, fs)
		return c, err
	}
	for _, tc := range []struct {
		name  string
		args  []string
		check func(c Config) bool
	}{
		{"file alone", []string{"--config", path}, func(c Config) bool {
			return c.MaxPerClient == 4 && c.PinholeTTL.D() == 10*time.Second && len(c.Listen) == 2
		}},
		{"a flag beats the file", []string{"--config", path, "--max-sessions-per-client", "2"}, func(c Config) bool {
			return c.MaxPerClient == 2 && c.PinholeTTL.D() == 10*time.Second
		}},
		{"flag order does not matter", []string{"--pinhole-ttl", "3s", "--config", path}, func(c Config) bool {
			return c.PinholeTTL.D() == 3*time.Second && c.MaxPerClient == 4
		}},
		{"a repeated flag replaces the file's list", []string{"--config", path, "--listen", "198.51.100.1:21", "--listen", "[2001:db8::2]:21"}, func(c Config) bool {
			return slices.Equal(c.Listen, []string{"198.51.100.1:21", "[2001:db8::2]:21"})
		}},
		{"flags without a file", []string{"--mode", "gateway", "--intercept", "eth1,eth2", "--intercept", "eth3"}, func(c Config) bool {
			return slices.Equal(c.Intercept, []string{"eth1", "eth2", "eth3"}) && slices.Equal(c.Listen, []string{"[::]:2121"})
		}},
		{"tls flag", []string{"--config", path, "--tls", "passthrough"}, func(c Config) bool { return c.Policy().TLSMode() == alg.TLSPassthrough }},
		{"deprecated allow-tls flag", []string{"--config", path, "--allow-tls"}, func(c Config) bool { return c.Policy().TLSMode() == alg.TLSPassthrough }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("%+v", c)
			}
		})
	}

	// A bad value from a flag names the flag; one left from the file names
	// the file, its line and key.
	_, err := load("--config", path, "--max-sessions-per-client", "0")
	if err == nil || err.Error() != "--max-sessions-per-client: 0: must be positive" {
		t.Errorf("flag error: %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("mode = \"reverse\"\nupstream = [\"192.0.2.2:21\"]\nlisten = [\"203.0.113.1:21\"]\nmax-refusals = 0\n"), 0o600)
	_, err = load("--config", bad)
	if err == nil || err.Error() != bad+":4: max-refusals: 0: must be positive" {
		t.Errorf("file error: %v", err)
	}
	// The flag fixes what the file got wrong.
	if _, err := load("--config", bad, "--max-refusals", "3"); err != nil {
		t.Errorf("flag over a bad file value: %v", err)
	}
	// A value that only becomes wrong with a flag (gateway needs intercept).
	_, err = load("--config", path, "--mode", "gateway")
	if err == nil || !strings.HasPrefix(err.Error(), path+": intercept:") {
		t.Errorf("mode flag over a reverse file: %v", err)
	}
	// A flag with a bad value is one line with a hint.
	var out, errOut strings.Builder
	code := mainErr([]string{"run", "--config", path, "--pinhole-ttl", "soon"}, &out, &errOut)
	if code != 2 || strings.Count(errOut.String(), "\n") != 1 || !strings.Contains(errOut.String(), "pinhole-ttl") ||
		!strings.Contains(errOut.String(), "ftpalg run -h") {
		t.Errorf("bad flag value: exit %d, stderr %q", code, errOut.String())
	}
	// A missing file.
	code = mainErr([]string{"run", "--config", filepath.Join(dir, "none.toml"), "--check-config"}, &out, &errOut)
	if code != 2 {
		t.Errorf("missing file: exit %d", code)
	}
}

func TestCheckConfigOK(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ftpalg.toml")
	os.WriteFile(path, []byte(reverseBase), 0o600)
	var out, errOut strings.Builder
	if code := mainErr([]string{"run", "--config", path, "--check-config"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "configuration OK") || errOut.String() != "" {
		t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
	}
}

// TestContribConfigsValid checks every example file shipped under contrib.
func TestContribConfigsValid(t *testing.T) {
	files, _ := filepath.Glob("../../contrib/*/*.toml")
	if len(files) == 0 {
		t.Fatal("no example configuration under contrib/")
	}
	for _, f := range files {
		if _, err := readConfigFile(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		// Literally what the README and the unit's ExecStartPre run.
		var out, errOut strings.Builder
		if code := mainErr([]string{"run", "--config", f, "--check-config"}, &out, &errOut); code != 0 ||
			!strings.HasPrefix(out.String(), "configuration OK") {
			t.Errorf("ftpalg run --config %s --check-config: exit %d, stdout %q, stderr %q", f, code, out.String(), errOut.String())
		}
	}
}

// TestContribConfigsShowEveryKey: every key is shown, set or commented
// out, in one of the example files (the README says where), but for the
// deprecated allow-tls.
func TestContribConfigsShowEveryKey(t *testing.T) {
	files, _ := filepath.Glob("../../contrib/*/*.toml")
	var all strings.Builder
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	for _, o := range options {
		if o.name == "allow-tls" {
			continue
		}
		if keyLine([]byte(strings.ReplaceAll(all.String(), "\n# ", "\n")), o.name) == 0 {
			t.Errorf("no example under contrib/ shows the key %s", o.name)
		}
	}
}

// TestCheckConfigTLSFiles: a certificate, key or CA bundle that cannot be
// loaded is a configuration error (exit 2, one line naming the key) at
// --check-config, not a failure after the firewall was set up.
func TestCheckConfigTLSFiles(t *testing.T) {
	dir := t.TempDir()
	caPEM, certPEM, keyPEM, err := ftps.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cf, kf, ca := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	for f, b := range map[string][]byte{cf: certPEM, kf: keyPEM, ca: caPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	missing := filepath.Join(dir, "missing.pem")
	term := reverseBase + "tls = \"terminate\"\n"
	for _, tc := range []struct {
		name, file string
		flags      []string
		code       int
		prefix     string // of the one line on stderr, after the path
	}{
		{"good", term + "tls-cert = \"" + cf + "\"\ntls-key = \"" + kf + "\"\n", nil, 0, ""},
		{"good with CA", term + "tls-cert = \"" + cf + "\"\ntls-key = \"" + kf + "\"\ntls-upstream = \"explicit\"\ntls-upstream-ca = \"" + ca + "\"\n", nil, 0, ""},
		{"missing cert", term + "tls-cert = \"" + missing + "\"\ntls-key = \"" + kf + "\"\n", nil, 2, ":5: tls-cert: loading TLS certificate"},
		{"key of nothing", term + "tls-cert = \"" + cf + "\"\ntls-key = \"" + ca + "\"\n", nil, 2, ":5: tls-cert: loading TLS certificate"},
		{"missing CA", term + "tls-cert = \"" + cf + "\"\ntls-key = \"" + kf + "\"\ntls-upstream = \"explicit\"\ntls-upstream-ca = \"" + missing + "\"\n", nil, 2, ":8: tls-upstream-ca: reading CA bundle"},
		{"missing cert by flag", term + "tls-cert = \"" + cf + "\"\ntls-key = \"" + kf + "\"\n", []string{"--tls-cert", missing}, 2, "--tls-cert: loading TLS certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ftpalg.toml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errOut strings.Builder
			code := mainErr(append([]string{"run", "--config", path, "--check-config"}, tc.flags...), &out, &errOut)
			want := "ftpalg: " + path + tc.prefix
			if tc.flags != nil {
				want = "ftpalg: " + tc.prefix
			}
			if code != tc.code || (tc.code != 0 && (!strings.HasPrefix(errOut.String(), want) || strings.Count(errOut.String(), "\n") != 1)) {
				t.Errorf("exit %d, stderr %q; want exit %d and one line starting %q", code, errOut.String(), tc.code, want)
			}
		})
	}
}

// TestRestartOnly: what a reload may change and what needs a restart.
func TestRestartOnly(t *testing.T) {
	a, _ := parseConfig([]byte(reverseBase))
	b := a
	b.MaxPerClient, b.PinholeTTL, b.LogLevel, b.TLS = 1, Duration(time.Second), "debug", "passthrough"
	if got := restartOnly(a, b); len(got) != 0 {
		t.Errorf("reloadable changes flagged as restart-only: %v", got)
	}
	b.Mode, b.Backend, b.Listen = ModeGateway, "relay", []string{"203.0.113.1:2121"}
	if got := restartOnly(a, b); !slices.Equal(got, []string{"mode", "listen", "backend"}) {
		t.Errorf("restartOnly = %v, want mode, listen, backend", got)
	}
}

// FuzzParseConfig: the parser never panics, and whatever it accepts
// validates and survives a round trip through the flags.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(reverseBase))
	f.Add([]byte("intercept = [\"eth1\"]\n"))
	f.Add([]byte(reverseBase + "pinhole-ttl = \"10s\"\nmax-line = 512\ntls = \"passthrough\"\n"))
	f.Add([]byte("mode = \"reverse\n"))
	f.Add([]byte("[policy]\nx=1\n"))
	f.Add([]byte(reverseBase + "idle-timeout = 600\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			var ce *configError
			if !errors.As(err, &ce) || ce.Key == "" {
				t.Fatalf("error without a key: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted but invalid: %v", err)
		}
		// Lists join with commas: only the scalar options round-trip.
		d := DefaultConfig()
		for _, o := range options {
			if _, isList := o.bind(&c).(*listVar); isList {
				continue
			}
			if err := o.bind(&d).Set(o.bind(&c).String()); err != nil {
				t.Fatalf("%s: %q does not parse back: %v", o.name, o.bind(&c).String(), err)
			}
			if o.bind(&d).String() != o.bind(&c).String() {
				t.Fatalf("%s: %q round-trips to %q", o.name, o.bind(&c).String(), o.bind(&d).String())
			}
		}
	})
}

// TestCommandLine: what a new user meets first.
func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args         []string
		code         int
		out, errText string
	}{
		{[]string{"--version"}, 0, "ftpalg ", ""},
		{[]string{"version", "x"}, 2, "", "ftpalg: version takes no arguments\n"},
		{[]string{"run", "-h"}, 0, "examples:", ""},
		{[]string{"rules", "-h"}, 0, "usage: ftpalg rules list|flush", ""},
		{[]string{"rules"}, 2, "", "ftpalg: rules: want list or flush (see 'ftpalg rules -h')\n"},
		{[]string{"status", "-h"}, 0, "usage: ftpalg status", ""},
		{[]string{"status", "-h"}, 0, "\n  --socket auto|PATH\n", ""},
		{[]string{"inspect", "-h"}, 0, "\n  --ports PORT[,PORT]\n", ""},
		{[]string{"lab", "-h"}, 0, "\n  --capture FILE\n", ""},
		{[]string{"run", "--drain", "5"}, 2, "", "ftpalg: run: invalid value \"5\" for flag -drain: want a duration such as \"30s\" or \"2m\" (missing unit) (see 'ftpalg run -h')\n"},
		{[]string{"run", "--drain", "soon"}, 2, "", "ftpalg: run: invalid value \"soon\" for flag -drain: want a duration such as \"30s\" or \"2m\" (see 'ftpalg run -h')\n"},
		{[]string{"status", "extra"}, 2, "", "ftpalg: status: unexpected arguments [\"extra\"]\n"},
		{[]string{"status", "--socket", "/nonexistent/ftpalg.sock"}, 1, "",
			"ftpalg: no ftpalg answers on /nonexistent/ftpalg.sock (is it running in this network namespace?): no such file or directory\n"},
		{[]string{"run", "--max-session", "5"}, 2, "", "ftpalg: run: flag provided but not defined: -max-session (did you mean --max-sessions?)\n"},
		{[]string{"status", "--jsn"}, 2, "", "ftpalg: status: flag provided but not defined: -jsn (did you mean --json?)\n"},
		{[]string{"run", "--bogus"}, 2, "", "ftpalg: run: flag provided but not defined: -bogus (see 'ftpalg run -h')\n"},
		{[]string{"lab", "--bogus"}, 2, "", "ftpalg: lab: flag provided but not defined: -bogus (see 'ftpalg lab -h')\n"},
		{[]string{"inspect", "--bogus", "x"}, 2, "", "ftpalg: inspect: flag provided but not defined: -bogus (see 'ftpalg inspect -h')\n"},
		{[]string{"run", "--mode", "gateway"}, 2, "", "ftpalg: intercept: gateway mode needs the interfaces to intercept (IFACE[,IFACE])\n"},
		{[]string{"nope"}, 2, "", "ftpalg: unknown command \"nope\" (see 'ftpalg -h' for the commands)\n"},
	} {
		var out, errOut strings.Builder
		code := mainErr(tc.args, &out, &errOut)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || (tc.errText != "" && errOut.String() != tc.errText) ||
			(tc.errText == "" && errOut.String() != "") {
			t.Errorf("ftpalg %q: exit %d, stdout %.80q, stderr %q; want exit %d, stdout with %q, stderr %q",
				tc.args, code, out.String(), errOut.String(), tc.code, tc.out, tc.errText)
		}
	}
	// run -h: a synopsis, every flag in its group, two examples.
	var out strings.Builder
	mainErr([]string{"run", "-h"}, &out, io.Discard)
	for _, g := range groups {
		if !strings.Contains(out.String(), "\n"+g+":\n") {
			t.Errorf("run -h lacks the group %q", g)
		}
	}
	for _, o := range options {
		if !strings.Contains(out.String(), "  --"+o.name+" ") && !strings.Contains(out.String(), "  --"+o.name+"\n") {
			t.Errorf("run -h lacks --%s", o.name)
		}
	}
	if strings.Contains(out.String(), " VALUE\n") || strings.Contains(out.String(), " |") {
		t.Errorf("run -h names a value VALUE, not what it is:\n%s", out.String())
	}
	if strings.Count(out.String(), "  ftpalg run --mode") != 2 {
		t.Errorf("run -h does not show two examples:\n%s", out.String())
	}
}

// TestManPage: every option is in the man page, and it is well-formed
// roff (man -l renders it without warnings when man is installed).
func TestManPage(t *testing.T) {
	var b strings.Builder
	writeManPage(&b)
	for _, o := range options {
		if !strings.Contains(b.String(), `\fB\-\-`+strings.ReplaceAll(o.name, "-", `\-`)+`\fR`) {
			t.Errorf("the man page lacks --%s", o.name)
		}
	}
	if !strings.HasPrefix(b.String(), ".TH FTPALG 8 ") {
		t.Errorf("no .TH header")
	}
}

func TestUsageHidesManpage(t *testing.T) {
	if strings.Contains(usage(), "manpage") {
		t.Error("the hidden manpage command is listed")
	}
}
