package ftp

import (
	"fmt"
	"strings"
)

// Telnet bytes (RFC 854) that clients put in front of ABOR.
const (
	telnetIAC  = 0xFF // interpret as command
	telnetWILL = 0xFB // WILL, WONT, DO, DONT (0xFB-0xFE) take an option byte
)

// Command is one client command line.
type Command struct {
	// Verb is the command verb, upper-cased: "PORT", "RETR", "XMKD".
	Verb string
	// Arg is everything after the first space, without the line
	// terminator; empty when the line has no argument.
	Arg string
}

// String returns the command as it would be sent, without terminator, with
// the argument of PASS and ACCT replaced so that logging it is safe.
func (c Command) String() string {
	switch {
	case c.Arg == "":
		return c.Verb
	case c.Verb == "PASS" || c.Verb == "ACCT":
		return c.Verb + " ****"
	}
	return c.Verb + " " + c.Arg
}

// ParseCommand parses a raw command line; the terminator ("\r\n" or "\n")
// is optional.
//
// Telnet sequences at the start of the line, as clients send them before
// ABOR (IAC IP = 0xFF 0xF4, IAC DM = 0xFF 0xF2, a DM whose IAC went out of
// band, IAC IAC, IAC WILL/WONT/DO/DONT option), are skipped for parsing
// only; the caller forwards the raw bytes.
//
// The verb is 3 or 4 ASCII letters (RFC 959), followed by the end of the
// line or one space and the argument. The argument may hold any byte but
// ASCII control bytes (0x00-0x1F except TAB, and 0x7F): UTF-8 (RFC 2640)
// and legacy 8-bit encodings alike. An empty line, a bad verb or a control
// byte yields an error wrapping ErrSyntax.
func ParseCommand(line []byte) (Command, error) {
	b := skipTelnet(trimEOL(line))
	n := 0
	for n < len(b) && n < 5 && isLetter(b[n]) {
		n++
	}
	if n < 3 || n > 4 || (n < len(b) && b[n] != ' ') {
		if len(b) == 0 {
			return Command{}, fmt.Errorf("empty command line: %w", ErrSyntax)
		}
		return Command{}, fmt.Errorf("command %s: verb is not 3-4 letters followed by a space or end of line: %w", quote(line), ErrSyntax)
	}
	var arg []byte
	if n < len(b) {
		arg = b[n+1:]
	}
	v := verb(b[:n])
	for i, c := range arg {
		if (c < 0x20 && c != '\t') || c == 0x7F {
			// The argument is not quoted: it may be a password.
			return Command{}, fmt.Errorf("command %s: control byte 0x%02x at argument offset %d: %w", v, c, i, ErrSyntax)
		}
	}
	return Command{Verb: v, Arg: string(arg)}, nil
}

// skipTelnet skips Telnet command sequences at the start of b.
func skipTelnet(b []byte) []byte {
	for len(b) > 0 && b[0] >= 0xF0 {
		if b[0] == telnetIAC && len(b) >= 3 && b[1] >= telnetWILL && b[1] < telnetIAC {
			b = b[3:] // IAC WILL/WONT/DO/DONT option
			continue
		}
		// IAC, a two-byte command's second byte (IP, DM, ...), or a
		// lone DM whose IAC was taken out of band as urgent data.
		b = b[1:]
	}
	return b
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// knownVerbs interns the verbs of RFC 959, 775, 2228, 2389, 2428, 2640,
// 3659, 7151 and common extensions, so that parsing them allocates nothing.
var knownVerbs = func() map[string]string {
	m := make(map[string]string)
	for _, v := range strings.Fields(`
		ABOR ACCT ALLO APPE CDUP CWD DELE HELP LIST MKD MODE NLST NOOP PASS
		PASV PORT PWD QUIT REIN REST RETR RMD RNFR RNTO SITE SMNT STAT STOR
		STOU STRU SYST TYPE USER XCUP XCWD XMKD XPWD XRMD EPRT EPSV LPRT LPSV
		AUTH PBSZ PROT CCC ADAT CONF ENC MIC FEAT OPTS LANG MDTM SIZE MLST
		MLSD HOST CLNT MFMT MFCT MFF AVBL CSID DSIZ RMDA XCRC XMD5 HASH`) {
		m[v] = v
	}
	return m
}()

// verb upper-cases a 3-4 letter verb, interning known ones.
func verb(b []byte) string {
	var up [4]byte
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		up[i] = c
	}
	if v, ok := knownVerbs[string(up[:len(b)])]; ok {
		return v
	}
	return string(up[:len(b)])
}

// IsLongPassive reports whether verb is LPRT or LPSV (RFC 1639, "long"
// addresses). ftpalg cannot translate them, so a Session refuses them rather
// than letting an announcement through unseen. The check ignores case.
func IsLongPassive(verb string) bool {
	return strings.EqualFold(verb, "LPRT") || strings.EqualFold(verb, "LPSV")
}
