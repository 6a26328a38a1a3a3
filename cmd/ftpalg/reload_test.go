package main

import (
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadDuringStart: a SIGHUP that arrives while ftpalg starts is
// neither fatal nor dropped: the reload runs once ftpalg serves.
func TestReloadDuringStart(t *testing.T) {
	var logs syncBuffer
	d := &daemon{log: slog.New(slog.NewTextHandler(&logs, nil)), met: newMetrics(), serving: make(chan struct{})}
	stop := d.handleSignals(func() {})
	defer stop()
	waitLog := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logs.String(), what); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", what, logs.String())
			}
		}
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog("reload deferred")
	if strings.Contains(logs.String(), "nothing to reload") {
		t.Fatalf("reloaded before serving:\n%s", logs.String())
	}
	close(d.serving)
	// Without --config the reload says there is nothing to reload: it ran.
	waitLog("nothing to reload")
}
