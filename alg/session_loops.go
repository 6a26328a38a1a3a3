package alg

// The two reading loops of a Session.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/alg/ftps"
	"github.com/ftpalg/ftpalg/rules"
)

func (s *Session) clientToServer(ctx context.Context) error {
	lr := ftp.NewLineReader(s.Client, s.pol.MaxLine)
	for {
		line, err := lr.ReadLine()
		if err != nil {
			if acts := s.step(func(m *Machine) []Action { return m.ClientError(err) }); len(acts) > 0 {
				return s.perform(ctx, acts)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			return err
		}
		// Wait for room in the FIFO (TCP backpressure on the client).
		s.mu.Lock()
		for s.m.Full() && !s.m.Ended() {
			s.room.Wait()
		}
		if s.m.Ended() {
			s.mu.Unlock()
			return net.ErrClosed
		}
		s.mu.Unlock()
		now := s.clock.Now()
		acts := s.step(func(m *Machine) []Action { return m.ClientLine(now, line) })
		if err := s.perform(ctx, acts); err != nil {
			return err
		}
		for _, a := range acts {
			switch a.Kind {
			case ActHoldClient:
				if err := s.holdForAuth(ctx); err != nil {
					return err
				}
			case ActStartTLS:
				if err := s.startTLS(ctx, lr.Buffered()); err != nil {
					return err
				}
				lr = ftp.NewLineReader(s.Client, s.pol.MaxLine)
			}
		}
	}
}

// holdForAuth waits for the reply to an AUTH (TLS passthrough): after a 234
// the client speaks TLS, and the session relays bytes without looking.
func (s *Session) holdForAuth(ctx context.Context) error {
	select {
	case blind := <-s.authRes:
		if !blind {
			return nil
		}
	case <-s.srvDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	s.log.Warn("control channel encrypted: ALG is blind, no pinholes for this session", "what", "AUTH")
	_, err := io.Copy(s.Server, s.Client)
	return err
}

func (s *Session) serverToClient(ctx context.Context) error {
	defer close(s.srvDone)
	rr := ftp.NewReplyReader(s.Server, s.pol.MaxLine, s.pol.MaxReplyLines)
	for {
		r, err := rr.ReadReply()
		if err != nil {
			if acts := s.step(func(m *Machine) []Action { return m.ServerError(err) }); len(acts) > 0 {
				return s.perform(ctx, acts)
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			return err
		}
		s.mu.Lock()
		ph, wait := s.m.AwaitData(r)
		transfer := !r.Preliminary() && transferVerbs[s.m.Head()]
		s.mu.Unlock()
		if wait {
			if err := s.awaitData(ctx, ph); errors.Is(err, ftps.ErrNotResumed) {
				// The relay refused the data connection (and logged it):
				// the client gets the reason, not the server's reply to
				// a reset.
				r = notResumed
			}
		} else if transfer && s.refusedData() {
			r = notResumed
		}
		now := s.clock.Now()
		acts := s.step(func(m *Machine) []Action { return m.ServerReply(now, r) })
		if err := s.perform(ctx, acts); err != nil {
			return err
		}
		s.w.waitRoom()
		for _, a := range acts {
			if a.Kind == ActTLS && a.Blind {
				// Encrypted from here: the 234 goes out first, then bytes
				// flow unread. No login or idle to watch (the 230 is
				// inside TLS); the peers' own timeouts apply.
				if err := s.w.flush(); err != nil {
					return fmt.Errorf("writing to client: %w", err)
				}
				_, err := io.Copy(s.Client, s.Server)
				return err
			}
		}
	}
}

// awaitData holds the final reply of a transfer until a backend that
// carries the data connection itself (the relay) has connected it: a
// server may finish writing into the relay, and send 226, before the relay
// reached the client, and clients such as curl then fail.
func (s *Session) awaitData(ctx context.Context, p rules.Pinhole) error {
	c, ok := s.backend.(rules.Connector)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.pol.OpenTimeout)
	defer cancel()
	err := c.Connected(ctx, p)
	if err != nil && !errors.Is(err, ftps.ErrNotResumed) {
		s.log.Warn("data connection not relayed", "pinhole", p.ID.String(), "err", err)
	}
	return err
}
