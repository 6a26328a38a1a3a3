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
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/rules/iptables"
	"github.com/ftpalg/ftpalg/rules/relay"
)

func init() {
	register("run", "run the ALG (gateway or reverse mode)", func(ctx context.Context, args []string, _, stderr io.Writer) error {
		return runCmd(ctx, args, stderr)
	})
}

type runConfig struct {
	mode         string
	intercept    string
	listen       []string
	upstream     []string
	publicAddr   string
	backend      string
	pinholeTTL   time.Duration
	dataPorts    string
	minDataPort  uint
	allowTLS     bool
	maxSessions  int
	maxPerClient int
	logFormat    string
	logLevel     string
	noConntrack  bool
	drain        time.Duration
	loginTimeout time.Duration
	idleTimeout  time.Duration
	connTimeout  time.Duration
}

func runFlags(fs *flag.FlagSet) *runConfig {
	c := &runConfig{}
	def := alg.DefaultPolicy()
	fs.StringVar(&c.mode, "mode", "gateway", "gateway: intercept port 21 crossing this router; reverse: publish one FTP server (--upstream)")
	fs.StringVar(&c.intercept, "intercept", "", "gateway: interfaces (comma-separated) whose port-21 traffic is intercepted")
	fs.Func("listen", "proxy listener address, repeatable (gateway default [::]:2121, dual-stack; reverse: required)", func(s string) error {
		c.listen = append(c.listen, s)
		return nil
	})
	fs.Func("upstream", "reverse: the published server, HOST:PORT, repeatable (one per family; a name may resolve to both)", func(s string) error {
		c.upstream = append(c.upstream, s)
		return nil
	})
	fs.StringVar(&c.publicAddr, "public-addr", "", "reverse: address announced to clients (default: the address the client dialled)")
	fs.StringVar(&c.backend, "backend", "iptables", "pinhole backend: iptables, or relay (userspace, no privileges; reverse mode)")
	fs.DurationVar(&c.pinholeTTL, "pinhole-ttl", def.PinholeTTL, "how long an announced, unused pinhole stays open")
	fs.StringVar(&c.dataPorts, "data-ports", "40000-40999", "pool of this host's ports for translated data endpoints (LO-HI)")
	fs.UintVar(&c.minDataPort, "min-data-port", uint(def.MinDataPort), "data ports below this are refused")
	fs.BoolVar(&c.allowTLS, "allow-tls", false, "let AUTH TLS through (the ALG is then blind and opens nothing for that session)")
	fs.IntVar(&c.maxSessions, "max-sessions", 1024, "concurrent control sessions")
	fs.IntVar(&c.maxPerClient, "max-sessions-per-client", 32, "concurrent control sessions per client address")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.BoolVar(&c.noConntrack, "no-conntrack", false, "do not watch conntrack (no first-use close, no per-transfer log)")
	fs.DurationVar(&c.drain, "drain", 10*time.Second, "on SIGTERM/SIGINT, how long running sessions may finish")
	fs.DurationVar(&c.loginTimeout, "login-timeout", def.LoginTimeout, "end a session not logged in (no 230) by then")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", def.IdleTimeout, "end a session whose control channel is idle this long (never during a transfer)")
	fs.DurationVar(&c.connTimeout, "connect-timeout", 10*time.Second, "bound on dialling the server")
	return c
}

// wiring is what one run puts together.
type wiring struct {
	log      *slog.Logger
	pol      alg.Policy
	pool     *nat.Pool
	proxy    *alg.Proxy
	ipt      *iptables.Backend // nil with the relay backend
	relay    *relay.Backend    // nil with the iptables backend
	listens  []netip.AddrPort
	cleanups []func()
}

func runCmd(ctx context.Context, args []string, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := runFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("run: unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(stderr, c.logFormat, c.logLevel)
	if err != nil {
		return err
	}
	rt := &wiring{log: log}
	defer func() {
		for i := len(rt.cleanups) - 1; i >= 0; i-- {
			rt.cleanups[i]()
		}
	}()
	if err := rt.configure(c); err != nil {
		return err
	}

	switch c.mode {
	case "gateway":
		err = rt.gateway(ctx, c)
	case "reverse":
		err = rt.reverse(ctx, c)
	}
	if err != nil {
		return err
	}

	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close() // Serve closes them too; a second Close is harmless
		}
	}()
	for _, ap := range rt.listens {
		ln, err := net.Listen("tcp", ap.String())
		if err != nil {
			return fmt.Errorf("listening: %w", err)
		}
		lns = append(lns, ln)
	}
	if c.mode == "gateway" {
		// Interception only once the listener is up: no connection is
		// redirected into a closed port.
		if err := rt.ipt.Intercept(ctx, splitList(c.intercept), rt.listens[0].Port()); err != nil {
			return fmt.Errorf("installing interception: %w", err)
		}
	}
	rt.watchConntrack(ctx, c)

	names := make([]string, len(lns))
	for i, l := range lns {
		names[i] = l.Addr().String()
	}
	attrs := []any{"mode", c.mode, "listen", strings.Join(names, ","), "backend", c.backend,
		"data_ports", c.dataPorts, "pinhole_ttl", c.pinholeTTL.String()}
	if rt.ipt != nil {
		attrs = append(attrs, "iptables", rt.ipt.Variant())
	}
	if c.mode == "gateway" {
		attrs = append(attrs, "intercept", c.intercept)
	} else {
		attrs = append(attrs, "upstream", strings.Join(c.upstream, ","))
	}
	log.Info("ftpalg running", attrs...)

	// Serve every listener; the first error (or the signal) ends all.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, l := range lns {
		wg.Go(func() {
			if err := rt.proxy.Serve(sctx, l); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	wg.Wait()
	close(errs)
	log.Info("ftpalg stopping")
	return <-errs
}

// configure checks the flags and builds what every mode shares.
func (rt *wiring) configure(c *runConfig) error {
	switch c.mode {
	case "gateway":
		if len(splitList(c.intercept)) == 0 {
			return usagef("--mode gateway needs --intercept IFACE[,IFACE]")
		}
		if len(c.upstream) > 0 || c.publicAddr != "" {
			return usagef("--upstream and --public-addr are for --mode reverse")
		}
		if c.backend != "iptables" {
			return usagef("--mode gateway needs --backend iptables (it intercepts with the firewall)")
		}
		if len(c.listen) == 0 {
			c.listen = []string{"[::]:2121"}
		}
		if len(c.listen) > 1 {
			return usagef("--mode gateway takes one --listen (dual-stack [::]:PORT covers both families)")
		}
	case "reverse":
		if c.intercept != "" {
			return usagef("--intercept is for --mode gateway")
		}
		if len(c.upstream) == 0 {
			return usagef("--mode reverse needs --upstream HOST:PORT")
		}
		if len(c.listen) == 0 {
			return usagef("--mode reverse needs --listen ADDR (repeatable)")
		}
		if c.backend != "iptables" && c.backend != "relay" {
			return usagef("--backend %q: want iptables or relay", c.backend)
		}
	default:
		return usagef("--mode %q: want gateway or reverse", c.mode)
	}
	for _, s := range c.listen {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return usagef("--listen %q: want ADDR:PORT, e.g. 203.0.113.1:21 or [::]:2121", s)
		}
		if c.mode == "gateway" && (!ap.Addr().IsUnspecified() || ap.Addr().Is4()) {
			// REDIRECT delivers to the incoming interface's own address,
			// IPv4 and IPv6 alike: only the dual-stack wildcard gets both.
			return usagef("--mode gateway needs --listen [::]:PORT (the dual-stack wildcard), not %s", s)
		}
		rt.listens = append(rt.listens, ap)
	}
	lo, hi, err := nat.ParseRange(c.dataPorts)
	if err != nil {
		return usagef("--data-ports: %v", err)
	}
	if c.minDataPort > 65535 {
		return usagef("--min-data-port %d out of range", c.minDataPort)
	}
	if uint(lo) < c.minDataPort {
		return usagef("--data-ports %s starts below --min-data-port %d", c.dataPorts, c.minDataPort)
	}
	if rt.pool, err = nat.NewPool(lo, hi); err != nil {
		return usagef("--data-ports: %v", err)
	}
	rt.pol = alg.DefaultPolicy()
	rt.pol.PinholeTTL = c.pinholeTTL
	rt.pol.MinDataPort = uint16(c.minDataPort)
	rt.pol.AllowTLS = c.allowTLS
	rt.pol.LoginTimeout = c.loginTimeout
	rt.pol.IdleTimeout = c.idleTimeout
	if err := rt.pol.Validate(); err != nil {
		return usagef("%v", err)
	}
	rt.proxy = &alg.Proxy{
		Policy:         rt.pol,
		Log:            rt.log,
		MaxSessions:    c.maxSessions,
		MaxPerClient:   c.maxPerClient,
		DrainTimeout:   c.drain,
		ConnectTimeout: c.connTimeout,
	}
	if c.maxSessions < 1 || c.maxPerClient < 1 || c.connTimeout <= 0 || c.drain <= 0 {
		return usagef("--max-sessions, --max-sessions-per-client, --connect-timeout and --drain must be positive")
	}
	return nil
}

// iptables sets up the iptables backend: leftovers of a crashed run swept,
// chains and jumps installed, all removed again at exit.
func (rt *wiring) iptables(ctx context.Context) error {
	lock, err := lockFirewall()
	if err != nil {
		return err
	}
	// Closed last (cleanups run in reverse): after Teardown.
	rt.cleanups = append(rt.cleanups, func() { lock.Close() })
	ipt, err := iptables.New(iptables.Config{Log: rt.log})
	if err != nil {
		return err
	}
	if err := ipt.Setup(ctx); err != nil {
		return fmt.Errorf("installing firewall chains: %w", err)
	}
	rt.ipt = ipt
	rt.proxy.Backend = ipt
	// Someone else may flush ftpalg's chains or remove its jumps
	// (firewall-cmd --reload, a firewall restart): notice within seconds,
	// log it and re-install the skeleton and the live pinholes.
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		ipt.Watch(wctx, 2*time.Second)
	}()
	rt.cleanups = append(rt.cleanups, func() {
		stopWatch()
		<-watched
		// Not ctx: it is cancelled by the signal that brought us here.
		tctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := ipt.Teardown(tctx); err != nil {
			rt.log.Error("removing firewall rules", "err", err)
		} else {
			rt.log.Info("firewall rules removed")
		}
	})
	return nil
}

func (rt *wiring) gateway(ctx context.Context, c *runConfig) error {
	if err := rt.iptables(ctx); err != nil {
		return err
	}
	rt.proxy.Upstream = originalDst
	rt.proxy.Transparent = true
	rt.proxy.Planner = &nat.Gateway{Pool: rt.pool}
	return nil
}

func (rt *wiring) reverse(ctx context.Context, c *runConfig) error {
	var up []netip.AddrPort
	for _, u := range c.upstream {
		addrs, err := resolveUpstream(ctx, u)
		if err != nil {
			return err
		}
		up = append(up, addrs...)
	}
	var public netip.Addr
	if c.publicAddr != "" {
		var err error
		if public, err = netip.ParseAddr(c.publicAddr); err != nil {
			return usagef("--public-addr %q: %v", c.publicAddr, err)
		}
		public = public.Unmap()
	}
	rt.proxy.Upstream = upstreamFor(up)
	rt.proxy.Planner = &nat.Reverse{Pool: rt.pool, Public: public}
	switch c.backend {
	case "iptables":
		if err := rt.iptables(ctx); err != nil {
			return err
		}
		if err := rt.ipt.AllowListeners(ctx, rt.listens); err != nil {
			return fmt.Errorf("opening the listeners in the firewall: %w", err)
		}
	case "relay":
		rl := relay.New(relay.Config{Log: rt.log})
		rt.relay = rl
		rt.proxy.Backend = rl
		// A pool port that something on this host already uses cannot
		// be listened on: skip it.
		rt.pool.InUse = portBusy
		rt.cleanups = append(rt.cleanups, func() {
			sctx, cancel := context.WithTimeout(context.Background(), c.drain)
			defer cancel()
			if err := rl.Shutdown(sctx); err != nil {
				rt.log.Warn("relay shutdown", "err", err)
			}
		})
	}
	return nil
}

// watchConntrack closes pinholes at first use and logs one line per data
// transfer, when the kernel lets us watch conntrack (CAP_NET_ADMIN). The
// relay backend sees first use itself.
func (rt *wiring) watchConntrack(ctx context.Context, c *runConfig) {
	if c.noConntrack || rt.ipt == nil {
		return
	}
	// Which side opened each used pinhole's connection, for the transfer
	// line; an entry lives from first use to the flow's end.
	var passive sync.Map // rules.PinholeID -> bool
	w, err := conntrack.NewWatcher(conntrack.Config{
		Log: rt.log,
		OnUse: func(id rules.PinholeID, f conntrack.Flow) {
			// It does not block: the session queues the close.
			rt.proxy.PinholeUsed(id)
		},
		OnEnd: func(id rules.PinholeID, f conntrack.FlowEnd) {
			attrs := []slog.Attr{slog.String("pinhole", id.String()), slog.String("session", rules.SessionName(id.Session))}
			if v, ok := passive.LoadAndDelete(id); ok {
				attrs = append(attrs, transferAttrs(f, v.(bool))...)
			}
			rt.log.LogAttrs(context.Background(), slog.LevelInfo, "transfer", append(attrs, f.LogAttrs()...)...)
		},
	})
	if err != nil {
		rt.log.Warn("conntrack unavailable: pinholes close on the transfer's reply or TTL only, no transfer lines", "err", err)
		return
	}
	rt.proxy.Observer = &watchObserver{w: w, passive: &passive}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(wctx); err != nil && wctx.Err() == nil {
			rt.log.Error("conntrack watcher stopped", "err", err)
		}
	}()
	rt.cleanups = append(rt.cleanups, func() { stop(); <-done })
}

// watchObserver has conntrack watch each pinhole's data connection.
type watchObserver struct {
	w       *conntrack.Watcher
	passive *sync.Map
}

func (o *watchObserver) PinholeOpening(p rules.Pinhole) {
	o.passive.Store(p.ID, p.Passive)
	o.w.Expect(p.ID, conntrack.Match{Src: p.Src, Dst: p.Dst})
}

func (o *watchObserver) PinholeClosed(p rules.Pinhole, reason string) {
	o.w.Forget(p.ID) // a no-op once the flow was seen
	if reason != "used" {
		// Unused (or its use raced the close): the line, if any, goes
		// without the direction.
		o.passive.Delete(p.ID)
	}
}

// originalDst is the gateway's Upstream: the destination the client dialled
// before the firewall redirected it. A connection made to the listener
// directly is refused (proxying it would make an open relay or a loop), and
// so is one to the router itself: the proxy's own connection would reach
// local services that the INPUT policy keeps from the client.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	dst, err := nat.OriginalDst(c)
	if err != nil {
		return netip.AddrPort{}, err
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	if dst.Addr() == local.Addr().Unmap() && dst.Port() == local.Port() {
		return netip.AddrPort{}, errors.New("connection was not intercepted (dialled the listener itself)")
	}
	if isLocal(dst.Addr()) {
		return netip.AddrPort{}, fmt.Errorf("destination %s is this router itself", dst)
	}
	return dst, nil
}

// isLocal reports whether a is an address of this host.
func isLocal(a netip.Addr) bool {
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil && p.Addr().Unmap() == a {
			return true
		}
	}
	return false
}

// resolveUpstream resolves HOST:PORT once, at start.
func resolveUpstream(ctx context.Context, s string) ([]netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, usagef("--upstream %q: want HOST:PORT", s)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving --upstream %q: %w", s, err)
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil || p == 0 {
		return nil, usagef("--upstream %q: bad port", s)
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(p)))
	}
	return out, nil
}

// upstreamFor picks the upstream address of the client's family, so that
// both channels keep one family; else the first.
func upstreamFor(up []netip.AddrPort) func(net.Conn) (netip.AddrPort, error) {
	return func(c net.Conn) (netip.AddrPort, error) {
		client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		for _, a := range up {
			if a.Addr().Is4() == client.Is4() {
				return a, nil
			}
		}
		return up[0], nil
	}
}

// portBusy reports whether a TCP port is bound on this host (any address).
func portBusy(port uint16) bool {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return true
	}
	l.Close()
	return false
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

// transferAttrs names the client and server of a data connection by their
// real addresses, the direction the data went (the side that sent more) and
// its bytes. The initiator (the client in passive mode, the server in active
// mode) is the original source; the responder's real address is the reply
// direction's source, after any DNAT.
func transferAttrs(f conntrack.FlowEnd, passive bool) []slog.Attr {
	initiator, responder := f.Orig.Src, f.Reply.Src
	client, server := initiator, responder
	if !passive {
		client, server = responder, initiator
	}
	attrs := []slog.Attr{slog.String("client", client.String()), slog.String("server", server.String())}
	if !f.Counted {
		return attrs
	}
	clientSent := (f.OrigBytes > f.ReplyBytes) == passive
	dir := "server->client"
	if clientSent {
		dir = "client->server"
	}
	return append(attrs, slog.String("direction", dir), slog.Uint64("bytes", max(f.OrigBytes, f.ReplyBytes)))
}
