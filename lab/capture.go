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
var captureIfaces = []string{ifInside, ifOutside}

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

// capture records the traffic of the gateway's inside and outside
// interfaces from an AF_PACKET socket opened in the gateway's namespace. A
// forwarded packet is recorded twice: as it arrives on one interface and as
// it leaves by the other, after NAT.
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
			if !c.stopping.Load() {
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

// stop ends the capture, writes out the file and returns the number of
// packets recorded.
func (c *capture) stop() (int, error) {
	c.stopping.Store(true)
	c.sock.Close()
	<-c.done
	err := c.pf.flush()
	if cerr := c.out.Close(); err == nil {
		err = cerr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		err = errors.Join(c.err, err)
	}
	return c.packets, err
}
