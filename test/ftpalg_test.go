// Package test holds ftpalg's end-to-end tests: the real binary in network
// namespaces built by test/netlab, with real FTP servers and clients.
package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/test/netlab"
)

func TestMain(m *testing.M) {
	code := netlab.Run(m)
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// ftpalgBin builds the ftpalg binary once per test run.
func ftpalgBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		// Named like the harness's scratch directories, so that
		// netlab.SweepStale removes it if this run is killed.
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-bin-", netlab.Prefix, os.Getpid()))
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "ftpalg")
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		out, err := exec.Command(goBin, "build", "-o", binPath, "github.com/ftpalg/ftpalg/cmd/ftpalg").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building ftpalg: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// ALG is a running ftpalg process.
type ALG struct {
	t    testing.TB
	Proc *netlab.Proc
	NS   *netlab.NS
}

// startALG runs "ftpalg run <args> --log-format json" in ns and waits until
// it is serving.
func startALG(t testing.TB, ns *netlab.NS, args ...string) *ALG {
	t.Helper()
	return startALGAt(t, ns, "debug", args...)
}

// startALGAt is startALG at another log level: benchmarks run ftpalg as an
// operator would (info), since debug lines cost more than the work.
func startALGAt(t testing.TB, ns *netlab.NS, level string, args ...string) *ALG {
	t.Helper()
	args = append([]string{"run"}, withBackend(t, args)...)
	args = append(args, "--log-format", "json", "--log-level", level)
	a := &ALG{t: t, Proc: ns.Start(t, ftpalgBin(t), args...), NS: ns}
	waitReady(t, a)
	return a
}

// waitReady waits for the "ftpalg running" line of a started ALG.
func waitReady(t testing.TB, a *ALG) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(a.Logs("ftpalg running")) == 0 {
		if exited, err := a.Proc.Exited(); exited {
			t.Fatalf("ftpalg exited at start (%v):\n%s", err, a.Proc.Output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("ftpalg not ready after 20s:\n%s", a.Proc.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Logs returns the JSON log records whose msg is msg ("" for all).
func (a *ALG) Logs(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(a.Proc.Output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := map[string]any{}
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if msg == "" || m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// Stop sends SIGTERM to ftpalg alone (as systemd's KillMode=mixed does;
// its iptables children must finish their work) and checks that it exited 0
// within 15s.
func (a *ALG) Stop() {
	a.t.Helper()
	if err := a.Proc.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		a.t.Fatal(err)
	}
	select {
	case <-a.Proc.Done():
	case <-time.After(15 * time.Second):
		a.t.Errorf("ftpalg did not exit within 15s of SIGTERM")
	}
	if err := a.Proc.Stop(); err != nil {
		a.t.Fatal(err)
	}
	if code := a.Proc.Cmd.ProcessState.ExitCode(); code != 0 {
		a.t.Fatalf("ftpalg exited %d after SIGTERM:\n%s", code, tailLines(a.Proc.Output(), 40))
	}
}

// StopClean stops ftpalg like Stop and checks that nothing of it is left
// in the firewall of its namespace.
func (a *ALG) StopClean() {
	a.t.Helper()
	a.Stop()
	if left := ftpalgRules(a.t, a.NS); len(left) > 0 {
		a.t.Fatalf("ftpalg left rules after exit:\n%s", strings.Join(left, "\n"))
	}
}

// retrPassive downloads srv's small file over a data connection from ns
// to the server's port, announced on x by PASV/EPSV, and checks its size.
func retrPassive(t testing.TB, ctx context.Context, x *ctrl, ns *netlab.NS, srv *netlab.Server, f netlab.Family, port uint16) {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dc, err := ns.DialContext(dctx, "tcp", hostPort(srv.NS.Addr(f), port))
	if err != nil {
		t.Fatalf("data connection through the pinhole: %v", err)
	}
	defer dc.Close()
	x.expectCode(x.cmd("RETR "+srv.Small.Path), 150)
	data, err := io.ReadAll(dc)
	if err != nil || int64(len(data)) != srv.Small.Size {
		t.Fatalf("read %d bytes (%v), want %d", len(data), err, srv.Small.Size)
	}
	x.expect(226)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ftpalgRules returns the lines of the gateway's firewall that ftpalg owns
// (chains FTPALG-*, rules with an ftpalg comment).
func ftpalgRules(t testing.TB, ns *netlab.NS) []string {
	t.Helper()
	dump, err := ns.FirewallDump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(strings.ToLower(l), "ftpalg") {
			out = append(out, l)
		}
	}
	return out
}

var pinholeRuleRE = regexp.MustCompile(`ftpalg:s[0-9]+:`)

// pinholeRules returns the per-session rules (pinholes) in the gateway.
func pinholeRules(t testing.TB, ns *netlab.NS) []string {
	var out []string
	for _, l := range ftpalgRules(t, ns) {
		if pinholeRuleRE.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// waitNoPinholes waits until no per-session rule is left.
func waitNoPinholes(t testing.TB, ns *netlab.NS, within time.Duration) {
	t.Helper()
	within = max(within, minWait)
	deadline := time.Now().Add(within)
	for {
		left := pinholeRules(t, ns)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pinhole rules still present after %v:\n%s", within, strings.Join(left, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// minWait is the least time the wait helpers give something that must
// happen eventually (a pinhole closing, a session ending). They return as
// soon as it has happened; the bound only says when to give up, and on a
// machine busy with other work a few seconds is not enough.
const minWait = 30 * time.Second

// ctrl is a hand-driven FTP control connection.
type ctrl struct {
	t  testing.TB
	c  net.Conn
	rr *ftp.ReplyReader
}

func dialCtrl(t testing.TB, ns *netlab.NS, addr netip.AddrPort) *ctrl {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	x := dialCtrlConn(t, c)
	x.expect(220)
	return x
}

// dialCtrlConn wraps a control connection; the greeting is not read yet.
func dialCtrlConn(t testing.TB, c net.Conn) *ctrl {
	return &ctrl{t: t, c: c, rr: ftp.NewReplyReader(c, 0, 0)}
}

func (x *ctrl) reply() ftp.Reply {
	x.t.Helper()
	x.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r, err := x.rr.ReadReply()
	if err != nil {
		x.t.Fatalf("reading reply: %v", err)
	}
	return r
}

func (x *ctrl) expect(code int) ftp.Reply {
	x.t.Helper()
	r := x.reply()
	if r.Code != code {
		x.t.Fatalf("got reply %q, want code %d", r.Bytes(), code)
	}
	return r
}

// cmd sends a command and returns its reply (preliminary replies included).
func (x *ctrl) cmd(line string) ftp.Reply {
	x.t.Helper()
	if _, err := x.c.Write([]byte(line + "\r\n")); err != nil {
		x.t.Fatal(err)
	}
	return x.reply()
}

func (x *ctrl) login(user, pass string) {
	x.t.Helper()
	if r := x.cmd("USER " + user); r.Code == 331 {
		x.expectCode(x.cmd("PASS "+pass), 230)
	} else {
		x.expectCode(r, 230)
	}
	x.expectCode(x.cmd("TYPE I"), 200)
}

func (x *ctrl) expectCode(r ftp.Reply, code int) {
	x.t.Helper()
	if r.Code != code {
		x.t.Fatalf("got reply %q, want code %d", r.Bytes(), code)
	}
}

// epsv sends EPSV and returns the announced port.
func (x *ctrl) epsv() uint16 {
	x.t.Helper()
	r := x.cmd("EPSV")
	x.expectCode(r, 229)
	port, _, _, err := ftp.Find229(r.Text())
	if err != nil {
		x.t.Fatal(err)
	}
	return port
}

func hostPort(a netip.Addr, port uint16) string {
	return netip.AddrPortFrom(a, port).String()
}

func itoa(n int) string { return strconv.Itoa(n) }
