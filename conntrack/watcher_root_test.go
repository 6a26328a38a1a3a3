package conntrack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requireRoot skips t without root or the tools the namespaced tests use,
// and fails it instead under CI=true.
func requireRoot(t *testing.T) {
	t.Helper()
	roottest.Require(t, "ip", "iptables", "ip6tables", "sysctl")
}

// testNet is two network namespaces joined by a veth pair: the client
// (192.0.2.1, 2001:db8::1) and the server (192.0.2.2, 2001:db8::2). The
// server namespace tracks connections and counts bytes; its conntrack
// timeouts are the defaults (a closed connection lingers 120s in
// TIME_WAIT).
type testNet struct {
	client, server string
}

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	suffix := make([]byte, 3)
	rand.Read(suffix)
	id := hex.EncodeToString(suffix)
	n := &testNet{client: "ftpalg-ct-c-" + id, server: "ftpalg-ct-s-" + id}

	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{n.client, n.server} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting netns %s: %v: %s", ns, err, out)
			}
		})
	}
	run("ip", "link", "add", "name", "veth-c", "netns", n.client, "type", "veth", "peer", "name", "veth-s", "netns", n.server)
	for _, h := range []struct{ ns, dev, v4, v6 string }{
		{n.client, "veth-c", "192.0.2.1/24", "2001:db8::1/64"},
		{n.server, "veth-s", "192.0.2.2/24", "2001:db8::2/64"},
	} {
		run("ip", "-n", h.ns, "addr", "add", h.v4, "dev", h.dev)
		run("ip", "-n", h.ns, "addr", "add", h.v6, "dev", h.dev, "nodad")
		run("ip", "-n", h.ns, "link", "set", h.dev, "up")
		run("ip", "-n", h.ns, "link", "set", "lo", "up")
	}
	// A stateful rule makes the kernel track connections in the namespace.
	for _, ipt := range []string{"iptables", "ip6tables"} {
		run("ip", "netns", "exec", n.server, ipt, "-w", "5", "-A", "INPUT",
			"-m", "conntrack", "--ctstate", "NEW,ESTABLISHED,RELATED", "-j", "ACCEPT")
	}
	run("ip", "netns", "exec", n.server, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1")
	return n
}

// in runs fn on an OS thread in the named namespace. The thread is
// discarded afterwards (the goroutine exits locked), so no thread of the
// test process is left in the namespace.
func in(t *testing.T, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("opening netns %s: %w", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", ns, err)
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// recorder collects the Watcher's callbacks.
type recorder struct {
	mu     sync.Mutex
	uses   map[rules.PinholeID][]Flow
	ends   map[rules.PinholeID][]FlowEnd
	notify chan struct{}
}

func newRecorder() *recorder {
	return &recorder{uses: map[rules.PinholeID][]Flow{}, ends: map[rules.PinholeID][]FlowEnd{}, notify: make(chan struct{}, 1)}
}

func (r *recorder) onUse(id rules.PinholeID, f Flow) {
	r.mu.Lock()
	r.uses[id] = append(r.uses[id], f)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) onEnd(id rules.PinholeID, f FlowEnd) {
	r.mu.Lock()
	r.ends[id] = append(r.ends[id], f)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// waitEnd waits for the end of id's flow.
func (r *recorder) waitEnd(t *testing.T, id rules.PinholeID, timeout time.Duration) FlowEnd {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		ends := r.ends[id]
		r.mu.Unlock()
		if len(ends) > 0 {
			return ends[0]
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no end of %s's flow within %v", id, timeout)
		}
	}
}

// waitUse waits for the use of id.
func (r *recorder) waitUse(t *testing.T, id rules.PinholeID, timeout time.Duration) Flow {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		uses := r.uses[id]
		r.mu.Unlock()
		if len(uses) > 0 {
			return uses[0]
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("%s not used within %v", id, timeout)
		}
	}
}

// serve accepts connections on l and handles each one with handle, which
// closes it. When the test completes it closes l and waits for all
// connections to end.
func serve(t *testing.T, l net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(c) })
		}
	})
}

// replier reads a connection to its end, answers with reply bytes and
// closes it.
func replier(t *testing.T, reply int) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("server reading: %v", err)
			return
		}
		if _, err := c.Write(make([]byte, reply)); err != nil {
			t.Errorf("server writing: %v", err)
		}
	}
}

// reader reads a connection until it ends or fails (a reset), reporting the
// running byte count on got.
func reader(got chan<- int) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 4096)
		total := 0
		for {
			n, err := c.Read(buf)
			if n > 0 {
				total += n
				select {
				case got <- total:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}
}

// transfer sends n bytes over c, half-closes, reads the reply to its end
// and closes; it returns the reply size.
func transfer(t *testing.T, c net.Conn, n int) int {
	t.Helper()
	defer c.Close()
	if _, err := c.Write(make([]byte, n)); err != nil {
		t.Fatalf("client writing: %v", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatalf("client half-closing: %v", err)
	}
	got, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("client reading: %v", err)
	}
	return int(got)
}

func TestWatcherNamespaces(t *testing.T) {
	requireRoot(t)
	tn := newTestNet(t)

	for _, fam := range []struct {
		name           string
		client, server netip.Addr
		network        string
	}{
		{"ipv4", netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), "tcp4"},
		{"ipv6", netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"), "tcp6"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			testWatcher(t, tn, fam.network, fam.client, fam.server)
		})
	}
}

// endWithin is how soon after a connection closes its end must be reported
// (conntrack keeps it 120s in TIME_WAIT).
const endWithin = 2 * time.Second

func testWatcher(t *testing.T, tn *testNet, network string, client, srv netip.Addr) {
	const sent, reply = 200_000, 50_000
	rec := newRecorder()
	var logBuf syncBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("watcher log:\n%s", logBuf.String())
		}
	})

	var w *Watcher
	var data, other, held, reset net.Listener
	in(t, tn.server, func() {
		var err error
		if w, err = NewWatcher(Config{Log: log, OnUse: rec.onUse, OnEnd: rec.onEnd}); err != nil {
			t.Errorf("NewWatcher: %v", err)
			return
		}
		for _, l := range []*net.Listener{&data, &other, &held, &reset} {
			if *l, err = net.Listen(network, netip.AddrPortFrom(srv, 0).String()); err != nil {
				t.Errorf("listening: %v", err)
				return
			}
			t.Cleanup(func() { (*l).Close() })
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	received := make(chan int, 1)
	serve(t, data, replier(t, reply))
	serve(t, other, replier(t, reply))
	serve(t, held, reader(make(chan int, 1)))
	serve(t, reset, reader(received))

	ctx, cancel := context.WithCancel(t.Context())
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	addrOf := func(l net.Listener) netip.AddrPort { return netip.MustParseAddrPort(l.Addr().String()) }
	dataAddr, otherAddr, heldAddr, resetAddr := addrOf(data), addrOf(other), addrOf(held), addrOf(reset)
	closedAddr := netip.AddrPortFrom(srv, 9)
	w.Expect(pid("data"), Match{Src: client, Dst: dataAddr})
	w.Expect(pid("unused"), Match{Src: client, Dst: closedAddr})
	w.Forget(pid("unused"))

	dialErr := func(to netip.AddrPort) (c net.Conn, err error) {
		in(t, tn.client, func() { c, err = net.Dial(network, to.String()) })
		return c, err
	}
	dial := func(to netip.AddrPort) net.Conn {
		t.Helper()
		c, err := dialErr(to)
		if err != nil {
			t.Fatalf("dialing %v: %v", to, err)
		}
		return c
	}

	// Not expected: a connection nobody registered, one whose expectation
	// was forgotten (refused, but conntrack sees it).
	if got := transfer(t, dial(otherAddr), 100); got != reply {
		t.Errorf("unregistered connection got %d reply bytes, want %d", got, reply)
	}
	if c, err := dialErr(closedAddr); err == nil {
		c.Close()
		t.Fatalf("dialing %v: connected, want refused", closedAddr)
	}

	// The data connection: used once, then it ends as it closes (FINs both
	// ways), with its counters.
	start := time.Now()
	c := dial(dataAddr)
	use := rec.waitUse(t, pid("data"), 5*time.Second)
	if use.Orig.Src.Addr() != client || use.Orig.Dst != dataAddr || use.Reply != use.Orig.reverse() {
		t.Errorf("used by %v / %v, want %v:* -> %v without NAT", use.Orig, use.Reply, client, dataAddr)
	}
	// Not expected (again): a second connection to the used pinhole.
	if got := transfer(t, dial(dataAddr), 100); got != reply {
		t.Errorf("second connection got %d reply bytes, want %d", got, reply)
	}
	if got := transfer(t, c, sent); got != reply {
		t.Errorf("got %d reply bytes, want %d", got, reply)
	}
	lifetime := time.Since(start)
	end := rec.waitEnd(t, pid("data"), endWithin)
	t.Logf("data flow: %v", end.LogAttrs())
	if end.Orig != use.Orig || end.Reply != use.Reply || !end.Start.Equal(use.Start) {
		t.Errorf("end %+v does not describe the used flow %+v", end.Flow, use)
	}
	if !end.Counted || end.Lost || end.Reset {
		t.Errorf("counted = %v, lost = %v, reset = %v; want counted (nf_conntrack_acct=1), not lost or reset",
			end.Counted, end.Lost, end.Reset)
	}
	if end.OrigBytes < sent || end.ReplyBytes < reply || end.OrigPackets == 0 || end.ReplyPackets == 0 {
		t.Errorf("counters orig %d B/%d pkts, reply %d B/%d pkts; want >= %d B orig, >= %d B reply",
			end.OrigBytes, end.OrigPackets, end.ReplyBytes, end.ReplyPackets, sent, reply)
	}
	if end.OrigBytes > 2*sent || end.ReplyBytes > 2*sent {
		t.Errorf("counters orig %d B, reply %d B: the second connection was counted in", end.OrigBytes, end.ReplyBytes)
	}
	if d := end.Duration(); d <= 0 || d > lifetime+time.Second {
		t.Errorf("duration %v, want within (0, %v]: the connection lived %v", d, lifetime+time.Second, lifetime)
	}

	// A connection reset ends at the reset.
	const resetSent = 3000
	w.Expect(pid("reset"), Match{Src: client, Dst: resetAddr})
	start = time.Now()
	rc := dial(resetAddr)
	defer rc.Close()
	rec.waitUse(t, pid("reset"), 5*time.Second)
	if _, err := rc.Write(make([]byte, resetSent)); err != nil {
		t.Fatalf("writing: %v", err)
	}
	for n := 0; n < resetSent; {
		select {
		case n = <-received:
		case <-time.After(5 * time.Second):
			t.Fatalf("server received %d of %d bytes", n, resetSent)
		}
	}
	if err := rc.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatalf("setting linger: %v", err)
	}
	rc.Close() // with linger 0: a reset
	lifetime = time.Since(start)
	resetEnd := rec.waitEnd(t, pid("reset"), endWithin)
	t.Logf("reset flow: %v", resetEnd.LogAttrs())
	if !resetEnd.Reset || !resetEnd.Counted || resetEnd.Lost || resetEnd.OrigBytes < resetSent {
		t.Errorf("reset end %+v, want reset, counted, >= %d bytes orig", resetEnd, resetSent)
	}
	if d := resetEnd.Duration(); d <= 0 || d > lifetime+time.Second {
		t.Errorf("duration %v, want within (0, %v]", d, lifetime+time.Second)
	}

	// A connection held open ends when DeleteFlows deletes its entry: the
	// DESTROY event ends it.
	w.Expect(pid("held"), Match{Src: client, Dst: heldAddr})
	hc := dial(heldAddr)
	defer hc.Close()
	heldUse := rec.waitUse(t, pid("held"), 5*time.Second)
	if _, err := hc.Write([]byte("x")); err != nil {
		t.Fatalf("writing: %v", err)
	}
	var deleted int
	var delErr error
	in(t, tn.server, func() {
		deleted, delErr = DeleteFlows(t.Context(), Match{Src: client, Dst: heldAddr})
	})
	if delErr != nil || deleted != 1 {
		t.Fatalf("DeleteFlows = %d, %v; want 1 deleted", deleted, delErr)
	}
	heldEnd := rec.waitEnd(t, pid("held"), 5*time.Second)
	if heldEnd.Orig != heldUse.Orig || !heldEnd.Counted || heldEnd.OrigBytes == 0 || heldEnd.Reset {
		t.Errorf("held end %+v, want counted end of %v", heldEnd, heldUse.Orig)
	}
	in(t, tn.server, func() {
		deleted, delErr = DeleteFlows(t.Context(), Match{Src: client, Dst: heldAddr})
	})
	if delErr != nil || deleted != 0 {
		t.Errorf("DeleteFlows again = %d, %v; want 0 deleted", deleted, delErr)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.uses) != 3 || len(rec.uses[pid("data")]) != 1 || len(rec.uses[pid("reset")]) != 1 || len(rec.uses[pid("held")]) != 1 {
		t.Errorf("uses = %v, want data, reset and held once each", rec.uses)
	}
	if len(rec.ends) != 3 || len(rec.ends[pid("data")]) != 1 || len(rec.ends[pid("reset")]) != 1 || len(rec.ends[pid("held")]) != 1 {
		t.Errorf("ends = %v, want data, reset and held once each", rec.ends)
	}
	if _, tracked := w.t.counts(); tracked != 0 {
		t.Errorf("%d flows still tracked", tracked)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestWatcherResync overflows the event socket while a callback blocks: the
// NEW event of a pinhole's flow and the DESTROY event of a tracked flow are
// lost, and the Watcher finds both from the conntrack table instead.
func TestWatcherResync(t *testing.T) {
	requireRoot(t)
	tn := newTestNet(t)
	client, srv := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	closedAddr := netip.AddrPortFrom(srv, 9)

	rec := newRecorder()
	release := make(chan struct{})
	var logBuf syncBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("watcher log:\n%s", logBuf.String())
		}
	})
	onUse := func(id rules.PinholeID, f Flow) {
		rec.onUse(id, f)
		if id == pid("block") {
			<-release
		}
	}

	var w *Watcher
	var blockL, lateL, fillL net.Listener
	in(t, tn.server, func() {
		var err error
		if w, err = NewWatcher(Config{Log: log, OnUse: onUse, OnEnd: rec.onEnd, EventBuffer: 1}); err != nil {
			t.Errorf("NewWatcher: %v", err)
			return
		}
		if blockL, err = net.Listen("tcp4", "192.0.2.2:0"); err != nil {
			t.Errorf("listening: %v", err)
			return
		}
		if lateL, err = net.Listen("tcp4", "192.0.2.2:0"); err != nil {
			t.Errorf("listening: %v", err)
			return
		}
		if fillL, err = net.Listen("tcp4", "192.0.2.2:0"); err != nil {
			t.Errorf("listening: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	defer blockL.Close()
	defer lateL.Close()
	serve(t, blockL, replier(t, 0))
	serve(t, lateL, replier(t, 0))
	serve(t, fillL, replier(t, 0))
	// The smallest buffer the kernel allows: a few events.
	if err := setReadBuffer(w.events, 1); err != nil {
		t.Fatalf("shrinking the event socket buffer: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	runErr := make(chan error, 1)
	go func() { runErr <- w.Run(ctx) }()
	released := false
	defer func() {
		if !released {
			close(release)
		}
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	blockAddr := netip.MustParseAddrPort(blockL.Addr().String())
	lateAddr := netip.MustParseAddrPort(lateL.Addr().String())
	w.Expect(pid("block"), Match{Src: client, Dst: blockAddr})
	w.Expect(pid("late"), Match{Src: client, Dst: lateAddr})
	fillAddr := netip.MustParseAddrPort(fillL.Addr().String())
	w.Expect(pid("fill1"), Match{Src: client, Dst: fillAddr})
	w.Expect(pid("fill2"), Match{Src: client, Dst: fillAddr})

	var blocked, late net.Conn
	var dialErr error
	in(t, tn.client, func() { blocked, dialErr = net.Dial("tcp4", blockAddr.String()) })
	if dialErr != nil {
		t.Fatalf("dialing: %v", dialErr)
	}
	rec.waitUse(t, pid("block"), 5*time.Second) // the dispatcher now blocks in OnUse
	in(t, tn.client, func() {
		// Two expected connections: one NEW event fills the queue, the
		// other blocks the reader, and the socket overflows.
		for range 2 {
			c, err := net.Dial("tcp4", fillAddr.String())
			if err != nil {
				t.Errorf("dialing: %v", err)
				return
			}
			t.Cleanup(func() { c.Close() })
		}
		// Refused connections: a NEW and an UPDATE (to CLOSE) event each.
		for range 200 {
			if c, err := net.Dial("tcp4", closedAddr.String()); err == nil {
				c.Close()
			}
		}
		late, dialErr = net.Dial("tcp4", lateAddr.String())
	})
	if dialErr != nil {
		t.Fatalf("dialing: %v", dialErr)
	}
	defer late.Close()
	defer blocked.Close()
	// Its entry deleted, the blocked flow ends; the event is lost.
	var deleted int
	var delErr error
	in(t, tn.server, func() {
		deleted, delErr = DeleteFlows(t.Context(), Match{Src: client, Dst: blockAddr})
	})
	if delErr != nil || deleted != 1 {
		t.Fatalf("DeleteFlows = %d, %v; want 1 deleted", deleted, delErr)
	}
	close(release)
	released = true

	use := rec.waitUse(t, pid("late"), 5*time.Second)
	if use.Orig.Dst != lateAddr || use.Orig.Src != netip.MustParseAddrPort(late.LocalAddr().String()) {
		t.Errorf("late used by %v, want %v -> %v", use.Orig, late.LocalAddr(), lateAddr)
	}
	end := rec.waitEnd(t, pid("block"), 5*time.Second)
	if !end.Lost || end.Counted {
		t.Errorf("block end %+v, want lost and not counted", end)
	}
	rec.waitUse(t, pid("fill1"), 5*time.Second)
	rec.waitUse(t, pid("fill2"), 5*time.Second)
	if !strings.Contains(logBuf.String(), "resynchronized") {
		t.Errorf("no resynchronization logged")
	}
}

// TestEventFilterKernel checks that the kernel runs eventFilter as meant:
// next to an unfiltered socket, which sees every event, the filtered one
// receives only TCP NEW and DESTROY events and UPDATE events to TIME_WAIT or
// CLOSE.
func TestEventFilterKernel(t *testing.T) {
	requireRoot(t)
	tn := newTestNet(t)
	client := netip.MustParseAddr("192.0.2.1")
	var logBuf syncBuffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))

	var filtered, all *netlink.Conn
	var query *ct.Conn
	var finL, resetL net.Listener
	var udp net.PacketConn
	in(t, tn.server, func() {
		var err error
		if filtered, err = openEvents(log); err != nil {
			t.Errorf("opening the filtered event socket: %v", err)
			return
		}
		t.Cleanup(func() { filtered.Close() })
		if all, err = netlink.Dial(unix.NETLINK_NETFILTER, nil); err != nil {
			t.Errorf("opening an event socket: %v", err)
			return
		}
		t.Cleanup(func() { all.Close() })
		for _, g := range netfilter.GroupsCT {
			if err := all.JoinGroup(uint32(g)); err != nil {
				t.Errorf("joining group %d: %v", g, err)
				return
			}
		}
		if query, err = ct.Dial(nil); err != nil {
			t.Errorf("opening conntrack socket: %v", err)
			return
		}
		t.Cleanup(func() { query.Close() })
		for _, l := range []*net.Listener{&finL, &resetL} {
			if *l, err = net.Listen("tcp4", "192.0.2.2:0"); err != nil {
				t.Errorf("listening: %v", err)
				return
			}
			t.Cleanup(func() { (*l).Close() })
		}
		if udp, err = net.ListenPacket("udp4", "192.0.2.2:0"); err != nil {
			t.Errorf("listening: %v", err)
			return
		}
		t.Cleanup(func() { udp.Close() })
	})
	if t.Failed() {
		t.FailNow()
	}
	if strings.Contains(logBuf.String(), "no kernel event filter") {
		t.Fatalf("filter not attached: %s", logBuf.String())
	}
	received := make(chan int, 1)
	serve(t, finL, replier(t, 10))
	serve(t, resetL, reader(received))
	finAddr := netip.MustParseAddrPort(finL.Addr().String())
	resetAddr := netip.MustParseAddrPort(resetL.Addr().String())
	udpAddr := netip.MustParseAddrPort(udp.LocalAddr().String())

	// A TCP connection closed with FINs, one reset, a UDP exchange.
	in(t, tn.client, func() {
		c, err := net.Dial("tcp4", finAddr.String())
		if err != nil {
			t.Errorf("dialing: %v", err)
			return
		}
		if got := transfer(t, c, 10); got != 10 {
			t.Errorf("got %d reply bytes, want 10", got)
		}
		r, err := net.Dial("tcp4", resetAddr.String())
		if err != nil {
			t.Errorf("dialing: %v", err)
			return
		}
		if _, err := r.Write([]byte("x")); err != nil {
			t.Errorf("writing: %v", err)
		}
		select {
		case <-received:
		case <-time.After(5 * time.Second):
			t.Error("server received nothing")
		}
		r.(*net.TCPConn).SetLinger(0)
		r.Close()
		u, err := net.Dial("udp4", udpAddr.String())
		if err != nil {
			t.Errorf("dialing: %v", err)
			return
		}
		defer u.Close()
		if _, err := u.Write([]byte("x")); err != nil {
			t.Errorf("sending: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	// A DESTROY event each for TCP and UDP.
	var deleted int
	var delErr error
	in(t, tn.server, func() { deleted, delErr = DeleteFlows(t.Context(), Match{Src: client, Dst: finAddr}) })
	if delErr != nil || deleted != 1 {
		t.Fatalf("DeleteFlows = %d, %v; want 1 deleted", deleted, delErr)
	}
	flows, err := query.Dump(nil)
	if err != nil {
		t.Fatalf("dumping conntrack table: %v", err)
	}
	for _, f := range flows {
		if f.TupleOrig.Proto.Protocol == unix.IPPROTO_UDP && f.TupleOrig.Proto.DestinationPort == udpAddr.Port() {
			if err := query.Delete(f); err != nil {
				t.Fatalf("deleting UDP flow: %v", err)
			}
		}
	}

	collect := func(c *netlink.Conn) map[string]int {
		seen := map[string]int{}
		for {
			if err := c.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
				t.Fatalf("setting deadline: %v", err)
			}
			msgs, err := c.Receive()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return seen
			}
			if err != nil {
				t.Fatalf("receiving events: %v", err)
			}
			for _, m := range msgs {
				var ev ct.Event
				if err := ev.Unmarshal(m); err != nil {
					t.Fatalf("decoding event: %v", err)
				}
				seen[describeEvent(ev)]++
			}
		}
	}
	got, want := collect(filtered), collect(all)
	t.Logf("filtered: %v\nall: %v", got, want)
	for _, ev := range []string{"new udp", "update tcp 3", "destroy udp"} {
		if want[ev] == 0 {
			t.Errorf("unfiltered socket missed %q: the test does not test the filter", ev)
		}
	}
	for ev, n := range want {
		pass := strings.HasPrefix(ev, "new tcp") || strings.HasPrefix(ev, "destroy tcp") ||
			ev == "update tcp 7" || ev == "update tcp 8"
		switch {
		case pass && got[ev] != n:
			t.Errorf("filtered socket got %d %q events, want %d", got[ev], ev, n)
		case !pass && got[ev] != 0:
			t.Errorf("filtered socket got %d %q events, want none", got[ev], ev)
		}
	}
	for _, ev := range []string{"update tcp 7", "update tcp 8", "destroy tcp 7"} {
		if got[ev] == 0 {
			t.Errorf("filtered socket missed %q", ev)
		}
	}
}

// describeEvent names an event by type, protocol and TCP state.
func describeEvent(ev ct.Event) string {
	if ev.Flow == nil {
		return "other"
	}
	kind := map[bool]string{true: "new", false: "update"}[ev.Type == ct.EventNew]
	if ev.Type == ct.EventDestroy {
		kind = "destroy"
	}
	proto := map[uint8]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[ev.Flow.TupleOrig.Proto.Protocol]
	if proto == "" {
		proto = fmt.Sprint(ev.Flow.TupleOrig.Proto.Protocol)
	}
	if ev.Flow.ProtoInfo.TCP != nil {
		return fmt.Sprintf("%s %s %d", kind, proto, ev.Flow.ProtoInfo.TCP.State)
	}
	return kind + " " + proto
}
