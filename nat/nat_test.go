package nat

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/rules"
)

var (
	gw4 = alg.Endpoints{
		Client:   netip.MustParseAddrPort("192.0.2.2:50000"),
		Dialled:  netip.MustParseAddrPort("203.0.113.2:21"),
		Upstream: netip.MustParseAddrPort("203.0.113.1:41000"),
		Server:   netip.MustParseAddrPort("203.0.113.2:21"),
	}
	gw6 = alg.Endpoints{
		Client:   netip.MustParseAddrPort("[2001:db8:1::2]:50000"),
		Dialled:  netip.MustParseAddrPort("[2001:db8:2::2]:21"),
		Upstream: netip.MustParseAddrPort("[2001:db8:2::1]:41000"),
		Server:   netip.MustParseAddrPort("[2001:db8:2::2]:21"),
	}
)

func TestGatewayPlans(t *testing.T) {
	cases := []struct {
		name     string
		ep       alg.Endpoints
		a        alg.Announcement
		announce string
		pinhole  string
	}{
		{"pasv real address", gw4, alg.Announcement{Kind: alg.PASV, Addr: netip.MustParseAddrPort("203.0.113.2:40000")},
			"203.0.113.2:40000", " tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1"},
		{"pasv names a third host", gw4, alg.Announcement{Kind: alg.PASV, Addr: netip.MustParseAddrPort("198.51.100.7:40000")},
			"203.0.113.2:40000", " tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1"},
		{"epsv v4", gw4, alg.Announcement{Kind: alg.EPSV, Addr: netip.MustParseAddrPort("203.0.113.2:40001")},
			"203.0.113.2:40001", " tcp 192.0.2.2 -> 203.0.113.2:40001 snat 203.0.113.1"},
		{"epsv v6", gw6, alg.Announcement{Kind: alg.EPSV, Addr: netip.MustParseAddrPort("[2001:db8:2::2]:40001")},
			"[2001:db8:2::2]:40001", " tcp 2001:db8:1::2 -> [2001:db8:2::2]:40001 snat 2001:db8:2::1"},
		{"port", gw4, alg.Announcement{Kind: alg.PORT, Addr: netip.MustParseAddrPort("192.0.2.2:50001")},
			"203.0.113.1:45000", " tcp 203.0.113.2 -> 203.0.113.1:45000 dnat 192.0.2.2:50001"},
		{"eprt v6", gw6, alg.Announcement{Kind: alg.EPRT, Addr: netip.MustParseAddrPort("[2001:db8:1::2]:50001")},
			"[2001:db8:2::1]:45000", " tcp 2001:db8:2::2 -> [2001:db8:2::1]:45000 dnat [2001:db8:1::2]:50001"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool, _ := NewPool(45000, 45000)
			g := &Gateway{Pool: pool}
			p, err := g.Plan(context.Background(), tc.ep, tc.a)
			if err != nil {
				t.Fatal(err)
			}
			if p.Announce.String() != tc.announce {
				t.Errorf("announce %s, want %s", p.Announce, tc.announce)
			}
			if p.Pinhole.String() != tc.pinhole {
				t.Errorf("pinhole %q, want %q", p.Pinhole.String(), tc.pinhole)
			}
			p.Pinhole.ID = rules.PinholeID{Session: 1, N: 1}
			if err := p.Pinhole.Validate(); err != nil {
				t.Error(err)
			}
			if p.Release != nil {
				if pool.InUseCount() != 1 {
					t.Fatal("pool port not taken")
				}
				p.Release()
				if pool.InUseCount() != 0 {
					t.Fatal("pool port not released")
				}
			}
		})
	}
}

func TestGatewayRefusesMixedFamilies(t *testing.T) {
	ep := gw4
	ep.Upstream = gw6.Upstream
	g := &Gateway{}
	if _, err := g.Plan(context.Background(), ep, alg.Announcement{Kind: alg.EPSV, Addr: gw4.Server}); err == nil {
		t.Fatal("mixed families planned")
	}
	if _, err := g.Plan(context.Background(), gw4, alg.Announcement{Kind: alg.PORT, Addr: gw4.Client}); err == nil {
		t.Fatal("active planned without a pool")
	}
}

func TestPool(t *testing.T) {
	p, err := NewPool(40000, 40002)
	if err != nil {
		t.Fatal(err)
	}
	p.InUse = func(port uint16) bool { return port == 40001 }
	a, _ := p.Get()
	b, _ := p.Get()
	if a != 40000 || b != 40002 {
		t.Fatalf("got %d %d, want 40000 40002 (40001 busy)", a, b)
	}
	if _, err := p.Get(); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("want exhaustion, got %v", err)
	}
	p.Put(a)
	if c, err := p.Get(); err != nil || c != 40000 {
		t.Fatalf("after Put: %d %v", c, err)
	}
	for _, bad := range [][2]uint16{{0, 10}, {10, 9}} {
		if _, err := NewPool(bad[0], bad[1]); err == nil {
			t.Errorf("NewPool%v accepted", bad)
		}
	}
}

func TestParseRange(t *testing.T) {
	for in, want := range map[string][2]uint16{"40000-40999": {40000, 40999}, " 5000 ": {5000, 5000}, "1-65535": {1, 65535}} {
		lo, hi, err := ParseRange(in)
		if err != nil || lo != want[0] || hi != want[1] {
			t.Errorf("ParseRange(%q) = %d %d %v", in, lo, hi, err)
		}
	}
	for _, in := range []string{"", "0-10", "10-9", "a-b", "1-70000", "-5"} {
		if _, _, err := ParseRange(in); err == nil {
			t.Errorf("ParseRange(%q) accepted", in)
		}
	}
}

func TestReversePlans(t *testing.T) {
	rv4 := alg.Endpoints{
		Client:   netip.MustParseAddrPort("198.51.100.10:50000"),
		Dialled:  netip.MustParseAddrPort("198.51.100.1:21"),
		Upstream: netip.MustParseAddrPort("192.0.2.1:41000"),
		Server:   netip.MustParseAddrPort("192.0.2.2:21"),
	}
	rv6 := alg.Endpoints{
		Client:   netip.MustParseAddrPort("[2001:db8:3::10]:50000"),
		Dialled:  netip.MustParseAddrPort("[2001:db8:3::1]:21"),
		Upstream: netip.MustParseAddrPort("[2001:db8:4::1]:41000"),
		Server:   netip.MustParseAddrPort("[2001:db8:4::2]:21"),
	}
	cases := []struct {
		name     string
		ep       alg.Endpoints
		public   string
		a        alg.Announcement
		announce string
		pinhole  string
	}{
		{"pasv private address", rv4, "", alg.Announcement{Kind: alg.PASV, Addr: netip.MustParseAddrPort("192.0.2.2:30000")},
			"198.51.100.1:45000", " tcp 198.51.100.10 -> 198.51.100.1:45000 dnat 192.0.2.2:30000 snat 192.0.2.1"},
		{"pasv public override", rv4, "203.0.113.5", alg.Announcement{Kind: alg.PASV, Addr: netip.MustParseAddrPort("192.0.2.2:30000")},
			"203.0.113.5:45000", " tcp 198.51.100.10 -> 198.51.100.1:45000 dnat 192.0.2.2:30000 snat 192.0.2.1"},
		{"epsv v6", rv6, "", alg.Announcement{Kind: alg.EPSV, Addr: netip.MustParseAddrPort("[2001:db8:4::2]:30000")},
			"[2001:db8:3::1]:45000", " tcp 2001:db8:3::10 -> [2001:db8:3::1]:45000 dnat [2001:db8:4::2]:30000 snat 2001:db8:4::1"},
		{"v4 override ignored for v6 client", rv6, "203.0.113.5", alg.Announcement{Kind: alg.EPSV, Addr: netip.MustParseAddrPort("[2001:db8:4::2]:30000")},
			"[2001:db8:3::1]:45000", " tcp 2001:db8:3::10 -> [2001:db8:3::1]:45000 dnat [2001:db8:4::2]:30000 snat 2001:db8:4::1"},
		{"port", rv4, "", alg.Announcement{Kind: alg.PORT, Addr: netip.MustParseAddrPort("198.51.100.10:50001")},
			"192.0.2.1:45000", " tcp 192.0.2.2 -> 192.0.2.1:45000 dnat 198.51.100.10:50001 snat 198.51.100.1"},
		{"eprt v6", rv6, "", alg.Announcement{Kind: alg.EPRT, Addr: netip.MustParseAddrPort("[2001:db8:3::10]:50001")},
			"[2001:db8:4::1]:45000", " tcp 2001:db8:4::2 -> [2001:db8:4::1]:45000 dnat [2001:db8:3::10]:50001 snat 2001:db8:3::1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool, _ := NewPool(45000, 45000)
			r := &Reverse{Pool: pool}
			if tc.public != "" {
				r.Public = netip.MustParseAddr(tc.public)
			}
			p, err := r.Plan(context.Background(), tc.ep, tc.a)
			if err != nil {
				t.Fatal(err)
			}
			if p.Announce.String() != tc.announce || p.Pinhole.String() != tc.pinhole {
				t.Errorf("got %s %q\nwant %s %q", p.Announce, p.Pinhole.String(), tc.announce, tc.pinhole)
			}
			if _, err := r.Plan(context.Background(), tc.ep, tc.a); !errors.Is(err, ErrPoolExhausted) {
				t.Errorf("second plan from a one-port pool: %v, want exhaustion", err)
			}
			p.Release()
			if pool.InUseCount() != 0 {
				t.Error("port not released")
			}
		})
	}
	mixed := rv6
	mixed.Server = rv4.Server
	if _, err := (&Reverse{Pool: &Pool{}}).Plan(context.Background(), mixed, alg.Announcement{Kind: alg.EPSV, Addr: rv4.Server}); err == nil {
		t.Fatal("v6 client to v4 upstream planned")
	}
}
