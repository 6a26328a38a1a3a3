package main

// sd_notify written out rather than imported (coreos/go-systemd): it is one
// datagram to $NOTIFY_SOCKET, and the watchdog a ticker; a dependency for
// thirty lines is not worth it.

import (
	"bufio"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sdNotify sends state to the service manager when ftpalg runs under
// systemd with Type=notify; otherwise it does nothing.
func sdNotify(log *slog.Logger, state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Warn("notifying systemd", "err", err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		log.Warn("notifying systemd", "err", err)
	}
}

// sdWatchdog pings the service manager at half its WatchdogSec while ftpalg
// runs; a hung ftpalg is then restarted (and its rules flushed by
// ExecStopPost). It returns the function that stops it.
func sdWatchdog(log *slog.Logger) (stop func()) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return func() {}
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return func() {}
	}
	t := time.NewTicker(time.Duration(usec) * time.Microsecond / 2)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-t.C:
				sdNotify(log, "WATCHDOG=1")
			case <-done:
				return
			}
		}
	}()
	return func() { t.Stop(); close(done) }
}

// Capability bits (linux/capability.h).
const (
	capNetBindService = 10
	capNetAdmin       = 12
)

// hasCap reports whether the process has capability bit in its effective set.
func hasCap(bit uint) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return true // cannot tell: let the operation itself fail
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return true
			}
			return n&(1<<bit) != 0
		}
	}
	return true
}

// syscallUmask sets the umask and returns the old one.
func syscallUmask(m int) int { return unix.Umask(m) }
