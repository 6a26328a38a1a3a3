package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
)

// Config configures Run.
type Config struct {
	// Ftpalg is the ftpalg binary that runs in the gateway ("ftpalg run").
	// Required.
	Ftpalg string
	// Out receives the story. If nil, it is discarded.
	Out io.Writer
	// Color adds ANSI colours to the story (for a terminal).
	Color bool
	// Keep leaves the network up at the end (without ftpalg) and prints
	// how to use and remove it.
	Keep bool
	// Capture, if set, is a file that receives the gateway's traffic on its
	// inside and outside interfaces: pcapng (with interface names) if the
	// name ends in ".pcapng", else pcap.
	Capture string
	// FileSize is the size of the file the client downloads. If zero, 2 MiB.
	FileSize int
	// Log receives debug logs. If nil, nothing is logged.
	Log *slog.Logger
}

// Result is what Run did.
type Result struct {
	// Steps are the steps in order with their verdicts.
	Steps []StepResult
	// Namespaces are the lab's namespaces (gone unless Config.Keep).
	Namespaces []string
	// Packets is how many packets the capture recorded.
	Packets int
}

// StepResult is the verdict of one step.
type StepResult struct {
	// Title says what the step shows.
	Title string
	// Passed is true when the step did what it said.
	Passed bool
	// Detail explains the verdict in one line.
	Detail string
}

// ErrStepsFailed is wrapped by Run's error when the lab ran but some step
// did not do what it said.
var ErrStepsFailed = errors.New("lab steps failed")

// The credentials and file of the lab's FTP server.
const (
	labUser  = "lab"
	labPass  = "lab"
	labFile  = "/lab.bin"
	dataPool = "40000-40099"
)

// dropWait is how long the client tries a data connection that the
// firewall is expected to drop.
const dropWait = 2 * time.Second

// totalSteps is the number of steps Run narrates.
const totalSteps = 11

// Run builds the lab network, tells the story of FTP through a strict
// firewall without and with ftpalg, and removes the network again (unless
// cfg.Keep), also when ctx is cancelled or a step fails. It needs root, ip
// (iproute2) and iptables. The error wraps ErrStepsFailed when some step did
// not do what it said.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if cfg.Ftpalg == "" {
		return res, errors.New("lab: no ftpalg binary given")
	}
	if err := Preflight(); err != nil {
		return res, err
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.FileSize <= 0 {
		cfg.FileSize = 2 << 20
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	r := &runner{cfg: cfg, n: &Narrator{W: cfg.Out, Color: cfg.Color}, log: cfg.Log, t: newTopo(os.Getpid())}
	for _, ns := range r.t.namespaces() {
		res.Namespaces = append(res.Namespaces, ns.name)
	}
	start := time.Now()

	// Everything built is removed on every path out, with a context of its
	// own: ctx may be the one a Ctrl-C cancelled.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := r.cleanup(cctx, &res); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	if err := r.setup(ctx); err != nil {
		return res, err
	}
	r.story(ctx)
	res.Steps = r.results
	if ctx.Err() != nil {
		return res, fmt.Errorf("lab interrupted: %w", context.Cause(ctx))
	}
	r.n.Summary(r.results, totalSteps, time.Since(start))
	for _, s := range r.results {
		if !s.Passed {
			return res, fmt.Errorf("%w: %s", ErrStepsFailed, s.Title)
		}
	}
	if len(r.results) != totalSteps {
		return res, fmt.Errorf("%w: %d of %d steps ran", ErrStepsFailed, len(r.results), totalSteps)
	}
	return res, nil
}

// Preflight checks that the lab can run here: root, and the programs it
// drives (ip from iproute2, iptables and ip6tables).
func Preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, iptables): run it as root or with sudo")
	}
	var missing []string
	for _, p := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the lab needs %s: install the Debian packages iproute2 and iptables (make demo does)",
			strings.Join(missing, ", "))
	}
	return nil
}

// runner is one run of the lab.
type runner struct {
	cfg     Config
	n       *Narrator
	log     *slog.Logger
	t       *topo
	built   bool
	alg     *algProc
	capture *capture
	ct      *conntrack.Conn

	srvStop context.CancelFunc
	srvDone chan struct{}
	file    []byte
	hash    [32]byte

	mu    sync.Mutex
	notes []Note

	step    int
	results []StepResult
}

// setup builds the network and the firewall, starts the capture and the
// FTP server, and tells the reader what is there.
func (r *runner) setup(ctx context.Context) error {
	n, t := r.n, r.t
	n.Title("ftpalg lab: FTP through a strict firewall, step by step")
	if others := otherLabs(ctx, t.id); len(others) > 0 {
		n.Para(fmt.Sprintf("Note: %d lab(s) of earlier runs are still up (%s); `ftpalg lab --clean` removes them.",
			len(others), strings.Join(others, ", ")))
	}
	// A lab of a crashed process with our pid would be in the way.
	for _, ns := range t.namespaces() {
		if err := removeNamespace(ctx, ns.name); err != nil {
			return err
		}
	}
	r.built = true
	if err := t.build(ctx); err != nil {
		return fmt.Errorf("building the lab network: %w", err)
	}
	if err := t.strictFirewall(ctx); err != nil {
		return err
	}
	variant, _ := t.gw.exec(ctx, "iptables", "-V")

	r.file = labData(r.cfg.FileSize)
	r.hash = sha256.Sum256(r.file)
	if err := r.startServer(ctx); err != nil {
		return err
	}
	if err := r.dialConntrack(); err != nil {
		return err
	}

	n.Para(fmt.Sprintf("The network: three network namespaces, %s{client,gw,server}:", Prefix+t.id+"-"))
	n.Text(
		"",
		fmt.Sprintf("    client   %-12s %s", insideHost4, insideHost6),
		"      |        private network",
		fmt.Sprintf("    gw       %-12s %-15s interface %q", insideGW4, insideGW6, ifInside),
		fmt.Sprintf("             %-12s %-15s interface %q", outsideGW4, outsideGW6, ifOutside),
		"      |        internet",
		fmt.Sprintf("    server   %-12s %s", outsideHost4, outsideHost6),
	)
	n.Para(
		fmt.Sprintf("The gateway is a strict firewall (%s; the same with ip6tables):", strings.TrimSpace(variant)),
		"INPUT and FORWARD policy DROP, one rule in each accepting ESTABLISHED connections,",
		fmt.Sprintf("MASQUERADE out of %q. The kernel's FTP helper (nf_conntrack_ftp) is not used.", ifOutside),
		fmt.Sprintf("The server is ftpalg's built-in FTP server with one file, %s (%s, sha256 %s...).",
			strings.TrimPrefix(labFile, "/"), formatBytes(float64(len(r.file))), hex.EncodeToString(r.hash[:])[:16]),
		"Like vsftpd, it wants both channels of a session to come from one address.",
	)
	if r.cfg.Capture != "" {
		c, err := startCapture(t.gw, r.cfg.Capture)
		if err != nil {
			return err
		}
		r.capture = c
		format := "pcap"
		if strings.HasSuffix(r.cfg.Capture, ".pcapng") {
			format = "pcapng, packets tagged with their interface"
		}
		n.Para(fmt.Sprintf("Recording the gateway's interfaces %q and %q into %s (%s).", ifInside, ifOutside, r.cfg.Capture, format),
			"A forwarded packet appears twice: as it arrives, and as it leaves after NAT.")
	}
	return nil
}

// labData returns size bytes of reproducible pseudo-random data.
func labData(size int) []byte {
	b := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{'f', 't', 'p', 'a', 'l', 'g', ' ', 'l', 'a', 'b'})
	rng.Read(b)
	return b
}

// startServer starts the FTP server on port 21 of every address of the
// server's namespace (the listener stays valid when the cables move).
func (r *runner) startServer(ctx context.Context) error {
	srvNS := r.t.server
	ln, err := srvNS.listen("tcp", "[::]:21")
	if err != nil {
		return fmt.Errorf("starting the FTP server: %w", err)
	}
	srv := &Server{
		Files:  map[string][]byte{labFile: r.file},
		User:   labUser,
		Pass:   labPass,
		Dial:   srvNS.dial,
		Listen: srvNS.listen,
		OnNote: func(nt Note) {
			r.mu.Lock()
			r.notes = append(r.notes, nt)
			r.mu.Unlock()
		},
		Log: r.log.With("component", "ftp server"),
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.srvStop, r.srvDone = cancel, make(chan struct{})
	go func() {
		defer close(r.srvDone)
		if err := srv.Serve(sctx, ln); err != nil {
			r.log.Error("FTP server stopped", "err", err)
		}
	}()
	return nil
}

// dialConntrack opens a conntrack netlink socket in the gateway's
// namespace. Dumping the table makes the kernel reap expired flows at once,
// so that ftpalg reports a finished transfer without waiting for the
// kernel's garbage collector.
func (r *runner) dialConntrack() error {
	h, err := netns.GetFromName(r.t.gw.name)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", r.t.gw.name, err)
	}
	defer h.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(h)})
	if err != nil {
		return fmt.Errorf("opening conntrack in %s: %w", r.t.gw.name, err)
	}
	r.ct = c
	return nil
}

// noteMark and lastNote find what the FTP server saw during a step.
func (r *runner) noteMark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.notes)
}

func (r *runner) lastNote(from int, sent bool) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.notes) - 1; i >= from; i-- {
		if r.notes[i].Sent == sent {
			return r.notes[i].Line
		}
	}
	return "(nothing)"
}

// cleanup stops what runs and, unless Keep, removes the network.
func (r *runner) cleanup(ctx context.Context, res *Result) error {
	var errs []error
	if r.alg != nil {
		if err := r.alg.stop(); err != nil {
			errs = append(errs, err)
		}
		r.alg = nil
	}
	if r.srvStop != nil {
		r.srvStop()
		<-r.srvDone
	}
	if r.ct != nil {
		r.ct.Close()
	}
	if r.capture != nil {
		packets, err := r.capture.stop()
		res.Packets = packets
		if err != nil {
			errs = append(errs, err)
		} else {
			r.n.Para(fmt.Sprintf("Wrote %d packets to %s; open it with Wireshark.", packets, r.cfg.Capture))
		}
	}
	if !r.built {
		return errors.Join(errs...)
	}
	if r.cfg.Keep {
		if r.t.layout != layoutGateway {
			if err := r.t.wire(ctx, layoutGateway); err != nil {
				return errors.Join(append(errs, err)...)
			}
		}
		r.keepHelp()
		return errors.Join(errs...)
	}
	if err := r.t.destroy(ctx); err != nil {
		errs = append(errs, fmt.Errorf("removing the lab network: %w", err))
	} else {
		r.n.Para(fmt.Sprintf("Removed the lab network (%s*).", Prefix+r.t.id+"-"))
	}
	return errors.Join(errs...)
}

// keepHelp tells how to use and remove a kept lab.
func (r *runner) keepHelp() {
	bin := r.cfg.Ftpalg
	if abs, err := filepath.Abs(bin); err == nil {
		bin = abs
	}
	t := r.t
	r.n.Para(
		"The lab network is still up (--keep), cabled for gateway mode, with the strict firewall and no ftpalg:",
		fmt.Sprintf("  client %s, %s; gateway %s / %s; server %s, %s", insideHost4, insideHost6,
			insideGW4, outsideGW4, outsideHost4, outsideHost6),
		"",
		"  look at the firewall:  ip netns exec "+t.gw.name+" iptables -S",
		"  a shell on a host:     ip netns exec "+t.client.name+" bash   (or "+t.gw.name+", "+t.server.name+")",
		"  run ftpalg yourself:   ip netns exec "+t.gw.name+" "+bin+" run --mode gateway --intercept "+ifInside,
		"  remove it:             "+bin+" lab --clean",
		"",
		"The lab's own FTP server and client are gone with it; to try by hand, bring your own",
		"(for example vsftpd in the server's namespace and curl in the client's).",
	)
}

// otherLabs returns the ids of lab networks other than id that are up.
func otherLabs(ctx context.Context, id string) []string {
	names, err := listNamespaces(ctx)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var ids []string
	for _, name := range names {
		if lid, ok := labID(name); ok && lid != id && !seen[lid] {
			seen[lid] = true
			ids = append(ids, lid)
		}
	}
	sort.Strings(ids)
	return ids
}

// labID returns the id (the owner's pid) in a lab namespace name.
func labID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "-")
	if _, err := strconv.Atoi(id); !ok || err != nil {
		return "", false
	}
	return id, true
}

// Clean removes the lab networks that earlier runs left up (with --keep,
// or because they were killed): every namespace named Prefix + "<pid>-..."
// whose pid is not a running process. Labs in progress are left alone and
// named. It reports what it did on out.
func Clean(ctx context.Context, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("removing lab networks needs root")
	}
	names, err := listNamespaces(ctx)
	if err != nil {
		return err
	}
	var errs []error
	removed := 0
	for _, name := range names {
		id, ok := labID(name)
		if !ok {
			continue
		}
		pid, _ := strconv.Atoi(id)
		if pid != os.Getpid() && processAlive(pid) {
			fmt.Fprintf(out, "left %s alone: its lab (process %d) is still running\n", name, pid)
			continue
		}
		if err := removeNamespace(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "removed %s\n", name)
		removed++
	}
	if removed == 0 && len(errs) == 0 {
		fmt.Fprintln(out, "no lab network to remove")
	}
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// --- the story ---

// transfer is one download through the gateway.
type transfer struct {
	mode string // "" (no ftpalg), "gateway" or "reverse"
	verb string // PASV, EPSV, PORT or EPRT
	v6   bool
}

func (x transfer) passive() bool  { return x.verb == "PASV" || x.verb == "EPSV" }
func (x transfer) extended() bool { return x.verb == "EPSV" || x.verb == "EPRT" }

func (x transfer) title() string {
	how := "active"
	if x.passive() {
		how = "passive"
	}
	fam := "IPv4"
	if x.v6 {
		fam = "IPv6"
	}
	mode := "without ftpalg"
	if x.mode != "" {
		mode = "ftpalg " + x.mode + " mode"
	}
	return fmt.Sprintf("%s, %s (%s), %s", mode, how, x.verb, fam)
}

// story runs the steps in order; it stops early only when ctx is done.
func (r *runner) story(ctx context.Context) {
	n, t := r.n, r.t

	n.Act("Act 1: without ftpalg")
	n.Para(
		"A common compromise: the firewall lets FTP control connections through (one rule:",
		"new TCP connections to port 21) and nothing else. The data connection is a second TCP",
		"connection, to an endpoint announced inside the control channel: nothing told the",
		"firewall to expect it. The added rule:",
	)
	n.Text("    " + n.paint(sgrDim, "-A "+strings.Join(quoteArgs(controlRule), " ")))
	if err := t.setControlRule(ctx, true); err != nil {
		r.fail(ctx, "opening the FTP control port", err)
		return
	}
	r.transferStep(ctx, transfer{verb: "PASV"})
	r.transferStep(ctx, transfer{verb: "PORT"})
	if err := t.setControlRule(ctx, false); err != nil {
		r.fail(ctx, "closing the FTP control port", err)
		return
	}
	if ctx.Err() != nil {
		return
	}

	n.Act("Act 2: ftpalg in gateway mode")
	n.Para(
		"The control-port rule is gone: the firewall is strict again. ftpalg starts on the gateway.",
		fmt.Sprintf("It intercepts port 21 arriving on %q (REDIRECT to its listener), proxies the control", ifInside),
		"channel, and for every announcement opens exactly one pinhole before it forwards the",
		"line. The data itself never passes through ftpalg: the kernel forwards it.",
	)
	gwArgs := []string{"--mode", "gateway", "--intercept", ifInside, "--listen", "[::]:2121",
		"--pinhole-ttl", "10s", "--data-ports", dataPool, "--drain", "1s"}
	if !r.startALG(ctx, gwArgs) {
		return
	}
	r.transferStep(ctx, transfer{mode: "gateway", verb: "PASV"})
	r.transferStep(ctx, transfer{mode: "gateway", verb: "EPSV", v6: true})
	r.transferStep(ctx, transfer{mode: "gateway", verb: "PORT"})
	r.transferStep(ctx, transfer{mode: "gateway", verb: "EPRT", v6: true})
	r.stopStep(ctx, "gateway")
	if ctx.Err() != nil {
		return
	}

	n.Act("Act 3: ftpalg in reverse mode")
	n.Para(
		"Now the other way round: the server sits on the private network, and the gateway",
		"publishes it on its public address. The cables are swapped: the server is now inside",
		fmt.Sprintf("(%s), the client outside (%s); the firewall is unchanged. The server announces", insideHost4, outsideHost4),
		"its private address; ftpalg rewrites it to the public address and a port of its own,",
		"and the pinhole DNATs that port to the server.",
	)
	if err := t.wire(ctx, layoutReverse); err != nil {
		r.fail(ctx, "swapping the cables", err)
		return
	}
	revArgs := []string{"--mode", "reverse",
		"--listen", netip.AddrPortFrom(outsideGW4, 21).String(), "--listen", netip.AddrPortFrom(outsideGW6, 21).String(),
		"--upstream", netip.AddrPortFrom(insideHost4, 21).String(), "--upstream", netip.AddrPortFrom(insideHost6, 21).String(),
		"--pinhole-ttl", "10s", "--data-ports", dataPool, "--drain", "1s"}
	if !r.startALG(ctx, revArgs) {
		return
	}
	r.transferStep(ctx, transfer{mode: "reverse", verb: "PASV"})
	r.transferStep(ctx, transfer{mode: "reverse", verb: "EPSV", v6: true})
	r.transferStep(ctx, transfer{mode: "reverse", verb: "PORT"})
	r.stopStep(ctx, "reverse")
}

// quoteArgs quotes the arguments that contain spaces, as iptables -S does.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " :") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

// fail records a step that could not even start.
func (r *runner) fail(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	r.step++
	r.n.Step(r.step, totalSteps, what)
	r.n.Result(false, err.Error())
	r.results = append(r.results, StepResult{Title: what, Passed: false, Detail: err.Error()})
}

// record prints and records a step's verdict.
func (r *runner) record(title string, ok bool, detail string) {
	r.n.Result(ok, detail)
	r.results = append(r.results, StepResult{Title: title, Passed: ok, Detail: detail})
}

// startALG starts ftpalg in the gateway and shows its own rules.
func (r *runner) startALG(ctx context.Context, args []string) bool {
	r.n.Text("", r.n.paint(sgrBold, "$ ftpalg run "+strings.Join(args, " ")))
	a, err := startALG(ctx, r.t.gw, r.cfg.Ftpalg, args...)
	if err != nil {
		r.fail(ctx, "starting ftpalg", err)
		return false
	}
	r.alg = a
	rules, err := r.t.ftpalgRules(ctx)
	if err != nil {
		r.fail(ctx, "listing ftpalg's rules", err)
		return false
	}
	var own []string
	for _, l := range rules {
		if !l.v6 && (strings.Contains(l.rule, `"ftpalg:intercept"`) || strings.Contains(l.rule, `"ftpalg:listener"`)) {
			own = append(own, l.String())
		}
	}
	if len(own) > 0 {
		r.n.Text("Its standing rules (besides the jumps into its chains; the same for ip6tables):")
		for _, l := range own {
			r.n.Text("    " + r.n.paint(sgrDim, l))
		}
	} else {
		r.n.Text("It installed its chains (FTPALG-*), still empty: no pinhole is open.")
	}
	return true
}

// stopStep stops ftpalg and checks that it removed every rule it added.
func (r *runner) stopStep(ctx context.Context, mode string) {
	if ctx.Err() != nil {
		return
	}
	title := fmt.Sprintf("ftpalg (%s mode) stops and removes its rules", mode)
	r.step++
	r.n.Step(r.step, totalSteps, title)
	a := r.alg
	r.alg = nil
	if a == nil {
		r.record(title, false, "ftpalg was not running")
		return
	}
	r.n.Field("signal", fmt.Sprintf("SIGTERM to ftpalg (pid %d)", a.cmd.Process.Pid))
	if err := a.stop(); err != nil {
		r.record(title, false, err.Error())
		return
	}
	left, err := r.t.ftpalgRules(ctx)
	if err != nil {
		r.record(title, false, err.Error())
		return
	}
	if len(left) > 0 {
		var lines []string
		for _, l := range left {
			lines = append(lines, l.String())
		}
		r.n.Lines("left", "rules of ftpalg still in the firewall:", lines)
		r.record(title, false, fmt.Sprintf("%d ftpalg rules left behind", len(left)))
		return
	}
	r.n.Field("firewall", "iptables -S and ip6tables -S show no FTPALG chain and no ftpalg rule")
	r.record(title, true, "ftpalg exited and the firewall is as it was before it started")
}

// controlTarget is where the client dials the control connection.
func (r *runner) controlTarget(x transfer) netip.AddrPort {
	switch {
	case x.mode == "reverse" && x.v6:
		return netip.AddrPortFrom(outsideGW6, 21)
	case x.mode == "reverse":
		return netip.AddrPortFrom(outsideGW4, 21)
	case x.v6:
		return netip.AddrPortFrom(outsideHost6, 21)
	}
	return netip.AddrPortFrom(outsideHost4, 21)
}

// transferStep runs and narrates one download.
func (r *runner) transferStep(ctx context.Context, x transfer) {
	if ctx.Err() != nil {
		return
	}
	title := x.title()
	r.step++
	r.n.Step(r.step, totalSteps, title)
	ok, detail := r.transfer(ctx, x)
	if ctx.Err() != nil {
		r.n.Text("(interrupted)")
		return
	}
	r.record(title, ok, detail)
}

func (r *runner) transfer(ctx context.Context, x transfer) (bool, string) {
	n, t := r.n, r.t
	expectFail := x.mode == ""
	c := &Client{Dial: t.client.dial, Timeout: 5 * time.Second}
	target := r.controlTarget(x)
	if _, err := c.Connect(ctx, t.client.dial, target.String()); err != nil {
		return false, err.Error()
	}
	defer c.Close()
	if err := c.Login(ctx, labUser, labPass); err != nil {
		return false, err.Error()
	}
	via := "through the firewall's port-21 rule"
	switch x.mode {
	case "gateway":
		via = "intercepted by ftpalg on the gateway"
	case "reverse":
		via = "ftpalg's listener on the gateway's public address"
	}
	n.Field("control", fmt.Sprintf("%s -> %s, %s: logged in", c.LocalAddr().Addr(), target, via))

	mark := 0
	if r.alg != nil {
		mark = r.alg.log.mark()
	}
	nm := r.noteMark()
	var ap netip.AddrPort
	var ln net.Listener
	if x.passive() {
		a, rep, err := c.Passive(ctx, x.extended())
		if err != nil {
			return false, err.Error()
		}
		ap = a
		sent, got := r.lastNote(nm, true), replyLine(rep)
		n.Field("server sent", sent)
		r.changed("client got", sent, got)
	} else {
		var err error
		ln, err = t.client.listen("tcp", netip.AddrPortFrom(t.hostAddr(t.client, x.v6), 0).String())
		if err != nil {
			return false, fmt.Sprintf("listening for the data connection: %v", err)
		}
		defer ln.Close()
		line, rep, err := c.Active(ctx, x.extended(), ln)
		n.Field("client sent", line)
		if rep.Code != 0 {
			r.changed("server got", line, r.lastNote(nm, false))
		}
		if err != nil {
			var re *ReplyError
			if expectFail && errors.As(err, &re) && re.Reply.Code >= 500 {
				n.Field("server said", replyLine(re.Reply))
				n.Text(
					fmt.Sprintf("%sThe server sees the control connection come from %s (MASQUERADE) and", indent, outsideGW4),
					indent+"will not connect to the private address the client announced. Even if it",
					indent+"tried, the firewall would drop the connection: nothing expects it.",
				)
				return true, "the download failed, as it must without ftpalg: NAT broke the announcement"
			}
			return false, err.Error()
		}
	}

	var id string
	if r.alg != nil {
		var ok bool
		var detail string
		if id, ok, detail = r.showPinhole(ctx, mark); !ok {
			return false, detail
		}
	}

	var d Download
	var err error
	if x.passive() {
		dctx, cancel := context.WithTimeout(ctx, c.Timeout)
		if expectFail {
			// The data connection is dropped: do not wait long for it.
			dctx, cancel = context.WithTimeout(ctx, dropWait)
		}
		d, err = c.RetrPassive(dctx, labFile, ap)
		cancel()
	} else {
		d, err = c.RetrActive(ctx, labFile, ln)
	}
	if expectFail {
		switch {
		case err == nil:
			n.Field("transfer", r.transferLine(d))
			return false, "the download worked without ftpalg: the firewall is not strict"
		case isTimeout(err):
			n.Field("data", fmt.Sprintf("%s -> %s: no answer within %v: the firewall dropped it",
				c.LocalAddr().Addr(), ap, dropWait))
			return true, "the download failed, as it must without ftpalg: nothing opened the announced port"
		}
		return false, "the download failed, but not because of the firewall: " + err.Error()
	}
	if err != nil {
		return false, err.Error()
	}
	n.Field("transfer", r.transferLine(d))
	if d.Bytes != int64(len(r.file)) || d.SHA256 != r.hash {
		return false, fmt.Sprintf("the download is not the server's file (%d bytes, sha256 %x)", d.Bytes, d.SHA256[:8])
	}
	if ok, detail := r.showClose(ctx, mark, id); !ok {
		return false, detail
	}
	r.showCount(ctx, mark, id)
	_, _ = c.Cmd(ctx, "QUIT")
	return true, fmt.Sprintf("%s arrived intact through a pinhole that is closed again", formatBytes(float64(d.Bytes)))
}

// changed prints what the other side received, highlighted when it
// differs from what was sent.
func (r *runner) changed(label, sent, got string) {
	if got == sent {
		r.n.Field(label, got)
		return
	}
	r.n.Highlight(label, got)
}

// indent lines up continuation text with the value column of Field.
var indent = strings.Repeat(" ", 3+labelWidth+1-2)

func (r *runner) transferLine(d Download) string {
	check := "sha256 matches the server's file"
	if d.SHA256 != r.hash {
		check = "sha256 DIFFERS from the server's file"
	}
	return fmt.Sprintf("RETR %s: %s in %s (%s), %s", strings.TrimPrefix(labFile, "/"),
		formatBytes(float64(d.Bytes)), formatDuration(d.Duration), formatRate(d.Bytes, d.Duration), check)
}

// showPinhole waits for ftpalg's "pinhole open" line after mark, narrates
// the announcement, the rewrite and the pinhole, and shows the pinhole's
// rules as the firewall lists them. It returns the pinhole's ID.
func (r *runner) showPinhole(ctx context.Context, mark int) (id string, ok bool, detail string) {
	ev, err := r.alg.log.wait(ctx, mark, 3*time.Second, func(e event) bool {
		return e.Msg == "pinhole open" || e.Msg == "refused"
	})
	if err != nil {
		return "", false, fmt.Sprintf("ftpalg logged no pinhole: %v", err)
	}
	if ev.Msg == "refused" {
		return "", false, fmt.Sprintf("ftpalg refused %s: %s", ev.str("what"), ev.str("why"))
	}
	id = ev.pinholeID()
	kind, announced, rewritten := ev.str("kind"), ev.str("announced"), ev.str("rewritten")
	if announced == rewritten {
		r.n.Field("ftpalg", fmt.Sprintf("%s announces %s: kept as it is, the address is right for the other side", kind, announced))
	} else {
		r.n.Highlight("ftpalg", fmt.Sprintf("%s announces %s: rewritten to %s", kind, announced, rewritten))
	}
	r.n.Field("pinhole", ev.str("pinhole"))
	rules, err := r.pinholeRules(ctx, id)
	if err != nil {
		return id, false, err.Error()
	}
	prog := "iptables"
	if len(rules) > 0 {
		prog = xtables(rules[0].v6)
	}
	var lines []string
	for _, rl := range rules {
		lines = append(lines, rl.short())
	}
	r.n.Lines("firewall", prog+" -S, while the pinhole is open:", lines)
	if len(rules) == 0 {
		return id, false, "the firewall shows no rule for pinhole " + id
	}
	return id, true, ""
}

// pinholeRules returns the firewall rules of pinhole id.
func (r *runner) pinholeRules(ctx context.Context, id string) ([]ruleLine, error) {
	all, err := r.t.ftpalgRules(ctx)
	if err != nil {
		return nil, err
	}
	var out []ruleLine
	for _, rl := range all {
		if strings.Contains(rl.rule, ":"+id+`"`) {
			out = append(out, rl)
		}
	}
	return out, nil
}

// closeReasons explains ftpalg's reasons for closing a pinhole.
var closeReasons = map[string]string{
	"used":        "its data connection appeared in conntrack",
	"ttl":         "its time ran out",
	"failed":      "the transfer failed",
	"session end": "the control session ended",
	"replaced":    "a new announcement replaced it",
}

// showClose waits for pinhole id to close and checks that its rules are
// gone.
func (r *runner) showClose(ctx context.Context, mark int, id string) (bool, string) {
	ev, err := r.alg.log.wait(ctx, mark, 5*time.Second, func(e event) bool {
		return e.Msg == "pinhole closed" && e.pinholeID() == id
	})
	if err != nil {
		return false, fmt.Sprintf("pinhole %s did not close: %v", id, err)
	}
	rules, err := r.pinholeRules(ctx, id)
	if err != nil {
		return false, err.Error()
	}
	if len(rules) > 0 {
		return false, fmt.Sprintf("pinhole %s closed, but %d of its rules are still in the firewall", id, len(rules))
	}
	reason := ev.str("reason")
	why := closeReasons[reason]
	if why == "" {
		why = reason
	}
	r.n.Field("closed", fmt.Sprintf("pinhole %s closed (%s: %s); none of its rules is left", id, reason, why))
	return true, ""
}

// showCount narrates ftpalg's "transfer" line for pinhole id: the kernel's
// byte and packet counters of the data connection. The line comes when
// conntrack forgets the finished connection; dumping the table makes the
// kernel reap it without waiting for its garbage collector. A line that
// does not come within a few seconds is mentioned, not failed.
func (r *runner) showCount(ctx context.Context, mark int, id string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ev, err := r.alg.log.wait(ctx, mark, 200*time.Millisecond, func(e event) bool {
			return e.Msg == "transfer" && e.pinholeID() == id
		})
		if err == nil {
			bytes, packets := ev.num("bytes_orig"), ev.num("packets_orig")
			if rb := ev.num("bytes_reply"); rb > bytes {
				bytes, packets = rb, ev.num("packets_reply")
			}
			r.n.Field("conntrack", fmt.Sprintf("%s -> %s, reply %s -> %s",
				ev.str("flow_src"), ev.str("flow_dst"), ev.str("flow_reply_src"), ev.str("flow_reply_dst")))
			r.n.Text(fmt.Sprintf("%s%s in %.0f packets (IP, the data's direction), forwarded by the kernel;",
				indent, formatBytes(bytes), packets), indent+"none of it passed through ftpalg.")
			return
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			r.n.Field("conntrack", "(ftpalg had not yet reported the end of the data connection)")
			return
		}
		if _, err := r.ct.Dump(nil); err != nil {
			r.log.Debug("dumping conntrack", "err", err)
		}
	}
}
