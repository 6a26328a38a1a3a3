package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/rules"
)

// The relay backend.
//
// Without CAP_NET_ADMIN (a sidecar beside an FTP server, an unprivileged
// user) there is no firewall to open. The relay makes a pinhole live in
// userspace instead: Open listens on the pinhole's Dst, an address and port
// of this host, accepts the one expected data connection from Src and
// relays it to the pinhole's DNAT endpoint, dialling from the SNAT address
// when one is set. The data passes through the process, but on Linux the
// copy between the two TCP sockets is done by splice(2), without copying
// the bytes through userspace.

const (
	// defaultRelayDialTimeout bounds the dial to the target.
	defaultRelayDialTimeout = 10 * time.Second
	// maxRefusalLogs is how many refused connections of one pinhole are
	// logged one by one; the rest are counted in one line at the end.
	maxRefusalLogs = 5
)

// errRelayShutDown is returned by Open after Shutdown.
var errRelayShutDown = errors.New("relay is shut down")

// Config configures the relay backend. The zero value is usable.
type Config struct {
	// Log receives pinhole and transfer events. If nil, slog.Default.
	Log *slog.Logger
	// DialTimeout bounds the connection to the target. Zero means 10s.
	DialTimeout time.Duration
	// Listen opens the listener of a pinhole; network is "tcp4" or
	// "tcp6", addr the pinhole's Dst. If nil, net.Listen. Listeners that
	// return *net.TCPConn keep the zero-copy path.
	Listen func(network, addr string) (net.Listener, error)
}

// Backend is the Backend that makes pinholes live without any firewall
// change, for deployments without CAP_NET_ADMIN: Open listens on the
// pinhole's Dst and relays the one connection from Src to the pinhole's
// DNAT endpoint (the real peer), bound to the SNAT address when one is set.
//
// Typical usage:
//
//	r := rules.New(rules.Config{Log: log})
//	defer r.Shutdown(shutdownCtx)
//	err := r.Open(ctx, p)  // listening on p.Dst when it returns
//	...
//	err = r.Close(ctx, p)  // the pinhole goes, a relayed transfer goes on
//
// A pinhole is single use: the listener closes when the expected peer has
// connected, when Close is called, or when p.TTL expires (a backstop; the
// session enforces the TTL itself). A connection from any other address is
// closed at once (reset) and logged, and the pinhole keeps waiting for the
// right peer. As with a firewall pinhole whose flow continues under
// conntrack, Close does not cut a transfer already relayed, and a
// connection accepted before Close (even by a hair) is relayed.
//
// Every method is safe for concurrent use.
type Backend struct {
	log         *slog.Logger
	dialTimeout time.Duration
	listen      func(network, addr string) (net.Listener, error)

	// ctx is cancelled when Shutdown stops waiting for the transfers; it
	// aborts dials in progress.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the accept loops and the transfers.
	wg sync.WaitGroup

	mu        sync.Mutex // guards the fields below; never held while waiting
	shutDown  bool
	holes     map[rules.PinholeID]*relayHole // pinholes still listening, by ID
	transfers map[*relayTransfer]struct{}
	waits     map[rules.PinholeID]*relayWait // pinholes whose data connection is not settled yet
}

// relayWait tells Connected when the data connection of a pinhole reached
// its target, or will not.
type relayWait struct {
	done chan struct{}
	err  error
}

// errRelayUnused is Connected's answer for a pinhole closed before its
// peer connected.
var errRelayUnused = errors.New("pinhole closed unused")

var _ rules.Connector = (*Backend)(nil)

// Connected waits until the connection accepted on pinhole p has been
// relayed to its target (nil), the dial failed, or p closed unused. A
// pinhole the relay does not know (long finished) returns nil at once.
func (r *Backend) Connected(ctx context.Context, p rules.Pinhole) error {
	r.mu.Lock()
	w := r.waits[p.ID]
	r.mu.Unlock()
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
		return w.err
	default:
	}
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for the data connection of %v: %w", p, ctx.Err())
	}
}

// settle ends the wait of pinhole id with err. A refused TLS data
// connection is remembered for a while: the session asks only when the
// transfer's final reply comes, after the refusal.
func (r *Backend) settle(id rules.PinholeID, err error) {
	r.mu.Lock()
	w := r.waits[id]
	keep := w != nil && err != nil && !errors.Is(err, errRelayUnused) && !errors.Is(err, errRelayShutDown)
	if !keep {
		delete(r.waits, id)
	}
	r.mu.Unlock()
	if w == nil {
		return
	}
	w.err = err
	close(w.done)
	if keep {
		time.AfterFunc(settledRetention, func() {
			r.mu.Lock()
			if r.waits[id] == w {
				delete(r.waits, id)
			}
			r.mu.Unlock()
		})
	}
}

// settledRetention is how long Connected still reports a failed data
// connection after the fact.
const settledRetention = time.Minute

var _ rules.Backend = (*Backend)(nil)

// relayHole is one pinhole waiting for its connection.
type relayHole struct {
	p     rules.Pinhole
	ln    net.Listener
	timer *time.Timer   // the TTL backstop; nil without TTL
	done  chan struct{} // closed when the accept loop has returned
}

// relayTransfer is one relayed connection, from the accept of the peer
// until both directions have ended.
type relayTransfer struct {
	p    rules.Pinhole
	peer net.Conn

	mu     sync.Mutex
	target net.Conn // nil while dialling
	killed bool     // Shutdown cut the transfer
}

// New returns a relay backend. It opens nothing until Open.
func New(cfg Config) *Backend {
	r := &Backend{
		log:         cfg.Log,
		dialTimeout: cfg.DialTimeout,
		listen:      cfg.Listen,
		holes:       make(map[rules.PinholeID]*relayHole),
		transfers:   make(map[*relayTransfer]struct{}),
		waits:       make(map[rules.PinholeID]*relayWait),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.dialTimeout <= 0 {
		r.dialTimeout = defaultRelayDialTimeout
	}
	if r.listen == nil {
		r.listen = net.Listen
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r
}

// Open listens on p.Dst for the connection from p.Src and relays it to
// p.DNAT, which must be set (it is the real endpoint). It returns once the
// listener is bound; a bind failure (port in use, address not local) is an
// error wrapping the cause.
func (r *Backend) Open(ctx context.Context, p rules.Pinhole) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("opening pinhole %v: %w", p, err)
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if !p.DNAT.IsValid() {
		return fmt.Errorf("opening pinhole %v: the relay needs a DNAT target", p)
	}
	if p.DNAT == p.Dst {
		return fmt.Errorf("opening pinhole %v: DNAT target is the listening address", p)
	}
	network := "tcp4"
	if p.Is6() {
		network = "tcp6"
	}

	// The lock is held across the bind (one quick system call) so that a
	// duplicate ID or a concurrent Shutdown cannot slip in between.
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutDown {
		return fmt.Errorf("opening pinhole %v: %w", p, errRelayShutDown)
	}
	if _, ok := r.holes[p.ID]; ok {
		return fmt.Errorf("opening pinhole %v: already open", p)
	}
	ln, err := r.listen(network, p.Dst.String())
	if err != nil {
		return fmt.Errorf("opening pinhole %v: %w", p, err)
	}
	h := &relayHole{p: p, ln: ln, done: make(chan struct{})}
	r.holes[p.ID] = h
	r.waits[p.ID] = &relayWait{done: make(chan struct{})}
	if p.TTL > 0 {
		h.timer = time.AfterFunc(p.TTL, func() {
			if r.retire(h) {
				r.log.Info("relay pinhole expired unused", "session", p.Session(), "pinhole", p.String(), "ttl", p.TTL)
			}
		})
	}
	r.wg.Add(1)
	go r.acceptLoop(h)
	r.log.Debug("pinhole opened", "session", p.Session(), "pinhole", p.String(), "backend", "relay")
	return nil
}

// Close closes the listener of p if its connection has not come yet. It
// is idempotent and does not cut a transfer already relayed through p.
func (r *Backend) Close(ctx context.Context, p rules.Pinhole) error {
	r.mu.Lock()
	h := r.holes[p.ID]
	r.mu.Unlock()
	if h == nil || !r.retire(h) {
		return nil
	}
	select {
	case <-h.done:
	case <-ctx.Done():
		return fmt.Errorf("closing pinhole %v: %w", p, ctx.Err())
	}
	r.log.Debug("pinhole closed", "session", p.Session(), "pinhole", p.String(), "backend", "relay")
	return nil
}

// Shutdown closes every listener at once, then waits for the transfers in
// progress to end. When ctx ends first, it cuts the remaining transfers,
// waits for their goroutines and returns an error wrapping ctx.Err(). Open
// fails after Shutdown; calling Shutdown again is harmless.
func (r *Backend) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.shutDown = true
	holes := make([]*relayHole, 0, len(r.holes))
	for _, h := range r.holes {
		holes = append(holes, h)
	}
	r.mu.Unlock()
	for _, h := range holes {
		r.retire(h)
	}

	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}

	r.cancel()
	r.mu.Lock()
	cut := make([]*relayTransfer, 0, len(r.transfers))
	for t := range r.transfers {
		cut = append(cut, t)
	}
	r.mu.Unlock()
	for _, t := range cut {
		t.kill()
	}
	<-done
	r.log.Warn("relay shut down, transfers cut", "transfers", len(cut), "err", ctx.Err())
	return fmt.Errorf("shutting down relay: %d transfers cut: %w", len(cut), ctx.Err())
}

// Active reports the number of relayed connections in progress (dialling
// or copying).
func (r *Backend) Active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.transfers)
}

// retire closes the listener of h and forgets h. It reports whether h was
// still open, so that only one caller logs the reason.
func (r *Backend) retire(h *relayHole) bool {
	r.mu.Lock()
	open := r.holes[h.p.ID] == h
	if open {
		delete(r.holes, h.p.ID)
	}
	r.mu.Unlock()
	if h.timer != nil {
		h.timer.Stop()
	}
	h.ln.Close() // a second Close only returns an error
	return open
}
