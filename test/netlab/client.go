package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Tool is an FTP client program.
type Tool string

// The client programs, both from Debian packages.
const (
	Curl Tool = "curl"
	LFTP Tool = "lftp"
)

// Tools lists every client program.
var Tools = []Tool{Curl, LFTP}

// Mode is how the data connection is announced: the command the client sends.
type Mode string

// Data connection modes.
const (
	EPSV Mode = "EPSV" // passive, extended (RFC 2428)
	PASV Mode = "PASV" // passive, IPv4 only
	PORT Mode = "PORT" // active, IPv4 only
	EPRT Mode = "EPRT" // active, extended
)

// Modes lists every mode.
var Modes = []Mode{EPSV, PASV, PORT, EPRT}

// Passive reports whether the client opens the data connection.
func (m Mode) Passive() bool { return m == EPSV || m == PASV }

// Op is an FTP operation that uses a data connection.
type Op string

// Operations.
const (
	Retr Op = "RETR" // download a file
	Stor Op = "STOR" // upload a file
	List Op = "LIST" // list a directory
)

// Ops lists every operation.
var Ops = []Op{Retr, Stor, List}

// Supported reports whether tool can be made to announce the data
// connection with mode over family f. PASV and PORT carry IPv4 addresses
// only; curl always uses EPSV/EPRT over IPv6; lftp sends EPRT only over
// IPv6.
func Supported(tool Tool, mode Mode, f Family) bool {
	if isFTPLib(tool) {
		// ftplib picks PASV/PORT over IPv4, EPSV/EPRT over IPv6.
		return (f == IPv4) == (mode == PASV || mode == PORT)
	}
	if f == IPv6 {
		return mode == EPSV || mode == EPRT
	}
	return !(tool == LFTP && mode == EPRT)
}

// Transfer describes one client run.
type Transfer struct {
	Tool Tool
	Mode Mode
	Op   Op
	// Server is the control endpoint the client dials.
	Server netip.AddrPort
	// User and Pass log in; an empty User means anonymous.
	User, Pass string
	// Remote is the path on the server: the file to RETR, the file to STOR
	// to, the directory to LIST.
	Remote string
	// Local is the file to RETR into or to STOR from. For RETR an empty
	// Local means a temporary file, removed after hashing.
	Local string
	// ActiveAddr is the address the client announces in PORT/EPRT. Empty
	// means the control connection's local address (curl "-P -").
	ActiveAddr string
	// SkipPASVAddress makes the client ignore the address in a 227 reply
	// and connect to the control connection's peer instead. The default
	// is to use the announced address, as an ALG must get it right.
	SkipPASVAddress bool
	// ConnectTimeout bounds the control and passive data connects
	// (default 5 s); Timeout bounds the whole run (default 30 s).
	ConnectTimeout, Timeout time.Duration
	// TLS makes the client speak FTPS (see clients_tls.go); CAFile is the
	// CA it verifies the server's certificate with.
	TLS    TLSMode
	CAFile string
}

// String describes the transfer for test names and logs, e.g.
// "curl/EPSV/RETR/IPv4".
func (x Transfer) String() string {
	f := IPv4
	if x.Server.Addr().Is6() && !x.Server.Addr().Is4In6() {
		f = IPv6
	}
	return fmt.Sprintf("%s/%s/%s/%s", x.Tool, x.Mode, x.Op, f)
}

// Result is what a client run produced.
type Result struct {
	Transfer Transfer
	// Err is nil if the client exited 0.
	Err error
	// ExitCode is the client's exit status, -1 if it was killed.
	ExitCode int
	// Stdout and Stderr are the client's output; Stderr has the protocol
	// trace (curl -v, lftp debug).
	Stdout, Stderr string
	// Bytes is the size of the data: the downloaded file (RETR), the
	// uploaded file (STOR, when the client succeeded) or the listing (LIST).
	Bytes int64
	// SHA256 is the hex SHA-256 of the downloaded file (RETR).
	SHA256 string
	// Sent are the command lines the client sent, in order, e.g.
	// "EPSV", "PORT 192,0,2,2,195,80", "RETR big.bin".
	Sent []string
	// Replies are the server's reply lines the client received, in order.
	Replies []string
	// Duration is how long the client ran.
	Duration time.Duration
}

// SentCommand reports whether the client sent a command with this verb.
func (r Result) SentCommand(verb string) bool {
	return slices.ContainsFunc(r.Sent, func(line string) bool {
		v, _, _ := strings.Cut(line, " ")
		return strings.EqualFold(v, verb)
	})
}

// RepliesWithCode returns the reply lines that start with code (e.g. "227").
func (r Result) RepliesWithCode(code string) []string {
	var out []string
	for _, line := range r.Replies {
		if strings.HasPrefix(line, code) {
			out = append(out, line)
		}
	}
	return out
}

// Summary is a short description of a result for test failure messages.
func (r Result) Summary() string {
	return fmt.Sprintf("%v: exit %d, err %v, %d bytes in %v\nsent: %q\nreplies: %q\nstderr:\n%s",
		r.Transfer, r.ExitCode, r.Err, r.Bytes, r.Duration.Round(time.Millisecond), r.Sent, r.Replies, tail(r.Stderr, 3000))
}

// RunTransfer runs the transfer's client in ns (normally the topology's
// client). It never fails the test: everything is in the Result.
func RunTransfer(ctx context.Context, ns *NS, x Transfer) Result {
	res := Result{Transfer: x, ExitCode: -1}
	if x.ConnectTimeout == 0 {
		x.ConnectTimeout = 5 * time.Second
	}
	if x.Timeout == 0 {
		x.Timeout = 30 * time.Second
	}
	res.Transfer = x
	if !Supported(x.Tool, x.Mode, familyOf(x.Server.Addr())) {
		res.Err = fmt.Errorf("%v: %s cannot use %s over %s", x, x.Tool, x.Mode, familyOf(x.Server.Addr()))
		return res
	}
	if x.Op == Retr && x.Local == "" {
		f, err := os.CreateTemp("", fmt.Sprintf("%s%d-retr-*", Prefix, os.Getpid()))
		if err != nil {
			res.Err = fmt.Errorf("creating download file: %w", err)
			return res
		}
		f.Close()
		x.Local = f.Name()
		res.Transfer.Local = x.Local
		defer os.Remove(x.Local)
	}
	if x.Op == Retr {
		// A file left from an earlier run must not pass for a download.
		if err := os.Remove(x.Local); err != nil && !errors.Is(err, os.ErrNotExist) {
			res.Err = fmt.Errorf("removing old download: %w", err)
			return res
		}
	}
	var name string
	var args []string
	var cleanup func()
	switch x.Tool {
	case Curl:
		name, args = "curl", curlArgs(x)
	case LFTP:
		script, err := lftpScript(x)
		if err != nil {
			res.Err = err
			return res
		}
		name, args = "lftp", []string{"-f", script}
		cleanup = func() { os.Remove(script) }
	case FTPLib, FTPLibStock:
		name, args = ftplibArgs(x)
	default:
		res.Err = fmt.Errorf("unknown client %q", x.Tool)
		return res
	}
	if cleanup != nil {
		defer cleanup()
	}
	// The context bounds the run a little above the client's own limit.
	ctx, cancel := context.WithTimeout(ctx, x.Timeout+5*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res.Duration = time.Since(start)
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	res.Sent, res.Replies = parseTrace(x.Tool, res.Stderr)
	var exit *exec.ExitError
	switch {
	case err == nil:
		res.ExitCode = 0
	case errors.As(err, &exit) && exit.Exited():
		res.ExitCode = exit.ExitCode()
		res.Err = fmt.Errorf("%v: %s exited with %d", x, name, res.ExitCode)
	default:
		res.Err = fmt.Errorf("%v: running %s: %w", x, name, err)
	}
	if ctx.Err() != nil {
		res.Err = fmt.Errorf("%v: %s killed after %v: %w", x, name, res.Duration.Round(time.Millisecond), ctx.Err())
	}
	switch x.Op {
	case Retr:
		if n, sum, err := FileSHA256(x.Local); err == nil {
			res.Bytes, res.SHA256 = n, sum
		}
	case Stor:
		if res.Err == nil {
			if fi, err := os.Stat(x.Local); err == nil {
				res.Bytes = fi.Size()
			}
		}
	case List:
		res.Bytes = int64(len(res.Stdout))
	}
	return res
}

func familyOf(a netip.Addr) Family {
	if a.Is6() && !a.Is4In6() {
		return IPv6
	}
	return IPv4
}

// ftpURL returns ftp://host:port/remote with the path escaped. A LIST URL
// ends in "/".
func ftpURL(x Transfer, scheme string, dir bool) string {
	p := "/" + strings.Trim(x.Remote, "/")
	if dir && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return (&url.URL{Scheme: scheme, Host: x.Server.String(), Path: p}).String()
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// curlArgs builds the curl command line: -v for the protocol trace on
// stderr, bounded connect and total time.
func curlArgs(x Transfer) []string {
	args := []string{"-sS", "-v", "--connect-timeout", secs(x.ConnectTimeout), "--max-time", secs(x.Timeout)}
	if x.User != "" {
		args = append(args, "--user", x.User+":"+x.Pass)
	}
	active := x.ActiveAddr
	if active == "" {
		active = "-"
	}
	switch x.Mode {
	case EPSV:
		args = append(args, "--ftp-pasv")
	case PASV:
		args = append(args, "--ftp-pasv", "--disable-epsv")
	case PORT:
		args = append(args, "--ftp-port", active, "--disable-eprt")
	case EPRT:
		args = append(args, "--ftp-port", active)
	}
	if x.SkipPASVAddress {
		args = append(args, "--ftp-skip-pasv-ip")
	} else {
		args = append(args, "--no-ftp-skip-pasv-ip")
	}
	tlsArgs, scheme := curlTLSArgs(x)
	args = append(args, tlsArgs...)
	switch x.Op {
	case Retr:
		args = append(args, "--output", x.Local, ftpURL(x, scheme, false))
	case Stor:
		args = append(args, "--upload-file", x.Local, ftpURL(x, scheme, false))
	case List:
		args = append(args, ftpURL(x, scheme, true))
	}
	return args
}

// lftpScript writes an lftp command file for x and returns its path.
func lftpScript(x Transfer) (string, error) {
	onOff := map[bool]string{true: "on", false: "off"}
	yesNo := map[bool]string{true: "yes", false: "no"}
	lines := []string{
		"set cmd:fail-exit yes",
		"set cmd:interactive no",
		"set net:max-retries 1",
		"set net:persist-retries 0",
		"set net:reconnect-interval-base 1",
		fmt.Sprintf("set net:timeout %ds", int(math.Ceil(x.ConnectTimeout.Seconds()))),
		"set ftp:passive-mode " + onOff[x.Mode.Passive()],
		"set ftp:auto-passive-mode no",
		"set ftp:prefer-epsv " + yesNo[x.Mode == EPSV],
		"set ftp:fix-pasv-address no",
		"set ftp:ignore-pasv-address " + yesNo[x.SkipPASVAddress],
		"set xfer:clobber on",
	}
	tlsLines, scheme := lftpTLSLines(x)
	lines = append(lines, tlsLines...)
	if x.ActiveAddr != "" {
		lines = append(lines, "set ftp:port-ipv4 "+lftpQuote(x.ActiveAddr))
	}
	lines = append(lines, "debug 5")
	user := x.User
	pass := x.Pass
	if user == "" {
		user, pass = "anonymous", "ftpalg@example.com"
	}
	host := x.Server.Addr().Unmap().String()
	if familyOf(x.Server.Addr()) == IPv6 {
		host = "[" + host + "]"
	}
	lines = append(lines, fmt.Sprintf("open -u %s %s://%s:%d", lftpQuote(user+","+pass), scheme, host, x.Server.Port()))
	switch x.Op {
	case Retr:
		lines = append(lines, fmt.Sprintf("get %s -o %s", lftpQuote(x.Remote), lftpQuote(x.Local)))
	case Stor:
		lines = append(lines, fmt.Sprintf("put %s -o %s", lftpQuote(x.Local), lftpQuote(x.Remote)))
	case List:
		lines = append(lines, "ls "+lftpQuote(x.Remote))
	default:
		return "", fmt.Errorf("unknown operation %q", x.Op)
	}
	lines = append(lines, "bye", "")
	f, err := os.CreateTemp("", fmt.Sprintf("%s%d-lftp-*.lftp", Prefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("creating lftp script: %w", err)
	}
	if _, err := f.WriteString(strings.Join(lines, "\n")); err != nil {
		f.Close()
		return "", fmt.Errorf("writing lftp script: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("writing lftp script: %w", err)
	}
	return f.Name(), nil
}

// lftpQuote quotes s for an lftp command line.
func lftpQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
