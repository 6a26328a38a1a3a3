package conntrack

import (
	"cmp"
	"container/list"
	"net/netip"
	"slices"
	"sync"
	"time"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/rules"
)

// DefaultMaxFlows is the number of used pinholes' flows a Watcher tracks at
// most when Config.MaxFlows is zero.
const DefaultMaxFlows = 65536

// snapshot is what one conntrack message says about a TCP connection.
type snapshot struct {
	id          uint32
	zone        uint16
	orig, reply Tuple
	// start and stop are the kernel's timestamps; zero unless
	// nf_conntrack_timestamp is on (and only in DESTROY events and dumps).
	start, stop time.Time
	// state is conntrack's TCP state (enum tcp_conntrack), 0 if the
	// message did not carry it.
	state uint8
	// counted: the message carried accounting (nf_conntrack_acct).
	counted                  bool
	origPackets, origBytes   uint64
	replyPackets, replyBytes uint64
}

// snapshotOf converts a decoded conntrack flow. It reports false for anything
// but a TCP flow with complete tuples.
func snapshotOf(f *ct.Flow) (snapshot, bool) {
	o, r := f.TupleOrig, f.TupleReply
	if o.Proto.Protocol != unix.IPPROTO_TCP || !o.IP.SourceAddress.IsValid() || !o.IP.DestinationAddress.IsValid() ||
		!r.IP.SourceAddress.IsValid() || !r.IP.DestinationAddress.IsValid() {
		return snapshot{}, false
	}
	s := snapshot{
		id:   f.ID,
		zone: f.Zone,
		orig: Tuple{
			Src: netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort),
			Dst: netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort),
		},
		reply: Tuple{
			Src: netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort),
			Dst: netip.AddrPortFrom(r.IP.DestinationAddress.Unmap(), r.Proto.DestinationPort),
		},
		start: f.Timestamp.Start,
		stop:  f.Timestamp.Stop,
		// The original direction always carries at least the first packet,
		// so a zero packet count means the kernel did not count.
		counted:      f.CountersOrig.Packets != 0,
		origPackets:  f.CountersOrig.Packets,
		origBytes:    f.CountersOrig.Bytes,
		replyPackets: f.CountersReply.Packets,
		replyBytes:   f.CountersReply.Bytes,
	}
	if f.ProtoInfo.TCP != nil {
		s.state = f.ProtoInfo.TCP.State
	}
	return s, true
}

// flowKey identifies a live conntrack entry: its original tuple is unique
// within a zone.
type flowKey struct {
	zone uint16
	orig Tuple
}

func (s snapshot) key() flowKey { return flowKey{zone: s.zone, orig: s.orig} }

// expectation is a registered Match waiting for its first flow.
type expectation struct {
	id    rules.PinholeID
	match Match
	seq   uint64 // registration order, oldest wins among equal matches
}

// tracked is a flow that used a pinhole, waiting for its end.
type tracked struct {
	key  flowKey
	id   rules.PinholeID
	flow Flow
	// closed is when conntrack was seen closing the connection (TIME_WAIT
	// or CLOSE) while its counters could not be read; the DESTROY event
	// then completes the end. Zero while open.
	closed time.Time
	reset  bool // closed by CLOSE (a reset)
}

// use is a pinhole's first flow, to report through OnUse.
type use struct {
	id   rules.PinholeID
	flow Flow
}

// end is a tracked flow's end, to report through OnEnd.
type end struct {
	id  rules.PinholeID
	end FlowEnd
}

// tracker is the pure core of a Watcher: expectations and tracked flows,
// fed with snapshots and the time they were seen. It is safe for concurrent
// use; callbacks are left to the caller, outside the lock.
type tracker struct {
	mu      sync.Mutex
	max     int
	seq     uint64
	expects map[rules.PinholeID]*expectation
	// byDst indexes expects by Match.Dst: a NEW event costs one map lookup.
	byDst map[netip.AddrPort][]*expectation
	flows map[flowKey]*list.Element // of *tracked
	order *list.List                // of *tracked, oldest first
	// ids counts the tracked flows by conntrack id, and inflight the NEW
	// events that the event reader admitted and the dispatcher has not
	// handled yet: together they name every flow that an UPDATE or DESTROY
	// event the reader receives can concern (see admit).
	ids      map[uint32]int
	inflight map[uint32]int
	// claims holds, by id, the expectations that the event reader has
	// matched to a NEW event it queued (see admit). A claimed expectation
	// is no longer pending: the flow used it when its event was received,
	// so a forget (the pinhole closed meanwhile, typically because a short
	// transfer ended while the dispatcher was busy) must not take it away.
	// The dispatcher uses the claim with the event; settle gives back one
	// it could not use.
	claims map[rules.PinholeID]*expectation
}

func newTracker(maxFlows int) *tracker {
	if maxFlows <= 0 {
		maxFlows = DefaultMaxFlows
	}
	return &tracker{
		max:      maxFlows,
		expects:  make(map[rules.PinholeID]*expectation),
		byDst:    make(map[netip.AddrPort][]*expectation),
		flows:    make(map[flowKey]*list.Element),
		order:    list.New(),
		ids:      make(map[uint32]int),
		inflight: make(map[uint32]int),
		claims:   make(map[rules.PinholeID]*expectation),
	}
}

// expect registers (or replaces) the expectation id. m must be normalized.
// An expectation with that id that a queued NEW event claimed still goes to
// that event's flow, but is not given back if the flow cannot use it.
func (t *tracker) expect(id rules.PinholeID, m Match) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removeExpectLocked(id)
	delete(t.claims, id)
	t.seq++
	t.addExpectLocked(&expectation{id: id, match: m, seq: t.seq})
}

// forget drops the expectation id; it reports whether it was pending. One
// that a queued NEW event claimed still goes to that event's flow (the flow
// started before the forget), but is not given back if the flow cannot use
// it.
func (t *tracker) forget(id rules.PinholeID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.claims, id)
	return t.removeExpectLocked(id)
}

// addExpectLocked makes e pending, keeping byDst in registration order.
func (t *tracker) addExpectLocked(e *expectation) {
	t.expects[e.id] = e
	same := t.byDst[e.match.Dst]
	i, _ := slices.BinarySearchFunc(same, e.seq, func(x *expectation, seq uint64) int {
		return cmp.Compare(x.seq, seq)
	})
	t.byDst[e.match.Dst] = slices.Insert(same, i, e)
}

// pendingLocked returns the oldest pending expectation that a flow with
// original tuple orig matches, or nil.
func (t *tracker) pendingLocked(orig Tuple) *expectation {
	var best *expectation
	for _, e := range t.byDst[orig.Dst] {
		if e.match.matches(orig) && (best == nil || e.seq < best.seq) {
			best = e
		}
	}
	return best
}

func (t *tracker) removeExpectLocked(id rules.PinholeID) bool {
	e, ok := t.expects[id]
	if !ok {
		return false
	}
	delete(t.expects, id)
	same := t.byDst[e.match.Dst]
	for i, x := range same {
		if x == e {
			same = append(same[:i:i], same[i+1:]...)
			break
		}
	}
	if len(same) == 0 {
		delete(t.byDst, e.match.Dst)
	} else {
		t.byDst[e.match.Dst] = same
	}
	return true
}

// admit tells the event reader whether an event can matter, before it is
// decoded: a NEW event only if a pending expectation matches its addresses
// (expectations are registered before their flow starts, so one added later
// would not match anyway), an UPDATE or DESTROY event only if its flow is
// tracked or its admitted NEW event is still queued.
//
// A NEW event is admitted with the expectation it matches, which it claims
// at once: the flow has used the pinhole, whatever happens to the
// expectation before the event is dispatched (see claims). The claim goes
// with the event to observeNew, and a NEW event admitted must be settled
// once dispatched or dropped.
func (t *tracker) admit(p peeked) (claim *expectation, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.kind != eventNew {
		return nil, !p.hasID || t.ids[p.id] > 0 || t.inflight[p.id] > 0
	}
	e := t.pendingLocked(Tuple{Src: netip.AddrPortFrom(p.src, 0), Dst: p.dst})
	if e == nil {
		return nil, false
	}
	t.removeExpectLocked(e.id)
	t.claims[e.id] = e
	if p.hasID {
		t.inflight[p.id]++
	}
	return e, true
}

// settle records that an admitted NEW event, with the expectation it
// claimed, was handled. If its flow did not use the claim (the event could
// not be decoded, or described a flow already tracked), the expectation is
// pending again, unless it was forgotten or registered anew meanwhile.
func (t *tracker) settle(p peeked, claim *expectation) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.kind == eventNew && p.hasID {
		if t.inflight[p.id]--; t.inflight[p.id] <= 0 {
			delete(t.inflight, p.id)
		}
	}
	if claim != nil && t.claims[claim.id] == claim {
		delete(t.claims, claim.id)
		t.addExpectLocked(claim)
	}
}
