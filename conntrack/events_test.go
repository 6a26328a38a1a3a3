package conntrack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// TCP states of conntrack, for test events.
const (
	tcpEstablished = 3
	tcpFinWait     = 4
	tcpCloseWait   = 5
	tcpLastAck     = 6
)

// testEvent describes a ctnetlink event message as the kernel builds it.
type testEvent struct {
	msg     uint8 // msgCTNew or msgCTDelete
	create  bool  // NLM_F_CREATE|NLM_F_EXCL: a NEW event, not an UPDATE
	subsys  uint8 // 0 means NFNL_SUBSYS_CTNETLINK
	proto   uint8 // 0 means TCP
	src     string
	dst     string
	id      uint32 // 0: no CTA_ID
	state   uint8  // 0: no CTA_PROTOINFO
	counted bool   // CTA_COUNTERS_*: 10 packets, 1000 bytes each way
}

func newEvent(src, dst string, id uint32) testEvent {
	return testEvent{msg: msgCTNew, create: true, src: src, dst: dst, id: id, state: 1}
}

func updateEvent(src, dst string, id uint32, state uint8) testEvent {
	return testEvent{msg: msgCTNew, src: src, dst: dst, id: id, state: state}
}

func destroyEvent(src, dst string, id uint32, state uint8) testEvent {
	return testEvent{msg: msgCTDelete, src: src, dst: dst, id: id, state: state, counted: true}
}

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func tupleAttr(typ uint16, src, dst netip.AddrPort, proto uint8) netfilter.Attribute {
	ip := netfilter.Attribute{Type: ctaTupleIP, Nested: true}
	if src.Addr().Is4() {
		s, d := src.Addr().As4(), dst.Addr().As4()
		ip.Children = []netfilter.Attribute{{Type: ctaIPv4Src, Data: s[:]}, {Type: ctaIPv4Dst, Data: d[:]}}
	} else {
		s, d := src.Addr().As16(), dst.Addr().As16()
		ip.Children = []netfilter.Attribute{{Type: ctaIPv6Src, Data: s[:]}, {Type: ctaIPv6Dst, Data: d[:]}}
	}
	return netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
		ip,
		{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoNum, Data: []byte{proto}},
			{Type: 2, Data: u16(src.Port())}, // CTA_PROTO_SRC_PORT
			{Type: ctaProtoDPort, Data: u16(dst.Port())},
		}},
	}}
}

// message encodes the event as a netlink message.
func (e testEvent) message(t testing.TB) netlink.Message {
	t.Helper()
	src, dst := ap(e.src), ap(e.dst)
	proto := e.proto
	if proto == 0 {
		proto = unix.IPPROTO_TCP
	}
	attrs := []netfilter.Attribute{
		tupleAttr(ctaTupleOrig, src, dst, proto),
		tupleAttr(2, dst, src, proto), // CTA_TUPLE_REPLY
	}
	if e.id != 0 {
		attrs = append(attrs, netfilter.Attribute{Type: ctaID, Data: u32(e.id)})
	}
	attrs = append(attrs,
		netfilter.Attribute{Type: 3, Data: u32(0x8)}, // CTA_STATUS
		netfilter.Attribute{Type: 7, Data: u32(120)}, // CTA_TIMEOUT
	)
	if e.counted {
		for _, typ := range []uint16{9, 10} { // CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY
			attrs = append(attrs, netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
				{Type: 1, Data: u64(10)},   // CTA_COUNTERS_PACKETS
				{Type: 2, Data: u64(1000)}, // CTA_COUNTERS_BYTES
			}})
		}
	}
	if e.state != 0 {
		tcp := []netfilter.Attribute{{Type: ctaProtoInfoTCPState, Data: []byte{e.state}}}
		if e.msg == msgCTNew {
			tcp = append(tcp,
				netfilter.Attribute{Type: 2, Data: []byte{7}},    // CTA_PROTOINFO_TCP_WSCALE_ORIGINAL
				netfilter.Attribute{Type: 3, Data: []byte{7}},    // CTA_PROTOINFO_TCP_WSCALE_REPLY
				netfilter.Attribute{Type: 4, Data: []byte{3, 0}}, // CTA_PROTOINFO_TCP_FLAGS_ORIGINAL
				netfilter.Attribute{Type: 5, Data: []byte{3, 0}}, // CTA_PROTOINFO_TCP_FLAGS_REPLY
			)
		}
		attrs = append(attrs, netfilter.Attribute{Type: ctaProtoInfo, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoInfoTCP, Nested: true, Children: tcp},
		}})
	}
	h := netfilter.Header{
		SubsystemID: netfilter.SubsystemID(e.subsys),
		MessageType: netfilter.MessageType(e.msg),
		Family:      netfilter.ProtoIPv4,
	}
	if e.subsys == 0 {
		h.SubsystemID = netfilter.NFSubsysCTNetlink
	}
	if src.Addr().Is6() {
		h.Family = netfilter.ProtoIPv6
	}
	if e.create {
		h.Flags = netlink.Create | netlink.Excl
	}
	m, err := netfilter.MarshalNetlink(h, attrs)
	if err != nil {
		t.Fatalf("encoding %+v: %v", e, err)
	}
	m.Header.Length = uint32(nlmsgHdrLen + len(m.Data))
	return m
}

// raw encodes the event as the kernel delivers it, netlink header included.
func (e testEvent) raw(t testing.TB) []byte {
	t.Helper()
	b, err := e.message(t).MarshalBinary()
	if err != nil {
		t.Fatalf("encoding %+v: %v", e, err)
	}
	return b
}

func (e testEvent) peek(t testing.TB) peeked {
	t.Helper()
	m := e.message(t)
	return peekEvent(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data)
}

func TestPeekEvent(t *testing.T) {
	const c, s = "192.0.2.1:51000", "192.0.2.2:40000"
	const c6, s6 = "[2001:db8::1]:51000", "[2001:db8::2]:40000"
	newP := func(src, dst string, id uint32) peeked {
		return peeked{kind: eventNew, id: id, hasID: id != 0, src: ap(src).Addr(), dst: ap(dst)}
	}
	tests := []struct {
		name string
		ev   testEvent
		want peeked
	}{
		{"new", newEvent(c, s, 7), newP(c, s, 7)},
		{"new ipv6", newEvent(c6, s6, 7), newP(c6, s6, 7)},
		{"new without id", newEvent(c, s, 0), newP(c, s, 0)},
		{"new udp", testEvent{msg: msgCTNew, create: true, proto: unix.IPPROTO_UDP, src: c, dst: s, id: 7}, peeked{}},
		{"new without protoinfo", testEvent{msg: msgCTNew, create: true, src: c, dst: s, id: 7}, newP(c, s, 7)},
		{"update established", updateEvent(c, s, 7, tcpEstablished), peeked{}},
		{"update fin wait", updateEvent(c, s, 7, tcpFinWait), peeked{}},
		{"update close wait", updateEvent(c, s, 7, tcpCloseWait), peeked{}},
		{"update last ack", updateEvent(c, s, 7, tcpLastAck), peeked{}},
		{"update time wait", updateEvent(c, s, 7, tcpTimeWait), peeked{kind: eventClose, id: 7, hasID: true, src: ap(c).Addr(), dst: ap(s)}},
		{"update close", updateEvent(c6, s6, 7, tcpClose), peeked{kind: eventClose, id: 7, hasID: true, src: ap(c6).Addr(), dst: ap(s6)}},
		{"update without protoinfo", updateEvent(c, s, 7, 0), peeked{}},
		{"update udp", testEvent{msg: msgCTNew, proto: unix.IPPROTO_UDP, src: c, dst: s, id: 7, state: tcpTimeWait}, peeked{}},
		{"destroy", destroyEvent(c, s, 9, tcpTimeWait), peeked{kind: eventDestroy, id: 9, hasID: true, src: ap(c).Addr(), dst: ap(s)}},
		{"destroy established", destroyEvent(c, s, 9, tcpEstablished), peeked{kind: eventDestroy, id: 9, hasID: true, src: ap(c).Addr(), dst: ap(s)}},
		{"destroy udp", testEvent{msg: msgCTDelete, proto: unix.IPPROTO_UDP, src: c, dst: s, id: 9}, peeked{}},
		{"expectation subsystem", testEvent{subsys: 2, msg: msgCTNew, create: true, src: c, dst: s, id: 7}, peeked{}},
		{"get message", testEvent{msg: 1, src: c, dst: s, id: 7, state: tcpTimeWait}, peeked{}},
	}
	filter, err := eventFilter()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.ev.peek(t); got != tt.want {
				t.Errorf("peekEvent = %+v\nwant %+v", got, tt.want)
			}
			// The kernel filter passes exactly what peekEvent accepts.
			if got, want := runFilter(t, filter, tt.ev.raw(t)) != 0, tt.want.kind != 0; got != want {
				t.Errorf("filter passes = %v, want %v", got, want)
			}
		})
	}
}

func TestPeekEventMalformed(t *testing.T) {
	m := updateEvent("192.0.2.1:51000", "192.0.2.2:40000", 7, tcpTimeWait).message(t)
	typ, flags := uint16(m.Header.Type), uint16(m.Header.Flags)
	filter, err := eventFilter()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// Every truncation loses the protocol or the state; none panics.
	for n := range len(m.Data) {
		if p := peekEvent(typ, flags, m.Data[:n]); p.kind != 0 {
			t.Errorf("peekEvent(first %d bytes) = %+v, want nothing", n, p)
		}
	}
	for n := range len(raw) {
		if runFilter(t, filter, raw[:n]) != 0 {
			t.Errorf("filter passes the first %d bytes", n)
		}
	}
	// An attribute claiming more than there is ends the walk.
	bad := bytes.Clone(m.Data)
	binary.NativeEndian.PutUint16(bad[nfgenHdrLen:], 0xfff0)
	if p := peekEvent(typ, flags, bad); p.kind != 0 {
		t.Errorf("peekEvent(bad length) = %+v, want nothing", p)
	}
}

func TestPeekEventAllocs(t *testing.T) {
	m := newEvent("[2001:db8::1]:51000", "[2001:db8::2]:40000", 7).message(t)
	typ, flags := uint16(m.Header.Type), uint16(m.Header.Flags)
	if n := testing.AllocsPerRun(100, func() { peekEvent(typ, flags, m.Data) }); n != 0 {
		t.Errorf("peekEvent allocates %v times, want 0", n)
	}
}

func TestSplitMessage(t *testing.T) {
	a := newEvent("192.0.2.1:51000", "192.0.2.2:40000", 7).raw(t)
	b := destroyEvent("192.0.2.1:51000", "192.0.2.2:40000", 7, tcpTimeWait).raw(t)
	buf := append(append(bytes.Clone(a), b...), 1, 2, 3) // trailing garbage
	var kinds []eventKind
	for rest := buf; ; {
		typ, flags, data, next, ok := splitMessage(rest)
		if !ok {
			break
		}
		rest = next
		kinds = append(kinds, peekEvent(typ, flags, data).kind)
	}
	if len(kinds) != 2 || kinds[0] != eventNew || kinds[1] != eventDestroy {
		t.Errorf("split into %v, want [new destroy]", kinds)
	}
	if _, _, _, _, ok := splitMessage(a[:nlmsgHdrLen-1]); ok {
		t.Error("splitMessage accepted a truncated header")
	}
	if _, _, _, _, ok := splitMessage(a[:len(a)-1]); ok {
		t.Error("splitMessage accepted a truncated message")
	}
}

// TestWatcherDecode drives the event reader's admission: only events that
// can concern an expectation or a tracked flow are decoded, including an
// UPDATE read before the dispatcher has handled its flow's NEW event.
func TestWatcherDecode(t *testing.T) {
	const c, s = "192.0.2.1:51000", "192.0.2.2:40000"
	var logBuf bytes.Buffer
	w := &Watcher{log: slog.New(slog.NewTextHandler(&logBuf, nil)), t: newTracker(0)}
	w.Expect(pid("p"), Match{Src: addr("192.0.2.1"), Dst: ap(s)})
	w.lookup = func(f Flow) (snapshot, error) {
		got := snapshot{id: f.ID, zone: f.Zone, orig: f.Orig, reply: f.Reply, state: tcpTimeWait,
			counted: true, origPackets: 3, origBytes: 300, replyPackets: 4, replyBytes: 400}
		return got, nil
	}
	var ends []FlowEnd
	w.onEnd = func(_ rules.PinholeID, f FlowEnd) { ends = append(ends, f) }

	decode := func(e testEvent) (item, bool) {
		m := e.message(t)
		return w.decode(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data, t0)
	}
	type step struct {
		name  string
		ev    testEvent
		admit bool
	}
	// One batch, read before anything is dispatched.
	var queued []item
	for _, st := range []step{
		{"other source", newEvent("192.0.2.9:51000", s, 6), false},
		{"other port", newEvent(c, "192.0.2.2:40001", 5), false},
		{"update of another flow", updateEvent(c, "192.0.2.2:40001", 5, tcpTimeWait), false},
		{"destroy of another flow", destroyEvent(c, "192.0.2.2:40001", 5, tcpTimeWait), false},
		{"expected", newEvent(c, s, 7), true},
		{"established", updateEvent(c, s, 7, tcpEstablished), false},
		{"time wait", updateEvent(c, s, 7, tcpTimeWait), true},
		{"destroy", destroyEvent(c, s, 7, tcpTimeWait), true},
	} {
		it, ok := decode(st.ev)
		if ok != st.admit {
			t.Fatalf("%s: admitted = %v, want %v", st.name, ok, st.admit)
		}
		if ok {
			queued = append(queued, it)
		}
	}
	if queued[0].kind != eventNew || queued[1].kind != eventClose || queued[1].s.state != tcpTimeWait ||
		queued[2].kind != eventDestroy || !queued[2].s.counted {
		t.Fatalf("queued %+v", queued)
	}
	for _, it := range queued {
		w.dispatch(it, nil)
	}
	if len(ends) != 1 || ends[0].OrigBytes != 300 || !ends[0].End.Equal(t0) || ends[0].Reset {
		t.Errorf("ends = %+v, want one at the close with the looked-up counters", ends)
	}
	if len(w.t.ids) != 0 || len(w.t.inflight) != 0 {
		t.Errorf("left ids %v, inflight %v", w.t.ids, w.t.inflight)
	}
	if _, ok := decode(destroyEvent(c, s, 7, tcpTimeWait)); ok {
		t.Error("DESTROY of an ended flow admitted")
	}

	// Dropping costs no allocation.
	drop := []netlink.Message{
		newEvent("192.0.2.9:51000", s, 6).message(t),
		updateEvent(c, "192.0.2.2:40001", 5, tcpTimeWait).message(t),
		destroyEvent(c, "192.0.2.2:40001", 5, tcpTimeWait).message(t),
	}
	if n := testing.AllocsPerRun(100, func() {
		for _, m := range drop {
			w.decode(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data, t0)
		}
	}); n != 0 {
		t.Errorf("dropping events allocates %v times, want 0", n)
	}
	if logBuf.Len() != 0 {
		t.Errorf("unexpected log: %s", logBuf.String())
	}
}

// TestWatcherForgetQueued is the race seen end to end: the reader receives
// a flow's NEW event while the dispatcher is busy (in a callback), the
// transfer is short and its session closes the pinhole (Forget) before the
// event is dispatched. The flow started before the Forget, so it still
// fires OnUse, and OnEnd at its end.
func TestWatcherForgetQueued(t *testing.T) {
	const c, s = "198.51.100.2:20", "198.51.100.1:40001"
	var got []string
	w := &Watcher{
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		t:     newTracker(0),
		onUse: func(id rules.PinholeID, f Flow) { got = append(got, "use "+id.String()+" "+f.Orig.String()) },
		onEnd: func(id rules.PinholeID, f FlowEnd) { got = append(got, fmt.Sprintf("end %s %d", id, f.OrigBytes)) },
	}
	decode := func(e testEvent) item {
		t.Helper()
		m := e.message(t)
		it, ok := w.decode(uint16(m.Header.Type), uint16(m.Header.Flags), m.Data, t0)
		if !ok {
			t.Fatalf("event %+v not admitted", e)
		}
		return it
	}
	w.Expect(pid("s1.p1"), Match{Src: addr("198.51.100.2"), Dst: ap(s)})
	queued := []item{decode(newEvent(c, s, 7))}
	w.Forget(pid("s1.p1")) // the session ended while the NEW event was queued
	queued = append(queued, decode(destroyEvent(c, s, 7, tcpTimeWait)))
	for _, it := range queued {
		w.dispatch(it, nil)
	}
	want := []string{"use s1.p1 198.51.100.2:20 -> 198.51.100.1:40001", "end s1.p1 1000"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("callbacks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n, f := w.t.counts(); n != 0 || f != 0 || len(w.t.claims) != 0 || len(w.t.inflight) != 0 {
		t.Errorf("left %d pending, %d tracked, claims %v, inflight %v", n, f, w.t.claims, w.t.inflight)
	}
}

// runFilter runs a classic BPF program on pkt the way the kernel runs a
// socket filter, with the instructions and netlink-attribute extensions
// eventFilter uses, and returns its verdict (0 drops).
func runFilter(t *testing.T, raw []bpf.RawInstruction, pkt []byte) uint32 {
	t.Helper()
	prog, _ := bpf.Disassemble(raw)
	var a, x uint32
	load := func(off uint32) (uint32, bool) {
		if int(off) >= len(pkt) {
			return 0, false
		}
		return uint32(pkt[off]), true
	}
	for pc := 0; pc < len(prog); pc++ {
		ok := true
		switch in := prog[pc].(type) {
		case bpf.LoadAbsolute:
			if in.Size != 1 {
				t.Fatalf("unsupported %v", in)
			}
			a, ok = load(in.Off)
		case bpf.LoadIndirect:
			if in.Size != 1 {
				t.Fatalf("unsupported %v", in)
			}
			a, ok = load(x + in.Off)
		case bpf.LoadConstant:
			if in.Dst == bpf.RegA {
				a = in.Val
			} else {
				x = in.Val
			}
		case bpf.TAX:
			x = a
		case bpf.LoadExtension:
			switch in.Num {
			case bpf.ExtNetlinkAttr: // bpf_skb_get_nlattr
				if int(a)+nlaHdrLen > len(pkt) {
					a = 0
					break
				}
				a = nlaFind(pkt, int(a), len(pkt), x)
			case bpf.ExtNetlinkAttrNested: // bpf_skb_get_nlattr_nest
				if int(a)+nlaHdrLen > len(pkt) {
					a = 0
					break
				}
				n := int(binary.NativeEndian.Uint16(pkt[a:]))
				if n > len(pkt)-int(a) {
					a = 0
					break
				}
				a = nlaFind(pkt, int(a)+nlaHdrLen, int(a)+max(n, nlaHdrLen), x)
			default:
				t.Fatalf("unsupported %v", in)
			}
		case bpf.JumpIf:
			var cond bool
			switch in.Cond {
			case bpf.JumpEqual:
				cond = a == in.Val
			case bpf.JumpNotEqual:
				cond = a != in.Val
			case bpf.JumpBitsSet:
				cond = a&in.Val != 0
			case bpf.JumpBitsNotSet:
				cond = a&in.Val == 0
			default:
				t.Fatalf("unsupported %v", in)
			}
			if cond {
				pc += int(in.SkipTrue)
			} else {
				pc += int(in.SkipFalse)
			}
		case bpf.RetConstant:
			return in.Val
		default:
			t.Fatalf("unsupported instruction %v", in)
		}
		if !ok {
			return 0 // a load beyond the packet ends the program with 0
		}
	}
	t.Fatal("filter fell off its end")
	return 0
}

// nlaFind is the kernel's nla_find over pkt[from:to]: the offset of the
// first attribute of type typ, or 0.
func nlaFind(pkt []byte, from, to int, typ uint32) uint32 {
	for off := from; to-off >= nlaHdrLen; {
		n := int(binary.NativeEndian.Uint16(pkt[off:]))
		if n < nlaHdrLen || n > to-off {
			return 0
		}
		if uint32(binary.NativeEndian.Uint16(pkt[off+2:])&nlaTypeMask) == typ {
			return uint32(off)
		}
		off += (n + 3) &^ 3
	}
	return 0
}
