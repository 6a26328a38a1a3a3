package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/sys/unix"
)

// snapLen is the most the capture keeps of one packet. veth interfaces pass
// segments of up to 64 KiB (TSO/GRO), so this keeps every packet whole.
const snapLen = 256 * 1024

// captureIfaces are the gateway interfaces the capture records, in the
// order of their pcapng interface IDs.
var captureIfaces = []string{netlab.IfInside, netlab.IfOutside}

// packetFile writes packets to a pcap or pcapng file with gopacket's pure-Go
// writers (pcapgo). pcapng records each packet's interface by name; classic
// pcap has no room for it.
type packetFile struct {
	buf  *bufio.Writer  // pcap: buffers writes to the file
	pcap *pcapgo.Writer // pcap
	ng   *pcapgo.NgWriter
	ids  map[string]int // pcapng interface ID by name
}

// newPacketFile starts a capture file on w: pcapng (one interface per
// name in ifaces) when ng is true, else classic pcap. Both use Ethernet
// framing.
func newPacketFile(w io.Writer, ng bool, ifaces []string) (*packetFile, error) {
	pf := &packetFile{ids: map[string]int{}}
	if !ng {
		pf.buf = bufio.NewWriterSize(w, 1<<20)
		pf.pcap = pcapgo.NewWriterNanos(pf.buf)
		if err := pf.pcap.WriteFileHeader(snapLen, layers.LinkTypeEthernet); err != nil {
			return nil, fmt.Errorf("writing pcap header: %w", err)
		}
		return pf, nil
	}
	if len(ifaces) == 0 {
		return nil, errors.New("pcapng needs at least one interface")
	}
	intf := func(name string) pcapgo.NgInterface {
		return pcapgo.NgInterface{
			Name: name, OS: runtime.GOOS, LinkType: layers.LinkTypeEthernet,
			SnapLength: snapLen, TimestampResolution: 9,
			Description: "ftpalg lab gateway, interface " + name,
		}
	}
	opts := pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{
		Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: "ftpalg lab",
	}}
	var err error
	pf.ng, err = pcapgo.NewNgWriterInterface(w, intf(ifaces[0]), opts)
	if err != nil {
		return nil, fmt.Errorf("writing pcapng header: %w", err)
	}
	pf.ids[ifaces[0]] = 0
	for _, name := range ifaces[1:] {
		id, err := pf.ng.AddInterface(intf(name))
		if err != nil {
			return nil, fmt.Errorf("writing pcapng interface %s: %w", name, err)
		}
		pf.ids[name] = id
	}
	return pf, nil
}

// write records one packet seen on interface iface at ts; length is its
// size on the wire, data what was captured of it.
func (pf *packetFile) write(iface string, ts time.Time, data []byte, length int) error {
	if length < len(data) {
		length = len(data)
	}
	ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(data), Length: length}
	if pf.ng != nil {
		id, ok := pf.ids[iface]
		if !ok {
			return fmt.Errorf("interface %q is not in the pcapng file", iface)
		}
		ci.InterfaceIndex = id
		return pf.ng.WritePacket(ci, data)
	}
	return pf.pcap.WritePacket(ci, data)
}

// flush writes out what is buffered.
func (pf *packetFile) flush() error {
	if pf.ng != nil {
		return pf.ng.Flush()
	}
	return pf.buf.Flush()
}

// captureRcvBuf is the packet socket's receive buffer. The kernel charges
// a packet's whole buffer (up to 64 KiB with GRO on veth) against it, so
// the default of about 200 KiB held a handful of segments and lost packets
// whenever a transfer outran the writer for a moment.
const captureRcvBuf = 64 << 20

// capture records the traffic of the gateway's inside and outside
// interfaces from an AF_PACKET socket opened in the gateway's namespace. A
// forwarded packet is recorded twice: as it arrives on one interface and as
// it leaves by the other, after NAT. The kernel's drop counter
// (PACKET_STATISTICS) says how many packets it could not queue.
type capture struct {
	ns   *netlab.NS
	sock *os.File
	out  *os.File
	pf   *packetFile

	names    map[int]string // interface name by index ("" = not recorded)
	stopping atomic.Bool
	done     chan struct{}
	mu       sync.Mutex
	packets  int
	err      error
}

// captureStats is what a capture recorded and what the kernel dropped.
type captureStats struct {
	// Packets were written to the file.
	Packets int
	// Dropped is how many packets the kernel dropped because the socket's
	// buffer was full: they are missing from the file.
	Dropped int
}

// startCapture opens the packet socket in ns and starts writing path
// (pcapng if it ends in ".pcapng", else pcap).
func startCapture(ns *netlab.NS, path string) (*capture, error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening a packet socket in %s: %w", ns.Name, err)
	}
	// SO_RCVBUFFORCE (root) may exceed net.core.rmem_max; SO_RCVBUF is
	// capped by it. Either is better than the default.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureRcvBuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, captureRcvBuf); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("sizing the packet socket's buffer: %w", err)
		}
	}
	// Reading the statistics resets them: start counting from here.
	if _, err := unix.GetsockoptTpacketStats(fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("reading the packet socket's statistics: %w", err)
	}
	sock := os.NewFile(uintptr(fd), "packet socket")
	out, err := os.Create(path)
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("creating capture file: %w", err)
	}
	pf, err := newPacketFile(out, strings.HasSuffix(path, ".pcapng"), captureIfaces)
	if err != nil {
		sock.Close()
		out.Close()
		return nil, err
	}
	c := &capture{ns: ns, sock: sock, out: out, pf: pf, names: map[int]string{}, done: make(chan struct{})}
	go c.run()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) run() {
	defer close(c.done)
	rc, err := c.sock.SyscallConn()
	if err != nil {
		c.setErr(fmt.Errorf("capturing: %w", err))
		return
	}
	buf := make([]byte, snapLen)
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			// MSG_TRUNC: n is the packet's real length even if longer
			// than buf.
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			// stop sets a deadline in the past: what was queued has been
			// read, and the capture ends.
			if !c.stopping.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
				c.setErr(fmt.Errorf("capturing: %w", err))
			}
			return
		}
		if rerr != nil {
			c.setErr(fmt.Errorf("capturing: %w", rerr))
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok {
			continue
		}
		name := c.ifaceName(ll.Ifindex)
		if name == "" {
			continue
		}
		data := buf[:min(n, len(buf))]
		if err := c.pf.write(name, time.Now(), data, n); err != nil {
			c.setErr(fmt.Errorf("writing capture: %w", err))
			return
		}
		c.mu.Lock()
		c.packets++
		c.mu.Unlock()
	}
}

// ifaceName returns the name of interface index if it is one the capture
// records, else "". Indexes are looked up in the gateway's namespace once;
// wiring anew creates new indexes.
func (c *capture) ifaceName(index int) string {
	if name, ok := c.names[index]; ok {
		return name
	}
	var name string
	_ = c.ns.Do(func() error {
		ifc, err := net.InterfaceByIndex(index)
		if err == nil {
			name = ifc.Name
		}
		return err
	})
	for _, want := range captureIfaces {
		if name == want {
			c.names[index] = name
			return name
		}
	}
	c.names[index] = ""
	return ""
}

func (c *capture) setErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

// stop ends the capture: it reads what the socket still holds, writes out
// the file and returns what was recorded and what the kernel dropped.
func (c *capture) stop() (captureStats, error) {
	// The drop counter first: once the reader has drained the queue, the
	// counts are final for everything that arrived before now.
	var st captureStats
	var errs []error
	rc, err := c.sock.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			var ts *unix.TpacketStats
			if ts, serr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); serr == nil {
				st.Dropped = int(ts.Drops)
			}
		})
		err = errors.Join(err, serr)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("reading the capture's drop counter: %w", err))
	}
	c.stopping.Store(true)
	if err := c.sock.SetReadDeadline(time.Now()); err != nil {
		errs = append(errs, fmt.Errorf("stopping the capture: %w", err))
		c.sock.Close()
	}
	<-c.done
	c.sock.Close()
	if err := c.pf.flush(); err != nil {
		errs = append(errs, err)
	}
	if err := c.out.Close(); err != nil {
		errs = append(errs, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st.Packets = c.packets
	if c.err != nil {
		errs = append([]error{c.err}, errs...)
	}
	return st, errors.Join(errs...)
}
