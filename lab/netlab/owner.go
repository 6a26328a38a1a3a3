package netlab

import (
	"errors"
	"strconv"
	"strings"
	"syscall"
)

// Owned is a namespace whose name says which process made it: a name of
// the form prefix + "<pid>-...".
type Owned struct {
	// Name is the namespace's name.
	Name string
	// PID is the process that made it.
	PID int
}

// OwnerPID returns the pid encoded in a name made of prefix + "<pid>-...".
func OwnerPID(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// ListOwned returns the namespaces named prefix + "<pid>-...", in the
// order of List.
func ListOwned(prefix string) ([]Owned, error) {
	names, err := List()
	if err != nil {
		return nil, err
	}
	var out []Owned
	for _, name := range names {
		if pid, ok := OwnerPID(prefix, name); ok {
			out = append(out, Owned{Name: name, PID: pid})
		}
	}
	return out, nil
}

// Alive reports whether a process with this pid exists.
func Alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
