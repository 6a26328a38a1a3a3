package ftp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// The tables below seed the fuzz targets too. want "" means ErrSyntax.

var portTests = []struct{ in, want string }{
	{"192,0,2,1,156,64", "192.0.2.1:40000"},
	{"127,0,0,1,237,15", "127.0.0.1:60687"},
	{" 192,0,2,1,156,64 ", "192.0.2.1:40000"},
	{"  198,51,100,7,4,1", "198.51.100.7:1025"},
	{"0,0,0,0,0,1", "0.0.0.0:1"},
	{"255,255,255,255,255,255", "255.255.255.255:65535"},
	{"010,000,002,001,000,021", "10.0.2.1:21"}, // leading zeros: decimal, never octal
	{"203,0,113,9,0,255", "203.0.113.9:255"},

	{"", ""},
	{" ", ""},
	{"256,0,0,1,156,64", ""},
	{"192,0,2,1,256,64", ""},
	{"192,0,2,1,156,256", ""},
	{"192,0,2,999,156,64", ""},
	{"-1,0,2,1,156,64", ""},
	{"192,0,2,1,-1,64", ""},
	{"+192,0,2,1,156,64", ""},
	{"192,0,2,+1,156,64", ""},
	{"192,0,2,1,156", ""},
	{"192,0,2,1,156,64,7", ""},
	{"192,0,2,1,156,64,", ""},
	{",192,0,2,1,156,64", ""},
	{"192,,0,2,1,156,64", ""},
	{"192,0,2,1,0,0", ""},
	{"0192,0,2,1,156,64", ""},
	{"192,0,2,1,156,0064", ""},
	{"99999999999999999999,0,2,1,156,64", ""},
	{"192,0,2,1,156,18446744073709551617", ""},
	{"192, 0,2,1,156,64", ""},
	{"192 ,0,2,1,156,64", ""},
	{"192,0,2,1,156,64\t", ""},
	{"\t192,0,2,1,156,64", ""},
	{"192,0,2,1,156,64\r\n", ""},
	{"192,0,2,1,156,64 x", ""},
	{"(192,0,2,1,156,64)", ""},
	{"192.0.2.1,156,64", ""},
	{"0x10,0,2,1,156,64", ""},
	{"１９２,0,2,1,156,64", ""}, // fullwidth digits
	{"192;0;2;1;156;64", ""},
}

func TestParsePORT(t *testing.T) {
	for _, tt := range portTests {
		got, err := ParsePORT(tt.in)
		checkAddrPort(t, "ParsePORT", tt.in, got, err, tt.want)
	}
}

func checkAddrPort(t *testing.T, fn, in string, got netip.AddrPort, err error, want string) {
	t.Helper()
	if want == "" {
		if !errors.Is(err, ErrSyntax) {
			t.Errorf("%s(%q) = %v, %v; want ErrSyntax", fn, in, got, err)
		}
		return
	}
	if err != nil || got != netip.MustParseAddrPort(want) {
		t.Errorf("%s(%q) = %v, %v; want %v", fn, in, got, err, want)
	}
}

func TestFormatPORT(t *testing.T) {
	for _, tc := range []struct {
		ap   netip.AddrPort
		want string // "" means error
	}{
		{netip.MustParseAddrPort("192.0.2.1:40000"), "192,0,2,1,156,64"},
		{netip.MustParseAddrPort("0.0.0.0:1"), "0,0,0,0,0,1"},
		{netip.MustParseAddrPort("255.255.255.255:65535"), "255,255,255,255,255,255"},
		{netip.MustParseAddrPort("[::ffff:192.0.2.1]:40000"), "192,0,2,1,156,64"},
		{netip.MustParseAddrPort("[2001:db8::1]:40000"), ""},
		{netip.MustParseAddrPort("192.0.2.1:0"), ""},
		{netip.AddrPort{}, ""},
	} {
		got, err := FormatPORT(tc.ap)
		if (err != nil) != (tc.want == "") || got != tc.want {
			t.Errorf("FormatPORT(%v) = %q, %v; want %q", tc.ap, got, err, tc.want)
		}
		// AppendPORT appends the same after what is there, and
		// nothing on error.
		b, err := AppendPORT([]byte("227 ("), tc.ap)
		if (err != nil) != (tc.want == "") || string(b) != "227 ("+tc.want {
			t.Errorf("AppendPORT(\"227 (\", %v) = %q, %v; want %q", tc.ap, b, err, "227 ("+tc.want)
		}
	}
}

// find227Tests: want is the address, span the text Find227 must point at.
var find227Tests = []struct{ in, want, span string }{
	// The styles of the recorded servers.
	{"Entering Passive Mode (127,0,0,1,156,106).", "127.0.0.1:40042", "127,0,0,1,156,106"}, // vsftpd, proftpd
	{"Entering Passive Mode (127,0,0,1,156,241)", "127.0.0.1:40177", "127,0,0,1,156,241"},  // pure-ftpd
	{"Entering passive mode (127,0,0,1,157,163).", "127.0.0.1:40355", "127,0,0,1,157,163"}, // pyftpdlib
	// RFC 1123 4.1.2.6: no parentheses; styles seen in the wild.
	{"Entering Passive Mode 192,0,2,1,156,64", "192.0.2.1:40000", "192,0,2,1,156,64"},
	{"=192,0,2,1,156,64", "192.0.2.1:40000", "192,0,2,1,156,64"},
	{"Data transfer will passively listen to 192,0,2,1,4,51", "192.0.2.1:1075", "192,0,2,1,4,51"},
	{"Entering passive mode. 192,0,2,1,4,51", "192.0.2.1:1075", "192,0,2,1,4,51"},
	{"192,0,2,1,4,51", "192.0.2.1:1075", "192,0,2,1,4,51"},
	{"Entering Passive Mode (192,0,2,1,4,51) then more text 1,2,3", "192.0.2.1:1075", "192,0,2,1,4,51"},
	{"Entering Passive Mode (192,0,2,1,4,51).(198,51,100,1,4,51)", "192.0.2.1:1075", "192,0,2,1,4,51"},
	// Digit runs not followed by a comma are text.
	{"Entering Passive Mode 2 (192,0,2,1,156,64)", "192.0.2.1:40000", "192,0,2,1,156,64"},
	{"Mode v1.2 (192,0,2,1,156,64)", "192.0.2.1:40000", "192,0,2,1,156,64"},
	{"Mode -5 (192,0,2,1,156,64)", "192.0.2.1:40000", "192,0,2,1,156,64"},
	{"Entering Passive Mode (010,000,002,001,000,021)", "10.0.2.1:21", "010,000,002,001,000,021"},
	{"Passive Mode (0,0,0,0,156,64)", "0.0.0.0:40000", "0,0,0,0,156,64"},

	{"", "", ""},
	{"Entering Passive Mode", "", ""},
	{"Entering Passive Mode ()", "", ""},
	{"Entering Passive Mode (1,2,3,4,5,6,7)", "", ""},
	{"Entering Passive Mode (1,2,3,4,5,6,)", "", ""},
	{"Entering Passive Mode (1,2,3,4,5)", "", ""},
	{"Entering Passive Mode (1,2,3,4,5,)", "", ""},
	{"Entering Passive Mode (256,0,0,1,1,1)", "", ""},
	{"Entering Passive Mode (1,2,3,4,5,256)", "", ""},
	{"Entering Passive Mode (-1,2,3,4,5,6)", "", ""},
	{"Entering Passive Mode (+1,2,3,4,5,6)", "", ""},
	{"Entering Passive Mode (1,2,3,4,-5,6)", "", ""},
	{"Entering Passive Mode (,1,2,3,4,5,6)", "", ""},
	{"Entering Passive Mode (1,2,3,4,0,0)", "", ""},
	{"Entering Passive Mode (1,2,3,4,5,6789)", "", ""},
	{"Entering Passive Mode (1000,2,3,4,5,6)", "", ""},
	{"Entering Passive Mode (99999999999999999999,2,3,4,5,6)", "", ""},
	{"Entering Passive Mode (1, 2, 3, 4, 5, 6)", "", ""},
	{"Entering Passive Mode (1,2,3,4,5 ,6)", "", ""},
	{"Mode 1,5 (192,0,2,1,4,5)", "", ""}, // the first group decides
	{"Entering Passive Mode (192.0.2.1,156,64)", "", ""},
}

func TestFind227(t *testing.T) {
	for _, tt := range find227Tests {
		got, start, end, err := Find227(tt.in)
		checkAddrPort(t, "Find227", tt.in, got, err, tt.want)
		if err == nil && tt.in[start:end] != tt.span {
			t.Errorf("Find227(%q) span [%d,%d) = %q, want %q", tt.in, start, end, tt.in[start:end], tt.span)
		}
	}
}

func TestFormat227(t *testing.T) {
	got, err := Format227(netip.MustParseAddrPort("192.0.2.1:40000"))
	if want := "Entering Passive Mode (192,0,2,1,156,64)."; err != nil || got != want {
		t.Errorf("Format227 = %q, %v; want %q", got, err, want)
	}
	if _, err := Format227(netip.MustParseAddrPort("[2001:db8::1]:40000")); err == nil {
		t.Error("Format227 of an IPv6 address: no error")
	}
}

var eprtTests = []struct{ in, want string }{
	{"|1|192.0.2.1|40000|", "192.0.2.1:40000"},
	{"|1|127.0.0.1|37621|", "127.0.0.1:37621"},
	{"|2|2001:db8::1|40000|", "[2001:db8::1]:40000"},
	{"|2|::1|33205|", "[::1]:33205"},
	{"|2|::|53565|", "[::]:53565"}, // lftp over IPv6, as recorded
	{"|2|2001:DB8:0:0:0:0:0:1|40000|", "[2001:db8::1]:40000"},
	{"|2|2001:db8::192.0.2.1|40000|", "[2001:db8::c000:201]:40000"},
	{" |1|192.0.2.1|40000| ", "192.0.2.1:40000"},
	{"!1!192.0.2.1!40000!", "192.0.2.1:40000"},
	{"#2#2001:db8::1#1#", "[2001:db8::1]:1"},
	{"|1|192.0.2.1|00021|", "192.0.2.1:21"},
	{"|1|192.0.2.1|65535|", "192.0.2.1:65535"},

	{"", ""},
	{"|", ""},
	{"||", ""},
	{"||||", ""},
	{"|1|192.0.2.1|40000", ""},
	{"1|192.0.2.1|40000|", ""},
	{"|1|192.0.2.1|40000!", ""},
	{"|1!192.0.2.1!40000|", ""},
	{"|1|192.0.2.1!40000|", ""},
	{"|1|192.0.2.1|40000|x|", ""},
	{"|1|192.0.2.1|40000||", ""},
	{"|1|192.0.2.1|", ""},
	{"|1|2001:db8::1|40000|", ""},
	{"|2|192.0.2.1|40000|", ""},
	{"|2|::ffff:192.0.2.1|40000|", ""},
	{"|1|::ffff:192.0.2.1|40000|", ""},
	{"|2|fe80::1%eth0|40000|", ""},
	{"|2|fe80::1%25eth0|40000|", ""},
	{"|2|[2001:db8::1]|40000|", ""},
	{"|3|192.0.2.1|40000|", ""},
	{"|01|192.0.2.1|40000|", ""},
	{"||192.0.2.1|40000|", ""},
	{"|1||40000|", ""},
	{"|1|192.0.2.1|0|", ""},
	{"|1|192.0.2.1|65536|", ""},
	{"|1|192.0.2.1|99999999999999999999|", ""},
	{"|1|192.0.2.1|040000|", ""},
	{"|1|192.0.2.1|-1|", ""},
	{"|1|192.0.2.1|+1|", ""},
	{"|1|192.0.2.1|0x10|", ""},
	{"|1|192.0.2.1||", ""},
	{"|1|192.0.2.1| 1|", ""},
	{"|1| 192.0.2.1|1|", ""},
	{"|1|192.0.2.01|1|", ""},
	{"|1|256.0.0.1|1|", ""},
	{"|1|192.0.2|1|", ""},
	{"|1|192.0.2.1.5|1|", ""},
	{"|1|localhost|1|", ""},
	{"11192.0.2.1140001", ""}, // digit delimiter
	{".1.192.0.2.1.40000.", ""},
	{":2:::1:40000:", ""},
	{"a1a192.0.2.1a40000a", ""},
	{"\x7f1\x7f192.0.2.1\x7f40000\x7f", ""},
	{"\t1\t192.0.2.1\t40000\t", ""},
	{"\xff1\xff192.0.2.1\xff40000\xff", ""},
}

func TestParseEPRT(t *testing.T) {
	for _, tt := range eprtTests {
		got, err := ParseEPRT(tt.in)
		checkAddrPort(t, "ParseEPRT", tt.in, got, err, tt.want)
	}
}

func TestFormatEPRT(t *testing.T) {
	for _, tc := range []struct {
		ap   netip.AddrPort
		want string
	}{
		{netip.MustParseAddrPort("192.0.2.1:40000"), "|1|192.0.2.1|40000|"},
		{netip.MustParseAddrPort("[2001:db8::1]:40000"), "|2|2001:db8::1|40000|"},
		{netip.MustParseAddrPort("[::ffff:192.0.2.1]:40000"), "|1|192.0.2.1|40000|"},
		{netip.MustParseAddrPort("[fe80::1%eth0]:1"), "|2|fe80::1|1|"},
	} {
		if got := FormatEPRT(tc.ap); got != tc.want {
			t.Errorf("FormatEPRT(%v) = %q, want %q", tc.ap, got, tc.want)
		}
	}
}

var find229Tests = []struct {
	in   string
	want uint16 // 0 means ErrSyntax
	span string
}{
	{"Entering Extended Passive Mode (|||40042|)", 40042, "|||40042|"},  // vsftpd, proftpd
	{"Extended Passive mode OK (|||40106|)", 40106, "|||40106|"},        // pure-ftpd
	{"Entering extended passive mode (|||40308|).", 40308, "|||40308|"}, // pyftpdlib
	{"(|||1|)", 1, "|||1|"},
	{"(|||65535|)", 65535, "|||65535|"},
	{"(!!!40000!)", 40000, "!!!40000!"},
	{"Mode (###00021#) trailing (|||1|)", 21, "###00021#"},

	{"", 0, ""},
	{"Entering Extended Passive Mode", 0, ""},
	{"Entering Extended Passive Mode |||40000|", 0, ""},
	{"Entering Extended Passive Mode ()", 0, ""},
	{"(||40000|)", 0, ""},
	{"(||||40000|)", 0, ""},
	{"(|||40000)", 0, ""},
	{"(|||40000|", 0, ""},
	{"(|||40000||)", 0, ""},
	{"(|||40000| )", 0, ""},
	{"(|!|40000|)", 0, ""},
	{"(!||40000|)", 0, ""},
	{"(|||40000!)", 0, ""},
	{"(|||0|)", 0, ""},
	{"(|||65536|)", 0, ""},
	{"(|||400000|)", 0, ""},
	{"(|||99999999999999999999|)", 0, ""},
	{"(|||-1|)", 0, ""},
	{"(|||+1|)", 0, ""},
	{"(||| 1|)", 0, ""},
	{"(|||1 |)", 0, ""},
	{"(||||)", 0, ""},
	{"(|1|::1|40000|)", 0, ""},
	{"(|2|2001:db8::1|40000|)", 0, ""},
	{"(1114000001)", 0, ""},
	{"(...40000.)", 0, ""},
	{"(   40000 )", 0, ""},
	{"(\x7f\x7f\x7f40000\x7f)", 0, ""},
	{"(bad) (|||40000|)", 0, ""}, // only the first '(' counts, as in clients
}

func TestFind229(t *testing.T) {
	for _, tt := range find229Tests {
		got, start, end, err := Find229(tt.in)
		if tt.want == 0 {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("Find229(%q) = %d, %v; want ErrSyntax", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want || tt.in[start:end] != tt.span {
			t.Errorf("Find229(%q) = %d [%d,%d), %v; want %d %q", tt.in, got, start, end, err, tt.want, tt.span)
		}
	}
}

func TestFormat229(t *testing.T) {
	if got, want := Format229(40000), "Entering Extended Passive Mode (|||40000|)"; got != want {
		t.Errorf("Format229 = %q, want %q", got, want)
	}
}

// Error messages say what is wrong.
func TestHostPortErrorMessages(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{second(ParsePORT("256,0,0,1,1,1")), `number 1 "256" out of range 0-255`},
		{second(ParsePORT("1,2,3,4,5")), "5 numbers, want six"},
		{second(ParsePORT("1,2,3,4,5,6,7")), "more than six numbers"},
		{second(ParsePORT("1,2,3,4,0,0")), "port 0"},
		{second(ParsePORT("1,2,3,4,5,1000")), `number 6 "1000" has more than 3 digits`},
		{second(ParseEPRT("|1|2001:db8::1|1|")), "family 1 with non-IPv4 address"},
		{second(ParseEPRT("|1|192.0.2.1|1!")), "does not end with delimiter"},
		{second(ParseEPRT("|2|fe80::1%eth0|1|")), "zone"},
		{fourth(Find227("Entering Passive Mode (1,2,3,4,5,6,7)")), "more than six numbers"},
		{fourth(Find229("(|||65536|)")), "out of range 1-65535"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("error %v does not say %q", tc.err, tc.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func fourth[A, B, C any](_ A, _ B, _ C, err error) error { return err }
