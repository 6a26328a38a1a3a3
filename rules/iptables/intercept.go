package iptables

// Intercepting port 21 (gateway mode).

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/ftpalg/ftpalg/rules"
)

// Intercept sends new TCP connections to port 21 that arrive on one of
// ifaces to the local listener on listenPort, for IPv4 and IPv6:
//
//	nat FTPALG-PREROUTING: -i IF -p tcp --dport 21 -j REDIRECT --to-ports listenPort
//	filter FTPALG-INPUT:   -i IF -p tcp --dport listenPort -m conntrack --ctstate DNAT --ctorigdstport 21 -j ACCEPT
//
// The ACCEPT lets only redirected connections reach the listener. A later
// call replaces the rules of the earlier one. It is all-or-nothing, and
// Setup must have run.
func (t *Backend) Intercept(ctx context.Context, ifaces []string, listenPort uint16) error {
	if err := rules.CheckIntercept(ifaces, listenPort); err != nil {
		return err
	}
	t.life.Lock()
	defer t.life.Unlock()
	t.mu.Lock()
	ready, cur := t.ready, t.intercept
	t.mu.Unlock()
	if !ready {
		return errors.New("intercepting FTP: iptables backend is not set up")
	}
	var want []rule
	for _, f := range t.families() {
		for _, ifc := range ifaces {
			want = append(want,
				rule{fam: f, table: "nat", chain: chainPrerouting, spec: []string{"-i", ifc, "-p", "tcp", "-m", "tcp", "--dport", portArg(ftpPort),
					"-m", "comment", "--comment", interceptNote, "-j", "REDIRECT", "--to-ports", portArg(listenPort)}},
				rule{fam: f, table: "filter", chain: chainInput, spec: []string{"-i", ifc, "-p", "tcp", "-m", "tcp", "--dport", portArg(listenPort),
					"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", portArg(ftpPort),
					"-m", "comment", "--comment", listenerNote, "-j", "ACCEPT"}})
		}
	}
	has := func(rs []rule, r rule) bool {
		return slices.ContainsFunc(rs, func(x rule) bool { return sameRule(x, r) })
	}
	var uniq []rule // an interface may be named twice
	for _, r := range want {
		if !has(uniq, r) {
			uniq = append(uniq, r)
		}
	}
	want = uniq
	var add, drop []rule
	for _, r := range want {
		if !has(cur, r) {
			add = append(add, r)
		}
	}
	for _, r := range cur {
		if !has(want, r) {
			drop = append(drop, r)
		}
	}
	if err := t.install(ctx, add); err != nil {
		return fmt.Errorf("intercepting FTP on %v: %w", ifaces, err)
	}
	left, err := remove(drop)
	// The wanted rules are all in; what could not be removed stays
	// recorded so that a later call or Teardown removes it.
	t.mu.Lock()
	for i, r := range want {
		if j := slices.IndexFunc(cur, func(x rule) bool { return sameRule(x, r) }); j >= 0 {
			want[i] = cur[j]
		} else {
			t.seq++
			want[i].seq = t.seq
		}
	}
	t.intercept = append(want, left...)
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("intercepting FTP on %v: removing previous rules: %w", ifaces, err)
	}
	t.log.Info("intercepting FTP", "interfaces", ifaces, "listen_port", listenPort)
	return nil
}

func sameRule(a, b rule) bool {
	return a.fam == b.fam && a.table == b.table && a.chain == b.chain && slices.Equal(a.spec, b.spec)
}
