package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// writeCapture writes a pcap of one control session: the client sends
// cmds, the server answers each with the reply at the same index.
func writeCapture(t *testing.T, cmds, replies []string) string {
	t.Helper()
	client, server := netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("203.0.113.2:21")
	var out bytes.Buffer
	w := pcapgo.NewWriter(&out)
	if err := w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	seq := map[bool]uint32{true: 100, false: 9000}
	add := func(fromClient, syn bool, payload string) {
		from, to := client, server
		if !fromClient {
			from, to = server, client
		}
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: from.Addr().AsSlice(), DstIP: to.Addr().AsSlice()}
		tcp := &layers.TCP{SrcPort: layers.TCPPort(from.Port()), DstPort: layers.TCPPort(to.Port()),
			Seq: seq[fromClient], Ack: seq[!fromClient], SYN: syn, ACK: !(syn && fromClient), Window: 1000}
		tcp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, tcp, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Millisecond)
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: now, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		seq[fromClient] += uint32(len(payload))
		if syn {
			seq[fromClient]++
		}
	}
	add(true, true, "")
	add(false, true, "")
	add(false, false, "220 ready\r\n")
	for i, c := range cmds {
		add(true, false, c+"\r\n")
		add(false, false, replies[i]+"\r\n")
	}
	path := filepath.Join(t.TempDir(), "ftp.pcap")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runInspect(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = mainErr(append([]string{"inspect"}, args...), &o, &e)
	return code, o.String(), e.String()
}

func TestInspectCommand(t *testing.T) {
	clean := writeCapture(t, []string{"PASV"}, []string{"227 Entering Passive Mode (203,0,113,2,195,80)."})
	bounce := writeCapture(t, []string{"PORT 198,51,100,7,0,25"}, []string{"200 PORT command successful."})

	code, out, errOut := runInspect(clean)
	if code != 0 || !strings.Contains(out, "PASV 203.0.113.2:50000: pinhole s1.p1 tcp 192.0.2.1 -> 203.0.113.2:50000 snat 192.0.2.1") ||
		!strings.Contains(out, "1 sessions, 1 announcements, 0 violations") {
		t.Errorf("exit %d, stdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// Flags may follow the file.
	code, out, _ = runInspect(bounce, "--json")
	var rep struct {
		Schema   string
		Sessions []struct {
			Violations []struct{ What, Reply string }
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 {
		t.Fatalf("exit %d, JSON %v:\n%s", code, err, out)
	}
	if rep.Schema != "ftpalg-inspect/1" || len(rep.Sessions) != 1 || len(rep.Sessions[0].Violations) != 1 ||
		rep.Sessions[0].Violations[0].What != "bounce" {
		t.Errorf("report %+v", rep)
	}

	// Violations change the exit status only when asked to.
	var o, e bytes.Buffer
	err := inspectCmd(context.Background(), []string{"--fail-on-violation", bounce}, &o, &e)
	var ec interface{ ExitCode() int }
	if !errors.As(err, &ec) || ec.ExitCode() != 3 {
		t.Errorf("--fail-on-violation: %v", err)
	}
	if code, _, _ := runInspect("--fail-on-violation", bounce); code == 0 {
		t.Errorf("--fail-on-violation with a violation exits 0")
	}
	if code, _, _ := runInspect("--fail-on-violation", clean); code != 0 {
		t.Errorf("--fail-on-violation without violations exits %d", code)
	}

	// A stricter policy from the flags.
	code, out, _ = runInspect("--min-data-port", "60000", "--ports", "2121", clean)
	if code != 0 || !strings.Contains(out, "privileged-port: privileged data port 50000") || !strings.Contains(out, "ports 21,2121") {
		t.Errorf("exit %d:\n%s", code, out)
	}

	// Standard input.
	f, err := os.Open(clean)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdin := os.Stdin
	os.Stdin = f
	code, out, _ = runInspect("-")
	os.Stdin = stdin
	if code != 0 || !strings.Contains(out, "1 sessions, 1 announcements") {
		t.Errorf("stdin: exit %d:\n%s", code, out)
	}
}

func TestInspectCommandErrors(t *testing.T) {
	text := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(text, []byte("not a capture at all\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "want one capture file"},
		{[]string{"a.pcap", "b.pcap"}, 2, "want one capture file"},
		{[]string{"--ports", "x", "a.pcap"}, 2, "--ports"},
		{[]string{"--data-ports", "9-1", "a.pcap"}, 2, "--data-ports"},
		{[]string{"--max-line", "10", "a.pcap"}, 2, "max line"},
		{[]string{"--bogus", "a.pcap"}, 2, "flag provided but not defined"},
		{[]string{filepath.Join(t.TempDir(), "missing.pcap")}, 1, "no such file"},
		{[]string{text}, 1, "not a pcap or pcapng capture"},
	} {
		code, out, errOut := runInspect(tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.msg) || out != "" {
			t.Errorf("inspect %q: exit %d, stdout %q, stderr %q; want exit %d and %q", tt.args, code, out, errOut, tt.code, tt.msg)
		}
	}
}
