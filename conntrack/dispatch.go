package conntrack

// Dispatching events to the tracker and the callbacks; resync.

import (
	"context"
	"errors"
	"fmt"
	"time"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// dispatchAll dispatches items until the channel is closed; once ctx is
// done it only drains them, so that the reader can finish. A lost-events
// item within resyncEvery of the last resynchronization puts the next one
// off until then; the events queued meanwhile are dispatched as usual, and
// further overflows coalesce into it (w.lost stays set).
func (w *Watcher) dispatchAll(ctx context.Context, items <-chan item) {
	var due <-chan time.Time // fires when a put-off resync is due
	for {
		select {
		case it, ok := <-items:
			if !ok {
				return
			}
			if ctx.Err() != nil {
				continue // shutting down: drain so the reader can finish
			}
			if it.kind == eventLost && !w.lastResync.IsZero() {
				if wait := w.resyncEvery - time.Since(w.lastResync); wait > 0 {
					w.log.Debug("conntrack: putting off the resynchronization", "wait", wait)
					due = time.After(wait)
					continue
				}
			}
			w.dispatch(it, items)
		case <-due:
			due = nil
			if ctx.Err() == nil {
				w.resync(items)
			}
		}
	}
}

// dispatch handles one item. items is only used to catch up before a
// resynchronization.
func (w *Watcher) dispatch(it item, items <-chan item) {
	switch it.kind {
	case eventNew:
		u, evicted, ok := w.t.observeNew(it.s, it.at, it.claim)
		w.t.settle(it.p, it.claim)
		w.logEvicted(evicted)
		if ok {
			w.used(u)
		}
	case eventClose:
		w.closed(it.s, it.at)
	case eventDestroy:
		if e, ok := w.t.observeDestroy(it.s, it.at); ok {
			w.ended(e)
		}
	case eventLost:
		w.resync(items)
	}
}

// closed handles an UPDATE event that closed a flow at at: a tracked flow
// ends then, with the counters read from its entry (no lookup when the
// kernel keeps none: see kernelExtras). If the entry is gone already (or
// the lookup fails), the DESTROY event completes the end.
func (w *Watcher) closed(s snapshot, at time.Time) {
	f, ok := w.t.observeClose(s, at)
	if !ok {
		return
	}
	if !s.counted && (w.extras == nil || w.extras.on()) {
		got, err := w.lookup(f)
		if err != nil {
			w.log.Debug("conntrack: no counters at the close, waiting for the flow's end",
				"flow", f.Orig.String(), "error", err)
			return
		}
		s = got
	}
	// A lookup that found another entry with the same tuple finishes
	// nothing; the DESTROY event of ours will.
	if e, ok := w.t.finish(s); ok {
		w.ended(e)
	}
}

func (w *Watcher) used(u use) {
	w.log.Debug("conntrack: pinhole used", "pinhole", u.id, "flow", u.flow.Orig.String())
	if w.onUse != nil {
		w.onUse(u.id, u.flow)
	}
}

func (w *Watcher) ended(e end) {
	w.log.Debug("conntrack: flow ended", "pinhole", e.id, "flow", e.end.Orig.String())
	if w.onEnd != nil {
		w.onEnd(e.id, e.end)
	}
}

func (w *Watcher) logEvicted(evicted []tracked) {
	for _, tr := range evicted {
		w.log.Warn("conntrack: too many tracked flows, dropping the oldest without its end",
			"pinhole", tr.id, "flow", tr.flow.Orig.String(), "started", tr.flow.Start)
	}
}

// resync repairs the state after lost events: it first handles the events
// already queued (they are older than the dump), then compares with a dump
// of the conntrack table.
func (w *Watcher) resync(items <-chan item) {
	w.lastResync = time.Now()
	// Overflows counted until the Swap came before the dump below, which
	// covers them; a later one queues a new lost-events item.
	w.lost.Store(false)
	overflows := w.overflows.Swap(0)
	for n := len(items); n > 0; n-- {
		it, ok := <-items
		if !ok {
			return
		}
		if it.kind != eventLost {
			w.dispatch(it, items)
		}
	}
	flows, err := w.dump()
	if err != nil {
		w.log.Error("conntrack: dumping the table after lost events", "overflows", overflows, "error", err)
		return
	}
	live := make([]snapshot, 0, len(flows))
	for i := range flows {
		if s, ok := snapshotOf(&flows[i]); ok {
			live = append(live, s)
		}
	}
	uses, ends, evicted := w.t.reconcile(live, time.Now(), w.gone)
	expects, tracked := w.t.counts()
	w.log.Info("conntrack: resynchronized after lost events", "overflows", overflows, "table", len(flows),
		"used", len(uses), "ended", len(ends), "pending", expects, "tracked", tracked)
	w.logEvicted(evicted)
	for _, u := range uses {
		w.used(u)
	}
	for _, e := range ends {
		w.ended(e)
	}
}

// gone reports whether conntrack confirms that the flow no longer exists:
// no entry has its tuple, or another one does.
func (w *Watcher) gone(f Flow) bool {
	s, err := w.lookup(f)
	if err != nil {
		return errors.Is(err, unix.ENOENT)
	}
	return f.ID != 0 && s.id != 0 && s.id != f.ID
}

// get reads the conntrack entry of f.
func (w *Watcher) get(f Flow) (snapshot, error) {
	got, err := w.query.Get(ct.Flow{TupleOrig: ctTuple(f.Orig), Zone: f.Zone})
	if err != nil {
		return snapshot{}, fmt.Errorf("looking up flow %s: %w", f.Orig, err)
	}
	s, ok := snapshotOf(&got)
	if !ok {
		return snapshot{}, fmt.Errorf("looking up flow %s: not a TCP flow", f.Orig)
	}
	return s, nil
}

// ctTuple converts a TCP tuple for a conntrack query.
func ctTuple(t Tuple) ct.Tuple {
	return ct.Tuple{
		IP: ct.IPTuple{SourceAddress: t.Src.Addr(), DestinationAddress: t.Dst.Addr()},
		Proto: ct.ProtoTuple{
			Protocol:        unix.IPPROTO_TCP,
			SourcePort:      t.Src.Port(),
			DestinationPort: t.Dst.Port(),
		},
	}
}
