package ftp

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Host-port announcements. Every parser here is strict: decimal digits only
// (no signs, no spaces inside), every octet 0-255, every port 1-65535. A
// number in the "h1,h2,h3,h4,p1,p2" form has 1-3 digits; leading zeros
// ("010") are accepted and read as decimal, as servers and clients read them
// (strtol/atoi base 10, never octal), while a fourth digit is refused. The
// formatters always write the canonical form without leading zeros.

// ParsePORT parses the argument of a PORT command, "h1,h2,h3,h4,p1,p2"
// (RFC 959). Surrounding spaces are trimmed; nothing else is tolerated.
func ParsePORT(arg string) (netip.AddrPort, error) {
	s := strings.Trim(arg, " ")
	ap, end, err := parseSix(s, 0)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("PORT %q: %w", arg, err)
	}
	if end != len(s) {
		if s[end] == ',' {
			return netip.AddrPort{}, fmt.Errorf("PORT %q: more than six numbers: %w", arg, ErrSyntax)
		}
		return netip.AddrPort{}, fmt.Errorf("PORT %q: unexpected %q after the sixth number: %w", arg, s[end:], ErrSyntax)
	}
	return ap, nil
}

// FormatPORT formats ap as "h1,h2,h3,h4,p1,p2", the argument of PORT and the
// group inside a 227 reply. An IPv4-mapped IPv6 address is written as IPv4;
// any other address that is not IPv4, and port 0, are errors.
func FormatPORT(ap netip.AddrPort) (string, error) {
	b, err := AppendPORT(make([]byte, 0, len("255,255,255,255,255,255")), ap)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// AppendPORT appends the PORT/227 form of ap to b, like FormatPORT, for
// the reply path: no string in between. On error b is returned unchanged.
func AppendPORT(b []byte, ap netip.AddrPort) ([]byte, error) {
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return b, fmt.Errorf("formatting PORT for %v: not an IPv4 address", ap)
	}
	if ap.Port() == 0 {
		return b, fmt.Errorf("formatting PORT for %v: port 0", ap)
	}
	for _, o := range a.As4() {
		b = strconv.AppendUint(b, uint64(o), 10)
		b = append(b, ',')
	}
	b = strconv.AppendUint(b, uint64(ap.Port()>>8), 10)
	b = append(b, ',')
	b = strconv.AppendUint(b, uint64(ap.Port()&0xFF), 10)
	return b, nil
}

// parseSix parses six comma-separated numbers starting at s[i]. It returns
// the end of the last number; the caller decides what may follow.
func parseSix(s string, i int) (netip.AddrPort, int, error) {
	var v [6]byte
	for k := range v {
		if k > 0 {
			if i >= len(s) || s[i] != ',' {
				return netip.AddrPort{}, 0, fmt.Errorf("%d numbers, want six: %w", k, ErrSyntax)
			}
			i++
		}
		j := i
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		switch {
		case j == i:
			return netip.AddrPort{}, 0, fmt.Errorf("number %d is not a decimal number at %q: %w", k+1, rest(s, i), ErrSyntax)
		case j-i > 3:
			return netip.AddrPort{}, 0, fmt.Errorf("number %d %q has more than 3 digits: %w", k+1, s[i:j], ErrSyntax)
		}
		n, _ := strconv.Atoi(s[i:j]) // 1-3 digits: cannot fail
		if n > 255 {
			return netip.AddrPort{}, 0, fmt.Errorf("number %d %q out of range 0-255: %w", k+1, s[i:j], ErrSyntax)
		}
		v[k] = byte(n)
		i = j
	}
	port := uint16(v[4])<<8 | uint16(v[5])
	if port == 0 {
		return netip.AddrPort{}, 0, fmt.Errorf("port 0: %w", ErrSyntax)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(v[:4])), port), i, nil
}

// rest returns s[i:] cut to a length fit for an error message.
func rest(s string, i int) string {
	s = s[i:]
	if len(s) > 16 {
		s = s[:16] + "..."
	}
	return s
}

// Find227 finds the endpoint in the text of a 227 reply (Reply.Text) and its
// byte span [start, end) within text, so that the caller can rewrite just
// that part: text[:start] + FormatPORT(new) + text[end:].
//
// The 227 text is not standardized (RFC 1123 4.1.2.6: the parentheses may be
// missing), so Find227 scans for the first run of digits that is followed by
// a comma and parses "h1,h2,h3,h4,p1,p2" there. Digit runs not followed by a
// comma are text and skipped. Once a group starts it must be exactly right:
// a sign or comma in front, a wrong count of numbers (5, 7), an octet above
// 255, more than 3 digits or port 0 are errors, never a reason to look
// further.
func Find227(text string) (ap netip.AddrPort, start, end int, err error) {
	for i := 0; i < len(text); {
		if !isDigit(text[i]) {
			i++
			continue
		}
		j := i
		for j < len(text) && isDigit(text[j]) {
			j++
		}
		if j == len(text) || text[j] != ',' {
			i = j
			continue
		}
		if i > 0 {
			switch c := text[i-1]; c {
			case '-', '+', ',':
				return netip.AddrPort{}, 0, 0, fmt.Errorf("227 %q: %q before the first number: %w", text, c, ErrSyntax)
			}
		}
		ap, end, err := parseSix(text, i)
		if err != nil {
			return netip.AddrPort{}, 0, 0, fmt.Errorf("227 %q: %w", text, err)
		}
		if end < len(text) && (isDigit(text[end]) || text[end] == ',') {
			return netip.AddrPort{}, 0, 0, fmt.Errorf("227 %q: more than six numbers: %w", text, ErrSyntax)
		}
		return ap, i, end, nil
	}
	return netip.AddrPort{}, 0, 0, fmt.Errorf("227 %q: no h1,h2,h3,h4,p1,p2 group: %w", text, ErrSyntax)
}

// Format227 formats the text of a 227 reply announcing ap, without the code:
// "Entering Passive Mode (192,0,2,1,156,64)." Errors as FormatPORT.
func Format227(ap netip.AddrPort) (string, error) {
	hp, err := FormatPORT(ap)
	if err != nil {
		return "", err
	}
	return "Entering Passive Mode (" + hp + ").", nil
}

// validDelim reports whether d may delimit the fields of EPRT and 229.
// RFC 2428 allows ASCII 33-126 "unless it coincides with a character needed
// to encode the network address"; ftpalg also refuses every character that
// can occur in an address or port (letters, digits, '.', ':', '%'), so that
// no split is ambiguous. Real peers use '|'.
func validDelim(d byte) bool {
	if d < 33 || d > 126 || isDigit(d) || isLetter(d) {
		return false
	}
	return d != '.' && d != ':' && d != '%'
}

// parsePortNum parses a decimal TCP port of 1-5 digits, 1-65535.
func parsePortNum(s string) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("empty port: %w", ErrSyntax)
	}
	if len(s) > 5 {
		return 0, fmt.Errorf("port %q has more than 5 digits: %w", s, ErrSyntax)
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, fmt.Errorf("port %q is not a decimal number: %w", s, ErrSyntax)
		}
		n = n*10 + int(s[i]-'0')
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %q out of range 1-65535: %w", s, ErrSyntax)
	}
	return uint16(n), nil
}

// ParseEPRT parses the argument of an EPRT command (RFC 2428),
// "<d>1<d>IPv4<d>port<d>" or "<d>2<d>IPv6<d>port<d>". The four delimiters
// must be the same character (see validDelim; usually '|'). The address
// family must match the address: 1 takes dotted-quad IPv4 (no leading
// zeros), 2 takes IPv6 without zone and not IPv4-mapped (a peer that means
// IPv4 says 1). Surrounding spaces are trimmed.
func ParseEPRT(arg string) (netip.AddrPort, error) {
	s := strings.Trim(arg, " ")
	if len(s) < 2 {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: too short: %w", arg, ErrSyntax)
	}
	d := s[0]
	if !validDelim(d) {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: invalid delimiter %q: %w", arg, d, ErrSyntax)
	}
	if s[len(s)-1] != d {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: does not end with delimiter %q: %w", arg, d, ErrSyntax)
	}
	f := strings.Split(s[1:len(s)-1], string(d))
	if len(f) != 3 {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: %d fields, want 3 (family, address, port): %w", arg, len(f), ErrSyntax)
	}
	if strings.IndexByte(f[1], '%') >= 0 {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: address with zone: %w", arg, ErrSyntax)
	}
	a, err := netip.ParseAddr(f[1])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: %w: %w", arg, err, ErrSyntax)
	}
	switch f[0] {
	case "1":
		if !a.Is4() {
			return netip.AddrPort{}, fmt.Errorf("EPRT %q: family 1 with non-IPv4 address: %w", arg, ErrSyntax)
		}
	case "2":
		if !a.Is6() || a.Is4In6() {
			return netip.AddrPort{}, fmt.Errorf("EPRT %q: family 2 with non-IPv6 or IPv4-mapped address: %w", arg, ErrSyntax)
		}
	default:
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: network protocol %q, want 1 or 2: %w", arg, f[0], ErrSyntax)
	}
	port, err := parsePortNum(f[2])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("EPRT %q: %w", arg, err)
	}
	return netip.AddrPortFrom(a, port), nil
}

// FormatEPRT formats ap as the argument of EPRT with delimiter '|':
// "|1|192.0.2.1|40000|" or "|2|2001:db8::1|40000|". An IPv4-mapped address
// is written as family 1; a zone is dropped (the wire format has none).
// ap should be valid with a non-zero port, else the result does not parse.
func FormatEPRT(ap netip.AddrPort) string {
	a := ap.Addr().WithZone("").Unmap()
	fam := "|2|"
	if a.Is4() {
		fam = "|1|"
	}
	return fam + a.String() + "|" + strconv.Itoa(int(ap.Port())) + "|"
}

// Find229 finds the port in the text of a 229 reply (Reply.Text),
// "Entering Extended Passive Mode (|||port|)" (RFC 2428). It looks at the
// first '(' only, as clients do; there must follow three identical
// delimiters (see validDelim), the port, the same delimiter and ')'. The
// network protocol and address fields must be empty. The span [start, end)
// covers the part inside the parentheses, so the caller rewrites with
// text[:start] + "|||" + port + "|" + text[end:].
func Find229(text string) (port uint16, start, end int, err error) {
	i := strings.IndexByte(text, '(')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("229 %q: no '(': %w", text, ErrSyntax)
	}
	start = i + 1
	s := text[start:]
	if len(s) < 3 || !validDelim(s[0]) || s[1] != s[0] || s[2] != s[0] {
		return 0, 0, 0, fmt.Errorf("229 %q: want three identical delimiters after '(': %w", text, ErrSyntax)
	}
	d := s[0]
	j := 3
	for j < len(s) && isDigit(s[j]) {
		j++
	}
	if j == len(s) || s[j] != d || j+1 == len(s) || s[j+1] != ')' {
		return 0, 0, 0, fmt.Errorf("229 %q: want port, %q and ')' after the delimiters: %w", text, d, ErrSyntax)
	}
	port, err = parsePortNum(s[3:j])
	if err != nil {
		return 0, 0, 0, fmt.Errorf("229 %q: %w", text, err)
	}
	return port, start, start + j + 1, nil
}

// Format229 formats the text of a 229 reply announcing port, without the
// code: "Entering Extended Passive Mode (|||40000|)". port must not be 0.
func Format229(port uint16) string {
	return "Entering Extended Passive Mode (|||" + strconv.Itoa(int(port)) + "|)"
}
