package inspect

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
)

// The fuzz targets check the path from capture bytes through reassembly to
// the codec: it must never panic, memory stays bounded (every list in the
// report is capped), and when no byte is lost, how the streams were cut
// into segments, reordered, retransmitted or overlapped does not change
// what is read from them.

// fuzzSeeds are control streams worth starting from.
var fuzzSeeds = []struct{ client, server string }{
	{"USER anonymous\r\nPASS x\r\nPASV\r\nLIST\r\nQUIT\r\n",
		"220 hi\r\n331 pw\r\n230 ok\r\n227 Entering Passive Mode (203,0,113,2,195,80).\r\n150 go\r\n226 done\r\n221 bye\r\n"},
	{"PORT 192,0,2,1,195,81\r\nEPRT |1|192.0.2.1|50002|\r\nPORT 198,51,100,7,0,25\r\nEPSV\r\n",
		"220 hi\r\n200 ok\r\n200 ok\r\n200 ok\r\n229 Entering Extended Passive Mode (|||50000|)\r\n"},
	{"STAT\r\nNOOP\r\nAUTH TLS\r\n\x16\x03\x01\x00junk",
		"220 hi\r\n211-status\r\n227 Entering Passive Mode (1,2,3,4,5,6)\r\n211 end\r\n227 (203,0,113,2,300,1)\r\n234 go\r\n\x16\x03\x03"},
	{"NO\x00OP\r\nLPRT 1,2\nFEAT\r\nUSER " + string(bytes.Repeat([]byte("a"), 300)),
		"220-multi\r\n220 line\r\nnot a reply\r\n211-Features:\r\n AUTH TLS\r\n211 End\r\n227-x\r\n227 y\r\n"},
}

// shaper draws decisions from the fuzzer's shape bytes, cycling.
type shaper struct {
	b []byte
	i int
}

func (s *shaper) next() byte {
	if len(s.b) == 0 {
		return 7
	}
	c := s.b[s.i%len(s.b)]
	s.i++
	return c ^ byte(s.i/len(s.b)) // vary on each cycle
}

type piece struct {
	client bool
	off    int
	data   []byte
}

// shapedCapture writes the two streams as segments cut, interleaved and
// perturbed as shape says. Unless lossy, every byte arrives at least once
// and overlapping copies carry the same bytes.
func shapedCapture(t testing.TB, client, server, shape []byte, lossy bool) []byte {
	sh := &shaper{b: shape}
	split := func(isClient bool, data []byte) []piece {
		var ps []piece
		for off := 0; off < len(data); {
			n := min(1+int(sh.next())%48, len(data)-off)
			ps = append(ps, piece{isClient, off, data[off : off+n]})
			off += n
		}
		return ps
	}
	cs, ss := split(true, client), split(false, server)
	var merged []piece
	for len(cs) > 0 || len(ss) > 0 {
		if len(ss) == 0 || (len(cs) > 0 && sh.next()&1 == 0) {
			merged, cs = append(merged, cs[0]), cs[1:]
		} else {
			merged, ss = append(merged, ss[0]), ss[1:]
		}
	}
	b := newCapture(t)
	c := b.open(cli, srv)
	var later []piece // retransmissions, sent two pieces later
	high := [2]int{}  // end of the furthest byte sent, per direction
	emit := func(p piece) {
		op := sh.next()
		cut := 0
		if lossy {
			if op&0x10 != 0 {
				return // lost
			}
			if op&0x20 != 0 && len(p.data) > 1 {
				cut = 1 + int(op>>6)%len(p.data)
			}
		}
		if op&0x08 != 0 && p.off > 0 { // overlap the bytes before
			src := server
			if p.client {
				src = client
			}
			back := min(p.off, 1+int(op>>5))
			p = piece{p.client, p.off - back, src[p.off-back : p.off+len(p.data)]}
		}
		i := 0
		if !p.client {
			i = 1
		}
		high[i] = max(high[i], p.off+len(p.data))
		from, to, seq, ack := c.ends(p.client)
		a := *ack
		if lossy { // acknowledge what the other side sent, holes or not
			a += uint32(high[1-i])
		}
		b.add(seg{from: from, to: to, seq: *seq + uint32(p.off), ack: a, ackf: true, payload: p.data, cut: cut})
	}
	for k := 0; k < len(merged); k++ {
		op := sh.next()
		if op&0x03 == 0 && k+1 < len(merged) {
			emit(merged[k+1])
			emit(merged[k])
			k++
		} else {
			emit(merged[k])
		}
		if op&0x04 != 0 {
			later = append(later, merged[k])
		}
		if len(later) > 0 && op&0x40 != 0 {
			emit(later[0])
			later = later[1:]
		}
	}
	for _, p := range later {
		emit(p)
	}
	c.skip(true, len(client))
	c.skip(false, len(server))
	c.close()
	return b.pcap()
}

// plainCapture sends the client stream, then the server stream, each in
// order in one segment.
func plainCapture(t testing.TB, client, server []byte) []byte {
	b := newCapture(t)
	c := b.open(cli, srv)
	if len(client) > 0 {
		c.send(true, string(client))
	}
	if len(server) > 0 {
		c.send(false, string(server))
	}
	c.close()
	return b.pcap()
}

// streamEvents is what one direction's bytes alone decide: the lines read
// and how they were judged, without pairing.
func streamEvents(s *Session) []string {
	var out []string
	for _, e := range s.Events {
		switch e.Kind {
		case "command", "invalid", "reply", "preliminary", "incomplete":
			out = append(out, fmt.Sprintf("%s %s %d %q", e.Dir, e.Kind, e.Code, e.Line))
		}
	}
	return out
}

func checkBounded(t *testing.T, rep *Report, opts Options) {
	t.Helper()
	for _, s := range rep.Sessions {
		if n := len(s.Events) + len(s.Announcements) + len(s.Violations); n > opts.MaxEvents {
			t.Fatalf("session %s records %d items, limit %d", s.ID, n, opts.MaxEvents)
		}
		for _, a := range s.Announcements {
			if a.Pinhole == nil {
				continue
			}
			peer := s.Client.Addr()
			if a.Kind == "PORT" || a.Kind == "EPRT" {
				peer = s.Server.Addr()
			}
			if a.Pinhole.Src != peer || a.Pinhole.Dst.Port() < 1024 {
				t.Fatalf("pinhole %s lets in another peer than %s or a low port", a.Pinhole.Rule, peer)
			}
		}
	}
}

func FuzzReassembly(f *testing.F) {
	for i, s := range fuzzSeeds {
		f.Add([]byte(s.client), []byte(s.server), []byte{byte(i), 0x13, 0x88, 0x47, 0xfe}, false)
		f.Add([]byte(s.client), []byte(s.server), []byte{0xff, 0x08, 0x3c, 0x01}, true)
	}
	f.Fuzz(func(t *testing.T, client, server, shape []byte, lossy bool) {
		client, server = client[:min(len(client), 2048)], server[:min(len(server), 2048)]
		opts := Options{MaxEvents: 1 << 20}
		rep, err := Inspect(context.Background(), bytes.NewReader(shapedCapture(t, client, server, shape, lossy)), opts)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		opts, _ = opts.withDefaults()
		checkBounded(t, rep, opts)
		if lossy {
			return
		}
		// The reference: each stream in order, in one segment.
		ref, err := Inspect(context.Background(), bytes.NewReader(plainCapture(t, client, server)), opts)
		if err != nil {
			t.Fatalf("Inspect reference: %v", err)
		}
		if len(rep.Sessions) != 1 || len(ref.Sessions) != 1 {
			t.Fatalf("sessions: %d, reference %d", len(rep.Sessions), len(ref.Sessions))
		}
		got, want := rep.Sessions[0], ref.Sessions[0]
		if got.State == "encrypted" || want.State == "encrypted" {
			return // where reading stops depends on how the directions interleave
		}
		for _, dir := range []string{DirClient, DirServer} {
			g := slices.DeleteFunc(streamEvents(got), func(s string) bool { return s[0] != dir[0] })
			w := slices.DeleteFunc(streamEvents(want), func(s string) bool { return s[0] != dir[0] })
			if !slices.Equal(g, w) {
				t.Fatalf("%s stream read differently when segmented:\ngot  %q\nwant %q", dir, g, w)
			}
		}
	})
}

func FuzzCaptureFile(f *testing.F) {
	b := passiveCapture(f)
	f.Add(b.pcap())
	f.Add(b.pcapng())
	ng := b.pcapng()
	f.Add(ng[:len(ng)/2])
	b.snaplen = 60
	f.Add(b.pcap())
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := Inspect(context.Background(), bytes.NewReader(data), Options{})
		if err != nil {
			return
		}
		opts, _ := Options{}.withDefaults()
		checkBounded(t, rep, opts)
	})
}
