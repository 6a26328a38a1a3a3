package inspect

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// maxSnaplen bounds one record, as tcpdump's MAXIMUM_SNAPLEN does. A header
// that claims more is corrupt; the bound keeps a hostile file from making
// the reader allocate gigabytes.
const maxSnaplen = 262144

// maxBlock bounds one pcapng block: a record of maxSnaplen bytes plus
// generous room for headers and options.
const maxBlock = maxSnaplen + 64*1024

// source yields the records of a capture with their link type.
type source interface {
	next() (data []byte, ci gopacket.CaptureInfo, lt layers.LinkType, err error)
}

// openCapture detects the format of r (pcap in either byte order and
// timestamp resolution, or pcapng) and returns a source for its records.
func openCapture(r io.Reader) (source, string, error) {
	br := bufio.NewReaderSize(r, 64*1024)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, "", fmt.Errorf("reading capture header: %w", err)
	}
	if binary.LittleEndian.Uint32(magic) == 0x0A0D0D0A {
		ng, err := pcapgo.NewNgReader(&ngGuard{r: br}, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			return nil, "", fmt.Errorf("reading pcapng section header: %w", err)
		}
		return &ngSource{r: ng}, "pcapng", nil
	}
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return nil, "", fmt.Errorf("not a pcap or pcapng capture: %w", err)
	}
	if s := pr.Snaplen(); s == 0 || s > maxSnaplen {
		// 0 and huge values occur in the wild; records are still bounded.
		pr.SetSnaplen(maxSnaplen)
	}
	return &pcapSource{r: pr}, "pcap", nil
}

type pcapSource struct{ r *pcapgo.Reader }

func (s *pcapSource) next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	data, ci, err := s.r.ReadPacketData()
	return data, ci, s.r.LinkType(), err
}

type ngSource struct{ r *pcapgo.NgReader }

func (s *ngSource) next() (data []byte, ci gopacket.CaptureInfo, lt layers.LinkType, err error) {
	// pcapgo's pcapng reader trusts the file: a nonsensical timestamp
	// resolution divides by zero. The guard below the reader checks the
	// block structure; this catches what remains.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("corrupt pcapng record: %v", p)
		}
	}()
	data, ci, err = s.r.ReadPacketData()
	if err != nil {
		return nil, ci, 0, err
	}
	if len(ci.AncillaryData) > 0 {
		lt, _ = ci.AncillaryData[0].(layers.LinkType)
	}
	return data, ci, lt, nil
}

// errCorrupt marks a capture whose structure is broken.
var errCorrupt = errors.New("corrupt capture")

// ngGuard passes a pcapng stream through block by block after checking
// that each block is consistent: a sane length, a packet no longer than its
// block, options inside their block, a usable timestamp resolution. pcapgo
// trusts these fields, so a hostile file could otherwise make it allocate
// gigabytes or lose its place.
type ngGuard struct {
	r       io.Reader
	order   binary.ByteOrder
	snaplen []uint32 // per interface of the current section
	buf     []byte   // the current block, validated
	off     int
	err     error
}

const (
	ngSHB = 0x0A0D0D0A
	ngIDB = 0x00000001
	ngPB  = 0x00000002 // obsolete Packet Block
	ngSPB = 0x00000003
	ngISB = 0x00000005
	ngEPB = 0x00000006
)

func (g *ngGuard) Read(p []byte) (int, error) {
	for g.off == len(g.buf) {
		if g.err != nil {
			return 0, g.err
		}
		if err := g.nextBlock(); err != nil {
			g.err = err
			g.buf, g.off = g.buf[:0], 0 // nothing of a bad block
		}
	}
	n := copy(p, g.buf[g.off:])
	g.off += n
	return n, nil
}

// nextBlock reads and checks one block. A clean end of file between blocks
// is io.EOF; a block cut short is io.ErrUnexpectedEOF.
func (g *ngGuard) nextBlock() error {
	var hdr [12]byte
	if _, err := io.ReadFull(g.r, hdr[:8]); err != nil {
		return err
	}
	typ := binary.LittleEndian.Uint32(hdr[:4]) // the SHB type reads the same either way
	if typ == ngSHB {
		if _, err := io.ReadFull(g.r, hdr[8:12]); err != nil {
			return unexpected(err)
		}
		switch {
		case binary.LittleEndian.Uint32(hdr[8:12]) == 0x1A2B3C4D:
			g.order = binary.LittleEndian
		case binary.BigEndian.Uint32(hdr[8:12]) == 0x1A2B3C4D:
			g.order = binary.BigEndian
		default:
			return fmt.Errorf("pcapng section header with bad byte-order magic: %w", errCorrupt)
		}
		g.snaplen = g.snaplen[:0]
	} else if g.order == nil {
		return fmt.Errorf("pcapng block before the section header: %w", errCorrupt)
	}
	typ = g.order.Uint32(hdr[:4])
	n := g.order.Uint32(hdr[4:8])
	if n%4 != 0 || n < 12 || n > maxBlock || (typ == ngSHB && n < 28) {
		return fmt.Errorf("pcapng block of type %#x with length %d: %w", typ, n, errCorrupt)
	}
	head := 8
	if typ == ngSHB {
		head = 12
	}
	if cap(g.buf) < int(n) {
		g.buf = make([]byte, n)
	}
	g.buf, g.off = g.buf[:n], 0
	copy(g.buf, hdr[:head])
	if _, err := io.ReadFull(g.r, g.buf[head:]); err != nil {
		g.buf = g.buf[:0]
		return unexpected(err)
	}
	body := g.buf[8 : n-4]
	if g.order.Uint32(g.buf[n-4:]) != n {
		return fmt.Errorf("pcapng block of type %#x: trailing length differs: %w", typ, errCorrupt)
	}
	if err := g.check(typ, body); err != nil {
		return fmt.Errorf("pcapng block of type %#x: %w: %w", typ, err, errCorrupt)
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// check validates the body of one block (without type, length and trailing
// length).
func (g *ngGuard) check(typ uint32, body []byte) error {
	switch typ {
	case ngSHB:
		if len(body) < 16 {
			return errors.New("short section header")
		}
		return g.options(body[16:], nil)
	case ngIDB:
		if len(body) < 8 {
			return errors.New("short interface description")
		}
		g.snaplen = append(g.snaplen, g.order.Uint32(body[4:8]))
		return g.options(body[8:], func(code uint16, v []byte) error {
			switch code {
			case 9: // if_tsresol
				if len(v) < 1 {
					return errors.New("empty timestamp resolution")
				}
				// pcapgo computes 10^e or 2^e in a uint64 and divides by it.
				if e := v[0] & 0x7F; (v[0]&0x80 == 0 && e > 19) || (v[0]&0x80 != 0 && e > 63) {
					return fmt.Errorf("timestamp resolution %#x out of range", v[0])
				}
			case 14: // if_tsoffset
				if len(v) < 8 {
					return errors.New("short timestamp offset")
				}
			}
			return nil
		})
	case ngEPB, ngPB:
		if len(body) < 20 {
			return errors.New("short packet block")
		}
		if typ == ngEPB && int(g.order.Uint32(body[0:4])) >= len(g.snaplen) {
			return errors.New("packet of an undeclared interface")
		}
		if typ == ngPB && int(g.order.Uint16(body[0:2])) >= len(g.snaplen) {
			return errors.New("packet of an undeclared interface")
		}
		capLen := g.order.Uint32(body[12:16])
		if capLen > uint32(len(body)-20) || capLen > g.order.Uint32(body[16:20]) {
			return fmt.Errorf("captured length %d exceeds the block or the packet", capLen)
		}
		return g.options(body[20+pad4(int(capLen)):], nil)
	case ngSPB:
		if len(body) < 4 || len(g.snaplen) == 0 {
			return errors.New("short simple packet block, or no interface")
		}
		capLen := g.order.Uint32(body[0:4])
		if s := g.snaplen[0]; s != 0 && capLen > s {
			capLen = s
		}
		if capLen > uint32(len(body)-4) {
			return fmt.Errorf("packet length %d exceeds the block", capLen)
		}
	case ngISB:
		if len(body) < 12 {
			return errors.New("short interface statistics")
		}
		if int(g.order.Uint32(body[0:4])) >= len(g.snaplen) {
			return errors.New("statistics of an undeclared interface")
		}
		return g.options(body[12:], func(code uint16, v []byte) error {
			if code >= 2 && code <= 8 && len(v) < 8 { // times and 64-bit counters
				return fmt.Errorf("statistics option %d shorter than 8 bytes", code)
			}
			return nil
		})
	}
	return nil
}

// options checks that the options in b stay inside b and end properly.
func (g *ngGuard) options(b []byte, each func(code uint16, v []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return errors.New("option header cut short")
		}
		code, n := g.order.Uint16(b[0:2]), int(g.order.Uint16(b[2:4]))
		if code == 0 {
			if n != 0 {
				return errors.New("end of options with a length")
			}
			return nil
		}
		if 4+pad4(n) > len(b) {
			return errors.New("option longer than its block")
		}
		if each != nil {
			if err := each(code, b[4:4+n]); err != nil {
				return err
			}
		}
		b = b[4+pad4(n):]
	}
	return nil
}

func pad4(n int) int { return (n + 3) &^ 3 }
