package main

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestLocalAddrsCache: while the subscription runs, the addresses are read
// once and again only after an address event; once it ends, per question.
func TestLocalAddrsCache(t *testing.T) {
	a1, a2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::2")
	have := map[netip.Addr]bool{a1: true}
	var reads int
	var fail bool
	l := &localAddrs{read: func() (map[netip.Addr]bool, error) {
		reads++
		if fail {
			return nil, errors.New("dump failed")
		}
		set := map[netip.Addr]bool{}
		for a := range have {
			set[a] = true
		}
		return set, nil
	}}
	ch := make(chan netlink.AddrUpdate)
	l.follow(ch)

	if !l.has(a1) || l.has(a2) || !l.has(a1) {
		t.Fatal("wrong answers from the first read")
	}
	if reads != 1 {
		t.Fatalf("%d reads without an address event, want 1", reads)
	}
	have[a2] = true
	ch <- netlink.AddrUpdate{NewAddr: true}
	// The event is counted before the next receive returns.
	ch <- netlink.AddrUpdate{NewAddr: true}
	if !l.has(a2) {
		t.Fatal("an address added (and reported) is not seen")
	}
	if reads != 2 {
		t.Fatalf("%d reads after one change, want 2", reads)
	}
	fail = true
	ch <- netlink.AddrUpdate{}
	ch <- netlink.AddrUpdate{}
	if l.has(a1) {
		t.Fatal("a failed read answered true")
	}
	fail = false
	close(ch)
	for deadline := time.Now().Add(5 * time.Second); l.live.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the cache is still used after the subscription ended")
		}
	}
	before := reads
	delete(have, a1)
	if l.has(a1) || !l.has(a2) {
		t.Fatal("wrong answers after the subscription ended")
	}
	if reads != before+2 {
		t.Fatalf("%d reads for 2 questions after the subscription ended, want 2", reads-before)
	}
}
