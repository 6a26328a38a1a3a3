package lab

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
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
	// Dropped is how many packets the kernel dropped from the capture
	// (its buffer was full): they are missing from the file.
	Dropped int
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
const totalSteps = 11 + ftpsSteps

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
		res.Namespaces = append(res.Namespaces, ns.Name)
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

	srvStop  func() error
	file     []byte
	hash     [32]byte
	tlsRoots *x509.CertPool // trusts ftpalg's certificate in act 4

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
	if others := otherLabs(t.id); len(others) > 0 {
		n.Para(fmt.Sprintf("Note: %d lab(s) of earlier runs are still up (%s); `ftpalg lab --clean` removes them.",
			len(others), strings.Join(others, ", ")))
	}
	// A lab of a crashed process with our pid would be in the way.
	for _, ns := range t.namespaces() {
		if err := removeLabNamespace(ctx, ns.Name); err != nil {
			return err
		}
	}
	r.built = true
	if err := t.build(); err != nil {
		return fmt.Errorf("building the lab network: %w", err)
	}
	if err := t.strictFirewall(ctx); err != nil {
		return err
	}
	variant, _ := t.gw.Run(ctx, "iptables", "-V")

	r.file = labData(r.cfg.FileSize)
	r.hash = sha256.Sum256(r.file)
	if err := r.startServer(nil); err != nil {
		return err
	}
	if err := r.dialConntrack(); err != nil {
		return err
	}

	n.Para(fmt.Sprintf("The network: three network namespaces, %s{client,gw,server}:", Prefix+t.id+"-"))
	n.Text(
		"",
		fmt.Sprintf("    client   %-12s %s", netlab.InsideHost4, netlab.InsideHost6),
		"      |        private network",
		fmt.Sprintf("    gw       %-12s %-15s interface %q", netlab.InsideGW4, netlab.InsideGW6, netlab.IfInside),
		fmt.Sprintf("             %-12s %-15s interface %q", netlab.OutsideGW4, netlab.OutsideGW6, netlab.IfOutside),
		"      |        internet",
		fmt.Sprintf("    server   %-12s %s", netlab.OutsideHost4, netlab.OutsideHost6),
	)
	n.Para(
		fmt.Sprintf("The gateway is a strict firewall (%s; the same with ip6tables):", strings.TrimSpace(variant)),
		"INPUT and FORWARD policy DROP, one rule in each accepting ESTABLISHED connections,",
		fmt.Sprintf("MASQUERADE out of %q. The kernel's FTP helper (nf_conntrack_ftp) is not used.", netlab.IfOutside),
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
		n.Para(fmt.Sprintf("Recording the gateway's interfaces %q and %q into %s (%s).", netlab.IfInside, netlab.IfOutside, r.cfg.Capture, format),
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
// server's namespace (the listener stays valid when the cables move). With
// cfg it speaks FTPS (act 4, without ftpalg), else plain FTP.
func (r *runner) startServer(cfg *tls.Config) error {
	srvNS := r.t.server
	ln, err := srvNS.Listen("tcp", "[::]:21")
	if err != nil {
		return fmt.Errorf("starting the FTP server: %w", err)
	}
	srv := &Server{
		Files:  map[string][]byte{labFile: r.file},
		User:   labUser,
		Pass:   labPass,
		Dial:   srvNS.DialContext,
		Listen: srvNS.Listen,
		OnNote: func(nt Note) {
			r.mu.Lock()
			r.notes = append(r.notes, nt)
			r.mu.Unlock()
		},
		Log: r.log.With("component", "ftp server"),
		TLS: cfg,
	}
	r.srvStop = srv.Start(ln)
	return nil
}

// dialConntrack opens a conntrack netlink socket in the gateway's
// namespace. Dumping the table makes the kernel reap expired flows at once,
// so that ftpalg reports a finished transfer without waiting for the
// kernel's garbage collector.
func (r *runner) dialConntrack() error {
	h, err := netns.GetFromName(r.t.gw.Name)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", r.t.gw.Name, err)
	}
	defer h.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(h)})
	if err != nil {
		return fmt.Errorf("opening conntrack in %s: %w", r.t.gw.Name, err)
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
