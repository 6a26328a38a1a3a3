package rules

import "testing"

func TestCheckIntercept(t *testing.T) {
	for _, tc := range []struct {
		ifaces []string
		port   uint16
		ok     bool
	}{
		{[]string{"eth1"}, 2121, true},
		{[]string{"eth1", "wg0", "br-lan.10", "veth+"}, 2121, true},
		{[]string{"abcdefghijklmno"}, 2121, true},
		{nil, 2121, false},
		{[]string{"eth1"}, 0, false},
		{[]string{"abcdefghijklmnop"}, 2121, false}, // 16 characters
		{[]string{""}, 2121, false},
		{[]string{"eth 1"}, 2121, false},
		{[]string{"-j"}, 2121, false},
		{[]string{"eth1\"; drop"}, 2121, false},
		{[]string{"+"}, 2121, false},
	} {
		if err := CheckIntercept(tc.ifaces, tc.port); (err == nil) != tc.ok {
			t.Errorf("CheckIntercept(%q, %d) = %v, want ok=%v", tc.ifaces, tc.port, err, tc.ok)
		}
	}
}
