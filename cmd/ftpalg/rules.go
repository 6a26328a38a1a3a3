package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/ftpalg/ftpalg/rules/iptables"
)

func init() {
	register("rules", "list|flush the firewall rules ftpalg owns", rulesCmd)
}

func rulesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || (args[0] != "list" && args[0] != "flush") {
		return usagef("usage: ftpalg rules list|flush")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := iptables.Config{Log: log}
	if args[0] == "flush" {
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
	for _, r := range list {
		fmt.Fprintln(stdout, r)
	}
	return nil
}
