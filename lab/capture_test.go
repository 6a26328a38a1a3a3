package lab

import (
	"bytes"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

var testFrames = [][]byte{
	bytes.Repeat([]byte{0xaa}, 60),
	bytes.Repeat([]byte{0xbb}, 1514),
}

func TestPacketFilePcap(t *testing.T) {
	var b bytes.Buffer
	pf, err := newPacketFile(&b, false, captureIfaces)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 123456789)
	for i, f := range testFrames {
		if err := pf.write(captureIfaces[i%2], ts, f, len(f)); err != nil {
			t.Fatal(err)
		}
	}
	// A frame longer than what was captured keeps its real length.
	if err := pf.write(netlab.IfInside, ts, testFrames[0], 70000); err != nil {
		t.Fatal(err)
	}
	if err := pf.flush(); err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewReader(&b)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet || r.Snaplen() != snapLen {
		t.Errorf("link type %v, snaplen %d", r.LinkType(), r.Snaplen())
	}
	for i, want := range append(testFrames, testFrames[0]) {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !bytes.Equal(data, want) || !ci.Timestamp.Equal(ts) {
			t.Errorf("packet %d: %d bytes at %v", i, len(data), ci.Timestamp)
		}
		if i == 2 && ci.Length != 70000 {
			t.Errorf("packet %d: length %d, want 70000", i, ci.Length)
		}
	}
	if _, _, err := r.ReadPacketData(); err == nil {
		t.Error("more packets than written")
	}
}

func TestPacketFilePcapng(t *testing.T) {
	var b bytes.Buffer
	pf, err := newPacketFile(&b, true, captureIfaces)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Unix(1700000000, 5)
	if err := pf.write(netlab.IfOutside, ts, testFrames[0], len(testFrames[0])); err != nil {
		t.Fatal(err)
	}
	if err := pf.write(netlab.IfInside, ts, testFrames[1], len(testFrames[1])); err != nil {
		t.Fatal(err)
	}
	if err := pf.write("lo", ts, testFrames[0], len(testFrames[0])); err == nil {
		t.Error("wrote a packet of an interface the file does not have")
	}
	if err := pf.flush(); err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewNgReader(&b, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		iface string
		data  []byte
	}{{netlab.IfOutside, testFrames[0]}, {netlab.IfInside, testFrames[1]}} {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		intf, err := r.Interface(ci.InterfaceIndex)
		if err != nil {
			t.Fatal(err)
		}
		if intf.Name != want.iface || !bytes.Equal(data, want.data) || !ci.Timestamp.Equal(ts) {
			t.Errorf("packet %d: interface %q, %d bytes at %v; want %q, %d bytes", i, intf.Name, len(data), ci.Timestamp, want.iface, len(want.data))
		}
	}
	if r.SectionInfo().Application != "ftpalg lab" {
		t.Errorf("section info %+v", r.SectionInfo())
	}
}
