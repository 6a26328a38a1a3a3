package main

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack"
)

func TestTransferAttrs(t *testing.T) {
	ap := netip.MustParseAddrPort
	cases := []struct {
		name           string
		f              conntrack.FlowEnd
		passive        bool
		client, server string
		dir            string
		bytes          uint64
	}{
		{"passive download (gateway, SNAT)", conntrack.FlowEnd{
			Flow:    conntrack.Flow{Orig: conntrack.Tuple{Src: ap("192.0.2.2:50000"), Dst: ap("203.0.113.2:40000")}, Reply: conntrack.Tuple{Src: ap("203.0.113.2:40000"), Dst: ap("203.0.113.1:50000")}},
			Counted: true, OrigBytes: 600, ReplyBytes: 10 << 20}, true, "192.0.2.2:50000", "203.0.113.2:40000", "server->client", 10 << 20},
		{"passive upload (reverse, DNAT)", conntrack.FlowEnd{
			Flow:    conntrack.Flow{Orig: conntrack.Tuple{Src: ap("198.51.100.10:50000"), Dst: ap("198.51.100.1:45000")}, Reply: conntrack.Tuple{Src: ap("192.0.2.2:30000"), Dst: ap("192.0.2.1:50000")}},
			Counted: true, OrigBytes: 1 << 20, ReplyBytes: 500}, true, "198.51.100.10:50000", "192.0.2.2:30000", "client->server", 1 << 20},
		{"active download (gateway, DNAT)", conntrack.FlowEnd{
			Flow:    conntrack.Flow{Orig: conntrack.Tuple{Src: ap("203.0.113.2:20"), Dst: ap("203.0.113.1:40000")}, Reply: conntrack.Tuple{Src: ap("192.0.2.2:50001"), Dst: ap("203.0.113.2:20")}},
			Counted: true, OrigBytes: 4096, ReplyBytes: 300}, false, "192.0.2.2:50001", "203.0.113.2:20", "server->client", 4096},
		{"active upload", conntrack.FlowEnd{
			Flow:    conntrack.Flow{Orig: conntrack.Tuple{Src: ap("203.0.113.2:20"), Dst: ap("203.0.113.1:40000")}, Reply: conntrack.Tuple{Src: ap("192.0.2.2:50001"), Dst: ap("203.0.113.2:20")}},
			Counted: true, OrigBytes: 300, ReplyBytes: 4096}, false, "192.0.2.2:50001", "203.0.113.2:20", "client->server", 4096},
	}
	for _, tc := range cases {
		got := map[string]string{}
		for _, a := range transferAttrs(tc.f, tc.passive) {
			got[a.Key] = a.Value.String()
		}
		want := map[string]string{"client": tc.client, "server": tc.server, "direction": tc.dir}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", tc.name, k, got[k], v)
			}
		}
		if got["bytes"] != strconv.FormatUint(tc.bytes, 10) {
			t.Errorf("%s: bytes = %s, want %d", tc.name, got["bytes"], tc.bytes)
		}
	}
}

// TestListenInUse: a listener address already taken is one line naming the
// address once, for the proxy, the implicit FTPS and the metrics listener.
func TestListenInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	base := []string{"run", "--mode", "reverse", "--backend", "relay", "--upstream", "127.0.0.1:21",
		"--status-socket", "off", "--log-level", "error"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", addr}, "ftpalg: listening on " + addr + ": address already in use\n"},
		{[]string{"--listen", free(), "--metrics-listen", addr}, "ftpalg: listening on " + addr + " for metrics: address already in use\n"},
	} {
		var out, errOut strings.Builder
		code := mainErr(append(slices.Clone(base), tc.args...), &out, &errOut)
		if code != 1 || errOut.String() != tc.want {
			t.Errorf("ftpalg %q: exit %d, stderr %q; want exit 1, %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}
