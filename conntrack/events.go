package conntrack

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Netlink and ctnetlink constants from linux/netlink.h,
// linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_conntrack.h and
// linux/netfilter/nf_conntrack_tcp.h (uapi; x/sys/unix lacks most of them).
const (
	nlmsgHdrLen = 16 // struct nlmsghdr
	nfgenHdrLen = 4  // struct nfgenmsg, after nlmsghdr
	nlaHdrLen   = 4  // struct nlattr
	// attrOff is where the attributes of a ctnetlink message start.
	attrOff = nlmsgHdrLen + nfgenHdrLen

	nlaTypeMask = 0x3fff // ^(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

	subsysCT       = unix.NFNL_SUBSYS_CTNETLINK
	msgCTNew       = 0 // IPCTNL_MSG_CT_NEW: NEW and UPDATE events
	msgCTDelete    = 2 // IPCTNL_MSG_CT_DELETE: DESTROY events
	nlmFCreateExcl = 0x400 | 0x200

	ctaTupleOrig = 1  // CTA_TUPLE_ORIG
	ctaProtoInfo = 4  // CTA_PROTOINFO
	ctaID        = 12 // CTA_ID

	ctaTupleIP    = 1 // CTA_TUPLE_IP
	ctaTupleProto = 2 // CTA_TUPLE_PROTO
	ctaIPv4Src    = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst    = 2 // CTA_IP_V4_DST
	ctaIPv6Src    = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst    = 4 // CTA_IP_V6_DST
	ctaProtoNum   = 1 // CTA_PROTO_NUM
	ctaProtoDPort = 3 // CTA_PROTO_DST_PORT

	ctaProtoInfoTCP      = 1 // CTA_PROTOINFO_TCP
	ctaProtoInfoTCPState = 1 // CTA_PROTOINFO_TCP_STATE
)

// TCP states of conntrack (enum tcp_conntrack) that end a connection.
const (
	tcpTimeWait = 7 // TCP_CONNTRACK_TIME_WAIT: FINs seen both ways, the last one acknowledged
	tcpClose    = 8 // TCP_CONNTRACK_CLOSE: reset
)

// closedState reports whether conntrack's TCP state means the connection is
// over; see the package documentation.
func closedState(state uint8) bool { return state == tcpTimeWait || state == tcpClose }

// peeked is what the Watcher needs to know about an event before it decodes
// it, read from the raw message without allocating.
type peeked struct {
	kind  eventKind // zero: not a TCP event the Watcher uses
	id    uint32    // CTA_ID, when hasID
	hasID bool
	// src and dst are the original direction's source address and
	// destination, for NEW events.
	src netip.Addr
	dst netip.AddrPort
}

// peekEvent classifies one netlink message (header type and flags, data
// after the netlink header): TCP NEW events, TCP UPDATE events to a closed
// state (as eventClose) and TCP DESTROY events; anything else, including a
// malformed message, has kind zero. It mirrors eventFilter, which does the
// same in the kernel when it can.
func peekEvent(typ, flags uint16, data []byte) peeked {
	var p peeked
	if typ>>8 != subsysCT || len(data) < nfgenHdrLen {
		return peeked{}
	}
	switch typ & 0xff {
	case msgCTDelete:
		p.kind = eventDestroy
	case msgCTNew:
		if flags&nlmFCreateExcl != 0 {
			p.kind = eventNew
		} else {
			p.kind = eventClose // if the state says so, below
		}
	default:
		return peeked{}
	}
	var proto, state uint8
	var hasProto, hasState bool
	for a := data[nfgenHdrLen:]; ; {
		typ, val, rest, ok := nextAttr(a)
		if !ok {
			break
		}
		a = rest
		switch typ {
		case ctaID:
			if len(val) == 4 {
				p.id, p.hasID = binary.BigEndian.Uint32(val), true
			}
		case ctaTupleOrig:
			proto, hasProto = p.peekTuple(val)
		case ctaProtoInfo:
			if tcp, ok := findAttr(val, ctaProtoInfoTCP); ok {
				if s, ok := findAttr(tcp, ctaProtoInfoTCPState); ok && len(s) == 1 {
					state, hasState = s[0], true
				}
			}
		}
	}
	switch {
	case !hasProto || proto != unix.IPPROTO_TCP:
		return peeked{}
	case p.kind == eventClose && (!hasState || !closedState(state)):
		return peeked{}
	case p.kind == eventNew && (!p.src.IsValid() || !p.dst.IsValid()):
		return peeked{}
	}
	return p
}

// peekTuple reads the protocol number and, into p, the source address and
// destination of a CTA_TUPLE_ORIG.
func (p *peeked) peekTuple(tuple []byte) (proto uint8, ok bool) {
	var dst netip.Addr
	var port uint16
	var hasPort bool
	for a := tuple; ; {
		typ, val, rest, more := nextAttr(a)
		if !more {
			break
		}
		a = rest
		switch typ {
		case ctaTupleIP:
			for b := val; ; {
				typ, v, rest, more := nextAttr(b)
				if !more {
					break
				}
				b = rest
				switch {
				case typ == ctaIPv4Src && len(v) == 4:
					p.src = netip.AddrFrom4([4]byte(v))
				case typ == ctaIPv4Dst && len(v) == 4:
					dst = netip.AddrFrom4([4]byte(v))
				case typ == ctaIPv6Src && len(v) == 16:
					p.src = netip.AddrFrom16([16]byte(v)).Unmap()
				case typ == ctaIPv6Dst && len(v) == 16:
					dst = netip.AddrFrom16([16]byte(v)).Unmap()
				}
			}
		case ctaTupleProto:
			if v, found := findAttr(val, ctaProtoNum); found && len(v) == 1 {
				proto, ok = v[0], true
			}
			if v, found := findAttr(val, ctaProtoDPort); found && len(v) == 2 {
				port, hasPort = binary.BigEndian.Uint16(v), true
			}
		}
	}
	if dst.IsValid() && hasPort {
		p.dst = netip.AddrPortFrom(dst, port)
	}
	return proto, ok
}

// nextAttr splits the first netlink attribute off b: its type (without the
// nested and byte-order flags), its payload and what follows it.
func nextAttr(b []byte) (typ uint16, val, rest []byte, ok bool) {
	if len(b) < nlaHdrLen {
		return 0, nil, nil, false
	}
	n := int(binary.NativeEndian.Uint16(b[0:2]))
	if n < nlaHdrLen || n > len(b) {
		return 0, nil, nil, false
	}
	next := min((n+3)&^3, len(b))
	return binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask, b[nlaHdrLen:n], b[next:], true
}

// findAttr returns the payload of the first attribute of type typ in b.
func findAttr(b []byte, typ uint16) ([]byte, bool) {
	for {
		t, val, rest, ok := nextAttr(b)
		if !ok {
			return nil, false
		}
		if t == typ {
			return val, true
		}
		b = rest
	}
}

// splitMessage splits the first netlink message off b: its header type and
// flags, its data (after the header) and what follows it.
func splitMessage(b []byte) (typ, flags uint16, data, rest []byte, ok bool) {
	if len(b) < nlmsgHdrLen {
		return 0, 0, nil, nil, false
	}
	n := int(binary.NativeEndian.Uint32(b[0:4]))
	if n < nlmsgHdrLen || n > len(b) {
		return 0, 0, nil, nil, false
	}
	next := min((n+3)&^3, len(b))
	typ = binary.NativeEndian.Uint16(b[4:6])
	flags = binary.NativeEndian.Uint16(b[6:8])
	return typ, flags, b[nlmsgHdrLen:n], b[next:], true
}

// eventFilter is a classic BPF program for the event socket that passes
// what peekEvent accepts (by protocol, type and TCP state, not by flow) and
// drops everything else in the kernel, before it is queued: UDP and ICMP
// events, and UPDATE events of TCP state changes other than to TIME_WAIT or
// CLOSE, which are most of the traffic on the UPDATE group. It walks the
// attributes with the kernel's netlink-attribute extensions (SKF_AD_NLATTR,
// SKF_AD_NLATTR_NEST), as libnetfilter_conntrack's filters do.
func eventFilter() ([]bpf.RawInstruction, error) {
	// The netlink header is in host byte order; the loads read bytes.
	typeLo, typeHi, flagsHi := uint32(4), uint32(5), uint32(7)
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 { // big endian
		typeLo, typeHi, flagsHi = 5, 4, 6
	}
	var p program
	p.add(bpf.LoadAbsolute{Off: typeHi, Size: 1})
	p.jump(bpf.JumpNotEqual, subsysCT, "drop", "")
	p.add(bpf.LoadAbsolute{Off: typeLo, Size: 1})
	p.jump(bpf.JumpEqual, msgCTDelete, "tcp", "")
	p.jump(bpf.JumpNotEqual, msgCTNew, "drop", "")
	p.add(bpf.LoadAbsolute{Off: flagsHi, Size: 1})
	p.jump(bpf.JumpBitsSet, nlmFCreateExcl>>8, "tcp", "")
	// UPDATE: only to TIME_WAIT or CLOSE.
	p.findAttr(attrOff, ctaProtoInfo, ctaProtoInfoTCP, ctaProtoInfoTCPState)
	p.add(bpf.TAX{}, bpf.LoadIndirect{Off: nlaHdrLen, Size: 1})
	p.jump(bpf.JumpEqual, tcpTimeWait, "tcp", "")
	p.jump(bpf.JumpNotEqual, tcpClose, "drop", "")
	p.label("tcp")
	p.findAttr(attrOff, ctaTupleOrig, ctaTupleProto, ctaProtoNum)
	p.add(bpf.TAX{}, bpf.LoadIndirect{Off: nlaHdrLen, Size: 1})
	p.jump(bpf.JumpNotEqual, unix.IPPROTO_TCP, "drop", "")
	p.add(bpf.RetConstant{Val: math.MaxUint32})
	p.label("drop")
	p.add(bpf.RetConstant{Val: 0})
	return p.assemble()
}

// program assembles a classic BPF program with named jump targets.
type program struct {
	ins    []bpf.Instruction
	jumps  map[int][2]string // instruction index -> true, false target ("" = next)
	labels map[string]int
}

func (p *program) add(ins ...bpf.Instruction) { p.ins = append(p.ins, ins...) }

func (p *program) jump(cond bpf.JumpTest, val uint32, ifTrue, ifFalse string) {
	if p.jumps == nil {
		p.jumps = make(map[int][2]string)
	}
	p.jumps[len(p.ins)] = [2]string{ifTrue, ifFalse}
	p.add(bpf.JumpIf{Cond: cond, Val: val})
}

func (p *program) label(name string) {
	if p.labels == nil {
		p.labels = make(map[string]int)
	}
	p.labels[name] = len(p.ins)
}

// findAttr leaves in A the offset of the attribute found by following path
// from the top-level attributes at off (the first type at the top level,
// the others nested), or drops the message when one is missing.
func (p *program) findAttr(off uint32, path ...uint32) {
	p.add(bpf.LoadConstant{Dst: bpf.RegA, Val: off})
	for i, typ := range path {
		ext := bpf.ExtNetlinkAttrNested
		if i == 0 {
			ext = bpf.ExtNetlinkAttr
		}
		p.add(bpf.LoadConstant{Dst: bpf.RegX, Val: typ}, bpf.LoadExtension{Num: ext})
		p.jump(bpf.JumpEqual, 0, "drop", "")
	}
}

func (p *program) assemble() ([]bpf.RawInstruction, error) {
	for at, targets := range p.jumps {
		j := p.ins[at].(bpf.JumpIf)
		for i, name := range targets {
			skip := 0
			if name != "" {
				to, ok := p.labels[name]
				if !ok || to <= at || to-at-1 > math.MaxUint8 {
					return nil, fmt.Errorf("assembling event filter: bad jump to %q", name)
				}
				skip = to - at - 1
			}
			if i == 0 {
				j.SkipTrue = uint8(skip)
			} else {
				j.SkipFalse = uint8(skip)
			}
		}
		p.ins[at] = j
	}
	raw, err := bpf.Assemble(p.ins)
	if err != nil {
		return nil, fmt.Errorf("assembling event filter: %w", err)
	}
	return raw, nil
}
