package conntrack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// DefaultEventBuffer is the number of decoded events a Watcher queues
// between its socket reader and its dispatcher when Config.EventBuffer is
// zero.
const DefaultEventBuffer = 1024

// socketBuffer is the receive buffer asked for the event socket. Events
// that do not fit are lost (ENOBUFS), which the Watcher detects and repairs
// with a dump of the table.
const socketBuffer = 8 << 20

// resyncInterval is the least time between the starts of two
// resynchronizations: under a flood the socket may overflow again and
// again, and each dump reads the whole table. Overflows in between
// coalesce into the next one.
const resyncInterval = 5 * time.Second

// Config configures a Watcher. The zero value is usable: it watches and
// logs to slog.Default() but reports nothing.
type Config struct {
	// Log receives lost-event and eviction warnings and debug lines; nil
	// means slog.Default().
	Log *slog.Logger
	// OnUse is called once per expectation, with the first flow matching
	// it. The expectation is consumed; the flow is tracked until it ends.
	OnUse func(id rules.PinholeID, f Flow)
	// OnEnd is called once when a flow reported through OnUse ends:
	// normally as conntrack sees it close (see the package documentation).
	OnEnd func(id rules.PinholeID, f FlowEnd)
	// MaxFlows bounds the tracked flows; when full, the oldest is dropped
	// (and logged) without OnEnd. Zero means DefaultMaxFlows.
	MaxFlows int
	// EventBuffer is the number of events queued for dispatch (only those
	// about expectations and tracked flows are). Zero means
	// DefaultEventBuffer.
	EventBuffer int
}

// Watcher matches conntrack events against expectations; see the package
// documentation. Expect and Forget are safe for concurrent use, also while
// Run dispatches. OnUse and OnEnd run on Run's goroutine, one at a time,
// without locks held (they may call Expect and Forget); while one runs,
// events queue, so they should not block for long.
type Watcher struct {
	log    *slog.Logger
	onUse  func(rules.PinholeID, Flow)
	onEnd  func(rules.PinholeID, FlowEnd)
	buffer int
	t      *tracker

	events *netlink.Conn // subscribed to the NEW, UPDATE and DESTROY groups
	query  *ct.Conn      // lookups at a close, dumps after lost events
	// lookup reads the conntrack entry of a flow; it fails with ENOENT when
	// there is none. It uses query; tests replace it.
	lookup func(Flow) (snapshot, error)
	// extras, if set, says whether a lookup at a close can add counters or
	// a start time to the event (see kernelExtras); nil: it can.
	extras *kernelExtras
	// dump reads the whole conntrack table, for a resynchronization. It
	// uses query; tests replace it.
	dump func() ([]ct.Flow, error)
	// resyncEvery is the least time between resynchronizations
	// (resyncInterval; tests shorten it). lastResync is when the last one
	// started; only Run's goroutine uses it.
	resyncEvery time.Duration
	lastResync  time.Time

	running   atomic.Bool
	closing   atomic.Bool   // set before events is closed on purpose
	lost      atomic.Bool   // a lost-events item is queued, or its resync is due, and not yet handled
	overflows atomic.Uint64 // ENOBUFS errors since the last resync started
}

// NewWatcher opens the conntrack netlink sockets in the network namespace of
// the calling thread and subscribes to NEW, UPDATE and DESTROY events, which
// queue from then on. Run must be called to process them and to close the
// sockets. It needs CAP_NET_ADMIN.
func NewWatcher(cfg Config) (*Watcher, error) {
	w := &Watcher{
		log:    cfg.Log,
		onUse:  cfg.OnUse,
		onEnd:  cfg.OnEnd,
		buffer: cfg.EventBuffer,
		t:      newTracker(cfg.MaxFlows),

		resyncEvery: resyncInterval,
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	if w.buffer <= 0 {
		w.buffer = DefaultEventBuffer
	}
	var err error
	w.events, err = openEvents(w.log)
	if err != nil {
		return nil, err
	}
	w.query, err = ct.Dial(nil)
	if err != nil {
		w.events.Close()
		return nil, fmt.Errorf("opening conntrack query socket: %w", err)
	}
	w.lookup = w.get
	w.extras = openKernelExtras()
	w.dump = func() ([]ct.Flow, error) { return w.query.Dump(nil) }
	return w, nil
}

// openEvents opens a conntrack event socket with a large receive buffer and
// the kernel-side filter, subscribed to NEW, UPDATE and DESTROY events.
func openEvents(log *slog.Logger) (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack event socket: %w", err)
	}
	if err := setReadBuffer(c, socketBuffer); err != nil {
		log.Debug("conntrack: keeping the default event socket buffer", "error", err)
	}
	// The filter goes on before the subscriptions, so that no unfiltered
	// event is queued.
	filter, err := eventFilter()
	if err == nil {
		err = c.SetBPF(filter)
	}
	if err != nil {
		log.Warn("conntrack: no kernel event filter, filtering all events in userspace", "error", err)
	}
	for _, g := range []netfilter.NetlinkGroup{netfilter.GroupCTNew, netfilter.GroupCTUpdate, netfilter.GroupCTDestroy} {
		if err := c.JoinGroup(uint32(g)); err != nil {
			c.Close()
			return nil, fmt.Errorf("subscribing to conntrack events (group %d): %w", g, err)
		}
	}
	return c, nil
}

// setReadBuffer sets the socket's receive buffer to n bytes, beyond
// net.core.rmem_max when privileged (SO_RCVBUFFORCE).
func setReadBuffer(c *netlink.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return c.SetReadBuffer(n)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil || serr != nil {
		return c.SetReadBuffer(n)
	}
	return nil
}

// Expect registers the expectation id (a pinhole): the first TCP flow from
// m.Src to m.Dst fires OnUse once. Register it before the pinhole goes live,
// so that no flow can come first. Expect with an id already pending
// replaces it. A match that is not exact (no source, port 0, mixed families)
// can never match; it is logged and dropped.
func (w *Watcher) Expect(id rules.PinholeID, m Match) {
	n, err := m.normalize()
	if err != nil {
		w.log.Error("conntrack: ignoring expectation", "pinhole", id, "match", m.String(), "error", err)
		return
	}
	w.t.expect(id, n)
}

// Forget drops the expectation id if it is still pending (the pinhole closed
// unused). A flow that already used it stays tracked until it ends, and one
// whose NEW event was received but not yet dispatched still fires OnUse
// (after Forget), then OnEnd; see the package documentation.
func (w *Watcher) Forget(id rules.PinholeID) {
	w.t.forget(id)
}

// eventKind is what a queued item reports.
type eventKind uint8

const (
	eventNew   eventKind = iota + 1
	eventClose           // an UPDATE event to TIME_WAIT or CLOSE
	eventDestroy
	eventLost // the socket overflowed: events are missing before this item
)

// item is one queued event.
type item struct {
	kind eventKind
	p    peeked // what the reader admitted it by
	// claim is the expectation that a NEW event claimed when the reader
	// admitted it (see tracker.admit).
	claim *expectation
	s     snapshot
	at    time.Time
}

// Run dispatches events until ctx is done, then closes the sockets and
// returns nil; it returns an error if the event socket fails. Call it once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("conntrack: Watcher.Run called more than once")
	}
	defer w.query.Close()
	if w.extras != nil {
		defer w.extras.close()
	}

	items := make(chan item, w.buffer)
	readErr := make(chan error, 1)
	go func() {
		readErr <- w.readEvents(items)
		close(items)
	}()
	stop := context.AfterFunc(ctx, w.closeEvents)
	defer stop()

	w.dispatchAll(ctx, items)
	w.closeEvents()
	err := <-readErr
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// closeEvents closes the event socket, which ends readEvents.
func (w *Watcher) closeEvents() {
	if w.closing.CompareAndSwap(false, true) {
		w.events.Close()
	}
}

// recvBufferSize is the size of the event reader's buffer. The kernel sends
// each event in a datagram of its own, at most a page (8 KiB with larger
// pages) and usually a few hundred bytes.
const recvBufferSize = 64 << 10

// readEvents receives events into items until the socket is closed or
// fails. It reads into one reused buffer and decodes only the events that
// can matter (see decode). Lost events (ENOBUFS) are logged and reported as
// one eventLost item until the dispatcher has handled it.
func (w *Watcher) readEvents(items chan<- item) error {
	rc, err := w.events.SyscallConn()
	if err != nil {
		if w.closing.Load() {
			return nil
		}
		return fmt.Errorf("receiving conntrack events: %w", err)
	}
	buf := make([]byte, recvBufferSize)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		switch {
		case err == nil:
		case w.closing.Load():
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			w.overflowed(items)
			continue
		default:
			return fmt.Errorf("receiving conntrack events: %w", err)
		}
		now := time.Now()
		for b := buf[:n]; ; {
			typ, flags, data, rest, ok := splitMessage(b)
			if !ok {
				break
			}
			b = rest
			if it, ok := w.decode(typ, flags, data, now); ok {
				items <- it
			}
		}
	}
}

// overflowed counts a socket overflow (ENOBUFS) and, unless one is queued
// or put off already, queues a lost-events item, logging it once.
func (w *Watcher) overflowed(items chan<- item) {
	w.overflows.Add(1)
	if w.lost.CompareAndSwap(false, true) {
		w.log.Warn("conntrack: event socket overflowed, events lost; resynchronizing from the table")
		items <- item{kind: eventLost, at: time.Now()}
	}
}

// decode turns one event message into an item if it can matter: a TCP
// event (peekEvent) that the tracker admits, so that the common case, an
// event about a connection nobody expects, costs no allocation.
func (w *Watcher) decode(typ, flags uint16, data []byte, now time.Time) (item, bool) {
	p := peekEvent(typ, flags, data)
	if p.kind == 0 {
		return item{}, false
	}
	claim, admitted := w.t.admit(p)
	if !admitted {
		return item{}, false
	}
	msg := netlink.Message{
		Header: netlink.Header{
			Length: uint32(nlmsgHdrLen + len(data)),
			Type:   netlink.HeaderType(typ),
			Flags:  netlink.HeaderFlags(flags),
		},
		Data: data,
	}
	var ev ct.Event
	err := ev.Unmarshal(msg)
	var s snapshot
	ok := false
	if err == nil && ev.Flow != nil {
		s, ok = snapshotOf(ev.Flow)
	}
	if !ok {
		w.t.settle(p, claim)
		if err != nil {
			w.log.Warn("conntrack: skipping undecodable event", "error", err)
		}
		return item{}, false
	}
	return item{kind: p.kind, p: p, claim: claim, s: s, at: now}, true
}
