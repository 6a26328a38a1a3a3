package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/lab"
)

func init() {
	register("lab", "demo: FTP through a strict firewall, without and with ftpalg (root)", labCmd)
}

func labCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ftpalg lab", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: ftpalg lab [--keep] [--capture FILE] [--color auto|always|never] [--size BYTES] [-v]
       ftpalg lab --clean

Builds a client, a gateway and a server in network namespaces (ftpalg-lab-*),
makes the gateway a strict firewall with NAT, and shows FTP failing without
ftpalg, then working through ftpalg in gateway mode (passive and active, IPv4
and IPv6) and reverse mode, with each announcement, rewrite, pinhole and
transfer. Needs root, iproute2 and iptables; no FTP server or client.
Exit status 0 only when every step did what it said.

flags:
`)
		printDefaults(fs)
	}
	keep := fs.Bool("keep", false, "leave the network up at the end and print how to use and remove it")
	clean := fs.Bool("clean", false, "remove lab networks left by earlier runs (--keep, or killed) and exit")
	capture := fs.String("capture", "", "record the gateway's inside and outside interfaces into this file (pcap; pcapng if it ends in .pcapng)")
	color := fs.String("color", "auto", "colour the story: auto (when stdout is a terminal and NO_COLOR is unset), always, never")
	size := fs.Int("size", 2<<20, "size in bytes of the file the client downloads")
	verbose := fs.Bool("v", false, "log the lab's own debug messages to stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("lab: unexpected arguments %q", fs.Args())
	}
	if *clean {
		if *keep || *capture != "" {
			return usagef("lab: --clean takes no other flag")
		}
		return lab.Clean(ctx, stdout)
	}
	if *size < 1 || *size > 256<<20 {
		return usagef("lab: --size %d: want 1 to %d bytes", *size, 256<<20)
	}
	useColor, err := colorOn(*color, stdout)
	if err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the ftpalg binary: %w", err)
	}
	cfg := lab.Config{
		Ftpalg:   bin,
		Out:      stdout,
		Color:    useColor,
		Keep:     *keep,
		Capture:  *capture,
		FileSize: *size,
	}
	if *verbose {
		cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	_, err = lab.Run(ctx, cfg)
	return err
}

// colorOn decides whether the story is coloured.
func colorOn(mode string, stdout io.Writer) (bool, error) {
	switch mode {
	case "always":
		return true, nil
	case "never":
		return false, nil
	case "auto":
		if os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
			return false, nil
		}
		return isTerminal(stdout), nil
	}
	return false, usagef("lab: --color %q: want auto, always or never", mode)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
