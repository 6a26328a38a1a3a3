package inspect

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// capBuilder writes hand-made captures: Ethernet frames carrying IPv4 or
// IPv6 and TCP, serialised by gopacket, with a clock that advances 1ms per
// packet.
type capBuilder struct {
	t    testing.TB
	now  time.Time
	recs []record
	// snaplen, when set, cuts every record to this many bytes.
	snaplen int
}

type record struct {
	ci   gopacket.CaptureInfo
	data []byte
}

func newCapture(t testing.TB) *capBuilder {
	return &capBuilder{t: t, now: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

var (
	macC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	macS = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
)

// seg describes one TCP segment.
type seg struct {
	from, to            netip.AddrPort
	seq, ack            uint32
	syn, ackf, fin, rst bool
	payload             []byte
	cut                 int // bytes of the record to drop at its end (snap length)
}

func (b *capBuilder) add(s seg) {
	b.now = b.now.Add(time.Millisecond)
	data := frame(b.t, s)
	ci := gopacket.CaptureInfo{Timestamp: b.now, CaptureLength: len(data), Length: len(data)}
	if s.cut > 0 {
		data = data[:len(data)-s.cut]
		ci.CaptureLength = len(data)
	}
	if b.snaplen > 0 && len(data) > b.snaplen {
		data = data[:b.snaplen]
		ci.CaptureLength = len(data)
	}
	b.recs = append(b.recs, record{ci, data})
}

// frame serialises one segment as an Ethernet frame.
func frame(t testing.TB, s seg) []byte {
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.from.Port()), DstPort: layers.TCPPort(s.to.Port()),
		Seq: s.seq, Ack: s.ack, SYN: s.syn, ACK: s.ackf, FIN: s.fin, RST: s.rst,
		PSH: len(s.payload) > 0, Window: 65535,
	}
	eth := &layers.Ethernet{SrcMAC: macC, DstMAC: macS}
	var ip gopacket.SerializableLayer
	if s.from.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
			SrcIP: s.from.Addr().AsSlice(), DstIP: s.to.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: s.from.Addr().AsSlice(), DstIP: s.to.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(s.payload)); err != nil {
		t.Fatalf("serialising segment: %v", err)
	}
	return bytes.Clone(buf.Bytes())
}

// pcap returns the capture in pcap format.
func (b *capBuilder) pcap() []byte {
	var out bytes.Buffer
	w := pcapgo.NewWriterNanos(&out)
	snap := uint32(65536)
	if b.snaplen > 0 {
		snap = uint32(b.snaplen)
	}
	if err := w.WriteFileHeader(snap, layers.LinkTypeEthernet); err != nil {
		b.t.Fatalf("writing pcap header: %v", err)
	}
	for _, r := range b.recs {
		if err := w.WritePacket(r.ci, r.data); err != nil {
			b.t.Fatalf("writing pcap record: %v", err)
		}
	}
	return out.Bytes()
}

// pcapng returns the capture in pcapng format.
func (b *capBuilder) pcapng() []byte {
	var out bytes.Buffer
	w, err := pcapgo.NewNgWriter(&out, layers.LinkTypeEthernet)
	if err != nil {
		b.t.Fatalf("writing pcapng header: %v", err)
	}
	for _, r := range b.recs {
		if err := w.WritePacket(r.ci, r.data); err != nil {
			b.t.Fatalf("writing pcapng record: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		b.t.Fatalf("flushing pcapng: %v", err)
	}
	return out.Bytes()
}

// dataSYN adds the opening of a data connection that its target accepts:
// the SYN and the SYN-ACK.
func (b *capBuilder) dataSYN(from, to string) {
	b.dataSYNOnly(from, to)
	b.add(seg{from: netip.MustParseAddrPort(to), to: netip.MustParseAddrPort(from), seq: 9000, ack: 8, syn: true, ackf: true})
}

// dataSYNOnly adds the SYN of a data connection that is never answered
// (a firewall dropped it).
func (b *capBuilder) dataSYNOnly(from, to string) {
	b.add(seg{from: netip.MustParseAddrPort(from), to: netip.MustParseAddrPort(to), seq: 7, syn: true})
}

// tcpConn is one TCP connection in the capture, tracking both sequence
// numbers.
type tcpConn struct {
	b          *capBuilder
	c, s       netip.AddrPort
	cseq, sseq uint32 // next sequence number of each side
	ciss, siss uint32 // initial ones
}

// open adds the three-way handshake of a new connection.
func (b *capBuilder) open(client, server string) *tcpConn {
	c := &tcpConn{b: b, c: netip.MustParseAddrPort(client), s: netip.MustParseAddrPort(server),
		ciss: 1000, siss: 5000000}
	c.cseq, c.sseq = c.ciss+1, c.siss+1
	b.add(seg{from: c.c, to: c.s, seq: c.ciss, syn: true})
	b.add(seg{from: c.s, to: c.c, seq: c.siss, ack: c.cseq, syn: true, ackf: true})
	b.add(seg{from: c.c, to: c.s, seq: c.cseq, ack: c.sseq, ackf: true})
	return c
}

// midstream returns a connection whose handshake is not in the capture.
func (b *capBuilder) midstream(client, server string) *tcpConn {
	return &tcpConn{b: b, c: netip.MustParseAddrPort(client), s: netip.MustParseAddrPort(server),
		ciss: 1000, siss: 5000000, cseq: 1001 + 300, sseq: 5000001 + 900}
}

func (c *tcpConn) ends(fromClient bool) (from, to netip.AddrPort, seq, ack *uint32) {
	if fromClient {
		return c.c, c.s, &c.cseq, &c.sseq
	}
	return c.s, c.c, &c.sseq, &c.cseq
}

// send adds one in-order segment and advances the sender's sequence.
func (c *tcpConn) send(fromClient bool, payload string) {
	from, to, seq, ack := c.ends(fromClient)
	c.b.add(seg{from: from, to: to, seq: *seq, ack: *ack, ackf: true, payload: []byte(payload)})
	*seq += uint32(len(payload))
}

// C sends client lines, one segment each, CRLF appended.
func (c *tcpConn) C(lines ...string) {
	for _, l := range lines {
		c.send(true, l+"\r\n")
	}
}

// S sends one server reply in one segment; lines are joined with CRLF.
func (c *tcpConn) S(lines ...string) {
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	c.send(false, b.String())
}

// at adds a segment of payload at offset off from the sender's current
// sequence, without advancing it (for out-of-order and retransmitted
// segments); skip advances the sequence afterwards.
func (c *tcpConn) at(fromClient bool, off int, payload string, cut int) {
	from, to, seq, ack := c.ends(fromClient)
	c.b.add(seg{from: from, to: to, seq: *seq + uint32(off), ack: *ack, ackf: true, payload: []byte(payload), cut: cut})
}

func (c *tcpConn) skip(fromClient bool, n int) {
	_, _, seq, _ := c.ends(fromClient)
	*seq += uint32(n)
}

// close adds FIN from the client, then from the server.
func (c *tcpConn) close() {
	c.b.add(seg{from: c.c, to: c.s, seq: c.cseq, ack: c.sseq, ackf: true, fin: true})
	c.cseq++
	c.b.add(seg{from: c.s, to: c.c, seq: c.sseq, ack: c.cseq, ackf: true, fin: true})
	c.sseq++
	c.b.add(seg{from: c.c, to: c.s, seq: c.cseq, ack: c.sseq, ackf: true})
}

// reset adds an RST from the client.
func (c *tcpConn) reset() {
	c.b.add(seg{from: c.c, to: c.s, seq: c.cseq, rst: true})
}

// pcapLink returns the capture in pcap format with link type lt (which
// pcapgo's writer cannot express when above 255), each Ethernet frame
// converted by conv.
func (b *capBuilder) pcapLink(lt uint32, conv func(frame []byte) []byte) []byte {
	var out bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65536)
	binary.LittleEndian.PutUint32(hdr[20:], lt)
	out.Write(hdr)
	w := pcapgo.NewWriter(&out)
	for _, r := range b.recs {
		data := conv(r.data)
		ci := r.ci
		ci.CaptureLength, ci.Length = len(data), len(data)
		if err := w.WritePacket(ci, data); err != nil {
			b.t.Fatalf("writing pcap record: %v", err)
		}
	}
	return out.Bytes()
}

// sll2 turns an Ethernet frame into a Linux cooked v2 record.
func sll2(frame []byte) []byte {
	h := make([]byte, 20)
	copy(h[0:2], frame[12:14]) // protocol: the EtherType
	binary.BigEndian.PutUint32(h[4:], 7)
	binary.BigEndian.PutUint16(h[8:], 1) // ARPHRD_ETHER
	h[11] = 6
	copy(h[12:], frame[6:12])
	return append(h, frame[14:]...)
}

// rawIP strips the Ethernet header.
func rawIP(frame []byte) []byte { return frame[14:] }
