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

// firewallLock is the held lock of one network namespace's firewall.
type firewallLock struct {
	f    *os.File
	path string
}

// lockFirewall takes the exclusive lock of this network namespace's
// firewall, so that two ftpalg processes never sweep or repair each other's
// rules. The kernel drops the lock when the process ends, kill -9 included.
// The caller holds it while it runs and closes it at exit, which also
// removes the lock file.
func lockFirewall() (*firewallLock, error) {
	path, err := lockPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", lockDir, err)
	}
	return lockAt(path)
}

// lockAt takes the lock file at path. A holder removes the file when it
// closes its lock, so a file opened just before that is no longer the one
// at path once it is locked: then lockAt tries again with the new file.
func lockAt(path string) (*firewallLock, error) {
	for range 10 {
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
		if !isFileAt(f, path) {
			f.Close() // its holder removed it: lock the new one
			continue
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, fmt.Errorf("writing %s: %w", path, err)
		}
		if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("writing %s: %w", path, err)
		}
		return &firewallLock{f: f, path: path}, nil
	}
	return nil, fmt.Errorf("locking %s: the file keeps being replaced", path)
}

// isFileAt reports whether f is the file that path names now.
func isFileAt(f *os.File, path string) bool {
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &now) != nil {
		return false
	}
	return held.Dev == now.Dev && held.Ino == now.Ino
}

// Close removes the lock file and releases the lock. The file goes first,
// while the lock is still held, so that no one can be holding a lock on a
// file about to vanish. Close is for the holder's exit; it is not safe to
// call twice.
func (l *firewallLock) Close() error {
	var errs []error
	if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", l.path, err))
	}
	if err := l.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("releasing %s: %w", l.path, err))
	}
	return errors.Join(errs...)
}

// lockPath names the lock of the current network namespace by its inode.
func lockPath() (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return "", fmt.Errorf("identifying the network namespace: %w", err)
	}
	return filepath.Join(lockDir, fmt.Sprintf("netns-%d.lock", st.Ino)), nil
}
