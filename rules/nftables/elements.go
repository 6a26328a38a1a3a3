package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Pinhole elements travel in batches this file encodes itself, on a netlink
// socket of their own: google/nftables has no NFT_MSG_DESTROYSETELEM
// (delete, and no error when the element is gone: the packet path consumed
// it, or its timeout expired), and a batch where one delete fails with
// ENOENT would undo the whole batch. Everything else (the table, its sets,
// chains and rules) goes through google/nftables.

const (
	// nftMsgDestroySetElem is NFT_MSG_DESTROYSETELEM (Linux 6.3), missing
	// from golang.org/x/sys/unix.
	nftMsgDestroySetElem = 30
	// nfprotoInet is the nfgen family of an inet table.
	nfprotoInet = unix.NFPROTO_INET
)

// element is one element of one of ftpalg's sets or maps.
type element struct {
	set     string // open4, dnat6, ...
	key     []byte
	val     []byte // nil for a set element
	timeout time.Duration
	comment string
}

// keyOf returns the concatenated key src . dst . dport of a pinhole: each
// field is padded to a multiple of 4 bytes, as nf_tables registers hold it.
func keyOf(src netip.Addr, dst netip.AddrPort) []byte {
	k := append(src.AsSlice(), dst.Addr().AsSlice()...)
	return append(k, portField(dst.Port())...)
}

// portField is an inet_service in a concatenation: big endian, padded.
func portField(port uint16) []byte {
	return []byte{byte(port >> 8), byte(port), 0, 0}
}

// addrPortVal is the value of a dnat map: address . port.
func addrPortVal(ap netip.AddrPort) []byte {
	return append(ap.Addr().AsSlice(), portField(ap.Port())...)
}

// elementConn sends element batches on one long-lived netlink socket.
type elementConn struct {
	netns int // fd of the network namespace, 0 for the caller's

	mu sync.Mutex
	c  *netlink.Conn // nil after an error: redialled on next use
}

func (ec *elementConn) conn() (*netlink.Conn, error) {
	if ec.c != nil {
		return ec.c, nil
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ec.netns})
	if err != nil {
		return nil, fmt.Errorf("dialing netfilter netlink: %w", err)
	}
	ec.c = c
	return c, nil
}

func (ec *elementConn) close() {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	if ec.c != nil {
		ec.c.Close()
		ec.c = nil
	}
}

// add adds elems in one batch; an element whose key is already in its set
// fails the whole batch (EEXIST), which then changes nothing.
func (ec *elementConn) add(table string, elems []element) error {
	return ec.send(table, unix.NFT_MSG_NEWSETELEM, netlink.Create|netlink.Excl, elems)
}

// destroy removes elems in one batch; an element that is not there is not
// an error.
func (ec *elementConn) destroy(table string, elems []element) error {
	keys := make([]element, len(elems))
	for i, e := range elems {
		keys[i] = element{set: e.set, key: e.key}
	}
	return ec.send(table, nftMsgDestroySetElem, 0, keys)
}

func (ec *elementConn) send(table string, typ uint16, flags netlink.HeaderFlags, elems []element) error {
	if len(elems) == 0 {
		return nil
	}
	msgs := make([]netlink.Message, 0, len(elems)+2)
	msgs = append(msgs, batchMsg(unix.NFNL_MSG_BATCH_BEGIN))
	// One message per set: consecutive elements of the same set share it.
	for i := 0; i < len(elems); {
		j := i + 1
		for j < len(elems) && elems[j].set == elems[i].set {
			j++
		}
		data, err := elemList(table, elems[i:j])
		if err != nil {
			return err
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
				Flags: netlink.Request | flags,
			},
			Data: append([]byte{nfprotoInet, unix.NFNETLINK_V0, 0, 0}, data...),
		})
		i = j
	}
	// The batch runs to its end within sendmsg; an error is reported
	// for any message that fails, an ack only for the last one: when
	// that ack arrives, every reply the batch causes has arrived.
	msgs[len(msgs)-1].Header.Flags |= netlink.Acknowledge
	msgs = append(msgs, batchMsg(unix.NFNL_MSG_BATCH_END))

	ec.mu.Lock()
	defer ec.mu.Unlock()
	c, err := ec.conn()
	if err != nil {
		return err
	}
	if _, err := c.SendMessages(msgs); err != nil {
		ec.c.Close()
		ec.c = nil
		return fmt.Errorf("sending set elements: %w", err)
	}
	if _, err := c.Receive(); err != nil {
		// mdlayher/netlink returns the first error reply as an error
		// and drops the rest of the datagram; more replies may still be
		// queued: start afresh on a new socket.
		ec.c.Close()
		ec.c = nil
		return err
	}
	return nil
}

func batchMsg(typ uint16) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	}
}

// elemList encodes the attributes of NFT_MSG_{NEW,DESTROY}SETELEM for
// elements of one set.
func elemList(table string, elems []element) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, elems[0].set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
		for i, e := range elems {
			ae.Nested(uint16(i+1), func(ae *netlink.AttributeEncoder) error {
				ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
					ae.Bytes(unix.NFTA_DATA_VALUE, e.key)
					return nil
				})
				if e.timeout > 0 {
					ms := uint64(e.timeout.Milliseconds())
					if ms == 0 {
						ms = 1
					}
					b := binary.BigEndian.AppendUint64(nil, ms)
					ae.Bytes(unix.NFTA_SET_ELEM_TIMEOUT, b)
				}
				if e.val != nil {
					ae.Nested(unix.NFTA_SET_ELEM_DATA, func(ae *netlink.AttributeEncoder) error {
						ae.Bytes(unix.NFTA_DATA_VALUE, e.val)
						return nil
					})
				}
				if e.comment != "" {
					ae.Bytes(unix.NFTA_SET_ELEM_USERDATA, userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_ELEM_COMMENT, e.comment))
				}
				return nil
			})
		}
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("encoding set elements: %w", err)
	}
	return b, nil
}
