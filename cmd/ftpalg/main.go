// Command ftpalg is an FTP-aware firewall helper: a transparent proxy for the
// FTP control channel that opens exactly the announced data endpoint in the
// kernel firewall for a short time.
//
//	ftpalg run --mode gateway|reverse [flags]   run the ALG
//	ftpalg rules list|flush                     show or remove ftpalg's firewall rules
//	ftpalg lab                                  the demo: FTP through a strict firewall, with and without ftpalg
//	ftpalg inspect FILE                         analyse the FTP control sessions of a capture
//	ftpalg version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
)

func main() {
	os.Exit(mainErr(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one subcommand. Each lives in its own file and registers
// itself in init.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	commands[name] = command{summary, run}
}

func usage() string {
	var b strings.Builder
	b.WriteString("usage: ftpalg <command> [flags]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  %-9s %s\n", n, commands[n].summary)
	}
	b.WriteString("\n'ftpalg <command> -h' lists the flags of a command.\n")
	return b.String()
}

func init() {
	register("version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
		fmt.Fprintln(stdout, "ftpalg", version())
		return nil
	})
}

func mainErr(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	if a := args[0]; a == "-h" || a == "-help" || a == "--help" || a == "help" {
		fmt.Fprint(stdout, usage())
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "ftpalg: unknown command %q\n\n%s", args[0], usage())
		return 2
	}
	// SIGHUP too: a hung-up terminal must not kill ftpalg without removing
	// its rules (the interception would blackhole port 21).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	err := cmd.run(ctx, args[1:], stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	// A command may choose its exit status (inspect --fail-on-violation: 3).
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) {
		fmt.Fprintln(stderr, "ftpalg:", err)
		return ec.ExitCode()
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "ftpalg:", err)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "ftpalg:", err)
		return 1
	}
	return 0
}

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}
