package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/inspect"
	"github.com/ftpalg/ftpalg/nat"
)

func init() {
	register("inspect", "show what ftpalg would do with the FTP sessions in a pcap/pcapng capture", inspectCmd)
}

// exitViolations is the exit status of `inspect --fail-on-violation` when
// the capture shows policy violations.
const exitViolations = 3

// violationsError reports violations found with --fail-on-violation. Its
// ExitCode is the process exit status.
type violationsError struct{ n int }

func (e violationsError) Error() string {
	return fmt.Sprintf("inspect: %d policy violations in the capture", e.n)
}

// ExitCode is the status the process should exit with.
func (violationsError) ExitCode() int { return exitViolations }

const inspectUsage = `usage: ftpalg inspect [flags] FILE

Reads a pcap or pcapng capture (FILE, or - for standard input), reassembles
the FTP control connections in it and checks them with ftpalg's codec and
policy: per session the commands and replies, each data-channel announcement
with the pinhole ftpalg would open for it (planned as in gateway mode at the
capture point, without NAT), and every policy violation.

Exit status: 0 the capture was read (violations or not), 1 it could not be
read, 2 usage error; with --fail-on-violation, 3 when violations were found.

flags:
`

func inspectCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ftpalg inspect", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), inspectUsage)
		printDefaults(fs)
	}
	def := alg.DefaultPolicy()
	jsonOut := fs.Bool("json", false, "write the report as JSON (schema "+inspect.Schema+", see the alg/inspect package doc)")
	ports := fs.String("ports", "", "more FTP control ports besides 21, comma-separated (e.g. 2121,8021)")
	dataPorts := fs.String("data-ports", "40000-40999", "pool of data ports ftpalg would translate active mode to (LO-HI)")
	minDataPort := fs.Uint("min-data-port", uint(def.MinDataPort), "data ports below this are refused")
	maxLine := fs.Int("max-line", def.MaxLine, "longest command or reply line ftpalg accepts, terminator included")
	allowTLS := fs.Bool("allow-tls", false, "check against a policy that lets AUTH TLS through")
	failOnViolation := fs.Bool("fail-on-violation", false, "exit with status 3 when the capture shows violations")
	// Flags may follow the file name: ftpalg inspect x.pcap --json.
	var files []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) != 1 {
		return usagef("inspect: want one capture file, got %d (see ftpalg inspect -h)", len(files))
	}
	opts := inspect.Options{Ports: []uint16{21}}
	for _, p := range splitList(*ports) {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return usagef("--ports: %q is not a TCP port", p)
		}
		opts.Ports = append(opts.Ports, uint16(n))
	}
	lo, hi, err := nat.ParseRange(*dataPorts)
	if err != nil {
		return usagef("--data-ports: %v", err)
	}
	if *minDataPort > 65535 {
		return usagef("--min-data-port %d out of range", *minDataPort)
	}
	opts.DataPortLo, opts.DataPortHi = lo, hi
	opts.Policy = def
	opts.Policy.MinDataPort = uint16(*minDataPort)
	opts.Policy.MaxLine = *maxLine
	opts.Policy.AllowTLS = *allowTLS
	if err := opts.Policy.Validate(); err != nil {
		return usagef("%v", err)
	}
	opts.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	in := io.Reader(os.Stdin)
	name := "standard input"
	if files[0] != "-" {
		f, err := os.Open(files[0])
		if err != nil {
			return fmt.Errorf("inspect: %w", err)
		}
		defer f.Close()
		in, name = f, files[0]
	}
	rep, err := inspect.Inspect(ctx, in, opts)
	if err != nil {
		return fmt.Errorf("inspect: reading %s: %w", name, err)
	}
	if *jsonOut {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	if n := rep.Violations(); *failOnViolation && n > 0 {
		return violationsError{n}
	}
	return nil
}
