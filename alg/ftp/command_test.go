package ftp

import (
	"errors"
	"strings"
	"testing"
)

// commandTests seed FuzzParseCommand too. err means ErrSyntax.
var commandTests = []struct {
	in   string
	verb string
	arg  string
	err  bool
}{
	{in: "USER anonymous\r\n", verb: "USER", arg: "anonymous"},
	{in: "PASV\r\n", verb: "PASV"},
	{in: "PASV\n", verb: "PASV"},
	{in: "PASV", verb: "PASV"},
	{in: "pasv\r\n", verb: "PASV"},
	{in: "ePsV ALL\r\n", verb: "EPSV", arg: "ALL"},
	{in: "PORT 192,0,2,1,156,64\r\n", verb: "PORT", arg: "192,0,2,1,156,64"},
	{in: "EPRT |2|2001:db8::1|40000|\r\n", verb: "EPRT", arg: "|2|2001:db8::1|40000|"},
	{in: "CWD /\r\n", verb: "CWD", arg: "/"},
	{in: "XMKD new dir\r\n", verb: "XMKD", arg: "new dir"},
	{in: "SITE CHMOD 644 f\r\n", verb: "SITE", arg: "CHMOD 644 f"},
	{in: "RETR  leading space\r\n", verb: "RETR", arg: " leading space"},
	{in: "RETR trailing \r\n", verb: "RETR", arg: "trailing "},
	{in: "PASV \r\n", verb: "PASV", arg: ""},
	{in: "RETR a\tb\r\n", verb: "RETR", arg: "a\tb"},
	{in: "STOR pub/grüße-名前.txt\r\n", verb: "STOR", arg: "pub/grüße-名前.txt"},
	{in: "STOR caf\xe9\r\n", verb: "STOR", arg: "caf\xe9"}, // Latin-1 server
	{in: "FOO bar\r\n", verb: "FOO", arg: "bar"},           // unknown verbs parse
	{in: "LPRT 4,4,192,0,2,1,2,156,64\r\n", verb: "LPRT", arg: "4,4,192,0,2,1,2,156,64"},
	// Telnet before ABOR: IAC IP IAC DM, and with the urgent IAC taken
	// out of band (tnftp, inetutils-ftp as recorded).
	{in: "\xff\xf4\xff\xf2ABOR\r\n", verb: "ABOR"},
	{in: "\xff\xf4\xf2ABOR\r\n", verb: "ABOR"},
	{in: "\xf2ABOR\r\n", verb: "ABOR"},
	{in: "\xff\xff\xff\xf4ABOR\r\n", verb: "ABOR"},
	{in: "\xff\xfd\x01NOOP\r\n", verb: "NOOP"}, // IAC DO ECHO
	{in: "\xff\xfb\x03\xff\xf4ABOR\r\n", verb: "ABOR"},

	{in: "", err: true},
	{in: "\r\n", err: true},
	{in: "\n", err: true},
	{in: " \r\n", err: true},
	{in: " PASV\r\n", err: true},
	{in: "AB\r\n", err: true},
	{in: "ABCDE\r\n", err: true},
	{in: "XSHA1 f\r\n", err: true},
	{in: "PO RT 1,2,3,4,5,6\r\n", err: true},
	{in: "PASV\t\r\n", err: true},
	{in: "PORT\t1,2,3,4,5,6\r\n", err: true},
	{in: "1234\r\n", err: true},
	{in: "P0RT 1\r\n", err: true},
	{in: "PÖRT x\r\n", err: true},
	{in: "PASV\r", err: true},
	{in: "PASV\r\r\n", err: true},
	{in: "ABOR\rQUIT\r\n", err: true}, // Python ftplib's urgent ABOR, LF lost
	{in: "RETR a\rb\r\n", err: true},
	{in: "RETR a\nb\r\n", err: true},
	{in: "RETR a\x00b\r\n", err: true},
	{in: "RETR a\x1bb\r\n", err: true},
	{in: "RETR a\x7fb\r\n", err: true},
	{in: "RETR a\r\n\r\n", err: true},
	{in: "\xff\xf4\r\n", err: true},
	{in: "\xff\xfd\r\n", err: true},
	{in: "\xff\r\n", err: true},
	{in: "\x00PASV\r\n", err: true},
}

func TestParseCommand(t *testing.T) {
	for _, tt := range commandTests {
		got, err := ParseCommand([]byte(tt.in))
		if tt.err {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseCommand(%q) = %+v, %v; want ErrSyntax", tt.in, got, err)
			}
			continue
		}
		if err != nil || got.Verb != tt.verb || got.Arg != tt.arg {
			t.Errorf("ParseCommand(%q) = %+v, %v; want %q %q", tt.in, got, err, tt.verb, tt.arg)
		}
	}
}

// The argument of PASS may be a password: errors must not quote it.
func TestParseCommandErrorHidesArgument(t *testing.T) {
	_, err := ParseCommand([]byte("PASS s3cret\x01\r\n"))
	if err == nil || errors.Is(err, ErrNUL) {
		t.Fatalf("got %v", err)
	}
	if msg := err.Error(); strings.Contains(msg, "s3cret") {
		t.Errorf("error %q leaks the password", msg)
	}
}

func TestCommandString(t *testing.T) {
	for _, tc := range []struct {
		c    Command
		want string
	}{
		{Command{Verb: "PASV"}, "PASV"},
		{Command{Verb: "RETR", Arg: "a b"}, "RETR a b"},
		{Command{Verb: "PASS", Arg: "secret"}, "PASS ****"},
		{Command{Verb: "ACCT", Arg: "secret"}, "ACCT ****"},
		{Command{Verb: "PASS"}, "PASS"},
	} {
		if got := tc.c.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.c, got, tc.want)
		}
	}
}

func TestIsLongPassive(t *testing.T) {
	for verb, want := range map[string]bool{
		"LPRT": true, "LPSV": true, "lpsv": true, "LpRt": true,
		"PASV": false, "PORT": false, "EPSV": false, "EPRT": false, "": false, "LPS": false,
	} {
		if got := IsLongPassive(verb); got != want {
			t.Errorf("IsLongPassive(%q) = %v, want %v", verb, got, want)
		}
	}
}

// Known verbs are interned: parsing them allocates only for the argument.
func TestParseCommandAllocs(t *testing.T) {
	line := []byte("pasv\r\n")
	if n := testing.AllocsPerRun(100, func() { _, _ = ParseCommand(line) }); n != 0 {
		t.Errorf("ParseCommand(%q): %v allocs, want 0", line, n)
	}
}
