package main

// TLS termination (--tls terminate, issue 12): the options, their checks,
// and the wiring of the terminator, the relay that carries the protected
// data connections and the implicit FTPS listeners.

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/relay"
)

// TLSConfig is the configuration of --tls terminate.
type TLSConfig struct {
	TLSCert           string   `toml:"tls-cert"`
	TLSKey            string   `toml:"tls-key"`
	TLSImplicitListen []string `toml:"tls-implicit-listen"`
	TLSRequire        bool     `toml:"tls-require"`
	TLSRequireProt    bool     `toml:"tls-require-prot"`
	TLSUpstream       string   `toml:"tls-upstream"`
	TLSUpstreamCA     string   `toml:"tls-upstream-ca"`
	TLSUpstreamName   string   `toml:"tls-upstream-name"`
	TLSInsecure       bool     `toml:"tls-upstream-insecure"`
	TLSUpstreamMax    string   `toml:"tls-upstream-max-version"`
}

var (
	tlsUpstreams   = []string{"plain", "explicit", "implicit"}
	tlsMaxVersions = []string{"", "1.2", "1.3"}
)

// The group of the TLS options in -h and the man page.
const tlsGroup = "FTPS, --tls terminate (reverse mode)"

// tlsOptions are the flags and file keys of TLS termination. The
// certificate files are re-read on SIGHUP; the rest needs a restart, but
// for the two requirements, which are policy.
var tlsOptions = []option{
	{"tls-cert", tlsGroup, "PEM certificate chain ftpalg presents to clients (re-read on SIGHUP)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.TLSCert) }},
	{"tls-key", tlsGroup, "PEM private key of --tls-cert (re-read on SIGHUP)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.TLSKey) }},
	{"tls-implicit-listen", tlsGroup, "implicit FTPS listener ADDR:PORT (port 990 style), repeatable", false,
		func(c *Config) flag.Value { return &listVar{p: &c.TLSImplicitListen} }},
	{"tls-require", tlsGroup, "refuse USER before AUTH TLS", true,
		func(c *Config) flag.Value { return (*boolVar)(&c.TLSRequire) }},
	{"tls-require-prot", tlsGroup, "refuse data connections before PROT P", true,
		func(c *Config) flag.Value { return (*boolVar)(&c.TLSRequireProt) }},
	{"tls-upstream", tlsGroup, "how the server is reached: plain (TLS offload), explicit (AUTH TLS) or implicit FTPS", false,
		func(c *Config) flag.Value { return enumVar{&c.TLSUpstream, tlsUpstreams} }},
	{"tls-upstream-ca", tlsGroup, "PEM CA bundle the server's certificate is verified with (default: the system roots)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.TLSUpstreamCA) }},
	{"tls-upstream-name", tlsGroup, "name the server's certificate must carry (default: the server's IP address)", false,
		func(c *Config) flag.Value { return (*stringVar)(&c.TLSUpstreamName) }},
	{"tls-upstream-insecure", tlsGroup, "do not verify the server's certificate (a warning at start)", false,
		func(c *Config) flag.Value { return (*boolVar)(&c.TLSInsecure) }},
	{"tls-upstream-max-version", tlsGroup, "highest TLS version toward the server: 1.2 or 1.3 (default: the highest)", false,
		func(c *Config) flag.Value { return enumVar{&c.TLSUpstreamMax, tlsMaxVersions} }},
}

func init() {
	options = append(options, tlsOptions...)
	groups = append(groups, tlsGroup)
}

// validateTLS checks the TLS options (c.TLS is already one of tlsModes).
func (c *Config) validateTLS() error {
	t := c.TLSConfig
	if c.TLS != "terminate" {
		if t.TLSCert != "" || t.TLSKey != "" || len(t.TLSImplicitListen) > 0 || t.TLSRequire || t.TLSRequireProt ||
			t.TLSUpstream != "plain" || t.TLSUpstreamCA != "" || t.TLSUpstreamName != "" || t.TLSInsecure || t.TLSUpstreamMax != "" {
			return bad("tls", "the tls-* settings need tls = \"terminate\"")
		}
		return nil
	}
	if c.Mode != ModeReverse {
		return bad("tls", "terminate is for reverse mode (gateway TLS inspection is not built)")
	}
	if c.AllowTLS {
		return bad("allow-tls", "contradicts tls = \"terminate\"")
	}
	if t.TLSCert == "" || t.TLSKey == "" {
		return bad("tls-cert", "tls = \"terminate\" needs tls-cert and tls-key")
	}
	if !slices.Contains(tlsUpstreams, t.TLSUpstream) {
		return bad("tls-upstream", "%q: want plain, explicit or implicit", t.TLSUpstream)
	}
	if !slices.Contains(tlsMaxVersions, t.TLSUpstreamMax) {
		return bad("tls-upstream-max-version", "%q: want 1.2 or 1.3", t.TLSUpstreamMax)
	}
	for _, s := range t.TLSImplicitListen {
		if _, err := netip.ParseAddrPort(s); err != nil {
			return bad("tls-implicit-listen", "%q: want ADDR:PORT, e.g. 203.0.113.1:990", s)
		}
	}
	return nil
}

// checkTLSFiles loads the files --tls terminate names, so that
// --check-config, the start (before anything is installed) and a reload
// refuse a missing or unreadable certificate, key or CA bundle as a
// configuration error naming its key.
func (c *Config) checkTLSFiles() error {
	if c.TLS != "terminate" {
		return nil
	}
	if _, err := ftps.LoadCert(c.TLSCert, c.TLSKey); err != nil {
		return bad("tls-cert", "%v", err)
	}
	if c.TLSUpstreamCA != "" {
		if _, err := ftps.LoadRootCAs(c.TLSUpstreamCA); err != nil {
			return bad("tls-upstream-ca", "%v", err)
		}
	}
	return nil
}

// tlsPolicy sets the TLS part of p.
func (c *Config) tlsPolicy(p *alg.Policy) {
	switch {
	case c.TLS == "terminate":
		p.TLS = alg.TLSTerminate
		p.RequireTLS, p.RequireProtP = c.TLSRequire, c.TLSRequireProt
	case c.TLS == "passthrough" || c.AllowTLS:
		p.TLS = alg.TLSPassthrough
	}
}

// setupTLS loads the certificate and makes the terminator and the backend
// of the data connections it carries: the relay, let in through the
// firewall when there is one (b is the kernel backend, or the relay).
func (d *daemon) setupTLS(b rules.Backend) error {
	c := d.cfg
	if c.TLS != "terminate" {
		return nil
	}
	t := c.TLSConfig
	cert, err := ftps.LoadCert(t.TLSCert, t.TLSKey)
	if err != nil {
		return err
	}
	mode, err := ftps.ParseUpstreamMode(t.TLSUpstream)
	if err != nil {
		return usagef("--tls-upstream: %v", err)
	}
	cfg := ftps.Config{Cert: cert, Upstream: mode, ServerName: t.TLSUpstreamName, InsecureSkipVerify: t.TLSInsecure}
	switch t.TLSUpstreamMax {
	case "1.2":
		cfg.MaxUpstreamVersion = tls.VersionTLS12
	case "1.3":
		cfg.MaxUpstreamVersion = tls.VersionTLS13
	}
	if t.TLSUpstreamCA != "" {
		if cfg.RootCAs, err = ftps.LoadRootCAs(t.TLSUpstreamCA); err != nil {
			return err
		}
	}
	term, err := ftps.New(cfg)
	if err != nil {
		return err
	}
	if mode != ftps.UpstreamPlain && t.TLSInsecure {
		d.log.Warn("the FTPS server's certificate is not verified (--tls-upstream-insecure)")
	}
	d.cert = cert
	d.proxy.TLS = term
	if d.relay != nil {
		d.proxy.TLSBackend = d.relay
	} else {
		rl := relay.New(relay.Config{Log: d.log})
		d.pool.InUse = portBusy
		d.proxy.TLSBackend = d.met.timed(rl.Through(b))
		d.cleanups = append(d.cleanups, func() {
			sctx, cancel := context.WithTimeout(context.Background(), d.config().Drain.D())
			defer cancel()
			if err := rl.Shutdown(sctx); err != nil {
				d.log.Warn("relay shutdown", "err", err)
			}
		})
	}
	d.log.Info("TLS termination", "upstream", mode.String(), "cert_subject", cert.Leaf().Subject.String(),
		"cert_not_after", cert.Leaf().NotAfter.String(), "require_tls", t.TLSRequire, "require_prot_p", t.TLSRequireProt)
	return nil
}

// listenImplicit opens the implicit FTPS listeners.
func (d *daemon) listenImplicit() error {
	for _, s := range d.cfg.TLSImplicitListen {
		ln, err := listen("tcp", s)
		if err != nil {
			return fmt.Errorf("listening for implicit FTPS on %s: %w", s, err)
		}
		ln = alg.ImplicitTLS(ln)
		d.listens = append(d.listens, ln)
		d.cleanups = append(d.cleanups, func() { ln.Close() })
	}
	return nil
}

// reloadCert re-reads the certificate files on SIGHUP: new handshakes use
// them, a bad file keeps the old certificate.
func (d *daemon) reloadCert() {
	if d.cert == nil {
		return
	}
	if err := d.cert.Reload(); err != nil {
		d.log.Error("TLS certificate reload failed: keeping the running one", "err", err)
		return
	}
	d.log.Info("TLS certificate reloaded", "cert_subject", d.cert.Leaf().Subject.String(),
		"cert_not_after", d.cert.Leaf().NotAfter.String())
}

// tlsRestart reports the tls key when a reload would turn termination on
// or off: that needs the terminator and its relay, built at start.
func tlsRestart(a, b Config) []string {
	if (a.TLS == "terminate") != (b.TLS == "terminate") {
		return []string{"tls"}
	}
	return nil
}
