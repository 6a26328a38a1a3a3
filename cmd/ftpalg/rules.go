package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/ftpalg/ftpalg/rules/iptables"
	"github.com/ftpalg/ftpalg/rules/nftables"
)

func init() {
	register("rules", "list|flush the firewall state ftpalg owns (nftables and iptables)", rulesCmd)
}

func rulesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ftpalg rules", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: ftpalg rules list|flush

  list   print the firewall state ftpalg owns in this network namespace,
         one per line: table inet ftpalg with its pinholes (nftables), the
         chains and rules (iptables and ip6tables), the accept rules in the
         operator's chains
  flush  remove them all (refused while an ftpalg runs here: it would put
         them back). The systemd unit runs it after every stop.

Both need CAP_NET_ADMIN (root).
`)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || (fs.Arg(0) != "list" && fs.Arg(0) != "flush") {
		return usagef("rules: want list or flush (see 'ftpalg rules -h')")
	}
	if !hasCap(capNetAdmin) {
		return errors.New("rules: CAP_NET_ADMIN is missing: reading and changing the firewall needs root")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	quiet := slog.New(slog.DiscardHandler)
	haveNFT := nftables.Probe() == nil
	_, iptErr := iptables.New(iptables.Config{Log: quiet})
	haveIPT := iptErr == nil
	if !haveNFT && !haveIPT {
		return fmt.Errorf("rules: neither nftables nor iptables is usable here: %w", iptErr)
	}
	if fs.Arg(0) == "flush" {
		// A running ftpalg would put its rules back: refuse while it runs.
		lock, err := lockFirewall()
		if err != nil {
			return err
		}
		defer lock.Close()
		var errs []error
		if haveNFT {
			errs = append(errs, nftables.Flush(ctx, nftables.Config{Log: log}))
		}
		if haveIPT {
			errs = append(errs, iptables.Flush(ctx, iptables.Config{Log: log}))
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "ftpalg rules removed")
		return nil
	}
	var list []string
	if haveNFT {
		b, err := nftables.New(nftables.Config{Log: log})
		if err != nil {
			return err
		}
		defer b.Release()
		l, err := b.Rules(ctx)
		if err != nil {
			return err
		}
		list = append(list, l...)
	}
	if haveIPT {
		t, err := iptables.New(iptables.Config{Log: log})
		if err != nil {
			return err
		}
		l, err := t.Rules(ctx)
		if err != nil {
			return err
		}
		list = append(list, l...)
	}
	if len(list) == 0 {
		fmt.Fprintln(stdout, "no ftpalg rules installed")
		return nil
	}
	for _, r := range list {
		fmt.Fprintln(stdout, r)
	}
	return nil
}
