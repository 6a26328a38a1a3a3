package alg

// Opening pinholes in a Session: planning, the backend's Open, and the
// first use reported from outside (conntrack).

import (
	"context"
	"log/slog"

	"github.com/ftpalg/ftpalg/rules"
)

// open plans op, opens its pinhole and performs what the Machine decides
// then: the announcement goes out only once the pinhole is live.
func (s *Session) open(ctx context.Context, op *Opening) error {
	// The pinhole op replaces is closed first (once tried): its pool
	// port is free again for op, and the backend sees the close first.
	s.closer.barrier()
	ctx, cancel := context.WithTimeout(ctx, s.pol.OpenTimeout)
	defer cancel()
	plan, err := s.Planner.Plan(ctx, s.ep, op.Announcement)
	acts := s.step(func(m *Machine) []Action { return m.Planned(op, plan, err) })
	var open *Action
	for i := range acts {
		if acts[i].Kind == ActOpen {
			open = &acts[i]
		}
	}
	if open == nil {
		return s.perform(ctx, acts)
	}
	p := open.Pinhole
	if s.Observer != nil {
		s.Observer.PinholeOpening(p)
	}
	if err := s.backend.Open(ctx, p); err != nil {
		s.log.Error("opening pinhole", "pinhole", p.String(), "err", err)
		return s.perform(ctx, s.step(func(m *Machine) []Action { return m.OpenFailed(op, err) }))
	}
	// Logged before the announcement is released: a peer that reads the
	// rewritten line may look for this line at once.
	if s.log.Enabled(ctx, slog.LevelInfo) { // the strings cost more than the rest of the reply path
		s.log.Info("pinhole open", "pinhole", p.String(), "kind", op.Announcement.Kind.String(),
			"announced", op.Announcement.Addr.String(), "rewritten", op.Plan.Announce.String())
	}
	now := s.clock.Now()
	acts = s.step(func(m *Machine) []Action { return m.Opened(op, now) })
	return s.perform(ctx, acts)
}

// PinholeUsed tells the session that the data connection of pinhole id was
// seen (e.g. in conntrack): it is closed at once. It does not block: the
// close is queued.
func (s *Session) PinholeUsed(id rules.PinholeID) {
	s.mu.Lock()
	running := s.m != nil
	s.mu.Unlock()
	if !running {
		return
	}
	s.perform(context.Background(), s.step(func(m *Machine) []Action { return m.PinholeUsed(id) }))
}
