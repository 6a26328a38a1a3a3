package alg

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// Policy is what a Session allows. The zero value is not useful; start from
// DefaultPolicy, which refuses what a careful firewall engineer would refuse.
type Policy struct {
	// MinDataPort is the lowest data port a pinhole may target. Ports below
	// it are refused: an announcement naming a privileged port (25, 22, ...)
	// is the classic way to make an FTP peer talk to another service.
	// Default 1024.
	MinDataPort uint16
	// MaxLine bounds one command or reply line, terminator included. An
	// over-long line ends the session: no FTP line needs it, and a bound keeps
	// memory per session fixed. Default 4096 (ftp.DefaultMaxLine).
	MaxLine int
	// MaxReplyLines bounds the lines of one multi-line reply. Default 1000.
	MaxReplyLines int
	// MaxPending bounds the commands forwarded but not yet answered. A client
	// that pipelines more waits (TCP backpressure) until the server answers.
	// Default 64.
	MaxPending int
	// TLS is what happens to AUTH TLS/SSL; see TLSPolicy. Default
	// TLSRefuse.
	TLS TLSPolicy
	// AllowTLS is the older spelling of TLS: TLSPassthrough; it counts
	// when TLS is TLSRefuse (its zero value).
	AllowTLS bool
	// PinholeTTL is how long an announced, unused pinhole stays open.
	// Default 30s.
	PinholeTTL time.Duration
	// UseGrace is how long a pinhole stays open after the transfer's
	// preliminary reply (150/125). Passive clients connect before they send
	// the transfer command, but in active mode some servers send 150 before
	// they connect; the grace covers that race. Default 2s. A conntrack
	// observer, when present, closes the pinhole as soon as the flow is seen.
	UseGrace time.Duration
	// OpenTimeout bounds planning and opening one pinhole. Default 5s.
	OpenTimeout time.Duration
	// DrainTimeout is how long the other direction may still run after one
	// side of the session has ended. Default 5s.
	DrainTimeout time.Duration
	// MaxSyntaxErrors is how many consecutive lines that are not FTP
	// commands a client may send before the session ends. Default 3.
	MaxSyntaxErrors int
	// MaxRefusals ends a session after this many refused lines: a peer
	// that keeps sending what the policy refuses is probing, and each
	// refusal is a log line. Default 32.
	MaxRefusals int
	// LoginTimeout ends a session that has not logged in (no 230 reply)
	// within it: a client that never sends, a server that never answers.
	// Default 60s.
	LoginTimeout time.Duration
	// IdleTimeout ends a session whose control channel carried nothing in
	// either direction for this long, unless a data transfer of the
	// session is in progress (its transfer command awaits the final
	// reply). Default 10m.
	IdleTimeout time.Duration
	// RequireTLS, under TLSTerminate, refuses USER before AUTH TLS.
	RequireTLS bool
	// RequireProtP, under TLSTerminate, refuses PROT C and any data
	// connection announcement before PROT P.
	RequireProtP bool
}

// TLSPolicy says what the proxy does with AUTH TLS/SSL.
type TLSPolicy uint8

// The TLS policies.
const (
	// TLSRefuse answers AUTH with 534 and removes the AUTH lines from FEAT
	// replies, so clients fall back to plain FTP. The default.
	TLSRefuse TLSPolicy = iota
	// TLSPassthrough lets AUTH through. After a successful AUTH (234) the
	// ALG is blind: it relays bytes and opens nothing, so data connections
	// break behind a strict firewall.
	TLSPassthrough
	// TLSTerminate: ftpalg holds the certificate, answers AUTH TLS, PBSZ,
	// PROT and CCC itself and reads the control channel inside the TLS it
	// terminates; protected data connections are relayed (see tls.go).
	// The Session needs TLS and TLSBackend.
	TLSTerminate
)

func (t TLSPolicy) String() string {
	switch t {
	case TLSRefuse:
		return "refuse"
	case TLSPassthrough:
		return "passthrough"
	case TLSTerminate:
		return "terminate"
	}
	return fmt.Sprintf("TLSPolicy(%d)", uint8(t))
}

// TLSMode is the effective TLS policy: TLS, or TLSPassthrough when only
// AllowTLS is set.
func (p Policy) TLSMode() TLSPolicy {
	if p.TLS == TLSRefuse && p.AllowTLS {
		return TLSPassthrough
	}
	return p.TLS
}

// DefaultPolicy returns the secure defaults described on each field.
func DefaultPolicy() Policy {
	return Policy{
		MinDataPort:     1024,
		MaxLine:         ftp.DefaultMaxLine,
		MaxReplyLines:   1000,
		MaxPending:      64,
		TLS:             TLSRefuse,
		PinholeTTL:      30 * time.Second,
		UseGrace:        2 * time.Second,
		OpenTimeout:     5 * time.Second,
		DrainTimeout:    5 * time.Second,
		MaxSyntaxErrors: 3,
		MaxRefusals:     32,
		LoginTimeout:    60 * time.Second,
		IdleTimeout:     10 * time.Minute,
	}
}

// Validate reports a policy that cannot work.
func (p Policy) Validate() error {
	switch {
	case p.MaxLine < 64:
		return fmt.Errorf("policy: max line %d is below 64 bytes", p.MaxLine)
	case p.MaxReplyLines < 1:
		return fmt.Errorf("policy: max reply lines %d must be positive", p.MaxReplyLines)
	case p.MaxPending < 1:
		return fmt.Errorf("policy: max pending commands %d must be positive", p.MaxPending)
	case p.PinholeTTL <= 0:
		return fmt.Errorf("policy: pinhole TTL %v must be positive", p.PinholeTTL)
	case p.UseGrace < 0 || p.OpenTimeout <= 0 || p.DrainTimeout <= 0:
		return fmt.Errorf("policy: timeouts must be positive")
	case p.LoginTimeout <= 0 || p.IdleTimeout <= 0:
		return fmt.Errorf("policy: login and idle timeouts must be positive")
	case p.MaxRefusals < 1:
		return fmt.Errorf("policy: max refusals %d must be positive", p.MaxRefusals)
	case p.TLS > TLSTerminate:
		return fmt.Errorf("policy: unknown TLS policy %v", p.TLS)
	case p.MaxSyntaxErrors < 1:
		return fmt.Errorf("policy: max syntax errors %d must be positive", p.MaxSyntaxErrors)
	}
	return nil
}

// Refusal is the policy's answer to a line it will not pass: the FTP reply
// the peer gets and the reason that is logged.
type Refusal struct {
	// Reply is the whole reply line without CRLF, e.g.
	// "500 ftpalg: PORT address must be your own (192.0.2.2); refused".
	Reply string
	// Why is the reason for the log, naming the offending values.
	Why string
}

func (r *Refusal) Error() string { return r.Why }

func refusal(code, text, why string) *Refusal {
	return &Refusal{Reply: code + " ftpalg: " + text, Why: why}
}

// CheckActive parses a client's PORT or EPRT argument and checks it against
// the policy for a session with endpoints ep: the address must be the
// client's own real address (an unspecified address stands for it), of the
// control connection's family, and the port not below MinDataPort.
func CheckActive(ep Endpoints, pol Policy, verb, arg string) (Announcement, *Refusal) {
	var ap netip.AddrPort
	var err error
	kind := PORT
	if verb == "EPRT" {
		kind = EPRT
		ap, err = ftp.ParseEPRT(arg)
	} else {
		ap, err = ftp.ParsePORT(arg)
	}
	if err != nil {
		return Announcement{}, refusal("501", fmt.Sprintf("malformed %s argument", verb), err.Error())
	}
	ap = unmap(ap)
	client := ep.Client.Addr()
	if ap.Addr().IsUnspecified() && ap.Addr().Is4() == client.Is4() {
		// "EPRT |2|::|port|" (lftp over IPv6) means "my address": the
		// pinhole targets the real client address either way.
		ap = netip.AddrPortFrom(client, ap.Port())
	}
	if ap.Addr().Is4() != client.Is4() {
		if kind == EPRT {
			af := "(1)"
			if client.Is6() {
				af = "(2)"
			}
			return Announcement{}, refusal("522", "network protocol not supported, use "+af,
				fmt.Sprintf("EPRT address %s is not of the control connection's family", ap.Addr()))
		}
		return Announcement{}, refusal("501", "PORT cannot name an IPv4 address on an IPv6 connection; use EPRT",
			fmt.Sprintf("PORT address %s on an IPv6 control connection", ap.Addr()))
	}
	if ap.Addr() != client {
		return Announcement{}, refusal("500", fmt.Sprintf("%s address must be your own (%s); refused", verb, client),
			fmt.Sprintf("bounce: %s names %s, the client is %s", verb, ap.Addr(), client))
	}
	if ap.Port() < pol.MinDataPort {
		return Announcement{}, refusal("504", fmt.Sprintf("data port %d is below %d; refused", ap.Port(), pol.MinDataPort),
			fmt.Sprintf("privileged data port %d", ap.Port()))
	}
	return Announcement{Kind: kind, Addr: ap}, nil
}

// CheckPassive parses the server's final reply r to a PASV (227) or EPSV
// (229) this session forwarded and checks it against the policy. It returns
// the announcement and the span [start,end) of the numbers in r.Text(), so
// that a caller can rewrite just them. A refusal's reply is the 425 that
// replaces the server's reply on the way to the client.
func CheckPassive(ep Endpoints, pol Policy, r ftp.Reply) (a Announcement, start, end int, ref *Refusal) {
	verb := "PASV"
	if r.Code == 229 {
		verb = "EPSV"
	}
	if r.Multiline() {
		return a, 0, 0, refusal("425", "cannot use a multi-line passive reply", "multi-line "+verb+" reply")
	}
	text := r.Text()
	var err error
	switch r.Code {
	case 227:
		var ap netip.AddrPort
		ap, start, end, err = ftp.Find227(text)
		if err != nil {
			return a, 0, 0, refusal("425", "malformed 227 reply from server", err.Error())
		}
		if !ep.Server.Addr().Is4() {
			return a, 0, 0, refusal("425", "PASV cannot work over IPv6; use EPSV", "227 on an IPv6 control connection")
		}
		a = Announcement{Kind: PASV, Addr: ap}
	case 229:
		var port uint16
		port, start, end, err = ftp.Find229(text)
		if err != nil {
			return a, 0, 0, refusal("425", "malformed 229 reply from server", err.Error())
		}
		a = Announcement{Kind: EPSV, Addr: netip.AddrPortFrom(ep.Server.Addr(), port)}
	default:
		return a, 0, 0, refusal("425", "unexpected passive reply", fmt.Sprintf("reply %d is not 227 or 229", r.Code))
	}
	if p := a.Addr.Port(); p < pol.MinDataPort {
		return a, 0, 0, refusal("425", fmt.Sprintf("server offered data port %d, below %d; refused", p, pol.MinDataPort),
			fmt.Sprintf("privileged data port %d", p))
	}
	return a, start, end, nil
}

// The refusals of lines that are not data-channel announcements. They are
// shared by the Session and the capture inspector, so that both say the
// same thing. End reports whether the session ends after the reply.

// RefuseLineTooLong answers a command line longer than max bytes.
func RefuseLineTooLong(max int) (r *Refusal, end bool) {
	return refusal("500", fmt.Sprintf("command line too long (limit %d bytes); closing the connection", max),
		fmt.Sprintf("command line longer than %d bytes", max)), true
}

// RefuseNUL answers a command line holding a NUL byte.
func RefuseNUL() (r *Refusal, end bool) {
	return refusal("500", "NUL byte in command; closing the connection", "NUL byte in a command line"), true
}

// RefuseSyntax answers a line that is not an FTP command. Binary garbage
// (see Binary) or the MaxSyntaxErrors-th such line in a row ends the
// session; a stray reply-shaped line does not.
func RefuseSyntax(pol Policy, line []byte, err error, inARow int) (r *Refusal, end bool) {
	if Binary(line) || inARow >= pol.MaxSyntaxErrors {
		return refusal("500", "not an FTP command; closing the connection", fmt.Sprintf("not an FTP command: %v", err)), true
	}
	return refusal("500", "syntax error, not an FTP command", err.Error()), false
}

// RefuseServerReply answers (to the client) a server reply that is not FTP.
func RefuseServerReply(err error) (r *Refusal, end bool) {
	return refusal("421", "the server sent an invalid reply; closing the connection",
		fmt.Sprintf("invalid reply from server: %v", err)), true
}

// CheckCommand refuses the commands the policy does not pass on: LPRT and
// LPSV (RFC 1639, clients fall back), AUTH under TLSRefuse. PORT and EPRT
// are checked by CheckActive.
func CheckCommand(pol Policy, verb string) *Refusal {
	switch verb {
	case "LPRT", "LPSV":
		return refusal("502", verb+" not supported; use EPRT/EPSV or PORT/PASV",
			"long address formats (RFC 1639) are not supported")
	case "AUTH":
		if pol.TLSMode() == TLSRefuse {
			return refusal("534", "AUTH refused by policy; continue without TLS",
				"TLS on the control channel is refused by policy (the ALG could not see announcements)")
		}
	}
	return nil
}

// Binary reports whether a line holds bytes no FTP command line has: control
// characters other than TAB and the line end, outside a leading telnet
// sequence. A TLS ClientHello or random garbage is binary; "227 Entering"
// typed by a confused client is not.
func Binary(line []byte) bool {
	i := 0
	for i+1 < len(line) && line[i] == 0xff {
		i += 2
	}
	for _, c := range line[i:] {
		if (c < 0x20 && c != '\t' && c != '\r' && c != '\n') || c == 0x7f {
			return true
		}
	}
	return false
}
