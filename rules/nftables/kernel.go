package nftables

import (
	"fmt"

	"strconv"
	"strings"

	nft "github.com/google/nftables"

	"golang.org/x/sys/unix"
)

// minKernel is the oldest kernel the backend works on: closing a pinhole
// is one batch of NFT_MSG_DESTROYSETELEM (Linux 6.3), which does not fail
// for an element the kernel already expired or consumed. Older kernels
// would open pinholes they cannot close; auto picks iptables there.
var minKernel = [2]int{6, 3}

// checkKernel reports whether the running kernel is new enough.
func checkKernel() error {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("reading the kernel version: %w", err)
	}
	return checkRelease(unix.ByteSliceToString(u.Release[:]))
}

// checkRelease checks a kernel release string such as "6.1.0-18-amd64".
func checkRelease(release string) error {
	major, minor, ok := parseRelease(release)
	if !ok {
		return fmt.Errorf("kernel release %q: cannot tell its version", release)
	}
	if major < minKernel[0] || major == minKernel[0] && minor < minKernel[1] {
		return fmt.Errorf("kernel %s is older than %d.%d (NFT_MSG_DESTROYSETELEM)", release, minKernel[0], minKernel[1])
	}
	return nil
}

// parseRelease reads "MAJOR.MINOR" from the start of a kernel release.
func parseRelease(release string) (major, minor int, ok bool) {
	a, rest, found := strings.Cut(release, ".")
	if !found {
		return 0, 0, false
	}
	end := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	digits := func(s string) bool {
		return s != "" && strings.Trim(s, "0123456789") == ""
	}
	if !digits(a) || !digits(rest[:end]) { // Atoi alone takes "-1" and "+6"
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(a)
	mnr, err2 := strconv.Atoi(rest[:end])
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return maj, mnr, true
}

// Probe reports whether nftables is usable here: the kernel is 6.3 or
// later and answers a listing of the nf_tables ruleset over netlink. It
// changes nothing.
func Probe() error {
	if err := checkKernel(); err != nil {
		return err
	}
	conn, err := nft.New()
	if err != nil {
		return fmt.Errorf("opening nftables netlink: %w", err)
	}
	if _, err := conn.ListTables(); err != nil {
		return fmt.Errorf("listing nftables tables: %w", err)
	}
	return nil
}
