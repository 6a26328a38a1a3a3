package rules

import (
	"context"
	"fmt"
	"sync"
)

// Call is one call recorded by Fake.
type Call struct {
	Op      string // "open" or "close"
	Pinhole Pinhole
}

func (c Call) String() string { return c.Op + " " + c.Pinhole.String() }

// Fake is an in-memory Backend that records every call and keeps the set of
// open pinholes. Its zero value is ready to use. It is used by the unit tests
// of alg and nat, and it validates every pinhole it is given as a real backend
// would.
type Fake struct {
	// OpenErr, when set, is returned by Open (and nothing is opened).
	OpenErr error

	mu    sync.Mutex
	calls []Call
	open  map[PinholeID]Pinhole
	// notify, when set, is called after each recorded call.
	notify func(Call)
}

// Open records the call and adds p to the open set.
func (f *Fake) Open(ctx context.Context, p Pinhole) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	if f.OpenErr != nil {
		f.mu.Unlock()
		return f.OpenErr
	}
	if f.open == nil {
		f.open = make(map[PinholeID]Pinhole)
	}
	if _, ok := f.open[p.ID]; ok {
		f.mu.Unlock()
		return fmt.Errorf("opening pinhole %v: already open", p)
	}
	f.open[p.ID] = p
	c := Call{"open", p}
	f.calls = append(f.calls, c)
	n := f.notify
	f.mu.Unlock()
	if n != nil {
		n(c)
	}
	return nil
}

// Close records the call (only when p was open) and removes p.
func (f *Fake) Close(ctx context.Context, p Pinhole) error {
	f.mu.Lock()
	if _, ok := f.open[p.ID]; !ok {
		f.mu.Unlock()
		return nil
	}
	delete(f.open, p.ID)
	c := Call{"close", p}
	f.calls = append(f.calls, c)
	n := f.notify
	f.mu.Unlock()
	if n != nil {
		n(c)
	}
	return nil
}

// Calls returns a copy of the calls recorded so far (closes of pinholes that
// were not open are not recorded).
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// OpenPinholes returns the pinholes open now.
func (f *Fake) OpenPinholes() []Pinhole {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Pinhole, 0, len(f.open))
	for _, p := range f.open {
		out = append(out, p)
	}
	return out
}

// OnCall sets a function called after every recorded call.
func (f *Fake) OnCall(fn func(Call)) {
	f.mu.Lock()
	f.notify = fn
	f.mu.Unlock()
}
