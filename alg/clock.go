package alg

import "time"

// Clock is the time source of a Session: the Machine's timers (pinhole TTL
// and grace, login and idle timeouts) run on it. Tests inject a fake one
// and move it on instead of sleeping.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed. Stop
	// cancels it and reports whether it did.
	AfterFunc(d time.Duration, f func()) interface{ Stop() bool }
}

// realClock is the system clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	return time.AfterFunc(d, f)
}
