package lab

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// story writes one of everything the Narrator can print.
func story(n *Narrator) {
	n.Title("ftpalg lab")
	n.Para("first line", "second line")
	n.Act("Act 1: without ftpalg")
	n.Step(1, 2, "passive (PASV), IPv4")
	n.Field("control", "192.0.2.2 -> 203.0.113.2:21")
	n.Highlight("client got", "227 Entering Passive Mode (203,0,113,1,156,64).")
	n.Lines("firewall", "iptables -S, while the pinhole is open:", []string{"-t filter -A FTPALG-FORWARD -j ACCEPT", "-t nat -A FTPALG-POSTROUTING -j SNAT"})
	n.Result(true, "it worked")
	n.Result(false, "it did not")
	n.Summary([]StepResult{{Title: "one", Passed: true}, {Title: "two", Passed: false}}, 2, 1500*time.Millisecond)
}

func render(color bool) string {
	var b bytes.Buffer
	story(&Narrator{W: &b, Color: color})
	return b.String()
}

func TestNarratorPlainHasNoEscapes(t *testing.T) {
	out := render(false)
	if strings.Contains(out, "\x1b") {
		t.Fatalf("plain output contains escape sequences:\n%q", out)
	}
	for _, want := range []string{
		"ftpalg lab\n",
		"\n  first line\n  second line\n",
		"== Act 1: without ftpalg ==",
		"-- Step 1/2: passive (PASV), IPv4\n",
		"   control     192.0.2.2 -> 203.0.113.2:21\n",
		"   client got  227 Entering Passive Mode (203,0,113,1,156,64).\n",
		"   firewall    iptables -S, while the pinhole is open:\n               -t filter -A FTPALG-FORWARD -j ACCEPT\n               -t nat -A FTPALG-POSTROUTING -j SNAT\n",
		"   PASS it worked\n",
		"   FAIL it did not\n",
		"  PASS  1. one\n  FAIL  2. two\n",
		"1 of 2 steps did not do what they said (1.5s).",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plain output lacks %q:\n%s", want, out)
		}
	}
}

func TestNarratorColorIsPlainPlusEscapes(t *testing.T) {
	plain, color := render(false), render(true)
	if color == plain {
		t.Fatal("colour output equals plain output")
	}
	for _, want := range []string{
		sgrBold + "ftpalg lab" + sgrReset,
		sgrGreen + sgrBold + "PASS" + sgrReset,
		sgrRed + sgrBold + "FAIL" + sgrReset,
		sgrYellow + "227 Entering Passive Mode (203,0,113,1,156,64)." + sgrReset,
		sgrDim + "-t nat -A FTPALG-POSTROUTING -j SNAT" + sgrReset,
	} {
		if !strings.Contains(color, want) {
			t.Errorf("colour output lacks %q", want)
		}
	}
	// Colour changes nothing but the escapes: same text, same columns.
	if got := stripANSI(color); got != plain {
		t.Errorf("colour output without escapes differs from plain output:\n%s\n---\n%s", got, plain)
	}
}

func TestNarratorSummary(t *testing.T) {
	var b bytes.Buffer
	n := &Narrator{W: &b}
	n.Summary([]StepResult{{Title: "a", Passed: true}, {Title: "b", Passed: true}}, 2, 4200*time.Millisecond)
	if !strings.Contains(b.String(), "All 2 steps did what they said (4.2s).") {
		t.Errorf("summary:\n%s", b.String())
	}
	b.Reset()
	n.Summary([]StepResult{{Title: "a", Passed: true}, {Title: "b", Passed: false}}, 5, time.Second)
	if !strings.Contains(b.String(), "1 of 2 steps did not do what they said, and the lab stopped after step 2 of 5 (1.0s).") {
		t.Errorf("summary of a lab that stopped early:\n%s", b.String())
	}
}

func TestPadIgnoresEscapes(t *testing.T) {
	n := &Narrator{Color: true}
	if got := stripANSI(pad(n.paint(sgrCyan, "ab"), 5)); got != "ab   " {
		t.Errorf("pad = %q, want %q", got, "ab   ")
	}
	if got := pad("toolong", 3); got != "toolong" {
		t.Errorf("pad = %q", got)
	}
}

func TestStripANSI(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                   "plain",
		"\x1b[1;32mok\x1b[0m":     "ok",
		"a\x1b[2mb\x1b[0mc":       "abc",
		"broken \x1b[12 sequence": "broken \x1b[12 sequence",
	} {
		if got := stripANSI(in); got != want {
			t.Errorf("stripANSI(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFormats(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{formatBytes(512), "512 B"},
		{formatBytes(2 << 20), "2.0 MiB"},
		{formatBytes(1536), "1.5 KiB"},
		{formatRate(2<<20, time.Second), "2.0 MiB/s"},
		{formatRate(1<<30, 500*time.Millisecond), "2.0 GiB/s"},
		{formatDuration(250 * time.Microsecond), "250 µs"},
		{formatDuration(3200 * time.Microsecond), "3.2 ms"},
		{formatDuration(1250 * time.Millisecond), "1.25 s"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
