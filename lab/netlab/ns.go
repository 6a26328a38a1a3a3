package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir holds the named network namespaces (bind mounts of their nsfs
// inodes), where `ip netns` keeps them too.
const RunDir = "/run/netns"

// NS is one named network namespace. Go code runs in it through Do,
// DialContext and Listen; programs through Command and Run (`ip netns exec`,
// which also gives them the namespace's view of /sys).
type NS struct {
	// Name is the namespace's name, its file in RunDir.
	Name string
	// Log, if set, receives a debug line for every program run.
	Log *slog.Logger
}

// String returns the namespace name.
func (n *NS) String() string { return n.Name }

// Logger returns Log, or a logger that discards when Log is nil.
func (n *NS) Logger() *slog.Logger {
	if n.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.Log
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn
// creates keep the namespace after Do returns, so a listener or connection
// made in fn can be used from any goroutine. fn must not start goroutines
// that expect to be in the namespace.
func (n *NS) Do(fn func() error) error {
	target, err := netns.GetFromName(n.Name)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", n.Name, err)
	}
	defer target.Close()
	return inNetns(target, fn)
}

// inNetns runs fn on a fresh OS thread switched into target. The thread
// is given back to the runtime only if it could be switched back; if not,
// it ends with its goroutine and the runtime discards it.
func inNetns(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			ferr = errors.Join(ferr, fmt.Errorf("leaving network namespace: %w", err))
		} else {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// DialContext connects to addr from inside the namespace.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from %s: %w", network, addr, n.Name, err)
	}
	return c, nil
}

// Listen listens on addr inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in %s: %w", network, addr, n.Name, err)
	}
	return l, nil
}

// Command returns a command that runs name with args in the namespace. It
// runs in its own process group, which is killed when ctx is done.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", n.argv(name, args)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return KillGroup(cmd, syscall.SIGKILL) }
	// A forked child (an FTP server's session) may hold the output pipes.
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// argv is the `ip` argument list that runs name with args in the namespace.
func (n *NS) argv(name string, args []string) []string {
	return append([]string{"netns", "exec", n.Name, name}, args...)
}

// Run runs name with args in the namespace and returns its standard output.
// A failure is an error that names the command and carries its standard error.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	n.Logger().Debug("ran", "ns", n.Name, "cmd", name+" "+strings.Join(args, " "), "err", err)
	if err != nil {
		return stdout.String(), fmt.Errorf("running %s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name,
			err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// KillGroup signals the process group that cmd leads. A group that is gone
// is not an error.
func KillGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling process group %d: %w", cmd.Process.Pid, err)
	}
	return nil
}

// SetSysctls sets sysctls (dotted keys and values in pairs, e.g.
// "net.ipv4.ip_forward", "1") in the namespace. A key the kernel does not
// have is an error wrapping os.ErrNotExist.
func (n *NS) SetSysctls(kv ...string) error {
	if len(kv)%2 != 0 {
		return fmt.Errorf("setting sysctls in %s: odd argument count %d", n.Name, len(kv))
	}
	return n.Do(func() error {
		for i := 0; i < len(kv); i += 2 {
			if err := os.WriteFile(sysctlPath(kv[i]), []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("setting %s=%s in %s: %w", kv[i], kv[i+1], n.Name, err)
			}
		}
		return nil
	})
}

// ReadSysctl returns the value of the sysctl key (dotted form) in the
// namespace. A key the kernel does not have is an error wrapping
// os.ErrNotExist.
func (n *NS) ReadSysctl(key string) (string, error) {
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(sysctlPath(key))
		if err != nil {
			return fmt.Errorf("reading sysctl %s in %s: %w", key, n.Name, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// PIDs returns the processes that live in the namespace: those whose
// /proc/<pid>/ns/net is the namespace's inode (what `ip netns pids` does).
func (n *NS) PIDs() ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join(RunDir, n.Name), &want); err != nil {
		return nil, fmt.Errorf("identifying namespace %s: %w", n.Name, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) != nil {
			continue // gone, or a kernel thread
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Create creates the named network namespace, with loopback up and IPv6
// duplicate address detection and router advertisements off (before any
// interface exists, so that addresses are usable at once). An existing
// namespace of that name is an error.
func Create(name string) (*NS, error) {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", RunDir, err)
	}
	if err := shareRunDir(); err != nil {
		return nil, err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		// NewNamed switches the thread even when it fails after unshare.
		if serr := netns.Set(orig); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("leaving network namespace %s: %w", name, serr))
			return // the thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	n := &NS{Name: name}
	if err := n.SetSysctls(
		"net.ipv6.conf.all.accept_dad", "0", "net.ipv6.conf.default.accept_dad", "0",
		"net.ipv6.conf.all.accept_ra", "0", "net.ipv6.conf.default.accept_ra", "0",
	); err != nil {
		return n, err
	}
	if err := n.linkUp("lo"); err != nil {
		return n, err
	}
	return n, nil
}

// shareRunDir makes RunDir a shared mount point, as `ip netns add` does, so
// that the namespace files mounted there propagate to the mount namespaces
// of programs run with `ip netns exec`, and so do their unmounts: without
// it, such a program's copy of a removed namespace's mount would keep the
// namespace (and its interfaces) alive, unseen, until the program ends.
func shareRunDir() error {
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet: make it one
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("making %s a mount point: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("sharing the mounts under %s: %w", RunDir, err)
	}
	return nil
}

// Remove kills the processes in the namespace name, waits for them to go
// and deletes it. A missing namespace is not an error.
func Remove(ctx context.Context, name string) error {
	if _, err := os.Stat(filepath.Join(RunDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	n := &NS{Name: name}
	for {
		pids, err := n.PIDs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for processes %v in %s to exit: %w", pids, name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	var st unix.Stat_t
	statErr := unix.Stat(filepath.Join(RunDir, name), &st)
	// As netns.DeleteNamed, but another process that removes the same
	// namespace at once (a second `ftpalg lab --clean`) is no error: a
	// file already unmounted (EINVAL) or gone is fine.
	path := filepath.Join(RunDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting network namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("deleting network namespace %s: %w", name, err)
	}
	if statErr == nil {
		return removeFirewallLock(st.Ino)
	}
	return nil
}

// firewallLockDir and the name below are where `ftpalg run` keeps the lock
// of a namespace's firewall (cmd/ftpalg/lock.go): netns-<inode>.lock.
const firewallLockDir = "/run/ftpalg"

// removeFirewallLock removes the firewall lock file of the namespace with
// inode ino, left by an ftpalg that was killed in it. The namespace is
// gone, so no one can hold it; the file is removed under its lock anyway,
// the way ftpalg removes it, so that a live holder is never undercut.
func removeFirewallLock(ino uint64) error {
	path := filepath.Join(firewallLockDir, fmt.Sprintf("netns-%d.lock", ino))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil // held: not a leftover
	}
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &now) != nil || held.Ino != now.Ino {
		return nil // replaced meanwhile: not ours to remove
	}
	// The status socket beside the lock (cmd/ftpalg/status.go), only if it
	// is a socket: a killed ftpalg leaves it too.
	sock := strings.TrimSuffix(path, ".lock") + ".sock"
	if st, err := os.Lstat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s: %w", sock, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// List returns the names of the named network namespaces.
func List() ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing network namespaces: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}
