package main

// `ftpalg status` asks the running daemon over a unix socket, not over the
// metrics listener: the socket is root-only (0600 in /run/ftpalg, like the
// firewall lock) and always there, while the metrics listener is opt-in and
// may face a monitoring network that should not see client addresses.
// "auto" names the socket after the network namespace, so `ftpalg status`
// run where the daemon runs (or under `ip netns exec`) finds it.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ftpalg/ftpalg/rules"
)

func init() {
	register("status", "what a running ftpalg holds now: sessions, pinholes, counters", statusCmd)
}

// Status is the JSON answer of the status socket and of `ftpalg status
// --json` (schema "ftpalg-status/1", documented in the README's "Status").
// Times are seconds; addresses are ADDR:PORT strings ([v6]:port); a new
// field may be added under the same schema, a changed or removed one gets
// a new schema name.
type Status struct {
	Schema   string             `json:"schema"`
	PID      int                `json:"pid"`
	Version  string             `json:"version"`
	Mode     string             `json:"mode"`
	Backend  string             `json:"backend"`
	Config   string             `json:"config,omitempty"`
	Uptime   float64            `json:"uptime_seconds"`
	Ready    bool               `json:"ready"`
	Sessions []StatusSession    `json:"sessions"`
	Pinholes []StatusPinhole    `json:"pinholes"`
	Counters map[string]float64 `json:"counters"`
}

type StatusSession struct {
	ID     string  `json:"id"`
	Client string  `json:"client"`
	Server string  `json:"server"`
	Age    float64 `json:"age_seconds"`
	State  string  `json:"state"`
}

type StatusPinhole struct {
	ID      string  `json:"id"`
	Session string  `json:"session"`
	Src     string  `json:"src"`
	Dst     string  `json:"dst"`
	DNAT    string  `json:"dnat,omitempty"`
	SNAT    string  `json:"snat,omitempty"`
	Passive bool    `json:"passive"`
	Age     float64 `json:"age_seconds"`
	// Remaining is the most the pinhole stays open unused (its TTL left).
	Remaining float64 `json:"remaining_seconds"`
}

// pinholes is the table of live pinholes, for status and the live gauge.
type pinholes struct {
	mu sync.Mutex
	m  map[rules.PinholeID]livePinhole
}

type livePinhole struct {
	p      rules.Pinhole
	opened time.Time
}

func (t *pinholes) open(p rules.Pinhole) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[rules.PinholeID]livePinhole{}
	}
	t.m[p.ID] = livePinhole{p, time.Now()}
}

func (t *pinholes) close(id rules.PinholeID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}

func (t *pinholes) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *pinholes) list(now time.Time) []StatusPinhole {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := []StatusPinhole{}
	for _, l := range t.m {
		sp := StatusPinhole{ID: l.p.ID.String(), Session: l.p.Session(), Src: l.p.Src.String(), Dst: l.p.Dst.String(),
			Passive: l.p.Passive, Age: now.Sub(l.opened).Seconds(),
			Remaining: max(0, (l.p.TTL - now.Sub(l.opened)).Seconds())}
		if l.p.DNAT.IsValid() {
			sp.DNAT = l.p.DNAT.String()
		}
		if l.p.SNAT.IsValid() {
			sp.SNAT = l.p.SNAT.String()
		}
		out = append(out, sp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Age > out[j].Age })
	return out
}

// status is what the daemon holds now.
func (d *daemon) status() Status {
	now := time.Now()
	c := d.config()
	st := Status{Schema: "ftpalg-status/1", PID: os.Getpid(), Version: version(), Mode: string(c.Mode),
		Backend: d.backend, Config: d.path, Uptime: now.Sub(d.started).Seconds(), Ready: d.ready.Load(),
		Sessions: []StatusSession{}, Pinholes: d.holes.list(now), Counters: map[string]float64{}}
	if d.proxy != nil {
		for _, s := range d.proxy.Snapshot() {
			ss := StatusSession{ID: s.ID, Age: now.Sub(s.Start).Seconds(), State: s.State}
			if s.Client.IsValid() {
				ss.Client, ss.Server = s.Client.String(), s.Server.String()
			}
			st.Sessions = append(st.Sessions, ss)
		}
	}
	mfs, _ := d.met.reg.Gather()
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "ftpalg_") || name == "ftpalg_build_info" || mf.GetType() == dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			key := name
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				st.Counters[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				st.Counters[key] = m.Gauge.GetValue()
			}
		}
	}
	return st
}

// statusSocketPath resolves "auto" to this network namespace's socket.
func statusSocketPath(s string) (string, error) {
	if s != "auto" {
		return s, nil
	}
	lock, err := lockPath()
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(lock, ".lock") + ".sock", nil
}

// serveStatus serves the status on the root-only unix socket. With "auto"
// a socket that cannot be made (an unprivileged sidecar cannot write to
// /run/ftpalg) is a warning: ftpalg runs without it.
func (d *daemon) serveStatus(ctx context.Context) error {
	if d.cfg.StatusSocket == "off" {
		return nil
	}
	err := d.listenStatus(ctx)
	if err != nil && d.cfg.StatusSocket == "auto" {
		d.log.Warn("no status socket: ftpalg status will not work (--status-socket off silences this)", "err", err)
		return nil
	}
	return err
}

func (d *daemon) listenStatus(ctx context.Context) error {
	path, err := statusSocketPath(d.cfg.StatusSocket)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating the status socket's directory: %w", err)
	}
	// A socket left by a killed run: nobody listens on it any more. (The
	// firewall lock, taken before, keeps two daemons with a firewall
	// backend apart.)
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("status socket %s: another ftpalg answers on it", path)
	}
	// Only a socket is removed: a mistyped --status-socket naming a file
	// (the configuration itself) must not delete it.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("status socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing the stale status socket: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		e := json.NewEncoder(w)
		e.SetEscapeHTML(false) // direction="client->server", not \u003e
		e.Encode(d.status())
	})
	old := syscallUmask(0o077)
	err = d.serveHTTP(ctx, "unix", path, mux, "status")
	syscallUmask(old)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("restricting the status socket: %w", err)
	}
	d.cleanups = append(d.cleanups, func() { os.Remove(path) })
	return nil
}

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ftpalg status", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: ftpalg status [--json] [--socket PATH]

Shows what the ftpalg running in this network namespace holds now: its mode
and backend, the control sessions (client, server, age, state), the live
pinholes (endpoints, age, remaining lifetime) and its counters. It asks the
daemon over its root-only status socket.

flags:
`)
		printDefaults(fs)
	}
	asJSON := fs.Bool("json", false, "print the status as JSON (schema ftpalg-status/1)")
	sock := fs.String("socket", "auto", "the daemon's status socket (auto: this network namespace's, in /run/ftpalg)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("status: unexpected arguments %q", fs.Args())
	}
	path, err := statusSocketPath(*sock)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://ftpalg/status", nil)
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("reading the status socket %s: permission denied (it is root's)", path)
		}
		var se *os.SyscallError // not: Get "http://ftpalg/status": dial unix PATH: connect: ...
		if errors.As(err, &se) {
			err = se.Err
		}
		return fmt.Errorf("no ftpalg answers on %s (is it running in this network namespace?): %w", path, err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("reading the status: %w", err)
	}
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		e.SetEscapeHTML(false)
		return e.Encode(st)
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st Status) {
	ready := "ready"
	if !st.Ready {
		ready = "not ready"
	}
	fmt.Fprintf(w, "ftpalg %s (pid %d), %s mode, %s backend, up %s, %s\n", st.Version, st.PID, st.Mode, st.Backend,
		secs(st.Uptime), ready)
	if st.Config != "" {
		fmt.Fprintf(w, "config: %s\n", st.Config)
	}
	fmt.Fprintf(w, "\nsessions: %d\n", len(st.Sessions))
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	if len(st.Sessions) > 0 {
		fmt.Fprintln(tw, "  ID\tCLIENT\tSERVER\tAGE\tSTATE")
		for _, s := range st.Sessions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.ID, s.Client, s.Server, secs(s.Age), s.State)
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\npinholes: %d\n", len(st.Pinholes))
	if len(st.Pinholes) > 0 {
		fmt.Fprintln(tw, "  ID\tFROM\tTO\tTRANSLATED\tAGE\tLEFT")
		for _, p := range st.Pinholes {
			tr := "-"
			if p.DNAT != "" {
				tr = "dnat " + p.DNAT
			}
			if p.SNAT != "" {
				tr = strings.TrimPrefix(tr+", snat "+p.SNAT, "-, ")
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Src, p.Dst, tr, secs(p.Age), secs(p.Remaining))
		}
	}
	tw.Flush()
	fmt.Fprintf(w, "\ncounters:\n")
	keys := make([]string, 0, len(st.Counters))
	for k := range st.Counters {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s\t%g\n", k, st.Counters[k])
	}
	tw.Flush()
}

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second / 10).String()
}
