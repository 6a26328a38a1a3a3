package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/ftpalg/ftpalg/rules/iptables"
)

func init() {
	register("rules", "list|flush the firewall rules ftpalg owns", rulesCmd)
}

func rulesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ftpalg rules", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: ftpalg rules list|flush

  list   print the firewall rules and chains ftpalg owns in this network
         namespace (iptables and ip6tables), one per line
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
	cfg := iptables.Config{Log: log}
	if fs.Arg(0) == "flush" {
		// A running ftpalg would put its rules back: refuse while it runs.
		lock, err := lockFirewall()
		if err != nil {
			return err
		}
		defer lock.Close()
		if err := iptables.Flush(ctx, cfg); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "ftpalg rules removed")
		return nil
	}
	t, err := iptables.New(cfg)
	if err != nil {
		return err
	}
	list, err := t.Rules(ctx)
	if err != nil {
		return err
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
