package conntrack

// The tracked flows: first use, close, destroy, reconciliation.

import (
	"container/list"
	"time"
)

// observeNew handles a new flow seen at now, with the expectation that its
// event claimed when admitted, or nil to match it against the pending ones.
// When it matches an expectation the expectation is consumed, the flow
// tracked, and the use returned; evicted lists flows dropped to stay within
// the cap.
func (t *tracker) observeNew(s snapshot, now time.Time, claim *expectation) (u use, evicted []tracked, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.observeNewLocked(s, now, claim)
}

func (t *tracker) observeNewLocked(s snapshot, now time.Time, claim *expectation) (u use, evicted []tracked, ok bool) {
	k := s.key()
	if _, dup := t.flows[k]; dup {
		return use{}, nil, false
	}
	best := claim
	if best == nil {
		if best = t.pendingLocked(s.orig); best == nil {
			return use{}, nil, false
		}
		t.removeExpectLocked(best.id)
	} else {
		if !best.match.matches(s.orig) {
			return use{}, nil, false
		}
		if t.claims[best.id] == best {
			delete(t.claims, best.id)
		}
	}
	start := s.start
	if start.IsZero() {
		start = now
	}
	f := Flow{ID: s.id, Zone: s.zone, Orig: s.orig, Reply: s.reply, Start: start}
	for t.order.Len() >= t.max {
		old := t.order.Front()
		evicted = append(evicted, *old.Value.(*tracked))
		t.removeLocked(old)
	}
	t.flows[k] = t.order.PushBack(&tracked{key: k, id: best.id, flow: f})
	if f.ID != 0 {
		t.ids[f.ID]++
	}
	return use{id: best.id, flow: f}, evicted, true
}

// lookupLocked finds the tracked flow that s describes: same tuple and,
// when both are known, same conntrack id (a reused tuple is another entry).
func (t *tracker) lookupLocked(s snapshot) (*list.Element, bool) {
	el, ok := t.flows[s.key()]
	if !ok {
		return nil, false
	}
	if tr := el.Value.(*tracked); tr.flow.ID != 0 && s.id != 0 && tr.flow.ID != s.id {
		return nil, false
	}
	return el, true
}

// removeLocked stops tracking el's flow.
func (t *tracker) removeLocked(el *list.Element) {
	tr := t.order.Remove(el).(*tracked)
	delete(t.flows, tr.key)
	if id := tr.flow.ID; id != 0 {
		if t.ids[id]--; t.ids[id] <= 0 {
			delete(t.ids, id)
		}
	}
}

// endLocked stops tracking el's flow and returns its end with the counters
// of s, at at unless the close was seen before.
func (t *tracker) endLocked(el *list.Element, s snapshot, at time.Time) end {
	tr := el.Value.(*tracked)
	t.removeLocked(el)
	fe := FlowEnd{
		Flow:         tr.flow,
		End:          at,
		Counted:      s.counted,
		OrigPackets:  s.origPackets,
		OrigBytes:    s.origBytes,
		ReplyPackets: s.replyPackets,
		ReplyBytes:   s.replyBytes,
		Reset:        s.state == tcpClose,
	}
	if !tr.closed.IsZero() {
		fe.End, fe.Reset = tr.closed, tr.reset
	}
	if !s.start.IsZero() {
		fe.Start = s.start
	}
	return end{id: tr.id, end: fe}
}

// observeClose handles an UPDATE event, seen at now, that took a flow to a
// closed state (closedState(s.state)). For a tracked flow not yet closing
// it records the close and returns the flow: the caller then completes the
// end with finish and counters read at once (the event carries none), or
// leaves it to the DESTROY event if they cannot be read.
func (t *tracker) observeClose(s snapshot, now time.Time) (Flow, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	el, ok := t.lookupLocked(s)
	if !ok {
		return Flow{}, false
	}
	tr := el.Value.(*tracked)
	if !tr.closed.IsZero() {
		return Flow{}, false
	}
	tr.closed, tr.reset = now, s.state == tcpClose
	return tr.flow, true
}

// finish ends a closing flow with the counters in s (a lookup of the entry)
// and stops tracking it, so that its DESTROY event is ignored.
func (t *tracker) finish(s snapshot) (end, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	el, ok := t.lookupLocked(s)
	if !ok || el.Value.(*tracked).closed.IsZero() {
		return end{}, false
	}
	return t.endLocked(el, s, time.Time{}), true
}

// observeDestroy handles the end of a flow seen at now. For a tracked flow
// (one whose close was not reported yet) it stops tracking and returns the
// end to report: at its close if that was seen, else at its destruction.
func (t *tracker) observeDestroy(s snapshot, now time.Time) (end, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	el, ok := t.lookupLocked(s)
	if !ok {
		return end{}, false
	}
	at := now
	if !s.stop.IsZero() {
		at = s.stop
	}
	return t.endLocked(el, s, at), true
}

// reconcile compares the tracker with a dump of the conntrack table taken
// after events were lost. Pending expectations that a live flow matches are
// used; tracked flows that the dump shows closed end with its counters;
// tracked flows absent from the dump are candidates for ending: gone
// confirms each one (a dump can be inconsistent while the table changes) and
// those confirmed end as lost.
func (t *tracker) reconcile(live []snapshot, now time.Time, gone func(Flow) bool) (uses []use, ends []end, evicted []tracked) {
	t.mu.Lock()
	seen := make(map[flowKey]uint32, len(live))
	for _, s := range live {
		seen[s.key()] = s.id
		// A flow already closed may be an earlier transfer to the same
		// endpoint lingering in TIME_WAIT: it must not count as the first
		// use of a new pinhole (the session would close it too early).
		if !closedState(s.state) {
			if u, ev, ok := t.observeNewLocked(s, now, nil); ok {
				uses = append(uses, u)
				evicted = append(evicted, ev...)
			}
		}
		if closedState(s.state) {
			if el, ok := t.lookupLocked(s); ok {
				ends = append(ends, t.endLocked(el, s, now))
			}
		}
	}
	var missing []tracked
	for el := t.order.Front(); el != nil; el = el.Next() {
		tr := el.Value.(*tracked)
		if id, ok := seen[tr.key]; !ok || id != 0 && tr.flow.ID != 0 && id != tr.flow.ID {
			missing = append(missing, *tr)
		}
	}
	t.mu.Unlock()

	for _, tr := range missing {
		if !gone(tr.flow) {
			continue
		}
		t.mu.Lock()
		el, ok := t.flows[tr.key]
		ok = ok && el.Value.(*tracked).flow.ID == tr.flow.ID
		if ok {
			e := t.endLocked(el, snapshot{}, now)
			e.end.Lost = true
			ends = append(ends, e)
		}
		t.mu.Unlock()
	}
	return uses, ends, evicted
}

// counts returns the number of pending expectations and tracked flows.
func (t *tracker) counts() (expects, flows int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.expects), len(t.flows)
}
