package inspect

import (
	"strings"
	"testing"
)

// TestImplicitTLSOpaque: a session whose first bytes are a TLS record
// (implicit FTPS, port 990 style) is reported as encrypted from its first
// packet, with that point in the timeline, and nothing inside it (here a
// "PASV" and a "227" that happen to be in the bytes) is inspected.
func TestImplicitTLSOpaque(t *testing.T) {
	b := newCapture(t)
	c := b.open(cli, srv)
	c.send(true, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03PASV\r\n")
	c.send(false, "\x16\x03\x03\x00\x7a\x02\x00\x00\x76227 (1,2,3,4,5,6)\r\n")
	c.close()
	s := oneSession(t, inspectBytes(t, b.pcap(), Options{}))
	if s.State != "encrypted" {
		t.Errorf("state %q, want encrypted", s.State)
	}
	check(t, "findings", findings(s), nil)
	tl := timeline(s)
	if len(tl) == 0 || !strings.HasPrefix(tl[0], "c encrypted TLS from the first byte (implicit FTPS)") {
		t.Fatalf("timeline does not start with the TLS point:\n\t%s", strings.Join(tl, "\n\t"))
	}
	for _, l := range tl[1:] {
		if !strings.Contains(l, "close") {
			t.Errorf("event inside TLS: %q", l)
		}
	}
}
