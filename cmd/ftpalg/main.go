// Command ftpalg is an FTP-aware firewall helper: a transparent proxy for the
// FTP control channel that opens exactly the announced data endpoint in the
// kernel firewall for a short time.
//
//	ftpalg run --mode gateway|reverse [flags]   run the ALG
//	ftpalg rules list|flush                     show or remove ftpalg's firewall rules
//	ftpalg lab                                  the demo: FTP through a strict firewall, with and without ftpalg
//	ftpalg inspect FILE                         analyse the FTP control sessions of a capture
//	ftpalg status [--json]                      what a running ftpalg holds now
//	ftpalg version                              (also ftpalg --version)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"net"
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
	for n, c := range commands {
		if c.summary != "" { // hidden: manpage
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  %-9s %s\n", n, commands[n].summary)
	}
	b.WriteString("\n'ftpalg <command> -h' lists the flags of a command.\n")
	return b.String()
}

func init() {
	register("version", "print the version", func(_ context.Context, args []string, stdout, _ io.Writer) error {
		if len(args) > 0 {
			return usagef("version takes no arguments")
		}
		fmt.Fprintln(stdout, "ftpalg", version())
		return nil
	})
}

func mainErr(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	switch a := args[0]; a {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage())
		return 0
	case "-version", "--version", "-V":
		args[0] = "version"
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "ftpalg: unknown command %q (see 'ftpalg -h' for the commands)\n", args[0])
		return 2
	}
	// SIGHUP too: a hung-up terminal must not kill ftpalg without removing
	// its rules (the interception would blackhole port 21). `run` handles
	// its signals itself: SIGHUP reloads, a second SIGINT cuts the drain.
	sigs := []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP}
	if args[0] == "run" {
		sigs = sigs[:2]
	}
	ctx, stop := signal.NotifyContext(context.Background(), sigs...)
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

// parseFlags parses args with fs. Help (-h) goes to fs's output and returns
// flag.ErrHelp (exit 0); a bad flag is one line with a hint (exit 2), not
// the error and the usage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return flag.ErrHelp
	}
	if err != nil {
		hint := fmt.Sprintf("see '%s -h'", fs.Name())
		if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
			var names []string
			fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
			if near := nearest(strings.TrimPrefix(name, "-"), names); near != "" {
				hint = "did you mean --" + near + "?"
			}
		}
		return usagef("%s: %v (%s)", strings.TrimPrefix(fs.Name(), "ftpalg "), err, hint)
	}
	return nil
}

// buildVersion is set by `make deb` (-ldflags -X main.buildVersion=...).
var buildVersion string

func version() string {
	if buildVersion != "" {
		return buildVersion
	}
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
	return newHandlerLogger(w, format, lv)
}

func newHandlerLogger(w io.Writer, format string, lv slog.Leveler) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		// One unit for every duration: seconds, as a number.
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				return slog.Float64(a.Key, a.Value.Duration().Seconds())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

// newDaemonLogger logs to stderr, or to the local syslog socket (which
// journald reads) for --log-target syslog|journald.
func newDaemonLogger(stderr io.Writer, format, target string, lv slog.Leveler) (*slog.Logger, error) {
	w := stderr
	if target != "stderr" {
		sw, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "ftpalg")
		if err != nil {
			return nil, fmt.Errorf("opening syslog for --log-target %s: %w", target, err)
		}
		w = sw
	}
	return newHandlerLogger(w, format, lv)
}

func parseLevel(s string) slog.Level {
	var lv slog.Level
	lv.UnmarshalText([]byte(s)) // validated
	return lv
}

// listen is net.Listen with an error that does not repeat the address the
// caller names: "address already in use", not "listen tcp ADDR: bind:
// address already in use".
func listen(network, addr string) (net.Listener, error) {
	ln, err := net.Listen(network, addr)
	var oe *net.OpError
	if errors.As(err, &oe) {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return nil, se.Err
		}
		return nil, oe.Err
	}
	return ln, err
}
