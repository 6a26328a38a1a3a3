package alg

import (
	"net"
	"sync"
	"time"
)

// clientWriter writes to the client in the order the Machine decided. The
// Session queues (push) under the lock it holds around the Machine, so a
// reply and a refusal decided after it can never overtake it; after the
// lock is released the goroutine that queued writes the queue out (drain),
// unless another one is writing already, which then writes it too. So no
// lock is held across a write, nothing waits for a goroutine switch, and a
// client that does not read holds up only the goroutine writing to it.
type clientWriter struct {
	c net.Conn

	mu     sync.Mutex
	cond   *sync.Cond
	queue  [][]byte
	spare  [][]byte // a written queue, emptied, for the next push
	held   bool     // see hold: push queues in later
	later  [][]byte // pushed while held
	queued int      // bytes in queue
	busy   bool     // a goroutine is writing
	err    error
}

// maxQueued bounds what waits for a slow client before the reply path
// waits too (TCP backpressure, as when it wrote itself).
const maxQueued = 64 << 10

func newClientWriter(c net.Conn) *clientWriter {
	w := &clientWriter{c: c}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// push queues b. It does not block.
func (w *clientWriter) push(b []byte) {
	w.mu.Lock()
	if w.err == nil && w.held {
		w.later = append(w.later, b)
		w.queued += len(b)
	} else if w.err == nil {
		if w.queue == nil {
			w.queue, w.spare = w.spare, nil
		}
		w.queue = append(w.queue, b)
		w.queued += len(b)
	}
	w.mu.Unlock()
}

// drain writes what is queued, unless another goroutine is at it.
func (w *clientWriter) drain() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy {
		return
	}
	w.busy = true
	for len(w.queue) > 0 && w.err == nil {
		batch := w.queue
		w.queue = nil
		w.mu.Unlock()
		var err error
		for _, b := range batch {
			if _, err = w.c.Write(b); err != nil {
				break
			}
		}
		clear(batch) // the lines belong to their callers
		w.mu.Lock()
		if w.spare == nil {
			w.spare = batch[:0]
		}
		w.queued = 0
		for _, b := range w.queue {
			w.queued += len(b)
		}
		for _, b := range w.later {
			w.queued += len(b)
		}
		if err != nil && w.err == nil {
			// The client is gone or stuck: the session ends (its reader
			// fails on the closed conn).
			w.err = err
			w.queue, w.later, w.queued = nil, nil, 0
			w.c.Close()
		}
		w.cond.Broadcast()
	}
	w.busy = false
	w.cond.Broadcast()
}

// hold keeps what is pushed from now on until release; what was pushed
// before still goes out. The Session holds the client's writes from the
// 234 to AUTH TLS until the handshake is over: a line written in between
// would land in the middle of the handshake, in the clear.
func (w *clientWriter) hold() {
	w.mu.Lock()
	w.held = true
	w.mu.Unlock()
}

// release ends hold and writes what it kept.
func (w *clientWriter) release() {
	w.mu.Lock()
	w.held = false
	w.queue = append(w.queue, w.later...)
	w.later = nil
	w.mu.Unlock()
	w.drain()
}

// waitRoom waits while a slow client has more than maxQueued bytes queued.
func (w *clientWriter) waitRoom() {
	w.mu.Lock()
	for w.queued > maxQueued && w.err == nil {
		w.cond.Wait()
	}
	w.mu.Unlock()
}

// flush writes what is queued and waits until it is written (or failed);
// it returns the write error, if any.
func (w *clientWriter) flush() error {
	w.drain()
	w.mu.Lock()
	defer w.mu.Unlock()
	for (len(w.queue) > 0 || w.busy) && w.err == nil {
		w.cond.Wait()
		if !w.busy && len(w.queue) > 0 {
			w.mu.Unlock()
			w.drain()
			w.mu.Lock()
		}
	}
	return w.err
}

// last queues b, the reply that ends the session, and waits up to a second
// for it and what was queued before it to be written: a client that does
// not read does not hold the session up.
func (w *clientWriter) last(b []byte) {
	w.c.SetWriteDeadline(time.Now().Add(time.Second))
	w.push(b)
	w.flush()
}
