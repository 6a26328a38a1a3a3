package inspect

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/reassembly"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/nat"
)

// Options configure an inspection. The zero value inspects port 21 with
// alg.DefaultPolicy.
type Options struct {
	// Ports are the TCP ports of FTP control connections. Default: 21.
	Ports []uint16
	// Policy is the policy the sessions are checked against. Zero:
	// alg.DefaultPolicy().
	Policy alg.Policy
	// DataPortLo and DataPortHi are the gateway's port pool for active-mode
	// translations, as `ftpalg run --data-ports`. Zero: 40000-40999.
	DataPortLo, DataPortHi uint16
	// GapTimeout is how much capture time a hole in a stream may stay open
	// waiting for a retransmission before the inspector skips it. Default 2s.
	GapTimeout time.Duration
	// MaxSessions bounds the sessions inspected; later ones are counted in
	// a warning. Default 10000.
	MaxSessions int
	// MaxEvents bounds the events, announcements and violations recorded
	// per session. Default 10000.
	MaxEvents int
	// Log receives debug lines; nil means none.
	Log *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if len(o.Ports) == 0 {
		o.Ports = []uint16{21}
	}
	for _, p := range o.Ports {
		if p == 0 {
			return o, errors.New("control port 0")
		}
	}
	if o.Policy == (alg.Policy{}) {
		o.Policy = alg.DefaultPolicy()
	}
	if err := o.Policy.Validate(); err != nil {
		return o, err
	}
	if o.DataPortLo == 0 && o.DataPortHi == 0 {
		o.DataPortLo, o.DataPortHi = 40000, 40999
	}
	if o.GapTimeout <= 0 {
		o.GapTimeout = 2 * time.Second
	}
	if o.MaxSessions <= 0 {
		o.MaxSessions = 10000
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = 10000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// Bounds on the reassembler's buffers: pages of about 1900 bytes waiting
// for a hole to fill, per connection and in all.
const (
	maxPagesPerConn = 64
	maxPagesTotal   = 4096
	// maxExpected bounds the announced endpoints awaiting a data connection.
	maxExpected = 100000
)

// Inspect reads a pcap or pcapng capture from r and analyses the FTP
// control sessions in it. It returns an error only when r is not a capture
// or opts are invalid, or ctx ends; a capture damaged later is reported
// as far as it could be read, with warnings.
func Inspect(ctx context.Context, r io.Reader, opts Options) (*Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("inspect options: %w", err)
	}
	pool, err := nat.NewPool(opts.DataPortLo, opts.DataPortHi)
	if err != nil {
		return nil, fmt.Errorf("inspect options: %w", err)
	}
	src, format, err := openCapture(r)
	if err != nil {
		return nil, err
	}
	ins := &inspector{
		opts:     opts,
		pol:      opts.Policy,
		planner:  &nat.Gateway{Pool: pool},
		ctrl:     make(map[uint16]bool),
		expected: make(map[netip.AddrPort][]annRef),
		syns:     make(map[[2]netip.AddrPort]annRef),
		conns:    make(map[[2]netip.AddrPort]*stream),
		badLinks: make(map[layers.LinkType]bool),
		rep: &Report{
			Schema: Schema, Format: format, ControlPorts: slices.Clone(opts.Ports),
			Sessions: []*Session{},
			Assumptions: []string{fmt.Sprintf(
				"pinholes are planned as if ftpalg ran in gateway mode at the capture point without NAT "+
					"(its upstream address is the client's, the dialled address the server's), "+
					"with data ports %d-%d for active mode", opts.DataPortLo, opts.DataPortHi)},
		},
	}
	for _, p := range opts.Ports {
		ins.ctrl[p] = true
	}
	if err := ins.run(ctx, src); err != nil {
		return nil, err
	}
	return ins.rep, nil
}

// inspector holds the state of one inspection.
type inspector struct {
	opts    Options
	pol     alg.Policy
	planner alg.Planner
	ctrl    map[uint16]bool
	rep     *Report

	sessions []*sess // every session created, in order
	ids      int     // IDs handed out
	over     int     // connections over MaxSessions
	// expected maps an announced endpoint to the announcements a data
	// connection to it would use.
	expected  map[netip.AddrPort][]annRef
	nexpected int
	// syns holds the data connections whose SYN was seen, by (from, to),
	// until their SYN-ACK shows them accepted.
	syns map[[2]netip.AddrPort]annRef
	// conns finds the stream of a live control connection.
	conns      map[[2]netip.AddrPort]*stream
	fragments  int
	truncated  int
	undecoded  int
	lastFlush  time.Time
	lastPacket time.Time
	// recorded is the text recorded in the report so far (see maxRecorded).
	recorded   int
	overBudget bool
	badLinks   map[layers.LinkType]bool
}

// annRef points at an announcement awaiting its data connection.
type annRef struct {
	s    *sess
	idx  int
	from netip.Addr // the peer that should connect
	t    time.Time
}

func (ins *inspector) run(ctx context.Context, src source) error {
	asm := reassembly.NewAssembler(reassembly.NewStreamPool(ins))
	asm.MaxBufferedPagesPerConnection = maxPagesPerConn
	asm.MaxBufferedPagesTotal = maxPagesTotal
	for n := 0; ; n++ {
		if n%1024 == 0 && ctx.Err() != nil {
			return fmt.Errorf("inspecting capture: %w", ctx.Err())
		}
		data, ci, lt, err := src.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				ins.warn("the capture file ends in the middle of a record (cut short while being written?); the rest is missing")
			} else {
				ins.warn(fmt.Sprintf("reading record %d: %v; the rest of the file is ignored", ins.rep.Packets+1, err))
			}
			break
		}
		ins.rep.Packets++
		ins.packet(asm, data, ci, lt)
	}
	asm.FlushAll()
	for _, s := range ins.sessions {
		s.finish(s.rep.End)
		if s.worth() {
			ins.rep.Sessions = append(ins.rep.Sessions, s.rep)
		}
	}
	slices.SortStableFunc(ins.rep.Sessions, func(a, b *Session) int { return a.Start.Compare(b.Start) })
	linkLegs(ins.rep.Sessions)
	if ins.overBudget {
		ins.warn("the report reached its size limit; later events were not recorded (see dropped_events)")
	}
	if ins.over > 0 {
		ins.warn(fmt.Sprintf("%d control connections over the limit of %d sessions were not inspected", ins.over, ins.opts.MaxSessions))
	}
	if ins.truncated > 0 {
		ins.warn(fmt.Sprintf("%d control-connection segments were cut short by the capture's snap length; capture with a full snap length (tcpdump -s 0)", ins.truncated))
	}
	if ins.fragments > 0 {
		ins.warn(fmt.Sprintf("%d IP fragments on control ports were ignored", ins.fragments))
	}
	return nil
}

func (ins *inspector) warn(msg string) {
	ins.rep.Warnings = append(ins.rep.Warnings, msg)
	ins.opts.Log.Debug("capture warning", "warning", msg)
}

// pktContext is the reassembly context of one packet: its capture info and
// how many bytes of its TCP payload the capture lacks (snap length).
type pktContext struct {
	ci      gopacket.CaptureInfo
	missing int
}

func (c *pktContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

// linkTypeSLL2 is LINKTYPE_LINUX_SLL2 (276, what tcpdump -i any writes) as
// pcapgo hands it over: gopacket's LinkType is a uint8, so 276 arrives as
// 276&0xff = 20, a value no other link type uses. gopacket v1.1.19 decodes
// neither it nor LINKTYPE_IPV4/IPV6.
const linkTypeSLL2 = layers.LinkType(276 & 0xff)

// decode decodes one record of link type lt.
func (ins *inspector) decode(data []byte, lt layers.LinkType) gopacket.Packet {
	opts := gopacket.DecodeOptions{Lazy: true, NoCopy: true}
	switch lt {
	case layers.LinkTypeIPv4:
		return gopacket.NewPacket(data, layers.LayerTypeIPv4, opts)
	case layers.LinkTypeIPv6:
		return gopacket.NewPacket(data, layers.LayerTypeIPv6, opts)
	case linkTypeSLL2:
		// Protocol (2), reserved (2), interface (4), ARPHRD (2), packet
		// type (1), address length (1), address (8).
		if len(data) < 20 {
			return nil
		}
		return gopacket.NewPacket(data[20:], layers.EthernetType(binary.BigEndian.Uint16(data[:2])), opts)
	}
	if strings.HasPrefix(lt.String(), "Unknown") && !ins.badLinks[lt] {
		ins.badLinks[lt] = true
		ins.warn(fmt.Sprintf("link type %d is not supported; its records were skipped", lt))
	}
	return gopacket.NewPacket(data, lt, opts)
}

func (ins *inspector) packet(asm *reassembly.Assembler, data []byte, ci gopacket.CaptureInfo, lt layers.LinkType) {
	pkt := ins.decode(data, lt)
	if pkt == nil {
		return
	}
	var src, dst netip.Addr
	missing := 0
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		if ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0 {
			if ins.onControlPort(pkt) {
				ins.fragments++
			}
			return
		}
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
		missing = int(ip.Length) - int(ip.IHL)*4 - len(ip.Payload)
	case *layers.IPv6:
		if pkt.Layer(layers.LayerTypeIPv6Fragment) != nil {
			if ins.onControlPort(pkt) {
				ins.fragments++
			}
			return
		}
		src, _ = netip.AddrFromSlice(ip.SrcIP)
		dst, _ = netip.AddrFromSlice(ip.DstIP)
		if ip.Length != 0 { // 0: jumbogram
			missing = int(ip.Length) - len(ip.Payload)
		}
	default:
		return
	}
	tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok || !src.IsValid() || !dst.IsValid() {
		ins.undecoded++
		return
	}
	src, dst = src.Unmap(), dst.Unmap()
	if ci.Timestamp.After(ins.lastPacket) {
		ins.lastPacket = ci.Timestamp
	}
	sp, dp := uint16(tcp.SrcPort), uint16(tcp.DstPort)
	if !ins.ctrl[sp] && !ins.ctrl[dp] {
		switch {
		case tcp.SYN && !tcp.ACK:
			ins.dataSYN(ci.Timestamp, netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp))
		case tcp.SYN && tcp.ACK:
			ins.dataSYNACK(netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp))
		}
		return
	}
	if missing < 0 || len(tcp.Payload) == 0 {
		missing = 0
	}
	if missing > 0 {
		ins.truncated++
	}
	from, to := netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	if st := ins.conns[[2]netip.AddrPort{from, to}]; st != nil && tcp.ACK && st.holePermanent(DirServer, tcp.Ack) ||
		ins.conns[[2]netip.AddrPort{to, from}] != nil && tcp.ACK && ins.conns[[2]netip.AddrPort{to, from}].holePermanent(DirClient, tcp.Ack) {
		// This packet acknowledges bytes of the other direction that the
		// capture does not hold: no retransmission will fill the hole, and
		// the data behind it must be read before this packet's.
		asm.FlushWithOptions(reassembly.FlushOptions{T: ci.Timestamp.Add(time.Nanosecond)})
	}
	asm.AssembleWithContext(pkt.NetworkLayer().NetworkFlow(), tcp, &pktContext{ci: ci, missing: missing})
	// Skip holes nobody will fill: segments the capture missed.
	if t := ins.lastPacket; t.Sub(ins.lastFlush) >= ins.opts.GapTimeout/4 {
		ins.lastFlush = t
		asm.FlushWithOptions(reassembly.FlushOptions{T: t.Add(-ins.opts.GapTimeout)})
	}
}

func (ins *inspector) onControlPort(pkt gopacket.Packet) bool {
	if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
		return ins.ctrl[uint16(tcp.SrcPort)] || ins.ctrl[uint16(tcp.DstPort)]
	}
	return false
}

// expect registers an announced endpoint that a data connection may use.
func (ins *inspector) expect(ap netip.AddrPort, r annRef) {
	if ins.nexpected >= maxExpected {
		return
	}
	ins.nexpected++
	ins.expected[ap] = append(ins.expected[ap], r)
}

// dataSYN records that from tried to open a data connection to to, for the
// latest unused announcement of to, made before t by a session whose
// expected peer is from. It is used once its SYN-ACK shows it accepted
// (dataSYNACK): a SYN that a firewall dropped did not use the pinhole.
func (ins *inspector) dataSYN(t time.Time, from, to netip.AddrPort) {
	if _, ok := ins.syns[[2]netip.AddrPort{from, to}]; ok {
		return // retransmitted
	}
	list := ins.expected[to]
	for i := len(list) - 1; i >= 0; i-- {
		r := list[i]
		if r.from != from.Addr() || t.Before(r.t) {
			continue
		}
		a := &r.s.rep.Announcements[r.idx]
		if a.Data != nil {
			continue
		}
		a.Data = &DataConn{Time: t, From: from, To: to}
		if len(ins.syns) < maxExpected {
			ins.syns[[2]netip.AddrPort{from, to}] = r
		}
		ins.expected[to] = slices.Delete(list, i, i+1)
		if len(ins.expected[to]) == 0 {
			delete(ins.expected, to)
		}
		return
	}
}

// --- reassembly ---

// dataSYNACK marks the announcement whose data connection from -> to (the
// SYN's direction) was accepted as used: to answered with a SYN-ACK.
func (ins *inspector) dataSYNACK(to, from netip.AddrPort) {
	k := [2]netip.AddrPort{from, to}
	r, ok := ins.syns[k]
	if !ok {
		return
	}
	delete(ins.syns, k)
	r.s.rep.Announcements[r.idx].Used = true
}
