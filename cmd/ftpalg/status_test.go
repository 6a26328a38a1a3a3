package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestStatusSocketStaleAndForeign: a socket a killed run left behind is
// replaced at the next start, and the new one is 0600; a path that is not a
// socket is refused and left alone.
func TestStatusSocketStaleAndForeign(t *testing.T) {
	dir := t.TempDir()
	newDaemon := func(path string) *daemon {
		return &daemon{cfg: Config{StatusSocket: path}, log: slog.New(slog.DiscardHandler), met: newMetrics()}
	}
	cleanup := func(d *daemon) {
		for i := len(d.cleanups) - 1; i >= 0; i-- {
			d.cleanups[i]()
		}
	}

	// A stale socket: bound, nobody listening, file left (as after kill -9).
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	d := newDaemon(stale)
	if err := d.listenStatus(context.Background()); err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	fi, err := os.Lstat(stale)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("status socket %v, %v; want a socket with mode 0600", fi.Mode(), err)
	}
	// A second daemon on the same socket is refused while the first answers.
	if err := newDaemon(stale).listenStatus(context.Background()); err == nil {
		t.Error("a second daemon took the socket of a running one")
	}
	cleanup(d)

	// A regular file (a mistyped path) is not removed.
	file := filepath.Join(dir, "ftpalg.toml")
	if err := os.WriteFile(file, []byte("mode = \"gateway\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d = newDaemon(file)
	if err := d.listenStatus(context.Background()); err == nil {
		cleanup(d)
		t.Fatal("a regular file was taken for the status socket")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "mode = \"gateway\"\n" {
		t.Errorf("the file under --status-socket was changed: %q, %v", b, err)
	}
}
