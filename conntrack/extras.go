package conntrack

import (
	"bytes"
	"os"
)

// kernelExtras tells whether conntrack entries in the Watcher's namespace
// may hold more than an UPDATE event carries: counters
// (net.netfilter.nf_conntrack_acct) or a start time
// (net.netfilter.nf_conntrack_timestamp). When neither is on, the lookup
// at a close would read nothing the event did not say, so it is skipped:
// a netlink round trip and ~8 KiB of garbage per data connection. The
// sysctl files are opened in NewWatcher (a file under /proc/sys/net belongs
// to the namespace of the thread that opened it) and read again at every
// close, so a setting changed while ftpalg runs counts from the next close.
type kernelExtras struct {
	acct, timestamp *os.File // nil: could not be opened (then: assume on)
}

// openKernelExtras opens the two sysctl files of the calling thread's
// network namespace.
func openKernelExtras() *kernelExtras {
	k := &kernelExtras{}
	k.acct, _ = os.Open("/proc/sys/net/netfilter/nf_conntrack_acct")
	k.timestamp, _ = os.Open("/proc/sys/net/netfilter/nf_conntrack_timestamp")
	return k
}

// on reports whether either setting is on (or cannot be read).
func (k *kernelExtras) on() bool {
	return sysctlOn(k.acct) || sysctlOn(k.timestamp)
}

// sysctlOn reports whether the integer sysctl in f is not 0; an unreadable
// one counts as on.
func sysctlOn(f *os.File) bool {
	if f == nil {
		return true
	}
	var b [16]byte
	n, err := f.ReadAt(b[:], 0)
	if n == 0 && err != nil {
		return true
	}
	return !bytes.Equal(bytes.TrimSpace(b[:n]), []byte("0"))
}

func (k *kernelExtras) close() {
	for _, f := range []*os.File{k.acct, k.timestamp} {
		if f != nil {
			f.Close()
		}
	}
}
