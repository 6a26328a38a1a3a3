package alg

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// closeAttempts is how often closing a pinhole is tried before the session
// gives up on it (and logs an error).
const closeAttempts = 3

// closeRetry is the wait before retry n (1, 2, ...) of a failed close.
func closeRetry(n int) time.Duration { return time.Duration(n) * 500 * time.Millisecond }

// closer closes one session's pinholes on a goroutine of its own, so that
// neither the reply path nor the client path waits for the backend (or
// sleeps between retries) to close one. Closes run in the order queued; a
// failed one is queued again after a pause without holding up the others.
//
// The pinhole a new announcement replaces is the exception: it is tried
// once on the goroutine that opens the new one (closeNow), before the new
// one is planned, so that it returns its pool port first and the backend
// sees the close before the open. Before a pinhole is planned, the Session
// also waits (barrier) until every close queued so far has been tried once.
// Neither ever waits for a retry.
type closer struct {
	backend  rules.Backend
	timeout  time.Duration
	log      *slog.Logger
	observer Observer

	mu       sync.Mutex
	cond     *sync.Cond
	queue    []closeJob
	untried  int // queued jobs not tried yet
	inflight int // jobs not finished (queued, being tried, or waiting to retry)
	stopped  bool
}

type closeJob struct {
	p       rules.Pinhole
	release func()
	reason  string
	attempt int
}

func newCloser(b rules.Backend, timeout time.Duration, log *slog.Logger, o Observer) *closer {
	c := &closer{backend: b, timeout: timeout, log: log, observer: o}
	c.cond = sync.NewCond(&c.mu)
	go c.run()
	return c
}

// close queues the close of p.
func (c *closer) close(p rules.Pinhole, release func(), reason string) {
	c.mu.Lock()
	c.queue = append(c.queue, closeJob{p: p, release: release, reason: reason})
	c.untried++
	c.inflight++
	c.cond.Broadcast()
	c.mu.Unlock()
}

// closeNow tries to close p on the calling goroutine: for the pinhole that
// a new announcement replaces, which must be closed before the new one is
// planned. A failure is retried on the closer's goroutine, after a pause;
// closeNow never waits for that.
func (c *closer) closeNow(p rules.Pinhole, release func(), reason string) {
	c.mu.Lock()
	c.inflight++
	c.mu.Unlock()
	if c.try(closeJob{p: p, release: release, reason: reason}) {
		c.mu.Lock()
		c.inflight--
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

// barrier waits until every close queued so far has been tried once. It
// helps: a close not taken up yet it tries itself, rather than wait for
// the closer's goroutine to be scheduled. It never waits for a retry.
func (c *closer) barrier() {
	c.mu.Lock()
	for c.untried > 0 {
		if len(c.queue) > 0 && c.queue[0].attempt == 0 {
			c.runOne()
			continue
		}
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// runOne takes the first queued job and tries it. c.mu is held (and
// released while the backend works).
func (c *closer) runOne() {
	j := c.queue[0]
	c.queue = c.queue[1:]
	c.mu.Unlock()
	done := c.try(j)
	c.mu.Lock()
	if j.attempt == 0 {
		c.untried--
	}
	if done {
		c.inflight--
	}
	c.cond.Broadcast()
}

// finish waits until every close has finished, retries included, and stops
// the goroutine.
func (c *closer) finish() {
	c.mu.Lock()
	for c.inflight > 0 {
		c.cond.Wait()
	}
	c.stopped = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *closer) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for len(c.queue) == 0 && !c.stopped {
			c.cond.Wait()
		}
		if len(c.queue) == 0 {
			return
		}
		c.runOne()
	}
}

// try makes one attempt at j. It reports whether j is finished; if not, a
// retry is queued after a pause.
func (c *closer) try(j closeJob) bool {
	// Not the session's context: a pinhole must close even when the
	// session is being cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	err := c.backend.Close(ctx, j.p)
	cancel()
	if err != nil && j.attempt+1 < closeAttempts {
		c.log.Warn("closing pinhole failed, retrying", "pinhole", j.p.ID.String(), "attempt", j.attempt+1, "err", err)
		j.attempt++
		time.AfterFunc(closeRetry(j.attempt), func() {
			c.mu.Lock()
			c.queue = append(c.queue, j)
			c.cond.Broadcast()
			c.mu.Unlock()
		})
		return false
	}
	if err != nil {
		// Its pool port stays taken: handing it out again while a stale
		// DNAT rule for it may remain would misroute the next transfer.
		c.log.Error("closing pinhole", "pinhole", j.p.String(), "reason", j.reason, "err", err)
	} else {
		if c.log.Enabled(context.Background(), slog.LevelInfo) {
			c.log.Info("pinhole closed", "pinhole", j.p.ID.String(), "reason", j.reason)
		}
		if j.release != nil {
			j.release()
		}
	}
	if c.observer != nil {
		c.observer.PinholeClosed(j.p, j.reason)
	}
	return true
}
