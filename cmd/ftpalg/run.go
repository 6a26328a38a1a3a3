package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/iptables"
	"github.com/ftpalg/ftpalg/rules/relay"
)

func init() {
	register("run", "run the ALG (gateway or reverse mode)", runCmd)
}

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = runUsage(fs)
	c, path, check, err := loadConfig(args, fs)
	if err != nil {
		return err
	}
	if check {
		src := "flags"
		if path != "" {
			src = path + " and flags"
		}
		fmt.Fprintf(stdout, "configuration OK (%s): mode %s, backend %s\n", src, c.Mode, c.Backend)
		return nil
	}
	lvl := new(slog.LevelVar)
	log, err := newDaemonLogger(stderr, c.LogFormat, c.LogTarget, lvl)
	if err != nil {
		return err
	}
	lvl.Set(parseLevel(c.LogLevel))
	d := &daemon{cfg: c, args: args, path: path, lvl: lvl, met: newMetrics()}
	d.log = slog.New(d.met.tap(log.Handler()))
	return d.run(ctx)
}

// daemon is one run of `ftpalg run`: the configuration and what it built.
type daemon struct {
	args []string // to re-read the file and flags on SIGHUP
	path string
	lvl  *slog.LevelVar
	log  *slog.Logger
	met  *metrics

	mu  sync.Mutex // guards cfg after start (reload)
	cfg Config

	pool     *nat.Pool
	proxy    *alg.Proxy
	backend  string          // the backend in use, after auto
	fw       firewallBackend // nil with the relay backend (backend.go)
	relay    *relay.Backend  // nil with a firewall backend
	listens  []net.Listener
	cert     *ftps.Cert // with --tls terminate: re-read on SIGHUP
	holes    pinholes
	obs      observers // handed to the proxy before it serves
	ready    atomic.Bool
	serving  chan struct{} // closed once the proxy serves: reload and EndDrain may use it
	started  time.Time
	cleanups []func()
}

func (d *daemon) config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

func (d *daemon) run(ctx context.Context) (err error) {
	d.started = time.Now()
	d.serving = make(chan struct{})
	// Signals are handled from the start to the end of the cleanups: a
	// SIGHUP while the firewall is set up or torn down must not kill
	// ftpalg half-way.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopSignals := d.handleSignals(cancel)
	defer stopSignals()
	defer func() {
		for i := len(d.cleanups) - 1; i >= 0; i-- {
			d.cleanups[i]()
		}
	}()
	c := d.cfg
	// The metrics listener comes first: /readyz answers "not ready" while
	// the rest starts. The status socket once the firewall lock is taken
	// (in build): a second ftpalg is refused by the lock.
	if err := d.serveMetrics(ctx); err != nil {
		return err
	}
	if err := d.preflight(); err != nil {
		return err
	}
	if err := d.build(ctx); err != nil {
		return err
	}
	if err := d.serveStatus(ctx); err != nil {
		return err
	}
	for _, s := range c.Listen {
		ln, err := listen("tcp", s)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", s, err)
		}
		d.listens = append(d.listens, ln)
		d.cleanups = append(d.cleanups, func() { ln.Close() }) // Serve closes it too; harmless
	}
	if err := d.listenImplicit(); err != nil {
		return err
	}
	if err := d.installFirewall(ctx); err != nil {
		return err
	}
	d.watchConntrack(ctx)

	names := make([]string, len(d.listens))
	for i, l := range d.listens {
		names[i] = l.Addr().String()
	}
	attrs := []any{"mode", string(c.Mode), "listen", strings.Join(names, ","), "backend", d.backend,
		"data_ports", c.DataPorts, "pinhole_ttl", c.PinholeTTL.D()}
	if ipt, ok := d.fw.(*iptables.Backend); ok {
		attrs = append(attrs, "iptables", ipt.Variant())
	}
	if c.Mode == ModeGateway {
		attrs = append(attrs, "intercept", strings.Join(c.Intercept, ","))
	} else {
		attrs = append(attrs, "upstream", strings.Join(c.Upstream, ","))
	}
	if d.path != "" {
		attrs = append(attrs, "config", d.path)
	}
	d.ready.Store(true)
	sdNotify(d.log, "READY=1\nSTATUS=serving")
	d.log.Info("ftpalg running", attrs...)

	sctx := ctx
	d.proxy.Observer = d.obs
	close(d.serving)
	stopWatchdog := sdWatchdog(d.log)
	defer stopWatchdog()

	// Serve every listener; the first error (or the signal) ends all.
	errs := make(chan error, len(d.listens))
	var wg sync.WaitGroup
	for _, l := range d.listens {
		wg.Go(func() {
			if err := d.proxy.Serve(sctx, l); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	<-sctx.Done()
	d.ready.Store(false)
	sdNotify(d.log, "STOPPING=1")
	wg.Wait()
	close(errs)
	d.log.Info("ftpalg stopping")
	return <-errs
}

// preflight refuses what would fail half-way: a missing privilege, an
// interface that does not exist.
func (d *daemon) preflight() error {
	c := d.cfg
	if c.Backend != "relay" && !hasCap(capNetAdmin) {
		return errors.New("CAP_NET_ADMIN is missing: ftpalg changes the firewall (run it as root or from its systemd unit; reverse mode can use --backend relay without it)")
	}
	for _, name := range c.Intercept {
		if _, err := net.InterfaceByName(name); err != nil {
			return usagef("--intercept %s: no such interface", name)
		}
	}
	return nil
}

// build puts together the pool, the backend and the proxy.
func (d *daemon) build(ctx context.Context) error {
	c := d.cfg
	lo, hi, _ := nat.ParseRange(c.DataPorts) // validated
	var err error
	if d.pool, err = nat.NewPool(lo, hi); err != nil {
		return usagef("--data-ports: %v", err)
	}
	d.proxy = &alg.Proxy{Log: d.log}
	d.proxy.Reload(limitsOf(c))
	switch c.Mode {
	case ModeGateway:
		d.proxy.Upstream = originalDst(newLocalAddrs(ctx, d.log))
		d.proxy.Transparent = true
		d.proxy.Planner = &nat.Gateway{Pool: d.pool}
	case ModeReverse:
		var up []netip.AddrPort
		for _, u := range c.Upstream {
			addrs, err := resolveUpstream(ctx, u)
			if err != nil {
				return err
			}
			up = append(up, addrs...)
		}
		var public netip.Addr
		if c.PublicAddr != "" {
			public = netip.MustParseAddr(c.PublicAddr).Unmap() // validated
		}
		d.proxy.Upstream = upstreamFor(up)
		d.proxy.Planner = &nat.Reverse{Pool: d.pool, Public: public}
	}
	var b rules.Backend
	kind, reason := resolveBackend(c.Backend)
	switch d.backend = kind; kind {
	case "nftables", "iptables":
		if err := d.setupFirewall(ctx, kind, reason); err != nil {
			return err
		}
		b = d.fw
	case "relay":
		rl := relay.New(relay.Config{Log: d.log})
		d.relay = rl
		b = rl
		// A pool port that something on this host already uses cannot
		// be listened on: skip it.
		d.pool.InUse = portBusy
		d.cleanups = append(d.cleanups, func() {
			sctx, cancel := context.WithTimeout(context.Background(), d.config().Drain.D())
			defer cancel()
			if err := rl.Shutdown(sctx); err != nil {
				d.log.Warn("relay shutdown", "err", err)
			}
		})
	default:
		return usagef("--backend %s is not available in this build", c.Backend)
	}
	d.proxy.Backend = d.met.timed(b)
	if err := d.setupTLS(b); err != nil {
		return err
	}
	// The pinhole table (status) and its metrics; conntrack adds its
	// watcher. The proxy gets them all before it serves.
	d.obs = append(d.obs, tableObserver{d})
	d.met.watchProxy(d.proxy, d.holes.count)
	return nil
}

// limitsOf is the part of c that a reload may change.
func limitsOf(c Config) alg.Limits {
	return alg.Limits{
		Policy:         c.Policy(),
		MaxSessions:    c.MaxSessions,
		MaxPerClient:   c.MaxPerClient,
		ConnectTimeout: c.ConnectTimout.D(),
		DrainTimeout:   c.Drain.D(),
	}
}

// installFirewall makes the listeners reachable: interception in gateway
// mode (only once the listener is up: no connection is redirected into a
// closed port), the listeners opened in reverse mode.
func (d *daemon) installFirewall(ctx context.Context) error {
	if d.fw == nil {
		return nil
	}
	switch d.cfg.Mode {
	case ModeGateway:
		port := d.listens[0].Addr().(*net.TCPAddr).Port
		if err := d.fw.Intercept(ctx, d.cfg.Intercept, uint16(port)); err != nil {
			return fmt.Errorf("installing interception: %w", err)
		}
	case ModeReverse:
		var aps []netip.AddrPort
		for _, l := range d.listens {
			aps = append(aps, l.Addr().(*net.TCPAddr).AddrPort())
		}
		if err := d.fw.AllowListeners(ctx, aps); err != nil {
			return fmt.Errorf("opening the listeners in the firewall: %w", err)
		}
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
