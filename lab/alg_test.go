package lab

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestEventLog(t *testing.T) {
	pr, pw := io.Pipe()
	l := newEventLog()
	done := make(chan struct{})
	go func() { l.consume(pr); close(done) }()
	ctx := context.Background()

	io.WriteString(pw, `{"time":"t","level":"INFO","msg":"ftpalg running","listen":"[::]:2121"}`+"\n")
	if _, err := l.wait(ctx, 0, 2*time.Second, func(e event) bool { return e.Msg == "ftpalg running" }); err != nil {
		t.Fatal(err)
	}
	mark := l.mark()
	if mark != 1 {
		t.Fatalf("mark = %d, want 1", mark)
	}
	go func() {
		io.WriteString(pw, "not json: a panic trace, say\n")
		io.WriteString(pw, `{"msg":"pinhole open","pinhole":"s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1","kind":"PASV","announced":"203.0.113.2:40000","rewritten":"203.0.113.2:40000"}`+"\n")
		io.WriteString(pw, `{"msg":"transfer","pinhole":"s1.p1","bytes_orig":120,"bytes_reply":2097152}`+"\n")
	}()
	ev, err := l.wait(ctx, mark, 2*time.Second, func(e event) bool { return e.Msg == "transfer" })
	if err != nil {
		t.Fatal(err)
	}
	if ev.pinholeID() != "s1.p1" || ev.num("bytes_reply") != 2097152 || ev.num("missing") != 0 || ev.str("missing") != "" {
		t.Errorf("transfer event %+v", ev.Attrs)
	}
	open := l.all(mark, "pinhole open")
	if len(open) != 1 || open[0].pinholeID() != "s1.p1" || open[0].str("kind") != "PASV" {
		t.Errorf("pinhole open events %+v", open)
	}
	// Waiting from a later mark does not see earlier lines.
	_, err = l.wait(ctx, l.mark(), 50*time.Millisecond, func(e event) bool { return e.Msg == "transfer" })
	if !errors.Is(err, errNoEvent) {
		t.Errorf("wait for an old line from a later mark: %v", err)
	}
	if tail := l.tail(10); !strings.Contains(tail, "not json") || !strings.Contains(tail, `"msg":"transfer"`) {
		t.Errorf("tail:\n%s", tail)
	}
	pw.Close()
	<-done
	if _, err := l.wait(ctx, l.mark(), time.Second, func(event) bool { return true }); !errors.Is(err, errNoEvent) ||
		!strings.Contains(err.Error(), "log ended") {
		t.Errorf("wait after the log ended: %v", err)
	}
}
