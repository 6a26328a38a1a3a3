package test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab"
	"github.com/ftpalg/ftpalg/test/netlab"
)

// Load: many sessions at once through ftpalg.
//
// The peers: vsftpd (a real server, two processes per session) carries
// 1,000 sessions on this two-core machine with room to spare (they log in
// within a few seconds), so it is TestLoad1000Sessions' server. The clients
// are lab.Client, the embedded client built on ftpalg's codec, as
// goroutines of the test: 1,000 curl or lftp processes would measure process
// start-up, not the gateway. The benchmark runs against vsftpd and against
// lab.Server, whose cost per session is next to nothing.
//
// ftpalg limits sessions per client address (default 32), so the client
// namespace gets extra addresses and each session binds both of its
// connections to one of them. ftpalg needs two sockets per control session
// and none per transfer (the data goes through the kernel); as a Go program
// it raises its soft open-file limit to the hard one, which it inherits.

const (
	// loadSessions is how many sessions TestLoad1000Sessions runs at once.
	loadSessions = 1000
	// loadBound bounds the whole run of TestLoad1000Sessions, from the
	// first connect to the last QUIT. A liveness bound, not a performance
	// assertion.
	loadBound = 4 * time.Minute
	// loadConnecting bounds the control connections being made at a time:
	// each dial holds an OS thread switched into the client namespace.
	loadConnecting = 64
	// loadTransfers bounds the transfers under way at a time: all of them.
	// The 1,000 announcements arrive as one burst; iptables-restore
	// batching opens their pinholes well within Policy.OpenTimeout (5 s;
	// measured ~1.3 s for the whole burst here). Without batching (one
	// iptables command per rule change) the same burst failed there.
	loadTransfers = loadSessions
	// loadKeepalive is how often a session that waits for its turn sends
	// NOOP: vsftpd ends a session idle for 60 s.
	loadKeepalive = 20 * time.Second
	// loadFilePath and loadFileSize describe the file every session
	// downloads.
	loadFilePath = "/pub/load.bin"
	loadFileSize = 64 << 10
	// benchWorkers is the fixed concurrency of BenchmarkSessionsPerSecond.
	benchWorkers = 16
	// ftpListenPort is ftpalg's default gateway listener port.
	ftpListenPort = 2121
)

// loadALGArgs are ftpalg's arguments for load: the gateway's, with room for
// more sessions than the test runs. The per-client limit keeps its default.
func loadALGArgs() []string {
	return append(gatewayArgs(), "--max-sessions", "2000")
}

// loadPeer names the FTP server of a loadEnv.
type loadPeer string

const (
	// peerVsftpd is vsftpd (netlab.StartServer): a real server, two
	// processes per session.
	peerVsftpd loadPeer = "vsftpd"
	// peerLab is lab.Server, the embedded server, as goroutines of the
	// test: the least a server can cost per session.
	peerLab loadPeer = "labserver"
)

// loadEnv is a gateway topology with the strict firewall, an FTP server
// serving loadFilePath, and extra client addresses.
type loadEnv struct {
	topo *netlab.Topo
	// port, user and pass are the server's control port and login.
	port       uint16
	user, pass string
	file       netlab.File
	// v4 and v6 are the client addresses sessions bind to.
	v4, v6 []netip.Addr
}

// newLoadEnv builds a loadEnv with the server peer, whose client has n4
// extra IPv4 and n6 extra IPv6 addresses (with none, the primary address
// of that family is used).
func newLoadEnv(tb testing.TB, ctx context.Context, peer loadPeer, n4, n6 int) *loadEnv {
	tb.Helper()
	topo := netlab.NewTopology(tb, netlab.Options{})
	if err := topo.ApplyFirewall(ctx, variantOf(tb).Firewall); err != nil {
		tb.Fatal(err)
	}
	e := &loadEnv{topo: topo}
	switch peer {
	case peerVsftpd:
		// A wide passive range: vsftpd picks ports at random and gives up
		// after a few that are taken.
		srv := netlab.StartServer(tb, topo.Server, netlab.Vsftpd, netlab.ServerOptions{PasvMin: 40000, PasvMax: 49999})
		sum, err := netlab.WriteRandomFile(srv.LocalPath(loadFilePath), loadFileSize, 64)
		if err != nil {
			tb.Fatal(err)
		}
		e.port, e.user, e.pass = uint16(srv.Port), srv.User, srv.Pass
		e.file = netlab.File{Path: loadFilePath, Size: loadFileSize, SHA256: sum}
	case peerLab:
		e.port, e.user, e.pass = 21, "ftpalg", "load"
		e.file = startLabServer(tb, topo.Server, e.user, e.pass)
	default:
		tb.Fatalf("unknown load peer %q", peer)
	}
	if err := e.addClientAddrs(ctx, tb.TempDir(), n4, n6); err != nil {
		tb.Fatal(err)
	}
	if len(e.v4) == 0 {
		e.v4 = []netip.Addr{netlab.ClientAddr4}
	}
	if len(e.v6) == 0 {
		e.v6 = []netip.Addr{netlab.ClientAddr6}
	}
	return e
}

// startLabServer serves loadFilePath (random bytes) with lab.Server on port
// 21 of ns, both families, until tb's cleanup.
func startLabServer(tb testing.TB, ns *netlab.NS, user, pass string) netlab.File {
	tb.Helper()
	data := make([]byte, loadFileSize)
	if _, err := rand.Read(data); err != nil {
		tb.Fatalf("making the file to serve: %v", err)
	}
	ln, err := ns.Listen("tcp", "[::]:21")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &lab.Server{
		Files: map[string][]byte{loadFilePath: data},
		User:  user, Pass: pass,
		Dial:   ns.DialContext,
		Listen: ns.Listen,
	}
	stop := srv.Start(ln)
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("lab FTP server: %v", err)
		}
	})
	sum := sha256.Sum256(data)
	return netlab.File{Path: loadFilePath, Size: loadFileSize, SHA256: hex.EncodeToString(sum[:])}
}

// serverAddr is the server's control endpoint of family f.
func (e *loadEnv) serverAddr(f netlab.Family) netip.AddrPort {
	return netip.AddrPortFrom(e.topo.Server.Addr(f), e.port)
}

// addClientAddrs adds 192.0.2.10... and 2001:db8:1::10... to the client
// (the gateway routes both prefixes already). The gateway gets a permanent
// neighbour entry for each IPv6 address: its strict firewall drops the
// neighbour advertisements that would answer its solicitations.
func (e *loadEnv) addClientAddrs(ctx context.Context, dir string, n4, n6 int) error {
	if n4+n6 == 0 {
		return nil
	}
	if n4 > 200 || n6 > 200 {
		return fmt.Errorf("adding client addresses: %d IPv4 and %d IPv6 is too many", n4, n6)
	}
	out, err := e.topo.Client.Run(ctx, "cat", "/sys/class/net/"+netlab.HostIf+"/address")
	if err != nil {
		return fmt.Errorf("reading the client's MAC address: %w", err)
	}
	mac := strings.TrimSpace(out)
	var client, gw strings.Builder
	for i := range n4 {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
		e.v4 = append(e.v4, a)
		fmt.Fprintf(&client, "addr add %s/24 dev %s\n", a, netlab.HostIf)
	}
	for i := range n6 {
		b := netlab.ClientAddr6.As16()
		b[15] = byte(0x10 + i)
		a := netip.AddrFrom16(b)
		e.v6 = append(e.v6, a)
		fmt.Fprintf(&client, "addr add %s/64 dev %s nodad\n", a, netlab.HostIf)
		fmt.Fprintf(&gw, "neigh replace %s lladdr %s dev %s nud permanent\n", a, mac, netlab.GWInside)
	}
	for _, step := range []struct {
		ns    *netlab.NS
		batch string
	}{{e.topo.Client, client.String()}, {e.topo.GW, gw.String()}} {
		if step.batch == "" {
			continue
		}
		f := filepath.Join(dir, step.ns.Role+"-addrs.batch")
		if err := os.WriteFile(f, []byte(step.batch), 0o644); err != nil {
			return fmt.Errorf("writing ip batch: %w", err)
		}
		if _, err := step.ns.Run(ctx, "ip", "-batch", f); err != nil {
			return fmt.Errorf("adding client addresses: %w", err)
		}
	}
	return nil
}

// allowKernelFTPHelper opens the strict firewall the kernel's way: the
// FTP conntrack helper (nf_conntrack_ftp) attached to control connections
// from the inside, those connections accepted, and the data connections
// the helper expects accepted as RELATED. Both families.
func (e *loadEnv) allowKernelFTPHelper(ctx context.Context) error {
	for _, f := range netlab.Families {
		for _, rule := range [][]string{
			{"-t", "raw", "-A", "PREROUTING", "-i", netlab.GWInside, "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp"},
			{"-A", "FORWARD", "-i", netlab.GWInside, "-p", "tcp", "--dport", "21", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED", "-m", "helper", "--helper", "ftp", "-j", "ACCEPT"},
		} {
			if err := e.topo.GW.IPTables(ctx, f, rule...); err != nil {
				return fmt.Errorf("enabling the kernel's FTP helper: %w", err)
			}
		}
	}
	return nil
}

// loadSession is one planned session: its family, data-connection mode and
// the client address both its connections come from.
type loadSession struct {
	n     int
	f     netlab.Family
	mode  netlab.Mode
	local netip.Addr
}

func (s loadSession) String() string {
	return fmt.Sprintf("session %d (%v %v from %v)", s.n, s.f, s.mode, s.local)
}

// plan returns n sessions. Mixed: every fifth is IPv6 (EPSV and EPRT in
// turn), the others IPv4 (EPSV, PASV, PORT and EPRT in turn), spread over
// the client addresses. Otherwise: all IPv4 EPSV.
func (e *loadEnv) plan(n int, mixed bool) []loadSession {
	var k4, k6 int
	out := make([]loadSession, n)
	for i := range out {
		if mixed && i%5 == 4 {
			out[i] = loadSession{n: i, f: netlab.IPv6, mode: []netlab.Mode{netlab.EPSV, netlab.EPRT}[k6%2], local: e.v6[k6%len(e.v6)]}
			k6++
			continue
		}
		mode := netlab.EPSV
		if mixed {
			mode = netlab.Modes[k4%len(netlab.Modes)]
		}
		out[i] = loadSession{n: i, f: netlab.IPv4, mode: mode, local: e.v4[k4%len(e.v4)]}
		k4++
	}
	return out
}

// dialFrom returns a dialer that makes connections in ns from local.
func dialFrom(ns *netlab.NS, local netip.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dialing %s from %v in %s: %w", addr, local, ns, err)
		}
		return c, nil
	}
}

// connect opens s's control connection and logs in.
func (e *loadEnv) connect(ctx context.Context, s loadSession) (*lab.Client, error) {
	dial := dialFrom(e.topo.Client, s.local)
	// Generous: under load a reply may wait for ftpalg's firewall changes.
	c := &lab.Client{Dial: dial, Timeout: time.Minute}
	if _, err := c.Connect(ctx, dial, e.serverAddr(s.f).String()); err != nil {
		return nil, fmt.Errorf("%v: %w", s, err)
	}
	r, err := c.Cmd(ctx, "USER "+e.user)
	if err == nil && r.Code == 331 {
		r, err = c.Cmd(ctx, "PASS "+e.pass)
	}
	if err == nil && r.Code != 230 {
		err = &lab.ReplyError{Command: "USER/PASS", Reply: r}
	}
	if err == nil {
		_, err = c.Expect(ctx, "TYPE I", 200)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%v: logging in: %w", s, err)
	}
	return c, nil
}

// retr downloads loadFilePath over c in s's mode and checks it by size and
// hash.
func (e *loadEnv) retr(ctx context.Context, c *lab.Client, s loadSession) error {
	var d lab.Download
	var err error
	if s.mode.Passive() {
		var ap netip.AddrPort
		if ap, _, err = c.Passive(ctx, s.mode == netlab.EPSV); err == nil {
			d, err = c.RetrPassive(ctx, e.file.Path, ap)
		}
	} else {
		var ln net.Listener
		if ln, err = e.topo.Client.Listen("tcp", netip.AddrPortFrom(s.local, 0).String()); err != nil {
			return fmt.Errorf("%v: %w", s, err)
		}
		defer ln.Close()
		if _, _, err = c.Active(ctx, s.mode == netlab.EPRT, ln); err == nil {
			d, err = c.RetrActive(ctx, e.file.Path, ln)
		}
	}
	if err != nil {
		return fmt.Errorf("%v: %w", s, err)
	}
	if got := hex.EncodeToString(d.SHA256[:]); d.Bytes != e.file.Size || got != e.file.SHA256 {
		return fmt.Errorf("%v: downloaded %d bytes with SHA-256 %s, want %d bytes with %s", s, d.Bytes, got, e.file.Size, e.file.SHA256)
	}
	return nil
}

// quit ends the session with QUIT.
func (e *loadEnv) quit(ctx context.Context, c *lab.Client, s loadSession) error {
	if _, err := c.Expect(ctx, "QUIT", 221); err != nil {
		return fmt.Errorf("%v: %w", s, err)
	}
	return nil
}

// waitTurn waits until it can receive from ch, sending NOOP on c every
// loadKeepalive meanwhile.
func waitTurn(ctx context.Context, c *lab.Client, s loadSession, ch <-chan struct{}) error {
	tick := time.NewTicker(loadKeepalive)
	defer tick.Stop()
	for {
		select {
		case <-ch:
			return nil
		case <-tick.C:
			if _, err := c.Expect(ctx, "NOOP", 200); err != nil {
				return fmt.Errorf("%v: keeping the session alive: %w", s, err)
			}
		case <-ctx.Done():
			return fmt.Errorf("%v: waiting for its turn: %w", s, ctx.Err())
		}
	}
}

// runWorkers runs the sessions one after another on each of workers
// goroutines and returns how long that took and every session's error.
func (e *loadEnv) runWorkers(ctx context.Context, sessions []loadSession, workers int) (time.Duration, []error) {
	errs := make([]error, len(sessions))
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(sessions) {
					return
				}
				errs[i] = e.session(ctx, sessions[i])
			}
		})
	}
	wg.Wait()
	return time.Since(start), errs
}

// session runs s from connect to QUIT.
func (e *loadEnv) session(ctx context.Context, s loadSession) error {
	c, err := e.connect(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := e.retr(ctx, c, s); err != nil {
		return err
	}
	return e.quit(ctx, c, s)
}

// concurrentRun is the outcome of runConcurrent.
type concurrentRun struct {
	// errs holds every session's error, nil on success.
	errs []error
	// loggedIn is when the last session had logged in, retrieved when the
	// last transfer had ended, done when the last session had quit.
	loggedIn, retrieved, done time.Duration
	// atStart and atEnd are the proxied control connections the gateway
	// held before the first transfer and after the last.
	atStart, atEnd int
	// countErr is why they could not be counted.
	countErr error
}

// loadPhases are the gates a session of runConcurrent passes.
type loadPhases struct {
	// connecting and transferring hold one token per session that may
	// connect or transfer at a time.
	connecting, transferring chan struct{}
	// loggedIn and retrieved count the sessions down to each barrier.
	loggedIn, retrieved sync.WaitGroup
	// transfer and quit are closed to open the barriers.
	transfer, quit chan struct{}
}

// loadTokens returns a channel holding n tokens.
func loadTokens(n int) chan struct{} {
	ch := make(chan struct{}, n)
	for range n {
		ch <- struct{}{}
	}
	return ch
}

// runConcurrent runs the sessions together: all connect and log in (at
// most loadConnecting connecting at a time); once all are logged in, each
// downloads (at most loadTransfers at a time); once every download has
// ended, all quit. Every transfer thus happens while every session is open.
func (e *loadEnv) runConcurrent(ctx context.Context, sessions []loadSession) concurrentRun {
	res := concurrentRun{errs: make([]error, len(sessions))}
	p := &loadPhases{
		connecting: loadTokens(loadConnecting), transferring: loadTokens(loadTransfers),
		transfer: make(chan struct{}), quit: make(chan struct{}),
	}
	p.loggedIn.Add(len(sessions))
	p.retrieved.Add(len(sessions))
	var wg sync.WaitGroup
	start := time.Now()
	for i, s := range sessions {
		wg.Go(func() { res.errs[i] = e.concurrentSession(ctx, s, p) })
	}
	var errs []error
	p.loggedIn.Wait()
	res.loggedIn = time.Since(start)
	n, err := e.proxiedSessions(ctx)
	res.atStart, errs = n, append(errs, err)
	close(p.transfer)
	p.retrieved.Wait()
	res.retrieved = time.Since(start)
	n, err = e.proxiedSessions(ctx)
	res.atEnd, errs = n, append(errs, err)
	close(p.quit)
	wg.Wait()
	res.done = time.Since(start)
	res.countErr = errors.Join(errs...)
	return res
}

// concurrentSession is one session of runConcurrent.
func (e *loadEnv) concurrentSession(ctx context.Context, s loadSession, p *loadPhases) error {
	<-p.connecting
	c, err := e.connect(ctx, s)
	p.connecting <- struct{}{}
	p.loggedIn.Done()
	if err != nil {
		p.retrieved.Done()
		return err
	}
	defer c.Close()
	err = waitTurn(ctx, c, s, p.transfer)
	if err == nil {
		if err = waitTurn(ctx, c, s, p.transferring); err == nil {
			err = e.retr(ctx, c, s)
			p.transferring <- struct{}{}
		}
	}
	p.retrieved.Done()
	if err != nil {
		return err
	}
	if err := waitTurn(ctx, c, s, p.quit); err != nil {
		return err
	}
	return e.quit(ctx, c, s)
}

// proxiedSessions counts the established connections to ftpalg's listener
// in the gateway.
func (e *loadEnv) proxiedSessions(ctx context.Context) (int, error) {
	out, err := e.topo.GW.Run(ctx, "ss", "-Htn", "state", "established", "sport", "=", fmt.Sprintf(":%d", ftpListenPort))
	if err != nil {
		return -1, err
	}
	return strings.Count(out, "\n"), nil
}

// ensureNoFile raises this process's open-file limit to at least n (the
// clients' sockets; ftpalg and vsftpd inherit it through `ip netns exec`).
func ensureNoFile(tb testing.TB, n uint64) {
	tb.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatalf("reading RLIMIT_NOFILE: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur = n
	lim.Max = max(lim.Max, n) // root may raise the hard limit
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatalf("raising RLIMIT_NOFILE to %d: %v", n, err)
	}
}

// reportSessionErrors fails tb with the first few session errors and a count.
func reportSessionErrors(tb testing.TB, what string, errs []error) int {
	tb.Helper()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		shown := failed[:min(len(failed), 10)]
		tb.Errorf("%d of %d sessions %s failed; the first:\n%v", len(failed), len(errs), what, errors.Join(shown...))
	}
	return len(failed)
}

// TestLoad1000Sessions: 1,000 sessions at once through ftpalg (gateway
// mode, strict firewall) from 40 IPv4 and 16 IPv6 client addresses: all
// connect and log in, then each downloads 64 KiB (checked by hash) in PASV,
// EPSV, PORT or EPRT, all 1,000 transfers at once, while all stay open, then
// all quit. No session fails, the run ends within loadBound, no pinhole is
// left, ftpalg refuses nothing and exits 0 on SIGTERM with its rules gone.
func TestLoad1000Sessions(t *testing.T) {
	netlab.RequireNetlab(t)
	// Per session: the test holds a control and a data socket (and a
	// listener in active mode); ftpalg two control sockets.
	ensureNoFile(t, 4*loadSessions+1024)
	ctx, cancel := context.WithTimeout(context.Background(), loadBound+2*time.Minute)
	defer cancel()
	e := newLoadEnv(t, ctx, peerVsftpd, 40, 16)
	a := startALG(t, e.topo.GW, loadALGArgs()...)
	sessions := e.plan(loadSessions, true)

	rctx, rcancel := context.WithTimeout(ctx, loadBound)
	res := e.runConcurrent(rctx, sessions)
	rcancel()
	failed := reportSessionErrors(t, "through ftpalg", res.errs)
	if res.done > loadBound {
		t.Errorf("the run took %v, over the bound of %v", res.done, loadBound)
	}
	// Every session held its proxied control connection from before the
	// first transfer until after the last.
	if res.countErr != nil {
		t.Errorf("counting the proxied sessions: %v", res.countErr)
	} else if want := loadSessions - failed; res.atStart < want || res.atEnd < want {
		t.Errorf("%d proxied control connections before the transfers and %d after, for %d sessions", res.atStart, res.atEnd, want)
	}
	var v6, active int
	for _, s := range sessions {
		if s.f == netlab.IPv6 {
			v6++
		}
		if !s.mode.Passive() {
			active++
		}
	}
	transfers := res.retrieved - res.loggedIn
	t.Logf("%d sessions (%d IPv6, %d active; from %d addresses) in %v; %d proxied sessions open throughout. "+
		"Connect and login: %v. Transfers (%d at a time): %v, %.1f/s. QUIT: %v. Overall %.1f sessions/s",
		len(sessions), v6, active, len(e.v4)+len(e.v6), res.done.Round(time.Millisecond), min(res.atStart, res.atEnd),
		res.loggedIn.Round(time.Millisecond), loadTransfers, transfers.Round(time.Millisecond),
		float64(len(sessions))/transfers.Seconds(), (res.done - res.retrieved).Round(time.Millisecond),
		float64(len(sessions))/res.done.Seconds())

	// A thousand closes can take long on a busy machine (when a batch of
	// deletes fails, the backend retries its changes one by one); what
	// counts is that every pinhole goes. The time is logged.
	closing := time.Now()
	waitNoPinholes(t, e.topo.GW, 3*time.Minute)
	t.Logf("all pinholes gone %v after the last QUIT", time.Since(closing).Round(100*time.Millisecond))
	if n := len(a.Logs("pinhole open")); n < loadSessions {
		t.Errorf("%d pinholes opened for %d transfers", n, loadSessions)
	}
	if r := a.Logs("refused"); len(r) > 0 {
		t.Errorf("ftpalg refused %d times under load; the first: %v", len(r), r[0])
	}
	a.Stop()
	if left := ftpalgRules(t, e.topo.GW); len(left) > 0 {
		t.Fatalf("ftpalg left rules after exit:\n%s", strings.Join(left, "\n"))
	}
}

// BenchmarkSessionsPerSecond measures complete sessions per second (connect,
// log in, EPSV, RETR of 64 KiB, QUIT; IPv4; benchWorkers at a time) through
// ftpalg and, in the same run, the same sessions through the kernel's FTP
// helper (nf_conntrack_ftp attached by a CT rule) on an otherwise identical
// gateway with the same strict firewall. Passive mode only: with MASQUERADE
// the kernel's way needs nf_nat_ftp for PORT/EPRT, which is not the
// comparison. Each op is one session of each kind.
//
// It runs once per server: vsftpd, a real server whose own cost per session
// is in both figures, and lab.Server, which costs next to nothing, so that
// the ratio shows ftpalg's own cost. Each reports both rates and ratio =
// ftpalg/kernel; ns/op is the wall time per session through ftpalg.
//
//	go test -run NONE -bench SessionsPerSecond -benchtime 200x ./test/
func BenchmarkSessionsPerSecond(b *testing.B) {
	netlab.RequireNetlab(b)
	ensureNoFile(b, 4096)
	for _, peer := range []loadPeer{peerVsftpd, peerLab} {
		b.Run(string(peer), func(b *testing.B) { benchSessions(b, peer) })
	}
}

func benchSessions(b *testing.B, peer loadPeer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	kernel := newLoadEnv(b, ctx, peer, 4, 0)
	if err := kernel.allowKernelFTPHelper(ctx); err != nil {
		b.Fatal(err)
	}
	viaALG := newLoadEnv(b, ctx, peer, 4, 0)
	a := startALGAt(b, viaALG.topo.GW, "info", loadALGArgs()...)

	b.ResetTimer()
	kd, kerrs := kernel.runWorkers(ctx, kernel.plan(b.N, false), benchWorkers)
	ad, aerrs := viaALG.runWorkers(ctx, viaALG.plan(b.N, false), benchWorkers)
	b.StopTimer()

	if reportSessionErrors(b, "through the kernel's FTP helper", kerrs)+reportSessionErrors(b, "through ftpalg", aerrs) > 0 {
		b.FailNow()
	}
	kernelRate := float64(b.N) / kd.Seconds()
	algRate := float64(b.N) / ad.Seconds()
	b.ReportMetric(algRate, "ftpalg-sessions/s")
	b.ReportMetric(kernelRate, "kernel-sessions/s")
	b.ReportMetric(algRate/kernelRate, "ratio")
	b.ReportMetric(float64(ad.Nanoseconds())/float64(b.N), "ns/op")

	waitNoPinholes(b, viaALG.topo.GW, 30*time.Second)
	if r := a.Logs("refused"); len(r) > 0 {
		b.Errorf("ftpalg refused %d times; the first: %v", len(r), r[0])
	}
	a.Stop()
}
