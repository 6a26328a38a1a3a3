package alg

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// FuzzTLSFEAT: whatever FEAT reply a server sends, the one a terminating
// session forwards is a well-formed 211 reply offering AUTH TLS, PBSZ and
// PROT exactly once each, and keeps the server's other features.
func FuzzTLSFEAT(f *testing.F) {
	for _, s := range []string{
		"211-Features:\r\n EPSV\r\n AUTH SSL\r\n211 End\r\n",
		"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPSV\r\n211 End\r\n",
		"211 no features\r\n",
		"211-x\r\n211 end\r\n",
		"211-Features:\n MDTM\n auth tls\n211 End\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		r, err := ftp.NewReplyReader(strings.NewReader(in), 0, 0).ReadReply()
		if err != nil || r.Code != 211 {
			return
		}
		out := tlsFEAT(r)
		got, err := ftp.NewReplyReader(bytes.NewReader(out), 0, 0).ReadReply()
		if err != nil || got.Code != 211 || !got.Multiline() || len(got.Bytes()) != len(out) {
			t.Fatalf("FEAT %q became %q: %v", in, out, err)
		}
		count := map[string]int{}
		for _, l := range got.Lines[1 : len(got.Lines)-1] {
			count[strings.ToUpper(strings.TrimSpace(string(l)))]++
		}
		for _, want := range []string{"AUTH TLS", "PBSZ", "PROT"} {
			if count[want] != 1 {
				t.Fatalf("FEAT %q became %q: %d %q lines", in, out, count[want], want)
			}
		}
		if r.Multiline() {
			for _, l := range r.Lines[1 : len(r.Lines)-1] {
				f := strings.ToUpper(strings.TrimSpace(string(l)))
				if f != "" && !strings.HasPrefix(f, "AUTH") && !strings.HasPrefix(f, "PBSZ") && !strings.HasPrefix(f, "PROT") && count[f] == 0 {
					t.Fatalf("FEAT %q became %q: lost %q", in, out, f)
				}
			}
		}
	})
}
