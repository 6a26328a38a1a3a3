package nftables

// The operator's iptables side: the iptables/ip6tables commands (legacy or
// nft variant, whichever the system's command is) that put and find the
// accept rules in the operator's INPUT and FORWARD chains, run inside the
// backend's network namespace.

import (
	"bytes"
	"fmt"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"

	nft "github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// inNS runs fn on a thread in the backend's network namespace. The thread
// is never unlocked, so Go discards it afterwards.
func (b *Backend) inNS(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(b.ns); err != nil {
			errc <- fmt.Errorf("entering the network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// run runs an iptables program in the backend's namespace; stderr is kept
// in the error.
func (b *Backend) run(prog string, args ...string) (string, error) {
	var out string
	err := b.inNS(func() error {
		full := append([]string{"-w", strconv.Itoa(int((b.lockWait + 999_999_999) / 1_000_000_000))}, args...)
		var stderr bytes.Buffer
		c := exec.Command(prog, full...)
		c.Stderr = &stderr
		o, err := c.Output()
		out = string(o)
		if err != nil {
			return fmt.Errorf("running %s %s: %w: %s", prog, strings.Join(full, " "), err, strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	return out, err
}

// iptChains returns, per iptables program present, the chains of its
// filter table that exist and should hold the accept rule, and the
// nftables families whose xtables-named tables that program manages.
func (b *Backend) iptChains() (map[string][]string, map[nft.TableFamily]bool, error) {
	chains := map[string][]string{}
	managed := map[nft.TableFamily]bool{}
	for _, x := range xtablesProgs {
		if _, err := exec.LookPath(x.prog); err != nil {
			continue
		}
		variant, err := b.variant(x.prog)
		if err != nil {
			return nil, nil, err
		}
		if variant != "nf_tables" {
			chains[x.prog] = []string{"INPUT", "FORWARD"}
			continue
		}
		managed[x.family] = true
		// iptables-nft: only chains that exist, never create the table.
		cs, err := b.conn.ListChainsOfTableFamily(x.family)
		if err != nil {
			return nil, nil, fmt.Errorf("listing %s chains: %w", familyName(x.family), err)
		}
		for _, c := range cs {
			if c.Table.Name == "filter" && (c.Name == "INPUT" || c.Name == "FORWARD") {
				chains[x.prog] = append(chains[x.prog], c.Name)
			}
		}
		slices.Sort(chains[x.prog])
		slices.Reverse(chains[x.prog]) // INPUT, FORWARD
	}
	return chains, managed, nil
}

// variant returns "nf_tables" or "legacy" for an iptables program,
// asking it once.
func (b *Backend) variant(prog string) (string, error) {
	b.mu.Lock()
	v, ok := b.variants[prog]
	b.mu.Unlock()
	if ok {
		return v, nil
	}
	out, err := exec.Command(prog, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w", prog, err)
	}
	v = "legacy"
	if strings.Contains(string(out), "nf_tables") {
		v = "nf_tables"
	}
	b.mu.Lock()
	if b.variants == nil {
		b.variants = map[string]string{}
	}
	b.variants[prog] = v
	b.mu.Unlock()
	return v, nil
}

// iptOwned returns the lines of "prog -S chain" that are ftpalg's.
func (b *Backend) iptOwned(prog, chain string) ([]string, error) {
	out, err := b.run(prog, "-t", "filter", "-S", chain)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") &&
			(strings.Contains(l, `--comment "`+commentAccept+`"`) || strings.Contains(l, "--comment "+commentAccept+" ")) {
			lines = append(lines, l)
		}
	}
	return lines, nil
}
