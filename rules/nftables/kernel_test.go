package nftables

import "testing"

func TestCheckRelease(t *testing.T) {
	for _, tc := range []struct {
		release string
		ok      bool
	}{
		{"6.18.44-fc-v669", true},
		{"6.3.0", true},
		{"6.12.48+deb13-amd64", true},
		{"7.0", true},
		{"6.1.0-18-amd64", false},
		{"5.15.0-91-generic", false},
		{"6.2", false},
		{"garbage", false},
		{"6.", false},
		{"", false},
		{"-1.0", false},
		{"+7.0", false},
		{"99999999999999999999.1", false},
	} {
		if err := checkRelease(tc.release); (err == nil) != tc.ok {
			t.Errorf("checkRelease(%q) = %v, want ok=%v", tc.release, err, tc.ok)
		}
	}
}

func FuzzParseRelease(f *testing.F) {
	for _, s := range []string{"6.18.44-fc-v669", "6.3.0", "6.1.0-18-amd64", "5.15", "garbage", "6.", "", "-1.0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if maj, mnr, ok := parseRelease(s); ok && (maj < 0 || mnr < 0) {
			t.Errorf("parseRelease(%q) = %d.%d", s, maj, mnr)
		}
	})
}
