package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"
)

// TestSystemdUnitVerifies runs systemd-analyze verify over the shipped unit,
// with /usr/bin/ftpalg pointed at a freshly built binary (verify checks
// that every Exec* command exists). --man=no: the man page is installed by
// the package, not on the test machine.
func TestSystemdUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		unavailable(t, "systemd-analyze not installed (package systemd)")
	}
	unit, err := os.ReadFile("../../contrib/systemd/ftpalg.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := ftpalgBinary(t)
	text := strings.ReplaceAll(string(unit), "/usr/bin/ftpalg", bin)
	path := filepath.Join(dir, "ftpalg.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// With the sidecar's drop-in (verify reads ftpalg.service.d/ next to
	// the unit): no unknown key, no bad value.
	dropIn, err := os.ReadFile("../../contrib/sidecar/sidecar.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path+".d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path+".d", "sidecar.conf"), dropIn, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify with the sidecar drop-in: %v\n%s", err, out)
	}
	for _, want := range []string{"\nCapabilityBoundingSet=\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
		"\nAmbientCapabilities=\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n", "\nExecStopPost=\n"} {
		if !strings.Contains(string(dropIn), want) {
			t.Errorf("the sidecar drop-in lacks %q", want)
		}
	}
	// The capabilities are exactly the two the unit documents.
	for _, l := range strings.Split(string(unit), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && (k == "CapabilityBoundingSet" || k == "AmbientCapabilities") {
			if v != "CAP_NET_ADMIN CAP_NET_BIND_SERVICE" {
				t.Errorf("%s=%s: more than CAP_NET_ADMIN and CAP_NET_BIND_SERVICE", k, v)
			}
		}
	}
	// Under ProtectSystem=strict only the listed paths are writable, and a
	// listed path that does not exist is not: the xtables lock that
	// iptables-legacy opens with O_CREAT must exist before ExecStart, made
	// outside the sandbox.
	if !strings.Contains(string(unit), "\nReadWritePaths=/run/xtables.lock\n") ||
		!strings.Contains(string(unit), "\nExecStartPre=+/usr/bin/touch /run/xtables.lock\n") {
		t.Errorf("the unit does not make /run/xtables.lock exist and writable before the start")
	}
	for _, want := range []string{"Type=notify", "ExecReload=", "ExecStopPost=/usr/bin/ftpalg rules flush", "ProtectSystem=strict",
		"NoNewPrivileges=yes", "PrivateTmp=yes", "AF_NETLINK", "WatchdogSec="} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %s", want)
		}
	}
}

// TestSdNotify runs ftpalg (reverse mode, relay backend: no privilege
// needed) as systemd would, with NOTIFY_SOCKET and WATCHDOG_USEC: READY=1
// comes once the listener accepts, watchdog pings follow, STOPPING=1 on
// SIGTERM.
func TestSdNotify(t *testing.T) {
	dir := t.TempDir()
	bin := ftpalgBinary(t)
	sock := filepath.Join(dir, "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "run", "--mode", "reverse", "--backend", "relay", "--listen", addr,
		"--upstream", "127.0.0.1:1", "--status-socket", "off", "--data-ports", "47000-47009")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	read := func() string {
		t.Helper()
		nc.SetReadDeadline(time.Now().Add(20 * time.Second))
		b := make([]byte, 512)
		n, err := nc.Read(b)
		if err != nil {
			t.Fatalf("no notification (%v); ftpalg logged:\n%s", err, logs.String())
		}
		return string(b[:n])
	}
	if m := read(); !strings.HasPrefix(m, "READY=1") {
		t.Fatalf("first notification %q, want READY=1", m)
	}
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Errorf("READY=1 sent but the listener does not accept: %v", err)
	} else {
		c.Close()
	}
	if m := read(); m != "WATCHDOG=1" {
		t.Errorf("second notification %q, want a watchdog ping", m)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for {
		m := read()
		if m == "STOPPING=1" {
			break
		}
		if m != "WATCHDOG=1" {
			t.Fatalf("notification %q while stopping", m)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("ftpalg exited: %v\n%s", err, logs.String())
	}
}

// unavailable skips outside CI and fails under CI=true (roottest).
func unavailable(t *testing.T, why string) {
	t.Helper()
	roottest.Unavailable(t, "%s", why)
}

// TestPreflight: without CAP_NET_ADMIN one line says so; an --intercept
// interface that does not exist is refused before anything is installed.
// Neither reaches the firewall, so they run in the test's own namespace.
func TestPreflight(t *testing.T) {
	roottest.Require(t, "setpriv") // root, to drop CAP_NET_ADMIN with setpriv (util-linux)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal(err)
	}
	bin := ftpalgBinary(t)
	out, err := exec.Command(setpriv, "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
		bin, "run", "--mode", "gateway", "--intercept", "lo", "--status-socket", "off").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || strings.Count(string(out), "\n") != 1 ||
		!strings.Contains(string(out), "CAP_NET_ADMIN is missing") {
		t.Errorf("without CAP_NET_ADMIN: %v, %q", err, out)
	}
	out, err = exec.Command(bin, "run", "--mode", "gateway", "--intercept", "nosuchif0", "--status-socket", "off").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || string(out) != "ftpalg: --intercept nosuchif0: no such interface\n" {
		t.Errorf("missing interface: %v, %q", err, out)
	}
}

// TestSecondSignalCutsDrain: the first SIGINT starts the drain (an hour
// here), the second ends it: the client still gets 421, ftpalg exits 0.
// JSON logs give every duration in seconds, as a number.
func TestSecondSignalCutsDrain(t *testing.T) {
	bin := ftpalgBinary(t)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 test server\r\n"))
			go io.Copy(io.Discard, c)
		}
	}()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "run", "--mode", "reverse", "--backend", "relay", "--listen", addr,
		"--upstream", up.Addr().String(), "--status-socket", "off", "--drain", "1h", "--log-format", "json")
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var c net.Conn
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ftpalg does not listen: %v\n%s", err, logs.String())
		}
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "220 test server\r\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	cmd.Process.Signal(os.Interrupt)
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), `"msg":"draining sessions"`); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no drain after SIGINT:\n%s", logs.String())
		}
	}
	cmd.Process.Signal(os.Interrupt)
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "421 ftpalg: shutting down; closing the connection\r\n" {
		t.Errorf("after the second SIGINT the client got %q (%v), want the 421 and EOF", rest, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ftpalg exited: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ftpalg still draining 30s after the second SIGINT:\n%s", logs.String())
	}
	// Durations: numbers of seconds.
	for _, line := range strings.Split(logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		switch m["msg"] {
		case "draining sessions":
			if m["timeout"] != 3600.0 {
				t.Errorf("drain timeout logged as %#v, want 3600 (seconds)", m["timeout"])
			}
		case "session end":
			if _, ok := m["duration"].(float64); !ok {
				t.Errorf("session duration logged as %#v, want seconds", m["duration"])
			}
		}
	}
}
