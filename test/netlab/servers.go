package netlab

import (
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ServerKind names an FTP server implementation.
type ServerKind string

// The FTP servers the harness runs, both from Debian packages.
const (
	// Vsftpd is /usr/sbin/vsftpd (package vsftpd), anonymous login.
	Vsftpd ServerKind = "vsftpd"
	// PureFTPd is pure-ftpd (package pure-ftpd, extracted: it conflicts with
	// vsftpd), login with a user and password checked by pure-authd.
	PureFTPd ServerKind = "pure-ftpd"
)

// ServerKinds lists every server kind.
var ServerKinds = []ServerKind{Vsftpd, PureFTPd}

// Sizes of the generated files.
const (
	// BigSize is the size of Server.Big: over 10 MiB and not a round number.
	BigSize = 10<<20 + 12345
	// nobody is the uid and gid the servers write uploads as.
	nobody = 65534
)

// ServerOptions configures a server.
type ServerOptions struct {
	// Port is the control port; 0 means 21.
	Port int
	// PasvMin and PasvMax bound the passive data ports; 0 means the kind's
	// default (vsftpd 40000-40099, pure-ftpd 41000-41099).
	PasvMin, PasvMax int
	// AllowForeignDataAddress turns off the server's check that an active
	// data connection (PORT/EPRT) goes to the control connection's peer
	// address (vsftpd port_promiscuous=YES, pure-ftpd -w). Behind a
	// masquerading gateway without an ALG, active mode only works with it.
	// vsftpd then connects from an ephemeral port: it does not bind port 20
	// for promiscuous connects (the bind fails with EACCES).
	AllowForeignDataAddress bool
	// Loopback makes vsftpd listen on 127.0.0.1 only (a sidecar's private
	// server, reachable only from its own namespace). IPv4 only.
	Loopback bool
	// TLS, when set, makes the server speak FTPS (explicit, AUTH TLS) with
	// this certificate, and require it (see servers_tls.go).
	TLS *TLSFiles
}

// File is a file the server serves.
type File struct {
	// Path is the path on the server, from the FTP root ("/pub/big.bin").
	Path string
	// Size is the file's size in bytes.
	Size int64
	// SHA256 is the hex SHA-256 of the content.
	SHA256 string
}

// Server is a running FTP server with generated content.
type Server struct {
	// Kind is the implementation.
	Kind ServerKind
	// NS is the namespace the server runs in.
	NS *NS
	// Port is the control port.
	Port int
	// PasvMin and PasvMax bound its passive data ports.
	PasvMin, PasvMax int
	// User and Pass log in; User "anonymous" for vsftpd.
	User, Pass string
	// Root is the FTP root directory on disk.
	Root string
	// Big is a file of BigSize bytes, Small a short text file.
	Big, Small File
	// ListDir is a directory holding exactly ListNames.
	ListDir   string
	ListNames []string
	// UploadDir is a directory the user may STOR into.
	UploadDir string
	// Proc is the server process.
	Proc *Proc
	// TLS is the server's certificate when it speaks FTPS, else nil.
	TLS *TLSFiles

	uploadSeq int
	mu        sync.Mutex
}

// Addr returns the control endpoint of family f: the namespace's address
// and the control port.
func (s *Server) Addr(f Family) netip.AddrPort {
	return netip.AddrPortFrom(s.NS.Addr(f), uint16(s.Port))
}

// LocalPath returns where the file at FTP path p is on disk.
func (s *Server) LocalPath(p string) string {
	return filepath.Join(s.Root, filepath.FromSlash(path.Clean("/"+p)))
}

// StartServer starts a server of the given kind in ns. See StartVsftpd and
// StartPureFTPd.
func StartServer(t testing.TB, ns *NS, kind ServerKind, opts ServerOptions) *Server {
	t.Helper()
	switch kind {
	case Vsftpd:
		return StartVsftpd(t, ns, opts)
	case PureFTPd:
		return StartPureFTPd(t, ns, opts)
	}
	t.Fatalf("unknown server kind %q", kind)
	return nil
}

// newServer creates the scratch directory (removed in t's cleanup) and the
// content of a server.
func newServer(t testing.TB, ns *NS, kind ServerKind, opts ServerOptions, pasvMin, pasvMax int) (*Server, string) {
	t.Helper()
	if opts.Port == 0 {
		opts.Port = 21
	}
	if opts.PasvMin == 0 && opts.PasvMax == 0 {
		opts.PasvMin, opts.PasvMax = pasvMin, pasvMax
	}
	// Not t.TempDir(): its parent is 0700 and the servers drop privileges.
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", Prefix, os.Getpid(), kind))
	if err != nil {
		t.Fatalf("creating scratch directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("chmod %s: %v", dir, err)
	}
	s := &Server{
		Kind: kind, NS: ns, Port: opts.Port, PasvMin: opts.PasvMin, PasvMax: opts.PasvMax,
		Root: filepath.Join(dir, "root"), ListDir: "/list", UploadDir: "/upload",
		ListNames: []string{"alpha.txt", "beta.txt", "gamma.bin"},
		TLS:       opts.TLS,
	}
	if err := s.populate(); err != nil {
		t.Fatalf("creating content of %s: %v", kind, err)
	}
	return s, dir
}

// StartVsftpd starts /usr/sbin/vsftpd in ns, one instance listening on the
// IPv6 wildcard, which also accepts IPv4 (as IPv4-mapped addresses), with
// anonymous login (no password), downloads, LIST and anonymous uploads into
// UploadDir, connect_from_port_20 as in Debian's configuration, and short
// connect/accept timeouts so that a blocked data connection fails fast.
//
// Anonymous sessions run as vsftpd's own user ftp (ftp_username's default,
// created by the vsftpd package with the home /srv/ftp), chrooted into
// Root by anon_root; UploadDir is given to that user. Nothing on the host
// changes and nothing is mounted: no user is added, and /etc/passwd is
// neither copied nor bind-mounted (a bind mount over /etc/passwd is
// detached as soon as anything on the host changes a user, and vsftpd then
// refuses every login).
//
// Do not use pure-ftpd in active mode in the same namespace: its port-20
// sockets linger in TIME_WAIT without SO_REUSEADDR, and for a minute
// vsftpd's bind to port 20 fails ("500 OOPS: vsf_sysutil_bind").
func StartVsftpd(t testing.TB, ns *NS, opts ServerOptions) *Server {
	t.Helper()
	const bin = "/usr/sbin/vsftpd"
	if _, err := os.Stat(bin); err != nil {
		Unavailable(t, "vsftpd not installed (%v); run test/install-peers.sh", err)
	}
	ftpUser, err := user.Lookup(vsftpdUser)
	if err != nil {
		Unavailable(t, "vsftpd's user %s is missing (%v); reinstall vsftpd", vsftpdUser, err)
	}
	s, dir := newServer(t, ns, Vsftpd, opts, 40000, 40099)
	s.User, s.Pass = "anonymous", "ftpalg@example.com"
	uid, _ := strconv.Atoi(ftpUser.Uid)
	gid, _ := strconv.Atoi(ftpUser.Gid)
	if err := os.Chown(s.LocalPath(s.UploadDir), uid, gid); err != nil {
		t.Fatalf("giving %s to %s: %v", s.UploadDir, vsftpdUser, err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatalf("creating secure_chroot_dir: %v", err)
	}
	yesNo := map[bool]string{true: "YES", false: "NO"}
	conf := strings.Join([]string{
		listenConf(opts.Loopback),
		"listen_port=" + strconv.Itoa(s.Port),
		"background=NO",
		"anonymous_enable=YES",
		"no_anon_password=YES",
		"ftp_username=" + vsftpdUser,
		"anon_root=" + s.Root,
		"local_enable=NO",
		"write_enable=YES",
		"anon_upload_enable=YES",
		"anon_mkdir_write_enable=NO",
		"anon_other_write_enable=NO",
		"anon_umask=022",
		"dirlist_enable=YES",
		"download_enable=YES",
		"pasv_enable=YES",
		"pasv_min_port=" + strconv.Itoa(s.PasvMin),
		"pasv_max_port=" + strconv.Itoa(s.PasvMax),
		"port_enable=YES",
		"connect_from_port_20=" + yesNo[!opts.AllowForeignDataAddress],
		"port_promiscuous=" + yesNo[opts.AllowForeignDataAddress],
		"pasv_promiscuous=NO",
		"seccomp_sandbox=NO",
		"secure_chroot_dir=" + empty,
		vsftpdTLSConf(opts),
		"hide_ids=YES",
		"xferlog_enable=YES",
		"xferlog_std_format=NO",
		"log_ftp_protocol=YES",
		"vsftpd_log_file=" + filepath.Join(dir, "vsftpd.log"),
		"connect_timeout=5",
		"accept_timeout=5",
		"data_connection_timeout=30",
		"idle_session_timeout=60",
		"max_per_ip=0",
		"max_clients=0",
		"",
	}, "\n")
	confPath := filepath.Join(dir, "vsftpd.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatalf("writing vsftpd.conf: %v", err)
	}
	s.Proc = ns.Start(t, bin, confPath)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "vsftpd.log"))
			t.Logf("vsftpd log:\n%s", tail(string(b), 8192))
		}
	})
	if opts.Loopback {
		s.waitReadyOn(t, "127.0.0.1")
	} else {
		s.waitReady(t)
	}
	return s
}

// vsftpdUser is the user vsftpd's anonymous sessions run as.
const vsftpdUser = "ftp"

// listenConf is vsftpd's listener configuration: dual-stack on every
// address, or IPv4 loopback only.
func listenConf(loopback bool) string {
	if loopback {
		return "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1"
	}
	return "listen=NO\nlisten_ipv6=YES"
}

// StartPureFTPd starts pure-ftpd in ns, listening on both families, with
// the user "ftpalg" (password "ftpalg-pw") authenticated by pure-authd
// running a small script, chrooted into Root and writing as nobody. No
// anonymous login.
func StartPureFTPd(t testing.TB, ns *NS, opts ServerOptions) *Server {
	t.Helper()
	bin, authd, env, err := EnsurePureFTPd()
	if err != nil {
		Unavailable(t, "pure-ftpd unavailable: %v", err)
	}
	s, dir := newServer(t, ns, PureFTPd, opts, 41000, 41099)
	s.User, s.Pass = "ftpalg", "ftpalg-pw"
	script := fmt.Sprintf(`#!/bin/sh
if [ "$AUTHD_ACCOUNT" = %q ] && [ "$AUTHD_PASSWORD" = %q ]; then
	printf 'auth_ok:1\nuid:%d\ngid:%d\ndir:%s\nend\n'
else
	printf 'auth_ok:-1\nend\n'
fi
`, s.User, s.Pass, nobody, nobody, s.Root)
	scriptPath := filepath.Join(dir, "authd.sh")
	if err := os.WriteFile(scriptPath, []byte(script), 0o755); err != nil {
		t.Fatalf("writing pure-authd script: %v", err)
	}
	sock := filepath.Join(dir, "authd.sock")
	ns.StartEnv(t, env, authd, "-s", sock, "-r", scriptPath)
	if err := waitFor(10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
		t.Fatalf("waiting for pure-authd socket %s: %v", sock, err)
	}
	args := []string{
		"-S", "," + strconv.Itoa(s.Port), // all addresses of both families
		"-l", "extauth:" + sock,
		"-E", // no anonymous login
		"-A", // chroot everyone
		"-H", // no DNS
		"-p", fmt.Sprintf("%d:%d", s.PasvMin, s.PasvMax),
		"-U", "133:022",
		"-I", "1", // idle timeout, minutes
		"-O", "clf:" + filepath.Join(dir, "transfer.log"),
	}
	if opts.AllowForeignDataAddress {
		args = append(args, "-w")
	}
	args = append(args, pureFTPdTLSArgs(opts)...)
	s.Proc = ns.StartEnv(t, env, bin, args...)
	s.waitReady(t)
	return s
}

// nextUploadName returns a fresh file name for an upload.
func (s *Server) nextUploadName(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uploadSeq++
	return fmt.Sprintf("%s-%d.bin", prefix, s.uploadSeq)
}
