package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockDir holds one lock file per network namespace whose firewall an
// ftpalg manages.
const lockDir = "/run/ftpalg"

// errLocked says another ftpalg manages this namespace's firewall.
var errLocked = errors.New("another ftpalg manages this firewall")

// lockFirewall takes the exclusive lock of this network namespace's
// firewall, so that two ftpalg processes never sweep or repair each other's
// rules. The kernel drops the lock when the process ends, kill -9 included.
// The caller keeps the file open while it runs and closes it at exit.
func lockFirewall() (*os.File, error) {
	path, err := lockPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", lockDir, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (pid %s, lock %s); stop it first", errLocked, strings.TrimSpace(string(pid)), path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// lockPath names the lock of the current network namespace by its inode.
func lockPath() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return "", fmt.Errorf("identifying the network namespace: %w", err)
	}
	return filepath.Join(lockDir, fmt.Sprintf("netns-%d.lock", st.Ino)), nil
}
