package inspect

// Reassembled TCP streams of the control connections.

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/reassembly"

	"github.com/ftpalg/ftpalg/rules"
)

// New implements reassembly.StreamFactory: one stream per control
// connection.
func (ins *inspector) New(netFlow, tcpFlow gopacket.Flow, tcp *layers.TCP, ac reassembly.AssemblerContext) reassembly.Stream {
	if len(ins.sessions) >= ins.opts.MaxSessions {
		ins.over++
		return ignoreStream{}
	}
	src, dst := endpoint(netFlow.Src(), tcpFlow.Src()), endpoint(netFlow.Dst(), tcpFlow.Dst())
	var clientFirst bool
	switch {
	case tcp.SYN:
		clientFirst = !tcp.ACK
	case ins.ctrl[dst.Port()] != ins.ctrl[src.Port()]:
		clientFirst = ins.ctrl[dst.Port()]
	default: // both are control ports: the lower is the server's
		clientFirst = dst.Port() <= src.Port()
	}
	client, server := src, dst
	if !clientFirst {
		client, server = dst, src
	}
	t := ac.GetCaptureInfo().Timestamp
	s := newSess(ins, client, server, t, tcp.SYN)
	ins.sessions = append(ins.sessions, s)
	if tcp.SYN {
		ins.name(s)
	}
	st := &stream{ins: ins, s: s, clientFirst: clientFirst}
	ins.conns[[2]netip.AddrPort{client, server}] = st
	return st
}

// name gives s the next session ID; sessions without payload or SYN (a
// stray ACK after the end) never get one and are not reported.
func (ins *inspector) name(s *sess) {
	if s.rep.ID == "" {
		ins.ids++
		s.num = uint64(ins.ids)
		s.rep.ID = rules.SessionName(s.num)
		s.m.SetID(s.num)
	}
}

func endpoint(a, p gopacket.Endpoint) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.Raw())
	var port uint16
	if raw := p.Raw(); len(raw) == 2 {
		port = binary.BigEndian.Uint16(raw)
	}
	return netip.AddrPortFrom(ip.Unmap(), port)
}

// stream is the reassembly.Stream of one control connection.
type stream struct {
	ins         *inspector
	s           *sess
	clientFirst bool // reassembly's client-to-server direction is the FTP client's
	rst         map[reassembly.TCPFlowDirection]bool
	// Per FTP direction (client, server): the next sequence number the
	// reassembler expects, whether data waits behind a hole, and whether
	// a FIN was seen.
	pos     [2]reassembly.Sequence
	posOK   [2]bool
	waiting [2]bool
	fin     [2]bool
}

func dirIndex(dir string) int {
	if dir == DirServer {
		return 1
	}
	return 0
}

// holePermanent reports whether an acknowledgement ack, sent by the peer
// that receives dir's bytes, covers bytes of dir that the capture lacks
// while later data of dir waits behind them.
func (st *stream) holePermanent(dir string, ack uint32) bool {
	i := dirIndex(dir)
	if !st.posOK[i] || !st.waiting[i] {
		return false
	}
	slack := 0
	if st.fin[i] {
		slack = 1
	}
	return st.pos[i].Difference(reassembly.Sequence(ack)) > slack
}

func (st *stream) dir(d reassembly.TCPFlowDirection) string {
	if (d == reassembly.TCPDirClientToServer) == st.clientFirst {
		return DirClient
	}
	return DirServer
}

// Accept implements reassembly.Stream.
func (st *stream) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, d reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, ac reassembly.AssemblerContext) bool {
	const invalid = reassembly.Sequence(-1)
	s := st.s
	s.touch(ci.Timestamp)
	if nextSeq == invalid && !tcp.SYN {
		*start = true // the capture began after the handshake
	}
	dir := st.dir(d)
	i := dirIndex(dir)
	if nextSeq != invalid {
		st.pos[i], st.posOK[i] = nextSeq, true
	}
	if tcp.FIN {
		st.fin[i] = true
	}
	if len(tcp.Payload) > 0 {
		st.ins.name(s)
		if pc, ok := ac.(*pktContext); ok && pc.missing > 0 {
			s.truncated(ci.Timestamp, dir, pc.missing)
			return false
		}
		if nextSeq != invalid && nextSeq.Difference(reassembly.Sequence(tcp.Seq)) > 0 {
			// A hole before this segment: until it fills, the other
			// direction may run ahead of this one.
			st.waiting[i] = true
			s.uncertain = true
		}
	}
	if tcp.RST {
		if st.rst == nil {
			st.rst = make(map[reassembly.TCPFlowDirection]bool, 2)
		}
		st.rst[d] = true
	}
	return true
}

// ReassembledSG implements reassembly.Stream.
func (st *stream) ReassembledSG(sg reassembly.ScatterGather, ac reassembly.AssemblerContext) {
	d, _, end, skip := sg.Info()
	avail, _ := sg.Lengths()
	var t time.Time
	if ac != nil {
		t = ac.GetCaptureInfo().Timestamp
	} else {
		t = sg.CaptureInfo(0).Timestamp
	}
	dir := st.dir(d)
	i := dirIndex(dir)
	if st.posOK[i] {
		st.pos[i] = st.pos[i].Add(max(skip, 0) + avail)
	}
	st.waiting[i] = false
	if skip > 0 {
		st.s.gap(t, dir, skip)
	}
	if avail > 0 {
		st.s.data(t, dir, sg.Fetch(avail))
	}
	if end {
		st.s.end(t, dir, !st.rst[d], st.rst[d])
	}
}

// ReassemblyComplete implements reassembly.Stream.
func (st *stream) ReassemblyComplete(reassembly.AssemblerContext) bool {
	st.s.finish(st.s.rep.End)
	key := [2]netip.AddrPort{st.s.rep.Client, st.s.rep.Server}
	if st.ins.conns[key] == st {
		delete(st.ins.conns, key)
	}
	return true
}

// ignoreStream takes the connections over the session limit.
type ignoreStream struct{}

func (ignoreStream) Accept(*layers.TCP, gopacket.CaptureInfo, reassembly.TCPFlowDirection, reassembly.Sequence, *bool, reassembly.AssemblerContext) bool {
	return false
}

func (ignoreStream) ReassembledSG(reassembly.ScatterGather, reassembly.AssemblerContext) {}

func (ignoreStream) ReassemblyComplete(reassembly.AssemblerContext) bool { return true }
