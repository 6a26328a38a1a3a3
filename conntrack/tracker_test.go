package conntrack

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func addr(s string) netip.Addr   { return netip.MustParseAddr(s) }

// snap builds a TCP snapshot without NAT.
func snap(id uint32, src, dst string) snapshot {
	o := Tuple{Src: ap(src), Dst: ap(dst)}
	return snapshot{id: id, orig: o, reply: o.reverse()}
}

func TestMatchNormalize(t *testing.T) {
	tests := []struct {
		name    string
		m       Match
		want    Match
		wantErr bool
	}{
		{"ipv4", Match{addr("192.0.2.1"), ap("192.0.2.2:40000")}, Match{addr("192.0.2.1"), ap("192.0.2.2:40000")}, false},
		{"ipv6", Match{addr("2001:db8::1"), ap("[2001:db8::2]:40000")}, Match{addr("2001:db8::1"), ap("[2001:db8::2]:40000")}, false},
		{"mapped", Match{addr("::ffff:192.0.2.1"), ap("[::ffff:192.0.2.2]:21")}, Match{addr("192.0.2.1"), ap("192.0.2.2:21")}, false},
		{"no source", Match{Dst: ap("192.0.2.2:40000")}, Match{}, true},
		{"no destination", Match{Src: addr("192.0.2.1")}, Match{}, true},
		{"port 0", Match{addr("192.0.2.1"), ap("192.0.2.2:0")}, Match{}, true},
		{"mixed families", Match{addr("2001:db8::1"), ap("192.0.2.2:40000")}, Match{}, true},
		{"zone", Match{addr("fe80::1%eth0"), ap("[fe80::2]:40000")}, Match{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.normalize()
			if (err != nil) != tt.wantErr {
				t.Fatalf("normalize(%v) error = %v, want error %v", tt.m, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("normalize(%v) = %v, want %v", tt.m, got, tt.want)
			}
		})
	}
}

func TestSnapshotOf(t *testing.T) {
	f := ct.NewFlow(unix.IPPROTO_TCP, 0, addr("192.0.2.1"), addr("198.51.100.7"), 41000, 40000, 60, 0)
	// DNAT and SNAT: the reply comes from the real server to the gateway.
	f.TupleReply.IP.SourceAddress = addr("203.0.113.9")
	f.TupleReply.IP.DestinationAddress = addr("198.51.100.1")
	f.TupleReply.Proto.DestinationPort = 41001
	f.ID = 77
	f.CountersOrig = ct.Counter{Packets: 10, Bytes: 600}
	f.CountersReply = ct.Counter{Direction: true, Packets: 20, Bytes: 30000}
	f.Timestamp = ct.Timestamp{Start: t0, Stop: t0.Add(time.Second)}

	s, ok := snapshotOf(&f)
	if !ok {
		t.Fatal("snapshotOf(TCP flow) = false")
	}
	want := snapshot{
		id:    77,
		orig:  Tuple{ap("192.0.2.1:41000"), ap("198.51.100.7:40000")},
		reply: Tuple{ap("203.0.113.9:40000"), ap("198.51.100.1:41001")},
		start: t0, stop: t0.Add(time.Second),
		counted:     true,
		origPackets: 10, origBytes: 600, replyPackets: 20, replyBytes: 30000,
	}
	if s != want {
		t.Errorf("snapshotOf = %+v\nwant %+v", s, want)
	}

	f.CountersOrig, f.CountersReply = ct.Counter{}, ct.Counter{}
	if s, _ := snapshotOf(&f); s.counted {
		t.Error("flow without counters: counted = true")
	}

	mapped := ct.NewFlow(unix.IPPROTO_TCP, 0, addr("::ffff:192.0.2.1"), addr("::ffff:192.0.2.2"), 1, 2, 60, 0)
	if s, _ := snapshotOf(&mapped); !s.orig.Src.Addr().Is4() || !s.reply.Dst.Addr().Is4() {
		t.Errorf("mapped addresses not unmapped: %+v", s)
	}

	udp := ct.NewFlow(unix.IPPROTO_UDP, 0, addr("192.0.2.1"), addr("192.0.2.2"), 1, 2, 60, 0)
	if _, ok := snapshotOf(&udp); ok {
		t.Error("snapshotOf(UDP flow) = true")
	}
	var empty ct.Flow
	empty.TupleOrig.Proto.Protocol = unix.IPPROTO_TCP
	if _, ok := snapshotOf(&empty); ok {
		t.Error("snapshotOf(flow without addresses) = true")
	}
}

func TestTrackerMatch(t *testing.T) {
	type exp struct {
		id string
		m  Match
	}
	v4 := Match{addr("192.0.2.1"), ap("192.0.2.2:40000")}
	v6 := Match{addr("2001:db8::1"), ap("[2001:db8::2]:40000")}
	tests := []struct {
		name    string
		expects []exp
		flow    snapshot
		want    string // "" means no use
	}{
		{"exact", []exp{{"a", v4}}, snap(1, "192.0.2.1:51000", "192.0.2.2:40000"), "a"},
		{"any source port", []exp{{"a", v4}}, snap(1, "192.0.2.1:20", "192.0.2.2:40000"), "a"},
		{"ipv6", []exp{{"a", v4}, {"b", v6}}, snap(1, "[2001:db8::1]:51000", "[2001:db8::2]:40000"), "b"},
		{"other source", []exp{{"a", v4}}, snap(1, "192.0.2.9:51000", "192.0.2.2:40000"), ""},
		{"other port", []exp{{"a", v4}}, snap(1, "192.0.2.1:51000", "192.0.2.2:40001"), ""},
		{"other destination", []exp{{"a", v4}}, snap(1, "192.0.2.1:51000", "192.0.2.3:40000"), ""},
		{"reversed", []exp{{"a", v4}}, snap(1, "192.0.2.2:40000", "192.0.2.1:51000"), ""},
		{"family", []exp{{"a", v6}}, snap(1, "192.0.2.1:51000", "192.0.2.2:40000"), ""},
		{
			"same destination, by source",
			[]exp{{"a", v4}, {"b", Match{addr("192.0.2.5"), v4.Dst}}},
			snap(1, "192.0.2.5:51000", "192.0.2.2:40000"), "b",
		},
		{"oldest of equals", []exp{{"b", v4}, {"a", v4}}, snap(1, "192.0.2.1:51000", "192.0.2.2:40000"), "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(0)
			for _, e := range tt.expects {
				tr.expect(pid(e.id), e.m)
			}
			u, _, ok := tr.observeNew(tt.flow, t0, nil)
			got := ""
			if ok {
				got = u.id.String()
			}
			if want := map[bool]string{true: pid(tt.want).String()}[tt.want != ""]; got != want {
				t.Fatalf("observeNew(%v) used %q, want %q (%s)", tt.flow.orig, got, want, tt.want)
			}
			if !ok {
				return
			}
			want := Flow{ID: tt.flow.id, Orig: tt.flow.orig, Reply: tt.flow.reply, Start: t0}
			if u.flow != want {
				t.Errorf("flow = %+v, want %+v", u.flow, want)
			}
			if n, _ := tr.counts(); n != len(tt.expects)-1 {
				t.Errorf("%d expectations pending after use, want %d", n, len(tt.expects)-1)
			}
		})
	}
}

func TestTrackerLifecycle(t *testing.T) {
	m := Match{addr("192.0.2.1"), ap("192.0.2.2:40000")}
	first := snap(1, "192.0.2.1:51000", "192.0.2.2:40000")

	t.Run("once", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		if _, _, ok := tr.observeNew(first, t0, nil); !ok {
			t.Fatal("first flow not matched")
		}
		if u, _, ok := tr.observeNew(snap(2, "192.0.2.1:51001", "192.0.2.2:40000"), t0, nil); ok {
			t.Fatalf("second flow used %q again", u.id)
		}
		if u, _, ok := tr.observeNew(first, t0, nil); ok {
			t.Fatalf("duplicate NEW used %q", u.id)
		}
	})

	t.Run("forget before use", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		if !tr.forget(pid("a")) {
			t.Error("forget(pending) = false")
		}
		if _, _, ok := tr.observeNew(first, t0, nil); ok {
			t.Fatal("forgotten expectation used")
		}
		if _, ok := tr.observeDestroy(first, t0); ok {
			t.Fatal("untracked flow ended")
		}
	})

	t.Run("forget after use keeps tracking", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		tr.observeNew(first, t0, nil)
		if tr.forget(pid("a")) {
			t.Error("forget(used) = true")
		}
		if _, ok := tr.observeDestroy(first, t0.Add(time.Second)); !ok {
			t.Fatal("used flow did not end")
		}
	})

	t.Run("replace", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		tr.expect(pid("a"), Match{addr("192.0.2.1"), ap("192.0.2.2:40001")})
		if _, _, ok := tr.observeNew(first, t0, nil); ok {
			t.Fatal("replaced expectation used")
		}
		if u, _, ok := tr.observeNew(snap(2, "192.0.2.1:51000", "192.0.2.2:40001"), t0, nil); !ok || u.id != pid("a") {
			t.Fatalf("replacement not used: %q %v", u.id, ok)
		}
		if n, f := tr.counts(); n != 0 || f != 1 || len(tr.byDst) != 0 {
			t.Errorf("counts = %d pending, %d tracked, %d indexed; want 0, 1, 0", n, f, len(tr.byDst))
		}
	})

	t.Run("end with counters", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		tr.observeNew(first, t0, nil)
		d := first
		d.counted, d.origPackets, d.origBytes, d.replyPackets, d.replyBytes = true, 5, 300, 8, 12000
		e, ok := tr.observeDestroy(d, t0.Add(3*time.Second))
		if !ok {
			t.Fatal("tracked flow did not end")
		}
		want := FlowEnd{
			Flow:    Flow{ID: 1, Orig: first.orig, Reply: first.reply, Start: t0},
			End:     t0.Add(3 * time.Second),
			Counted: true, OrigPackets: 5, OrigBytes: 300, ReplyPackets: 8, ReplyBytes: 12000,
		}
		if e.id != pid("a") || e.end != want {
			t.Errorf("end = %q %+v\nwant %q %+v", e.id, e.end, "a", want)
		}
		if e.end.Duration() != 3*time.Second {
			t.Errorf("duration = %v, want 3s", e.end.Duration())
		}
		if _, ok := tr.observeDestroy(d, t0); ok {
			t.Error("flow ended twice")
		}
	})

	t.Run("kernel timestamps", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		tr.observeNew(first, t0, nil)
		d := first
		d.start, d.stop = t0.Add(-time.Millisecond), t0.Add(1500*time.Millisecond)
		e, _ := tr.observeDestroy(d, t0.Add(time.Minute))
		if !e.end.Start.Equal(d.start) || !e.end.End.Equal(d.stop) || e.end.Counted {
			t.Errorf("end = %+v, want kernel start/stop, not counted", e.end)
		}
	})

	t.Run("other entry, same tuple", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		tr.observeNew(first, t0, nil)
		other := first
		other.id = 2
		if _, ok := tr.observeDestroy(other, t0); ok {
			t.Error("another entry's DESTROY ended the tracked flow")
		}
	})
}

func TestTrackerClose(t *testing.T) {
	m := Match{addr("192.0.2.1"), ap("192.0.2.2:40000")}
	first := snap(1, "192.0.2.1:51000", "192.0.2.2:40000")
	closing := func(state uint8) snapshot { s := first; s.state = state; return s }
	counters := func(s snapshot) snapshot {
		s.counted, s.origPackets, s.origBytes, s.replyPackets, s.replyBytes = true, 5, 300, 8, 12000
		return s
	}
	setup := func(t *testing.T) *tracker {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		if _, _, ok := tr.observeNew(first, t0, nil); !ok {
			t.Fatal("flow not used")
		}
		return tr
	}
	checkEmpty := func(t *testing.T, tr *tracker) {
		t.Helper()
		if _, f := tr.counts(); f != 0 || len(tr.ids) != 0 {
			t.Errorf("%d flows, ids %v left", f, tr.ids)
		}
	}

	t.Run("time wait", func(t *testing.T) {
		tr := setup(t)
		if _, ok := tr.finish(counters(first)); ok {
			t.Fatal("finish before the close ended the flow")
		}
		f, ok := tr.observeClose(closing(tcpTimeWait), t0.Add(2*time.Second))
		if !ok || f.ID != 1 {
			t.Fatalf("observeClose = %+v, %v; want the tracked flow", f, ok)
		}
		if _, ok := tr.observeClose(closing(tcpClose), t0.Add(3*time.Second)); ok {
			t.Error("second close observed")
		}
		e, ok := tr.finish(counters(closing(tcpTimeWait)))
		if !ok {
			t.Fatal("finish did not end the closing flow")
		}
		want := FlowEnd{
			Flow:    Flow{ID: 1, Orig: first.orig, Reply: first.reply, Start: t0},
			End:     t0.Add(2 * time.Second),
			Counted: true, OrigPackets: 5, OrigBytes: 300, ReplyPackets: 8, ReplyBytes: 12000,
		}
		if e.id != pid("a") || e.end != want {
			t.Errorf("end = %q %+v\nwant %q %+v", e.id, e.end, "a", want)
		}
		if _, ok := tr.observeDestroy(counters(closing(tcpTimeWait)), t0.Add(2*time.Minute)); ok {
			t.Error("DESTROY after the close ended the flow again")
		}
		checkEmpty(t, tr)
	})

	t.Run("reset", func(t *testing.T) {
		tr := setup(t)
		tr.observeClose(closing(tcpClose), t0.Add(time.Second))
		e, ok := tr.finish(counters(closing(tcpClose)))
		if !ok || !e.end.Reset || !e.end.End.Equal(t0.Add(time.Second)) {
			t.Errorf("end = %+v, %v; want a reset at the close", e.end, ok)
		}
	})

	t.Run("counters from the destroy", func(t *testing.T) {
		// The entry was gone when the close was handled.
		tr := setup(t)
		tr.observeClose(closing(tcpClose), t0.Add(time.Second))
		d := counters(closing(tcpClose))
		d.stop = t0.Add(11 * time.Second)
		e, ok := tr.observeDestroy(d, t0.Add(12*time.Second))
		if !ok || !e.end.End.Equal(t0.Add(time.Second)) || !e.end.Reset || e.end.OrigBytes != 300 {
			t.Errorf("end = %+v, %v; want at the close, reset, with the DESTROY's counters", e.end, ok)
		}
		checkEmpty(t, tr)
	})

	t.Run("close missed", func(t *testing.T) {
		for _, state := range []uint8{tcpTimeWait, tcpClose, tcpEstablished} {
			tr := setup(t)
			e, ok := tr.observeDestroy(counters(closing(state)), t0.Add(2*time.Minute))
			if !ok || !e.end.End.Equal(t0.Add(2*time.Minute)) || e.end.Reset != (state == tcpClose) {
				t.Errorf("state %d: end = %+v, %v; want at the DESTROY, reset %v", state, e.end, ok, state == tcpClose)
			}
		}
	})

	t.Run("other entry, same tuple", func(t *testing.T) {
		tr := setup(t)
		other := closing(tcpTimeWait)
		other.id = 2
		if _, ok := tr.observeClose(other, t0); ok {
			t.Error("another entry's close observed")
		}
		tr.observeClose(closing(tcpTimeWait), t0)
		if _, ok := tr.finish(counters(other)); ok {
			t.Error("another entry's counters finished the flow")
		}
		if _, ok := tr.observeDestroy(first, t0); !ok {
			t.Error("flow not tracked after a lookup found another entry")
		}
	})
}

func TestTrackerAdmit(t *testing.T) {
	tr := newTracker(0)
	tr.expect(pid("a"), Match{addr("192.0.2.1"), ap("192.0.2.2:40000")})
	newP := func(src, dst string, id uint32) peeked {
		return peeked{kind: eventNew, id: id, hasID: true, src: addr(src), dst: ap(dst)}
	}
	endP := func(kind eventKind, id uint32) peeked { return peeked{kind: kind, id: id, hasID: true} }
	admitted := func(p peeked) bool {
		_, ok := tr.admit(p)
		return ok
	}

	if admitted(newP("192.0.2.9", "192.0.2.2:40000", 1)) || admitted(newP("192.0.2.1", "192.0.2.2:40001", 1)) {
		t.Error("NEW admitted for addresses nobody expects")
	}
	if admitted(endP(eventClose, 7)) || admitted(endP(eventDestroy, 7)) {
		t.Error("events of an unknown flow admitted")
	}
	if !admitted(peeked{kind: eventDestroy}) {
		t.Error("event without an id not admitted")
	}
	p := newP("192.0.2.1", "192.0.2.2:40000", 7)
	claim, ok := tr.admit(p)
	if !ok || claim == nil || claim.id != pid("a") {
		t.Fatalf("expected NEW: admitted %v with claim %+v, want a claim of a", ok, claim)
	}
	if !admitted(endP(eventClose, 7)) || !admitted(endP(eventDestroy, 7)) {
		t.Error("events of a queued NEW not admitted")
	}
	if admitted(newP("192.0.2.1", "192.0.2.2:40000", 8)) {
		t.Error("a second NEW admitted for a claimed expectation")
	}
	if _, _, ok := tr.observeNew(snap(7, "192.0.2.1:51000", "192.0.2.2:40000"), t0, claim); !ok {
		t.Fatal("queued NEW did not use its claim")
	}
	tr.settle(p, claim)
	if len(tr.inflight) != 0 || len(tr.claims) != 0 || !admitted(endP(eventDestroy, 7)) {
		t.Errorf("after dispatch: inflight %v, claims %v, DESTROY admitted %v",
			tr.inflight, tr.claims, admitted(endP(eventDestroy, 7)))
	}
	if n, _ := tr.counts(); n != 0 {
		t.Errorf("%d expectations pending after use", n)
	}
	tr.observeDestroy(snap(7, "192.0.2.1:51000", "192.0.2.2:40000"), t0)
	if admitted(endP(eventDestroy, 7)) {
		t.Error("DESTROY of an ended flow admitted")
	}
}

// TestTrackerClaim: a NEW event claims its expectation when the reader
// admits it, so that closing the pinhole (forget) while the event waits for
// the dispatcher does not lose the use; a claim its flow cannot use is
// given back, unless the expectation was forgotten or replaced meanwhile.
func TestTrackerClaim(t *testing.T) {
	m := Match{addr("192.0.2.1"), ap("192.0.2.2:40000")}
	p := peeked{kind: eventNew, id: 7, hasID: true, src: m.Src, dst: m.Dst}
	flow := snap(7, "192.0.2.1:51000", "192.0.2.2:40000")
	admit := func(t *testing.T, tr *tracker) *expectation {
		t.Helper()
		claim, ok := tr.admit(p)
		if !ok || claim == nil {
			t.Fatal("expected NEW not admitted")
		}
		return claim
	}
	pending := func(tr *tracker) int { n, _ := tr.counts(); return n }

	t.Run("forget while queued", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		claim := admit(t, tr)
		if tr.forget(pid("a")) {
			t.Error("forget reported a claimed expectation as pending")
		}
		u, _, ok := tr.observeNew(flow, t0, claim)
		tr.settle(p, claim)
		if !ok || u.id != pid("a") {
			t.Fatalf("use = %+v, %v; want the flow to use a", u, ok)
		}
		if pending(tr) != 0 || len(tr.claims) != 0 {
			t.Errorf("left %d pending, claims %v", pending(tr), tr.claims)
		}
		if _, ok := tr.observeDestroy(flow, t0); !ok {
			t.Error("flow not tracked to its end")
		}
	})
	t.Run("oldest claimed", func(t *testing.T) {
		tr := newTracker(0)
		tr.expect(pid("a"), m)
		tr.expect(pid("b"), m)
		tr.expect(pid("a"), m) // replaced: now the newest
		if claim := admit(t, tr); claim.id != pid("b") {
			t.Errorf("claimed %q, want the oldest, b", claim.id)
		}
	})
	for _, tt := range []struct {
		name    string
		between func(tr *tracker)
		use     bool // the flow is already tracked: the claim goes unused
		want    int  // expectations pending after the settle
	}{
		{"unused given back", func(*tracker) {}, false, 1},
		{"duplicate flow gives back", func(*tracker) {}, true, 1},
		{"forgotten not given back", func(tr *tracker) { tr.forget(pid("a")) }, false, 0},
		{"replaced not given back", func(tr *tracker) { tr.expect(pid("a"), m) }, false, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := newTracker(0)
			if tt.use {
				tr.expect(pid("old"), m)
				tr.observeNew(flow, t0, nil)
			}
			tr.expect(pid("a"), m)
			claim := admit(t, tr)
			tt.between(tr)
			if tt.use {
				if _, _, ok := tr.observeNew(flow, t0, claim); ok {
					t.Fatal("a tracked flow used another expectation")
				}
			}
			tr.settle(p, claim) // dispatched unused, or dropped undecoded
			if n := pending(tr); n != tt.want || len(tr.claims) != 0 || len(tr.inflight) != 0 {
				t.Fatalf("%d pending (want %d), claims %v, inflight %v", n, tt.want, tr.claims, tr.inflight)
			}
			if tt.want == 0 {
				return
			}
			other := snap(9, "192.0.2.1:51009", "192.0.2.2:40000")
			if u, _, ok := tr.observeNew(other, t0, nil); !ok || u.id != pid("a") {
				t.Errorf("next flow: use = %+v, %v; want a", u, ok)
			}
		})
	}
}

func TestTrackerEvict(t *testing.T) {
	tr := newTracker(2)
	var flows []snapshot
	for i := range 3 {
		id := pid(fmt.Sprint(i))
		tr.expect(id, Match{addr("192.0.2.1"), netip.AddrPortFrom(addr("192.0.2.2"), uint16(40000+i))})
		flows = append(flows, snap(uint32(i+1), "192.0.2.1:51000", fmt.Sprintf("192.0.2.2:%d", 40000+i)))
	}
	for i, f := range flows {
		_, evicted, ok := tr.observeNew(f, t0.Add(time.Duration(i)*time.Second), nil)
		if !ok {
			t.Fatalf("flow %d not used", i)
		}
		if i < 2 && len(evicted) != 0 || i == 2 && (len(evicted) != 1 || evicted[0].id != pid("0")) {
			t.Fatalf("flow %d evicted %+v", i, evicted)
		}
	}
	if _, ok := tr.observeDestroy(flows[0], t0); ok {
		t.Error("evicted flow ended")
	}
	for _, f := range flows[1:] {
		if _, ok := tr.observeDestroy(f, t0); !ok {
			t.Errorf("flow %v did not end", f.orig)
		}
	}
}

func TestTrackerReconcile(t *testing.T) {
	tr := newTracker(0)
	m := func(port uint16) Match { return Match{addr("192.0.2.1"), netip.AddrPortFrom(addr("192.0.2.2"), port)} }
	for _, p := range []uint16{40000, 40001, 40002, 40003} {
		tr.expect(pid(fmt.Sprint(p)), m(p))
	}
	alive := snap(1, "192.0.2.1:50000", "192.0.2.2:40000")
	ended := snap(2, "192.0.2.1:50001", "192.0.2.2:40001")
	unsure := snap(3, "192.0.2.1:50002", "192.0.2.2:40002")
	missed := snap(4, "192.0.2.1:50003", "192.0.2.2:40003")  // NEW lost, still live
	closed := snap(5, "192.0.2.1:50004", "192.0.2.2:40004")  // UPDATE lost
	closing := snap(6, "192.0.2.1:50005", "192.0.2.2:40005") // closed, DESTROY lost
	reused := snap(7, "192.0.2.1:50006", "192.0.2.2:40006")  // DESTROY lost, tuple reused
	tr.expect(pid("40004"), m(40004))
	tr.expect(pid("40005"), m(40005))
	tr.expect(pid("40006"), m(40006))
	for _, s := range []snapshot{alive, ended, unsure, closed, closing, reused} {
		tr.observeNew(s, t0, nil)
	}
	cs := closing
	cs.state = tcpClose
	tr.observeClose(cs, t0.Add(time.Second))
	closed.state, closed.counted, closed.origPackets, closed.origBytes = tcpTimeWait, true, 4, 400
	reusedNow := reused
	reusedNow.id = 70
	// The dump lacks ended, unsure and closing; conntrack confirms ended
	// and closing gone; reused is another entry now.
	live := []snapshot{alive, missed, snap(9, "192.0.2.7:1", "192.0.2.2:40003"), closed, reusedNow}
	gone := func(f Flow) bool { return f.ID == ended.id || f.ID == closing.id || f.ID == reused.id }
	uses, ends, _ := tr.reconcile(live, t0.Add(time.Minute), gone)

	if len(uses) != 1 || uses[0].id != pid("40003") || uses[0].flow.Orig != missed.orig || !uses[0].flow.Start.Equal(t0.Add(time.Minute)) {
		t.Errorf("uses = %+v, want 40003 for %v", uses, missed.orig)
	}
	got := map[rules.PinholeID]FlowEnd{}
	for _, e := range ends {
		got[e.id] = e.end
	}
	if e := got[pid("40001")]; len(ends) != 4 || !e.Lost || e.Counted || !e.End.Equal(t0.Add(time.Minute)) {
		t.Errorf("ends = %+v, want 40001 lost", ends)
	}
	if e := got[pid("40004")]; e.Lost || !e.Counted || e.OrigBytes != 400 || !e.End.Equal(t0.Add(time.Minute)) {
		t.Errorf("40004 end = %+v, want counted from the dump", e)
	}
	if e := got[pid("40005")]; !e.Lost || !e.Reset || !e.End.Equal(t0.Add(time.Second)) {
		t.Errorf("40005 end = %+v, want lost, reset, at the close", e)
	}
	if e := got[pid("40006")]; !e.Lost {
		t.Errorf("40006 end = %+v, want lost", e)
	}
	if n, f := tr.counts(); n != 0 || f != 3 || len(tr.ids) != 3 {
		t.Errorf("counts = %d pending, %d tracked, %d ids; want 0, 3, 3", n, f, len(tr.ids))
	}
	for _, s := range []snapshot{alive, unsure, missed} {
		if _, ok := tr.observeDestroy(s, t0); !ok {
			t.Errorf("flow %v not tracked after reconcile", s.orig)
		}
	}
}

func TestFlowEndLogAttrs(t *testing.T) {
	f := FlowEnd{
		Flow: Flow{
			Orig:  Tuple{ap("192.0.2.1:51000"), ap("198.51.100.7:40000")},
			Reply: Tuple{ap("203.0.113.9:40000"), ap("198.51.100.1:51000")},
			Start: t0,
		},
		End:     t0.Add(2500 * time.Millisecond),
		Counted: true, OrigPackets: 3, OrigBytes: 180, ReplyPackets: 7, ReplyBytes: 9000,
	}
	if !f.NAT() {
		t.Error("NAT() = false for a translated flow")
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	log.LogAttrs(t.Context(), slog.LevelInfo, "transfer", f.LogAttrs()...)
	f.Counted, f.Reset, f.Lost = false, true, true
	log.LogAttrs(t.Context(), slog.LevelInfo, "transfer", f.LogAttrs()...)

	want := "level=INFO msg=transfer flow_src=192.0.2.1:51000 flow_dst=198.51.100.7:40000 " +
		"flow_reply_src=203.0.113.9:40000 flow_reply_dst=198.51.100.1:51000 flow_start=2025-01-02T03:04:05.000Z " +
		"flow_duration=2.5s flow_counted=true bytes_orig=180 bytes_reply=9000 packets_orig=3 packets_reply=7\n" +
		"level=INFO msg=transfer flow_src=192.0.2.1:51000 flow_dst=198.51.100.7:40000 " +
		"flow_reply_src=203.0.113.9:40000 flow_reply_dst=198.51.100.1:51000 flow_start=2025-01-02T03:04:05.000Z " +
		"flow_duration=2.5s flow_counted=false flow_reset=true flow_lost=true\n"
	if got := buf.String(); got != want {
		t.Errorf("log lines:\n%s\nwant:\n%s", got, want)
	}
}

// TestWatcherDispatch drives a Watcher without sockets: callbacks fire once,
// may call back into the Watcher, and Expect/Forget race with dispatch.
func TestWatcherDispatch(t *testing.T) {
	var logBuf bytes.Buffer
	var mu sync.Mutex
	var got []string
	var w *Watcher
	w = &Watcher{
		log: slog.New(slog.NewTextHandler(&logBuf, nil)),
		t:   newTracker(0),
		onUse: func(id rules.PinholeID, f Flow) {
			mu.Lock()
			got = append(got, "use "+id.String()+" "+f.Orig.String())
			mu.Unlock()
			w.Forget(id) // what a session does when it closes the pinhole
		},
		onEnd: func(id rules.PinholeID, f FlowEnd) {
			mu.Lock()
			got = append(got, fmt.Sprintf("end %s %d/%d", id, f.OrigBytes, f.ReplyBytes))
			mu.Unlock()
		},
	}
	w.Expect(pid("bad"), Match{Dst: ap("192.0.2.2:40000")})
	if n, _ := w.t.counts(); n != 0 || !strings.Contains(logBuf.String(), "ignoring expectation") {
		t.Errorf("invalid match registered (%d pending) or not logged: %s", n, logBuf.String())
	}

	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			id := pid(fmt.Sprint("noise", i))
			w.Expect(id, Match{addr("192.0.2.9"), netip.AddrPortFrom(addr("192.0.2.2"), uint16(30000+i))})
			w.Forget(id)
		})
	}
	w.Expect(pid("p1"), Match{addr("::ffff:192.0.2.1"), ap("[::ffff:192.0.2.2]:40000")})
	s := snap(1, "192.0.2.1:51000", "192.0.2.2:40000")
	w.dispatch(item{kind: eventNew, s: s, at: t0}, nil)
	w.dispatch(item{kind: eventNew, s: snap(2, "192.0.2.1:51001", "192.0.2.2:40000"), at: t0}, nil)
	s.counted, s.origPackets, s.origBytes, s.replyPackets, s.replyBytes = true, 1, 60, 2, 5000
	w.dispatch(item{kind: eventDestroy, s: s, at: t0.Add(time.Second)}, nil)
	wg.Wait()

	want := []string{"use " + pid("p1").String() + " 192.0.2.1:51000 -> 192.0.2.2:40000", "end " + pid("p1").String() + " 60/5000"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("callbacks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n, f := w.t.counts(); n != 0 || f != 0 {
		t.Errorf("left %d pending, %d tracked", n, f)
	}
}

// TestWatcherCloseLookup covers the lookup at a close: when the entry is
// gone, or another entry has the tuple, the DESTROY event ends the flow at
// the close; gone tells the cases apart for a resynchronization.
func TestWatcherCloseLookup(t *testing.T) {
	var lookupErr error
	var lookupID uint32
	var ends []FlowEnd
	w := &Watcher{
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		t:     newTracker(0),
		onEnd: func(_ rules.PinholeID, f FlowEnd) { ends = append(ends, f) },
		lookup: func(f Flow) (snapshot, error) {
			if lookupErr != nil {
				return snapshot{}, lookupErr
			}
			return snapshot{id: lookupID, orig: f.Orig, reply: f.Reply, state: tcpTimeWait}, nil
		},
	}
	enoent := fmt.Errorf("looking up flow: %w", unix.ENOENT)
	for _, tt := range []struct {
		name     string
		err      error
		id       uint32
		wantGone bool
	}{
		{"gone", enoent, 0, true},
		{"reused tuple", nil, 99, true},
		{"lookup failed", unix.ENOBUFS, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ends = nil
			lookupErr, lookupID = tt.err, tt.id
			w.Expect(pid("p"), Match{addr("192.0.2.1"), ap("192.0.2.2:40000")})
			s := snap(1, "192.0.2.1:51000", "192.0.2.2:40000")
			w.dispatch(item{kind: eventNew, s: s, at: t0}, nil)
			if got := w.gone(Flow{ID: 1, Orig: s.orig}); got != tt.wantGone {
				t.Errorf("gone = %v, want %v", got, tt.wantGone)
			}
			s.state = tcpTimeWait
			w.dispatch(item{kind: eventClose, s: s, at: t0.Add(time.Second)}, nil)
			if len(ends) != 0 {
				t.Fatalf("ended without counters: %+v", ends)
			}
			s.counted, s.origPackets, s.origBytes = true, 2, 120
			w.dispatch(item{kind: eventDestroy, s: s, at: t0.Add(3 * time.Minute)}, nil)
			if len(ends) != 1 || !ends[0].End.Equal(t0.Add(time.Second)) || ends[0].OrigBytes != 120 {
				t.Errorf("ends = %+v, want one at the close with the DESTROY's counters", ends)
			}
		})
	}
}

// pids numbers the pinhole names the tests use.
var pids = struct {
	sync.Mutex
	m map[string]rules.PinholeID
}{m: map[string]rules.PinholeID{}}

// pid is the pinhole ID a test calls name: the same name, the same ID.
func pid(name string) rules.PinholeID {
	pids.Lock()
	defer pids.Unlock()
	id, ok := pids.m[name]
	if !ok {
		// "s<n>.p<m>" is that ID; any other name gets one of session
		// 999999.
		var sess uint64
		var n uint32
		if k, err := fmt.Sscanf(name, "s%d.p%d", &sess, &n); err != nil || k != 2 || (rules.PinholeID{Session: sess, N: n}).String() != name {
			sess, n = 999999, uint32(len(pids.m)+1)
		}
		id = rules.PinholeID{Session: sess, N: n}
		pids.m[name] = id
	}
	return id
}
