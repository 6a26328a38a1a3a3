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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/namespace"
)

// NS is one named network namespace (a host of a topology). Programs run in it
// through `ip netns exec`; Go code runs in it through Do, Dial and Listen.
type NS struct {
	// Name is the namespace name as `ip netns list` shows it.
	Name string
	// Role is the host's part in the topology: "client", "gw", "server",
	// "other" or "switch".
	Role string

	log *slog.Logger
}

// logger returns the namespace's logger; an NS made by hand logs nothing.
func (n *NS) logger() *slog.Logger {
	if n.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.log
}

// String returns the namespace name.
func (n *NS) String() string { return n.Name }

// Command returns a command that runs name with args in the namespace. It
// runs in its own process group, which is killed when ctx is done.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", n.Name, name}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd, syscall.SIGKILL) }
	// A forked child (an FTP server's session) may hold the output pipes.
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Run runs name with args in the namespace and returns its standard output.
// A failure is an error that names the command and carries its standard error.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	n.logger().Debug("ran", "ns", n.Name, "cmd", name+" "+strings.Join(args, " "), "err", err)
	if err != nil {
		return stdout.String(), fmt.Errorf("running %s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name,
			err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustRun is Run that fails t on error.
func (n *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Sysctl sets the sysctl key (dotted form, e.g. "net.ipv4.ip_forward") to
// value in the namespace.
func (n *NS) Sysctl(ctx context.Context, key, value string) error {
	_, err := n.Run(ctx, "sysctl", "-q", "-w", key+"="+value)
	return err
}

// ReadSysctl returns the value of the sysctl key in the namespace. A key the
// kernel does not have is an error wrapping os.ErrNotExist.
func (n *NS) ReadSysctl(ctx context.Context, key string) (string, error) {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	out, err := n.Run(ctx, "sh", "-c", `test -e "$1" || exit 3; cat "$1"`, "sh", path)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 3 {
		return "", fmt.Errorf("reading sysctl %s in %s: %w", key, n.Name, os.ErrNotExist)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// PIDs returns the processes that live in the namespace.
func (n *NS) PIDs(ctx context.Context) ([]int, error) {
	out, err := runIP(ctx, "netns", "pids", n.Name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parsing pid %q of %s: %w", f, n.Name, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets that fn
// creates stay in the namespace after Do returns. fn must not start
// goroutines that expect to be in the namespace.
func (n *NS) Do(fn func() error) error { return namespace.Do(n.Name, fn) }

// DialContext connects to addr from inside the namespace.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := namespace.Dial(ctx, n.Name, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from %s: %w", network, addr, n.Name, err)
	}
	return c, nil
}

// Listen listens on addr inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	l, err := namespace.Listen(n.Name, network, addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in %s: %w", network, addr, n.Name, err)
	}
	return l, nil
}

// Proc is a process started in a namespace by Start. Its standard output and
// standard error go to LogPath. It is stopped in the test's cleanup.
type Proc struct {
	// Name is the program's base name, used in logs.
	Name string
	// LogPath is the file that receives the process's output.
	LogPath string
	// Cmd is the running command.
	Cmd *exec.Cmd

	done    chan struct{}
	waitErr error
	stop    sync.Once
	stopErr error
}

// Start starts name with args in the namespace in the background, with its
// output captured to a file in t.TempDir(). It fails t if the process cannot
// be started. The process (its whole process group) is stopped in t's
// cleanup; if t failed, the tail of its output is logged.
func (n *NS) Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	return n.StartEnv(t, nil, name, args...)
}

// StartEnv is Start with extra environment variables ("KEY=value").
func (n *NS) StartEnv(t testing.TB, env []string, name string, args ...string) *Proc {
	t.Helper()
	return n.start(t, filepath.Base(name), env, name, args...)
}

// start is StartEnv with the label used for the log file and messages.
func (n *NS) start(t testing.TB, base string, env []string, name string, args ...string) *Proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), base+"-*.log")
	if err != nil {
		t.Fatalf("creating log file for %s: %v", base, err)
	}
	defer logf.Close()
	argv := append([]string{"netns", "exec", n.Name, name}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s in %s: %v", base, n.Name, err)
	}
	p := &Proc{Name: base, LogPath: logf.Name(), Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	n.logger().Debug("started", "ns", n.Name, "cmd", name+" "+strings.Join(args, " "), "pid", cmd.Process.Pid, "log", p.LogPath)
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stopping %s: %v", base, err)
		}
		if t.Failed() {
			t.Logf("output of %s (%s):\n%s", base, p.LogPath, tail(p.Output(), 4096))
		}
	})
	return p
}

// PID returns the process id.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and if so its wait error.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Output returns what the process has written so far.
func (p *Proc) Output() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.LogPath, err)
	}
	return string(b)
}

// Stop sends SIGTERM to the process group, waits up to 5 s, then sends
// SIGKILL. It returns an error only if the process could not be stopped; an
// exit status caused by the signal is not an error. Stop is idempotent.
func (p *Proc) Stop() error {
	p.stop.Do(func() {
		if exited, _ := p.Exited(); exited {
			return
		}
		_ = killGroup(p.Cmd, syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(5 * time.Second):
		}
		_ = killGroup(p.Cmd, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.stopErr = fmt.Errorf("process %d (%s) did not exit after SIGKILL", p.PID(), p.Name)
		}
	})
	return p.stopErr
}

// killGroup signals the process group that cmd leads.
func killGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling process group %d: %w", cmd.Process.Pid, err)
	}
	return nil
}

// runIP runs the ip command in the root namespace (only for namespace
// management: add, del, pids, list, and link/addr commands with -n).
func runIP(ctx context.Context, args ...string) (string, error) {
	return runCmd(ctx, "ip", args...)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// runCmd runs a program in the current (root) namespace; only for reading
// state there, never for changing it.
func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("running %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
