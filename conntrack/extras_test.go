package conntrack

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/ftpalg/ftpalg/rules"
)

// TestWatcherCloseNeedsLookup: a flow's close reads the entry (counters, start
// time) while nf_conntrack_acct or nf_conntrack_timestamp is on, or cannot
// be read; with both off it ends at the close without the lookup, as
// before with the counters of an entry that kept none. A change of the
// settings counts from the next close.
func TestWatcherCloseNeedsLookup(t *testing.T) {
	const c, s = "192.0.2.1:51000", "192.0.2.2:40000"
	dir := t.TempDir()
	sysctl := func(name, v string) *os.File {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	set := func(f *os.File, v string) {
		if err := os.WriteFile(f.Name(), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	acct, ts := sysctl("acct", "0"), sysctl("timestamp", "0")

	for i, tc := range []struct {
		name          string
		extras        *kernelExtras
		acct, ts      string
		lookup, count bool
	}{
		{"both off", &kernelExtras{acct: acct, timestamp: ts}, "0", "0", false, false},
		{"acct on", &kernelExtras{acct: acct, timestamp: ts}, "1", "0", true, true},
		{"timestamp on", &kernelExtras{acct: acct, timestamp: ts}, "0", "1", true, true},
		{"off again", &kernelExtras{acct: acct, timestamp: ts}, "0", "0", false, false},
		{"unreadable", &kernelExtras{acct: nil, timestamp: ts}, "0", "0", true, true},
		{"not set", nil, "0", "0", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set(acct, tc.acct)
			set(ts, tc.ts)
			var lookups int
			var ends []FlowEnd
			w := &Watcher{log: slog.New(slog.NewTextHandler(io.Discard, nil)), t: newTracker(0), extras: tc.extras}
			w.lookup = func(f Flow) (snapshot, error) {
				lookups++
				return snapshot{id: f.ID, orig: f.Orig, reply: f.Reply, state: tcpTimeWait,
					counted: true, origBytes: 300, replyBytes: 400}, nil
			}
			w.onEnd = func(_ rules.PinholeID, f FlowEnd) { ends = append(ends, f) }
			w.Expect(pid("p"), Match{Src: addr("192.0.2.1"), Dst: ap(s)})
			id := uint32(10 + i)
			for _, ev := range []testEvent{newEvent(c, s, id), updateEvent(c, s, id, tcpTimeWait)} {
				m := ev.message(t)
				it, ok := w.decode(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data, t0)
				if !ok {
					t.Fatalf("event %+v not admitted", ev)
				}
				w.dispatch(it, nil)
			}
			if (lookups == 1) != tc.lookup || lookups > 1 {
				t.Errorf("%d lookups, want lookup = %v", lookups, tc.lookup)
			}
			if len(ends) != 1 || !ends[0].End.Equal(t0) || ends[0].Counted != tc.count || ends[0].Reset {
				t.Fatalf("ends = %+v, want one at the close, counted = %v", ends, tc.count)
			}
			if len(w.t.ids) != 0 {
				t.Errorf("left ids %v", w.t.ids)
			}
		})
	}
}
