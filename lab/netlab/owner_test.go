package netlab

import "testing"

func TestOwnerPID(t *testing.T) {
	for _, c := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"ftpalgt-123-1ab-gw", 123, true},
		{"ftpalgt-123-vsftpd-999", 123, true},
		{"ftpalgt-x-1-gw", 0, false},
		{"ftpalgt-0-1-gw", 0, false},
		{"other-123-1-gw", 0, false},
		{"ftpalgt-123", 0, false},
	} {
		pid, ok := OwnerPID("ftpalgt-", c.name)
		if pid != c.pid || ok != c.ok {
			t.Errorf("OwnerPID(%q) = %d, %v; want %d, %v", c.name, pid, ok, c.pid, c.ok)
		}
	}
}
