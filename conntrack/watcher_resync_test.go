package conntrack

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TestWatcherResyncCoalesced checks that lost events start a resync at
// once, but the overflows that follow within resyncEvery wait for it to
// pass and take one resync together.
func TestWatcherResyncCoalesced(t *testing.T) {
	const every = 300 * time.Millisecond
	var logBuf bytes.Buffer // written by the dispatcher, read after it ends
	dumped := make(chan time.Time, 10)
	w := &Watcher{
		log:         slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		t:           newTracker(0),
		resyncEvery: every,
	}
	w.lookup = func(Flow) (snapshot, error) { return snapshot{}, unix.ENOENT }
	w.dump = func() ([]ct.Flow, error) {
		dumped <- w.lastResync
		return nil, nil
	}
	items := make(chan item, 10)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		w.dispatchAll(ctx, items)
		close(done)
	}()
	stop := sync.OnceFunc(func() {
		cancel()
		close(items)
		<-done
	})
	defer stop()

	waitDump := func(within time.Duration) time.Time {
		t.Helper()
		select {
		case at := <-dumped:
			return at
		case <-time.After(within):
			t.Fatalf("no resync within %v", within)
			return time.Time{}
		}
	}
	w.overflowed(items)
	first := waitDump(5 * time.Second)
	for range 3 {
		w.overflowed(items)
	}
	if n := len(items); n > 1 {
		t.Errorf("%d lost-events items queued for 3 overflows, want at most 1", n)
	}
	second := waitDump(5 * time.Second)
	if d := second.Sub(first); d < every {
		t.Errorf("second resync %v after the first, want at least %v", d, every)
	}
	select {
	case <-dumped:
		t.Error("a third resync")
	case <-time.After(2 * every):
	}

	stop()
	log := logBuf.String()
	if c := strings.Count(log, "resynchronized after lost events"); c != 2 {
		t.Errorf("%d resyncs logged, want 2:\n%s", c, log)
	}
	if !strings.Contains(log, "overflows=1 ") || !strings.Contains(log, "overflows=3 ") {
		t.Errorf("log does not count 1, then 3 overflows:\n%s", log)
	}
	if c := strings.Count(log, "event socket overflowed"); c != 2 {
		t.Errorf("overflow warned %d times, want 2:\n%s", c, log)
	}
}
