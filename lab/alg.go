package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// event is one line of ftpalg's JSON log.
type event struct {
	// Msg is the log message ("pinhole open", "pinhole closed", ...).
	Msg string
	// Attrs are the line's attributes, including time, level and msg.
	Attrs map[string]any
}

// str returns attribute key as a string ("" if missing).
func (e event) str(key string) string {
	switch v := e.Attrs[key].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// num returns attribute key as a number (0 if missing).
func (e event) num(key string) float64 {
	if v, ok := e.Attrs[key].(float64); ok {
		return v
	}
	return 0
}

// pinholeID returns the pinhole ID of a "pinhole open" event (its pinhole
// attribute is "ID tcp SRC -> DST ...") or of the other pinhole events
// (just the ID).
func (e event) pinholeID() string {
	id, _, _ := strings.Cut(e.str("pinhole"), " ")
	return id
}

// eventLog collects ftpalg's log lines and lets callers wait for one.
type eventLog struct {
	mu      sync.Mutex
	events  []event
	other   []string // lines that are not JSON (kept for error messages)
	changed chan struct{}
	closed  bool
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

// consume reads log lines from r until it ends.
func (l *eventLog) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var attrs map[string]any
		l.mu.Lock()
		if err := json.Unmarshal([]byte(line), &attrs); err != nil {
			l.other = append(l.other, line)
		} else {
			msg, _ := attrs["msg"].(string)
			l.events = append(l.events, event{Msg: msg, Attrs: attrs})
		}
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.closed = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// mark returns the number of events so far: wait(from=mark) sees only
// later ones.
func (l *eventLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// errNoEvent is returned by wait when the log ended or the time ran out.
var errNoEvent = errors.New("no such log line")

// wait returns the first event at index from or later for which match is
// true, waiting up to timeout.
func (l *eventLog) wait(ctx context.Context, from int, timeout time.Duration, match func(event) bool) (event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		l.mu.Lock()
		for i := from; i < len(l.events); i++ {
			if match(l.events[i]) {
				e := l.events[i]
				l.mu.Unlock()
				return e, nil
			}
		}
		from = len(l.events)
		ch, closed := l.changed, l.closed
		l.mu.Unlock()
		if closed {
			return event{}, fmt.Errorf("%w: ftpalg's log ended", errNoEvent)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return event{}, fmt.Errorf("%w after %v: %w", errNoEvent, timeout, ctx.Err())
		}
	}
}

// all returns the events from index from on with message msg.
func (l *eventLog) all(from int, msg string) []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []event
	for i := from; i < len(l.events); i++ {
		if l.events[i].Msg == msg {
			out = append(out, l.events[i])
		}
	}
	return out
}

// tail returns the last n log lines, for error messages.
func (l *eventLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lines []string
	for _, e := range l.events {
		b, _ := json.Marshal(e.Attrs)
		lines = append(lines, string(b))
	}
	lines = append(lines, l.other...)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// algProc is ftpalg running as a child process in the gateway namespace.
type algProc struct {
	cmd  *exec.Cmd
	log  *eventLog
	args []string
	done chan struct{}
	err  error // Wait's result, valid after done
}

// startALG runs `bin run ARGS --log-format json` in ns and waits until it
// logs that it is running. The child has its own process group, so that a
// Ctrl-C in the terminal reaches the lab, which then stops it in order.
func startALG(ctx context.Context, ns *netlab.NS, bin string, args ...string) (*algProc, error) {
	args = append(append([]string{"run"}, args...), "--log-format", "json")
	// Never cancelled: stop ends it, in order.
	cmd := ns.Command(context.Background(), bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("starting ftpalg: %w", err)
	}
	a := &algProc{cmd: cmd, log: newEventLog(), args: args, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting ftpalg: %w", err)
	}
	go func() {
		a.log.consume(stderr)
		a.err = cmd.Wait()
		close(a.done)
	}()
	if _, err := a.log.wait(ctx, 0, 15*time.Second, func(e event) bool { return e.Msg == "ftpalg running" }); err != nil {
		a.stop()
		return nil, fmt.Errorf("ftpalg %s did not start: %w\n%s", strings.Join(args, " "), err, a.log.tail(20))
	}
	return a, nil
}

// exited reports whether the process has ended.
func (a *algProc) exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process (not its group), waits up to 10s for
// it to remove its rules and exit, then kills it. It returns an error if
// ftpalg did not exit cleanly.
func (a *algProc) stop() error {
	if a.exited() {
		return a.exitErr()
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return a.exitErr()
	case <-time.After(10 * time.Second):
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	return fmt.Errorf("ftpalg did not exit within 10s of SIGTERM and was killed")
}

func (a *algProc) exitErr() error {
	if a.err != nil {
		return fmt.Errorf("ftpalg exited: %w\n%s", a.err, a.log.tail(10))
	}
	return nil
}
