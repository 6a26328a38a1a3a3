package netlab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// TLSMode is whether and how a client speaks FTPS.
type TLSMode string

// Client TLS modes.
const (
	// TLSOff is plain FTP (the zero value).
	TLSOff TLSMode = ""
	// TLSExplicit is AUTH TLS on the plain port, then PBSZ 0 and PROT P:
	// curl --ssl-reqd, lftp ftp:ssl-force and ftp:ssl-protect-data, ftplib
	// FTP_TLS with prot_p.
	TLSExplicit TLSMode = "explicit"
	// TLSImplicit is TLS from the first byte (ftps:// URLs).
	TLSImplicit TLSMode = "implicit"
)

// FTPLib is Python's ftplib.FTP_TLS, subclassed as people do against
// vsftpd's require_ssl_reuse so that every data connection resumes the
// control connection's TLS session. FTPLibStock is the stock FTP_TLS, which
// does not: it is the client whose data connections must be refused.
// Neither is in Tools (plain matrices): they speak FTPS only.
const (
	FTPLib      Tool = "ftplib"
	FTPLibStock Tool = "ftplib-stock"
)

// isFTPLib reports whether tool is one of the Python clients.
func isFTPLib(tool Tool) bool { return tool == FTPLib || tool == FTPLibStock }

// curlTLSArgs are curl's FTPS options for x, and the URL scheme.
func curlTLSArgs(x Transfer) (args []string, scheme string) {
	switch x.TLS {
	case TLSExplicit:
		args = []string{"--ssl-reqd"}
	case TLSImplicit:
		scheme = "ftps"
	default:
		return nil, "ftp"
	}
	if x.CAFile != "" {
		args = append(args, "--cacert", x.CAFile)
	}
	if scheme == "" {
		scheme = "ftp"
	}
	return args, scheme
}

// lftpTLSLines are lftp's FTPS settings for x, and the URL scheme.
func lftpTLSLines(x Transfer) (lines []string, scheme string) {
	if x.TLS == TLSOff {
		return []string{"set ftp:ssl-allow no"}, "ftp"
	}
	lines = []string{
		"set ftp:ssl-allow yes",
		"set ftp:ssl-allow-anonymous yes",
		"set ftp:ssl-force true",
		"set ftp:ssl-protect-data true",
		"set ftp:ssl-protect-list true",
		"set ftp:ssl-copy-sid yes",
		"set ssl:verify-certificate yes",
		"set ssl:check-hostname yes",
	}
	if x.CAFile != "" {
		lines = append(lines, "set ssl:ca-file "+lftpQuote(x.CAFile))
	}
	scheme = "ftp"
	if x.TLS == TLSImplicit {
		scheme = "ftps"
	}
	return lines, scheme
}

// ftplibScript is the Python client. Arguments: host port user pass
// passive(0/1) op remote local cafile implicit(0/1) reuse(0/1). The
// protocol trace (debug level 1) goes to stderr, a listing to stdout.
const ftplibScript = `
import ftplib, socket, ssl, sys
host, port, user, pw, passive, op, remote, local, cafile, implicit, reuse = sys.argv[1:]
out = sys.stdout
sys.stdout = sys.stderr  # ftplib prints its debug trace

ctx = ssl.create_default_context(cafile=cafile or None)

class Client(ftplib.FTP_TLS):
    def connect(self, host='', port=0, timeout=-999, source_address=None):
        r = super().connect(host, port, timeout, source_address)
        return r
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            kw = {"server_hostname": self.host}
            if reuse == "1":
                kw["session"] = self.sock.session
            conn = self.context.wrap_socket(conn, **kw)
        return conn, size

class Implicit(Client):
    def connect(self, host='', port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        self.sock = socket.create_connection((host, port), self.timeout)
        self.af = self.sock.family
        self.sock = self.context.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile('r', encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

f = (Implicit if implicit == "1" else Client)(context=ctx, timeout=20)
f.set_debuglevel(1)
f.connect(host, int(port))
if implicit != "1":
    f.auth()
f.login(user, pw)
f.prot_p()
f.set_pasv(passive == "1")
try:
    if op == "RETR":
        with open(local, "wb") as fh:
            f.retrbinary("RETR " + remote, fh.write)
    elif op == "STOR":
        with open(local, "rb") as fh:
            f.storbinary("STOR " + remote, fh)
    else:
        lines = []
        f.retrlines("LIST " + remote, lines.append)
        out.write("\n".join(lines) + "\n")
except (OSError, ssl.SSLError) as e:
    # The data connection failed: show the transfer's final reply.
    print("data connection failed:", repr(e))
    try:
        f.getresp()
    except ftplib.all_errors as e2:
        print("final reply:", repr(e2))
    sys.exit(1)
f.quit()
`

// python3 returns the Python interpreter: Debian's /usr/bin/python3 when
// present (what install-peers.sh installs), else python3 from PATH.
func python3() string {
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	if p, err := exec.LookPath("python3"); err == nil {
		return p
	}
	return "python3"
}

// ftplibArgs is the command line of the Python client for x.
func ftplibArgs(x Transfer) (string, []string) {
	user, pass := x.User, x.Pass
	if user == "" {
		user, pass = "anonymous", "ftpalg@example.com"
	}
	b := map[bool]string{true: "1", false: "0"}
	return python3(), []string{"-c", ftplibScript,
		x.Server.Addr().Unmap().String(), fmt.Sprint(x.Server.Port()), user, pass,
		b[x.Mode.Passive()], string(x.Op), x.Remote, x.Local, x.CAFile,
		b[x.TLS == TLSImplicit], b[x.Tool == FTPLib]}
}

// parseTrace extracts the command lines sent and reply lines received from
// a client's protocol trace: curl -v writes "> CMD" and "< 227 ...", lftp's
// debug output "---> CMD" and "<--- 227 ...".
func parseTrace(tool Tool, trace string) (sent, replies []string) {
	out, in := "> ", "< "
	if tool == LFTP {
		out, in = "---> ", "<--- "
	}
	if isFTPLib(tool) {
		return parseFTPLibTrace(trace)
	}
	sc := bufio.NewScanner(strings.NewReader(trace))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if rest, ok := strings.CutPrefix(line, out); ok {
			sent = append(sent, rest)
		} else if rest, ok := strings.CutPrefix(line, in); ok {
			replies = append(replies, rest)
		}
	}
	return sent, replies
}

// parseFTPLibTrace reads ftplib's debug lines "*cmd* 'PASV'" and
// "*resp* '227 ...'".
func parseFTPLibTrace(trace string) (sent, replies []string) {
	for _, line := range strings.Split(trace, "\n") {
		if rest, ok := strings.CutPrefix(line, "*cmd* "); ok {
			sent = append(sent, strings.Trim(rest, `'"`))
		} else if rest, ok := strings.CutPrefix(line, "*resp* "); ok {
			replies = append(replies, strings.Trim(rest, `'"`))
		}
	}
	return sent, replies
}
