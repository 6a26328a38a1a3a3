package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"
	"golang.org/x/sys/unix"
)

// testPrefix names this package's test namespaces: testPrefix + "<pid>-".
const testPrefix = "ftpalg-nltest-"

// newTestNS creates a namespace for t and removes it in t's cleanup.
func newTestNS(t *testing.T, role string) *NS {
	t.Helper()
	name := fmt.Sprintf("%s%d-%s", testPrefix, os.Getpid(), role)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := Remove(ctx, name); err != nil {
			t.Errorf("removing %s: %v", name, err)
		}
	})
	n, err := Create(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// echoOnce accepts one connection on l and writes "hi <peer address>".
func echoOnce(l net.Listener) {
	c, err := l.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	ap := netip.MustParseAddrPort(c.RemoteAddr().String())
	fmt.Fprintf(c, "hi %s", ap.Addr().Unmap())
}

// reach dials to:port from n and returns what the other end wrote.
func reach(t *testing.T, n *NS, to netip.Addr, port int) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(to, uint16(port)).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// The whole life of a topology: created, wired, reachable as the plan says
// (routed through the gateway, bridged on a segment), re-wired, and removed
// with the processes in it and the firewall lock a killed ftpalg left.
func TestCreateWireRemove(t *testing.T) {
	roottest.Require(t, "ip", "sleep")
	gw, in, out, other, sw := newTestNS(t, "gw"), newTestNS(t, "in"), newTestNS(t, "out"), newTestNS(t, "other"), newTestNS(t, "sw")
	if err := SetGateway(gw); err != nil {
		t.Fatal(err)
	}
	if v, err := gw.ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Errorf("ip_forward in the gateway = %q, %v; want 1", v, err)
	}
	if _, err := gw.ReadSysctl("net.no.such.key"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("reading a missing sysctl: %v, want os.ErrNotExist", err)
	}
	if err := Wire(gw,
		Segment{Side: Inside, Hosts: []*NS{in}},
		Segment{Side: Outside, Hosts: []*NS{out, other}, Switch: sw},
	); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		dst := Outside.HostAddr(0, v6)
		l, err := out.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		port := netip.MustParseAddrPort(l.Addr().String()).Port()
		go echoOnce(l)
		got, err := reach(t, in, dst, int(port))
		if want := "hi " + Inside.HostAddr(0, v6).String(); err != nil || got != want {
			t.Errorf("inside -> outside (v6 %v) through the gateway: %q, %v; want %q", v6, got, err, want)
		}
		go echoOnce(l)
		got, err = reach(t, other, dst, int(port))
		if want := "hi " + Outside.HostAddr(1, v6).String(); err != nil || got != want {
			t.Errorf("other -> outside (v6 %v) over the bridge: %q, %v; want %q", v6, got, err, want)
		}
		l.Close()
	}

	// Unplugged, the inside host no longer reaches anything.
	if err := Unwire(gw, IfInside); err != nil {
		t.Fatal(err)
	}
	if err := Unwire(gw, IfInside); err != nil {
		t.Errorf("unplugging again: %v", err)
	}
	if _, err := reach(t, in, OutsideHost4, 9); err == nil {
		t.Error("the unplugged inside host reached the outside")
	}

	// A process in a namespace is found and killed by Remove, and the
	// lock file a killed ftpalg would leave goes with the namespace.
	sleeper := out.Command(context.Background(), "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	var pids []int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		// `ip netns exec` becomes sleep once it has entered the namespace.
		if pids, _ = out.PIDs(); slices.Contains(pids, sleeper.Process.Pid) || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Contains(pids, sleeper.Process.Pid) {
		t.Fatalf("PIDs = %v, want it to hold %d", pids, sleeper.Process.Pid)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(RunDir, out.Name), &st); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(firewallLockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(firewallLockDir, fmt.Sprintf("netns-%d.lock", st.Ino))
	if err := os.WriteFile(lock, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(lock) })
	// The status socket a killed ftpalg leaves beside its lock.
	sock := strings.TrimSuffix(lock, ".lock") + ".sock"
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	t.Cleanup(func() { os.Remove(sock) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Remove(ctx, out.Name); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Error("the process in the removed namespace still runs")
	}
	if _, err := os.Stat(filepath.Join(RunDir, out.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s still there: %v", out.Name, err)
	}
	if _, err := os.Stat(lock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file %s still there: %v", lock, err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("status socket %s still there: %v", sock, err)
	}
	if err := Remove(ctx, out.Name); err != nil {
		t.Errorf("removing a missing namespace: %v", err)
	}
	owned, err := ListOwned(testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	mine := 0
	for _, o := range owned {
		if o.PID == os.Getpid() {
			mine++
		}
	}
	if mine != 4 {
		t.Errorf("ListOwned = %v, want the four namespaces of this process left", owned)
	}
}
