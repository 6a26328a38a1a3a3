package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/lab/namespace"
)

// Prefix starts the name of every network namespace the lab creates:
// Prefix + "<pid>-<role>", where pid is the lab process that built it.
// Clean removes namespaces by this prefix.
const Prefix = "ftpalg-lab-"

// netNS is one named network namespace (`ip netns`).
type netNS struct {
	name string
}

func (n *netNS) String() string { return n.name }

// exec runs name with args in the namespace and returns its standard output.
// A failure is an error naming the command, with its standard error.
func (n *netNS) exec(ctx context.Context, name string, args ...string) (string, error) {
	return runCmd(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// iptables runs iptables (v6 false) or ip6tables with args in the
// namespace, waiting up to 5s for the xtables lock.
func (n *netNS) iptables(ctx context.Context, v6 bool, args ...string) (string, error) {
	return n.exec(ctx, xtables(v6), append([]string{"-w", "5"}, args...)...)
}

func xtables(v6 bool) string {
	if v6 {
		return "ip6tables"
	}
	return "iptables"
}

// do runs fn on an OS thread switched into the namespace. Sockets that fn
// creates stay in the namespace after do returns.
func (n *netNS) do(fn func() error) error { return namespace.Do(n.name, fn) }

// dial connects to addr from inside the namespace.
func (n *netNS) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return namespace.Dial(ctx, n.name, network, addr)
}

// listen listens on addr inside the namespace.
func (n *netNS) listen(network, addr string) (net.Listener, error) {
	return namespace.Listen(n.name, network, addr)
}

// sysctl sets the sysctls (dotted keys) in the namespace. A key that the
// kernel does not have is an error wrapping os.ErrNotExist.
func (n *netNS) sysctl(kv ...string) error {
	return n.do(func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(kv[i], ".", "/"))
			if err := os.WriteFile(p, []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("setting %s=%s in %s: %w", kv[i], kv[i+1], n.name, err)
			}
		}
		return nil
	})
}

// readSysctl returns the value of a sysctl (dotted key) in the namespace.
func (n *netNS) readSysctl(key string) (string, error) {
	var v string
	err := n.do(func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// runCmd runs a program and returns its standard output; an error carries
// its standard error.
func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("running %s %s: %w: %s", name, strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// listNamespaces returns the names `ip netns list` shows.
func listNamespaces(ctx context.Context) ([]string, error) {
	out, err := runCmd(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// namespacePIDs returns the processes living in the namespace name.
func namespacePIDs(ctx context.Context, name string) ([]int, error) {
	out, err := runCmd(ctx, "ip", "netns", "pids", name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parsing pid %q of %s: %w", f, name, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// removeNamespace kills the processes left in namespace name (only lab
// namespaces are ever passed here), waits for them to go and deletes it. A
// missing namespace is not an error.
func removeNamespace(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, Prefix) {
		return fmt.Errorf("refusing to remove namespace %s: not a lab namespace", name)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for {
		pids, err := namespacePIDs(ctx, name)
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
	if _, err := runCmd(ctx, "ip", "netns", "del", name); err != nil {
		return err
	}
	return nil
}
