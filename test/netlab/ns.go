package netlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	labnet "github.com/ftpalg/ftpalg/lab/netlab"
)

// NS is one named network namespace (a host of a topology): the shared
// lab/netlab namespace (Do, DialContext, Listen, Command, Run) with the
// host's role and the harness's helpers.
type NS struct {
	labnet.NS
	// Role is the host's part in the topology: "client", "gw", "server",
	// "other" or "switch".
	Role string
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
func (n *NS) Sysctl(_ context.Context, key, value string) error {
	return n.SetSysctls(key, value)
}

// ReadSysctl returns the value of the sysctl key in the namespace. A key the
// kernel does not have is an error wrapping os.ErrNotExist.
func (n *NS) ReadSysctl(_ context.Context, key string) (string, error) {
	return n.NS.ReadSysctl(key)
}

// PIDs returns the processes that live in the namespace.
func (n *NS) PIDs(_ context.Context) ([]int, error) { return n.NS.PIDs() }

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
	// Never cancelled: Stop ends it. Its own process group, so that Stop
	// reaches what it forks.
	cmd := n.Command(context.Background(), name, args...)
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
	n.Logger().Debug("started", "ns", n.Name, "cmd", name+" "+strings.Join(args, " "), "pid", cmd.Process.Pid, "log", p.LogPath)
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
		_ = labnet.KillGroup(p.Cmd, syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(5 * time.Second):
		}
		_ = labnet.KillGroup(p.Cmd, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.stopErr = fmt.Errorf("process %d (%s) did not exit after SIGKILL", p.PID(), p.Name)
		}
	})
	return p.stopErr
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
