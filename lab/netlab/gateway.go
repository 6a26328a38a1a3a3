package netlab

import (
	"errors"
	"fmt"
	"os"
)

// SetGateway makes gw a router for both families, turns on conntrack byte
// counters (ftpalg's per-transfer log line) and makes sure the kernel does
// not attach its FTP conntrack helper (nf_conntrack_ftp) to port 21 by
// itself: the automatic assignment (net.netfilter.nf_conntrack_helper,
// gone since Linux 6.0) must be absent or 0. Nothing here adds a CT
// --helper rule, so the helper never sees FTP.
func SetGateway(gw *NS) error {
	if err := gw.SetSysctls(
		"net.ipv4.ip_forward", "1",
		"net.ipv6.conf.all.forwarding", "1", "net.ipv6.conf.default.forwarding", "1",
		"net.netfilter.nf_conntrack_acct", "1",
	); err != nil {
		return err
	}
	const key = "net.netfilter.nf_conntrack_helper"
	v, err := gw.ReadSysctl(key)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if v != "0" {
		if err := gw.SetSysctls(key, "0"); err != nil {
			return fmt.Errorf("disabling automatic conntrack helpers: %w", err)
		}
	}
	return nil
}
