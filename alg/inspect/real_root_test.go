package inspect

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
	"github.com/ftpalg/ftpalg/lab/netlab/roottest"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// The root-only test below builds two network namespaces joined by a veth
// pair (client 192.0.2.1 / 2001:db8::1, server 192.0.2.2 / 2001:db8::2),
// runs vsftpd in one and curl in the other in every data-connection mode,
// captures the client's veth in pure Go (pcapgo.EthernetHandle, an
// AF_PACKET socket opened inside the namespace) and inspects the capture.

// requireRootAndTools skips t without root or the tools, or fails it
// under CI=true (roottest), so that a green CI always means the test ran.
func requireRootAndTools(t *testing.T, tools ...string) {
	t.Helper()
	roottest.Require(t, tools...)
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// inNetns runs fn on an OS thread switched into the named namespace.
// Sockets fn creates stay in that namespace.
func inNetns(name string, fn func() error) error { return (&netlab.NS{Name: name}).Do(fn) }

// sentinel marks the last packet of a capture.
var sentinel = []byte("ftpalg-inspect: end of capture")

func TestRealCapture(t *testing.T) {
	const vsftpd = "/usr/sbin/vsftpd"
	requireRootAndTools(t, "ip", "ss", "curl", vsftpd)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(rnd[:])
	nsC, nsS := fmt.Sprintf("ftpalg-insp-%d-%s-c", os.Getpid(), id), fmt.Sprintf("ftpalg-insp-%d-%s-s", os.Getpid(), id)
	vethC, vethS := "fic"+id, "fis"+id
	t.Cleanup(func() {
		// Deleting the namespaces kills nothing by itself: vsftpd is
		// stopped by its own cleanup, which runs first (LIFO).
		for _, ns := range []string{nsC, nsS} {
			if _, err := run(context.Background(), "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
				t.Errorf("removing namespace: %v", err)
			}
		}
	})
	for _, args := range [][]string{
		{"netns", "add", nsC},
		{"netns", "add", nsS},
		{"link", "add", vethC, "netns", nsC, "type", "veth", "peer", "name", vethS, "netns", nsS},
		{"-n", nsC, "addr", "add", "192.0.2.1/24", "dev", vethC},
		{"-n", nsC, "-6", "addr", "add", "2001:db8::1/64", "dev", vethC, "nodad"},
		{"-n", nsS, "addr", "add", "192.0.2.2/24", "dev", vethS},
		{"-n", nsS, "-6", "addr", "add", "2001:db8::2/64", "dev", vethS, "nodad"},
		{"-n", nsC, "link", "set", "lo", "up"},
		{"-n", nsS, "link", "set", "lo", "up"},
		{"-n", nsC, "link", "set", vethC, "up"},
		{"-n", nsS, "link", "set", vethS, "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			t.Fatalf("building the network: %v", err)
		}
	}

	// The capture: an AF_PACKET socket in the client's namespace.
	dir := t.TempDir()
	var h *pcapgo.EthernetHandle
	if err := inNetns(nsC, func() (err error) {
		h, err = pcapgo.NewEthernetHandle(vethC)
		return err
	}); err != nil {
		t.Fatalf("opening the capture: %v", err)
	}
	t.Cleanup(h.Close)
	if err := h.SetCaptureLength(maxSnaplen); err != nil {
		t.Fatal(err)
	}
	pcapPath := filepath.Join(dir, "real.pcap")
	f, err := os.Create(pcapPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriterNanos(f)
	if err := w.WriteFileHeader(maxSnaplen, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	captured := make(chan error, 1)
	go func() {
		// Ends at the sentinel, or with an error when the veth goes away
		// (ENETDOWN) if the test fails before it.
		for {
			data, ci, err := h.ReadPacketData()
			if err != nil {
				captured <- fmt.Errorf("capturing: %w", err)
				return
			}
			if bytes.Contains(data, sentinel) {
				captured <- nil
				return
			}
			if err := w.WritePacket(ci, data); err != nil {
				captured <- fmt.Errorf("writing capture: %w", err)
				return
			}
		}
	}()

	// The server.
	root, empty := filepath.Join(dir, "root"), filepath.Join(dir, "empty")
	content := "hello from vsftpd\n"
	for _, d := range []string{root, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := strings.Join([]string{
		"listen=NO", "listen_ipv6=YES", "background=NO", "seccomp_sandbox=NO",
		"anonymous_enable=YES", "no_anon_password=YES", "anon_root=" + root, "local_enable=NO", "write_enable=NO",
		"pasv_enable=YES", "pasv_min_port=40100", "pasv_max_port=40199",
		"port_enable=YES", "connect_from_port_20=NO",
		"secure_chroot_dir=" + empty, "ssl_enable=NO", "xferlog_enable=NO",
		"vsftpd_log_file=" + filepath.Join(dir, "vsftpd.log"), "",
	}, "\n")
	confPath := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	srvCmd := exec.Command("ip", "netns", "exec", nsS, vsftpd, confPath)
	var srvOut bytes.Buffer
	srvCmd.Stdout, srvCmd.Stderr = &srvOut, &srvOut
	if err := srvCmd.Start(); err != nil {
		t.Fatalf("starting vsftpd: %v", err)
	}
	srvDone := make(chan struct{})
	go func() { srvCmd.Wait(); close(srvDone) }()
	t.Cleanup(func() {
		srvCmd.Process.Kill()
		<-srvDone
		if t.Failed() {
			t.Logf("vsftpd output: %s", srvOut.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ := run(ctx, "ip", "netns", "exec", nsS, "ss", "-Htln", "sport", "=", ":21")
		if strings.TrimSpace(out) != "" {
			break
		}
		select {
		case <-srvDone:
			t.Fatalf("vsftpd exited: %s", srvOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("vsftpd does not listen on port 21")
		}
	}

	// The clients, one control session each.
	transfers := []struct {
		kind string
		args []string
	}{
		{"EPSV", []string{"ftp://192.0.2.2/hello.txt"}},
		{"PASV", []string{"--disable-epsv", "ftp://192.0.2.2/hello.txt"}},
		{"EPRT", []string{"-P", "-", "ftp://192.0.2.2/hello.txt"}},
		{"PORT", []string{"-P", "-", "--disable-eprt", "ftp://192.0.2.2/hello.txt"}},
		{"EPSV", []string{"-g", "ftp://[2001:db8::2]/hello.txt"}},
		{"EPRT", []string{"-g", "-P", "-", "ftp://[2001:db8::2]/hello.txt"}},
	}
	for _, x := range transfers {
		args := append([]string{"netns", "exec", nsC, "curl", "-sS", "--max-time", "20"}, x.args...)
		out, err := run(ctx, "ip", args...)
		if err != nil || out != content {
			t.Fatalf("curl %v: %v, got %q", x.args, err, out)
		}
	}

	// Let the last FIN/ACKs pass, then end the capture.
	time.Sleep(300 * time.Millisecond)
	if err := inNetns(nsS, func() error {
		c, err := net.Dial("udp", "192.0.2.1:9")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(sentinel)
		return err
	}); err != nil {
		t.Fatalf("sending the sentinel: %v", err)
	}
	select {
	case err := <-captured:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sentinel was not captured")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	data, err := os.ReadFile(pcapPath)
	if err != nil {
		t.Fatal(err)
	}
	rep := inspectBytes(t, data, Options{})
	var text bytes.Buffer
	rep.WriteText(&text)
	if t.Failed() || len(rep.Sessions) != len(transfers) {
		t.Fatalf("got %d sessions, want %d:\n%s", len(rep.Sessions), len(transfers), text.String())
	}
	if len(rep.Warnings) != 0 || rep.Violations() != 0 {
		t.Errorf("warnings %q, %d violations:\n%s", rep.Warnings, rep.Violations(), text.String())
	}
	for i, x := range transfers {
		s := rep.Sessions[i]
		if len(s.Announcements) != 1 || s.State != "closed" {
			t.Errorf("session %s (%s): state %s, %d announcements", s.ID, x.kind, s.State, len(s.Announcements))
			continue
		}
		a := s.Announcements[0]
		ph := a.Pinhole
		switch {
		case a.Kind != x.kind || a.Verdict != VerdictPinhole || ph == nil || !a.Used:
			t.Errorf("session %s: %s %s %s used=%v, want %s with a used pinhole", s.ID, a.Kind, a.Announced, a.Verdict, a.Used, x.kind)
		case a.Data.To != a.Announced:
			t.Errorf("session %s: data connection %s -> %s, announced %s", s.ID, a.Data.From, a.Data.To, a.Announced)
		case x.kind == "EPSV" || x.kind == "PASV":
			// The client connects to the server's real address at the
			// announced port, SNAT to the (unchanged) client address.
			p := a.Announced.Port()
			if p < 40100 || p > 40199 || a.Announced.Addr() != s.Server.Addr() || ph.Src != s.Client.Addr() ||
				ph.Dst != a.Announced || ph.SNAT != s.Client.Addr() || ph.DNAT.IsValid() || a.Rewritten.IsValid() {
				t.Errorf("session %s: %s %s -> pinhole %s", s.ID, a.Kind, a.Announced, ph.Rule)
			}
		default:
			// The announcement is translated to a pool port of the
			// gateway (here: the client's address), DNAT back to it.
			if a.Announced.Addr() != s.Client.Addr() || ph.Src != s.Server.Addr() || ph.DNAT != a.Announced ||
				ph.Dst.Addr() != s.Client.Addr() || ph.Dst.Port() < 40000 || ph.Dst.Port() > 40999 || a.Rewritten != ph.Dst {
				t.Errorf("session %s: %s %s -> pinhole %s, rewritten %s", s.ID, a.Kind, a.Announced, ph.Rule, a.Rewritten)
			}
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", text.String())
	}
	if os.Getenv("FTPALG_KEEP_CAPTURE") != "" {
		if err := os.WriteFile(os.Getenv("FTPALG_KEEP_CAPTURE"), data, 0o644); err != nil {
			t.Error(err)
		}
	}
}
