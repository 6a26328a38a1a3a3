package netlab

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseTrace(t *testing.T) {
	curl := "* Connected\n< 220 (vsFTPd 3.0.3)\r\n> USER anonymous\r\n< 230 Login successful.\n> EPSV\n< 229 Entering Extended Passive Mode (|||40012|)\n{ [6 bytes data]\n"
	sent, replies := parseTrace(Curl, curl)
	if want := []string{"USER anonymous", "EPSV"}; !slices.Equal(sent, want) {
		t.Errorf("curl sent = %q, want %q", sent, want)
	}
	if want := []string{"220 (vsFTPd 3.0.3)", "230 Login successful.", "229 Entering Extended Passive Mode (|||40012|)"}; !slices.Equal(replies, want) {
		t.Errorf("curl replies = %q, want %q", replies, want)
	}
	lftp := "---- Connecting to 203.0.113.2\n<--- 220 hi\n---> PORT 192,0,2,2,192,137\n<--- 200 PORT command successful\n"
	sent, replies = parseTrace(LFTP, lftp)
	if want := []string{"PORT 192,0,2,2,192,137"}; !slices.Equal(sent, want) {
		t.Errorf("lftp sent = %q, want %q", sent, want)
	}
	if want := []string{"220 hi", "200 PORT command successful"}; !slices.Equal(replies, want) {
		t.Errorf("lftp replies = %q, want %q", replies, want)
	}
	r := Result{Sent: sent, Replies: replies}
	if !r.SentCommand("port") || r.SentCommand("EPRT") {
		t.Errorf("SentCommand wrong for %q", sent)
	}
	if got := r.RepliesWithCode("200"); len(got) != 1 {
		t.Errorf("RepliesWithCode(200) = %q", got)
	}
}

func TestSupported(t *testing.T) {
	for _, c := range []struct {
		tool Tool
		mode Mode
		f    Family
		want bool
	}{
		{Curl, PASV, IPv4, true}, {Curl, PORT, IPv4, true}, {Curl, EPRT, IPv4, true}, {Curl, EPSV, IPv4, true},
		{Curl, PASV, IPv6, false}, {Curl, PORT, IPv6, false}, {Curl, EPSV, IPv6, true}, {Curl, EPRT, IPv6, true},
		{LFTP, EPRT, IPv4, false}, {LFTP, PORT, IPv4, true}, {LFTP, EPRT, IPv6, true}, {LFTP, PASV, IPv6, false},
	} {
		if got := Supported(c.tool, c.mode, c.f); got != c.want {
			t.Errorf("Supported(%s, %s, %s) = %v, want %v", c.tool, c.mode, c.f, got, c.want)
		}
	}
}

func TestCurlArgs(t *testing.T) {
	x := Transfer{
		Tool: Curl, Mode: PORT, Op: Retr, Server: netip.MustParseAddrPort("[2001:db8:2::2]:21"),
		User: "u", Pass: "p", Remote: "/pub/a b.bin", Local: "/tmp/x", ActiveAddr: "192.0.2.2",
		ConnectTimeout: 5 * time.Second, Timeout: 30 * time.Second,
	}
	got := strings.Join(curlArgs(x), " ")
	for _, want := range []string{
		"--connect-timeout 5.000 --max-time 30.000", "--user u:p", "--ftp-port 192.0.2.2 --disable-eprt",
		"--no-ftp-skip-pasv-ip", "--output /tmp/x ftp://[2001:db8:2::2]:21/pub/a%20b.bin",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("curl args %q lack %q", got, want)
		}
	}
	x.Mode, x.Op, x.Remote, x.ActiveAddr = PASV, List, "/list", ""
	got = strings.Join(curlArgs(x), " ")
	if !strings.Contains(got, "--ftp-pasv --disable-epsv") || !strings.HasSuffix(got, "ftp://[2001:db8:2::2]:21/list/") {
		t.Errorf("curl args %q", got)
	}
}
