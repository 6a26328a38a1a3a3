package nftables

import (
	"encoding/binary"
	"net/netip"

	nft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The table ftpalg owns, "table inet ftpalg" (see doc.go for the design).

// Names of the table, its sets and maps, and its chains.
const (
	tableName = "ftpalg"

	setOpen4  = "open4" // src . dst . dport: unused pinholes
	setOpen6  = "open6"
	setUsed4  = "used4" // src . dst . dport: connections per consumed pinhole
	setUsed6  = "used6"
	mapDNAT4  = "dnat4" // src . dst . dport : addr . port
	mapDNAT6  = "dnat6"
	mapSNAT4  = "snat4" // src . target . tport : addr (key after DNAT)
	mapSNAT6  = "snat6"
	chainPre  = "pinhole_pre"
	chainOut  = "pinhole_out"
	chainNPre = "nat_pre"
	chainNOut = "nat_out"
	chainNPst = "nat_post"
	chainNIn  = "nat_in"

	commentPinhole   = "ftpalg:pinhole"
	commentDNAT      = "ftpalg:dnat"
	commentSNAT      = "ftpalg:snat"
	commentIntercept = "ftpalg:intercept"
	commentListener  = "ftpalg:listener"
	// commentAccept marks the rules ftpalg puts in the operator's
	// filter chains.
	commentAccept = "ftpalg:accept"
	commentPrefix = "ftpalg:"
)

// nf_tables registers: the 128-bit NFT_REG_1..3 and the 32-bit ones that
// overlay them (NFT_REG32_00 is the first word of NFT_REG_1).
const (
	reg1   = unix.NFT_REG_1
	reg2   = unix.NFT_REG_2
	reg3   = unix.NFT_REG_3
	reg32a = unix.NFT_REG32_01 // second word of reg 1: "reg 9" in nft --debug
	reg32b = unix.NFT_REG32_02 // "reg 10"
)

// NFT_DYNSET_OP_ADD and _DELETE (Linux 5.10), missing from
// golang.org/x/sys/unix.
const (
	nftDynsetOpAdd    = 0
	nftDynsetOpDelete = 2
)

// setSize bounds the dynamic sets (the kernel's default is 65,535): live
// pinholes, and data connections that consumed one and still run.
const setSize = 1 << 20

// fam is what differs between the IPv4 and the IPv6 half of the table.
type fam struct {
	nfproto        byte
	open, dnat     string
	used           string
	snat           string
	addr           nft.SetDatatype
	saddr, daddr   uint32 // network header offsets
	alen           uint32
	regDst, regPrt uint32 // key registers of the daddr and the port
	regNATPort     uint32 // register of the port in a dnat map value
}

var fam4 = fam{
	nfproto: unix.NFPROTO_IPV4, open: setOpen4, used: setUsed4, dnat: mapDNAT4, snat: mapSNAT4,
	addr: nft.TypeIPAddr, saddr: 12, daddr: 16, alen: 4,
	regDst: reg32a, regPrt: reg32b, regNATPort: reg32a,
}

var fam6 = fam{
	nfproto: unix.NFPROTO_IPV6, open: setOpen6, used: setUsed6, dnat: mapDNAT6, snat: mapSNAT6,
	addr: nft.TypeIP6Addr, saddr: 8, daddr: 24, alen: 16,
	regDst: reg2, regPrt: reg3, regNATPort: reg2,
}

func famOf(a netip.Addr) *fam {
	if a.Is4() {
		return &fam4
	}
	return &fam6
}

// table describes everything in the owned table, for one configuration.
type table struct {
	t      *nft.Table
	mark   uint32
	sets   []*nft.Set
	chains map[string]*nft.Chain
}

func newTable(mark uint32) *table {
	t := &nft.Table{Name: tableName, Family: nft.TableFamilyINet}
	tb := &table{t: t, mark: mark, chains: map[string]*nft.Chain{}}
	for _, f := range []*fam{&fam4, &fam6} {
		key := nft.MustConcatSetType(f.addr, f.addr, nft.TypeInetService)
		tb.sets = append(tb.sets,
			// Dynamic: the packet path deletes from it.
			&nft.Set{Table: t, Name: f.open, KeyType: key, Concatenation: true, HasTimeout: true, Dynamic: true, Size: setSize},
			// No timeout: the kernel refuses a connection count in a set
			// with timeouts; its garbage collector drops an element once
			// no connection it counted exists any more.
			&nft.Set{Table: t, Name: f.used, KeyType: key, Concatenation: true, Dynamic: true, Size: setSize},
			&nft.Set{Table: t, Name: f.dnat, KeyType: key, Concatenation: true, HasTimeout: true, IsMap: true,
				DataType: nft.MustConcatSetType(f.addr, nft.TypeInetService)},
			&nft.Set{Table: t, Name: f.snat, KeyType: key, Concatenation: true, HasTimeout: true, IsMap: true,
				DataType: f.addr},
		)
	}
	// Set IDs need only be unique within a batch; set here, they keep
	// google/nftables from counting them in a package variable that
	// backends in several goroutines would race on.
	for i, set := range tb.sets {
		set.ID = uint32(i + 1)
	}
	accept := nft.ChainPolicyAccept
	for _, c := range []struct {
		name string
		typ  nft.ChainType
		hook *nft.ChainHook
		prio *nft.ChainPriority
	}{
		{chainPre, nft.ChainTypeFilter, nft.ChainHookPrerouting, nft.ChainPriorityMangle},
		{chainOut, nft.ChainTypeFilter, nft.ChainHookOutput, nft.ChainPriorityMangle},
		{chainNPre, nft.ChainTypeNAT, nft.ChainHookPrerouting, nft.ChainPriorityNATDest},
		{chainNOut, nft.ChainTypeNAT, nft.ChainHookOutput, nft.ChainPriorityNATDest},
		{chainNPst, nft.ChainTypeNAT, nft.ChainHookPostrouting, nft.ChainPriorityNATSource},
		{chainNIn, nft.ChainTypeNAT, nft.ChainHookInput, nft.ChainPriorityNATSource},
	} {
		tb.chains[c.name] = &nft.Chain{Table: t, Name: c.name, Type: c.typ, Hooknum: c.hook, Priority: c.prio, Policy: &accept}
	}
	return tb
}

// chainOrder is the order in which chains are created and listed.
var chainOrder = []string{chainPre, chainOut, chainNPre, chainNOut, chainNPst, chainNIn}

// baseRules returns the fixed rules of each chain: the pinhole lookups
// and the NAT map lookups, for both families.
func (tb *table) baseRules() map[string][][]expr.Any {
	r := map[string][][]expr.Any{}
	for _, f := range []*fam{&fam4, &fam6} {
		consume := tb.consumeRule(f)
		r[chainPre] = append(r[chainPre], consume)
		r[chainOut] = append(r[chainOut], consume)
		dnat := tb.dnatRule(f)
		r[chainNPre] = append(r[chainNPre], dnat)
		r[chainNOut] = append(r[chainNOut], dnat)
		snat := tb.snatRule(f)
		r[chainNPst] = append(r[chainNPst], snat)
		r[chainNIn] = append(r[chainNIn], snat)
	}
	return r
}

func comment(c string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, c)
}

// ctStateNew: ct state new.
func ctStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitNEW), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
}

// tcp: meta l4proto tcp.
func tcp() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// tcpSYN: tcp flags syn / fin,syn,rst,ack (after tcp()).
func tcpSYN() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{0x17}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0x02}},
	}
}

// nfproto: meta nfproto ipv4|ipv6.
func nfproto(f *fam) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.nfproto}},
	}
}

// loadKey loads ip saddr . ip daddr . tcp dport into reg 1.
func loadKey(f *fam) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.alen},
		&expr.Payload{DestRegister: f.regDst, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.alen},
		&expr.Payload{DestRegister: f.regPrt, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// setMark: ct mark set ct mark | mark.
func (tb *table) setMark() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ^tb.mark), Xor: binary.NativeEndian.AppendUint32(nil, tb.mark)},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
}

// hasMark: ct mark & mark == mark.
func hasMark(mark uint32) []expr.Any {
	m := binary.NativeEndian.AppendUint32(nil, mark)
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: m, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: m},
	}
}

// consumeRule is the single-use rule. The first new connection whose
// src . dst . dport is in the open set is counted in the used set (a
// connection count of at most 1 per key, kept under a lock by the kernel),
// deletes the element from the open set and gets the mark:
//
//	ct state new tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @open4
//	    add @used4 { ip saddr . ip daddr . tcp dport ct count 1 }
//	    delete @open4 { ip saddr . ip daddr . tcp dport } ct mark set ct mark | MARK
//
// A SYN that follows finds no element in the open set. Two SYNs evaluated
// at the same instant on two CPUs can both pass the lookup, but the
// connection count lets only the first through: the second is the second
// connection of that key. (The first's retransmitted SYN is the same
// connection and counts once.) The used element goes when no connection it
// counted exists any more.
func (tb *table) consumeRule(f *fam) []expr.Any {
	var e []expr.Any
	e = append(e, ctStateNew()...)
	e = append(e, tcp()...)
	e = append(e, tcpSYN()...)
	e = append(e, nfproto(f)...)
	e = append(e, loadKey(f)...)
	e = append(e, &expr.Lookup{SourceRegister: reg1, SetName: f.open})
	e = append(e, loadKey(f)...)
	e = append(e, &expr.Dynset{SrcRegKey: reg1, SetName: f.used, Operation: nftDynsetOpAdd,
		Exprs: []expr.Any{&expr.Connlimit{Count: 1}}})
	e = append(e, loadKey(f)...)
	e = append(e, &expr.Dynset{SrcRegKey: reg1, SetName: f.open, Operation: nftDynsetOpDelete})
	return append(e, tb.setMark()...)
}

// dnatRule translates a connection that consumed a pinhole:
//
//	ct mark & MARK == MARK meta nfproto ipv4 meta l4proto tcp
//	    dnat ip to ip saddr . ip daddr . tcp dport map @dnat4
func (tb *table) dnatRule(f *fam) []expr.Any {
	var e []expr.Any
	e = append(e, hasMark(tb.mark)...)
	e = append(e, nfproto(f)...)
	e = append(e, tcp()...)
	e = append(e, loadKey(f)...)
	e = append(e, &expr.Lookup{SourceRegister: reg1, SetName: f.dnat, DestRegister: reg1, IsDestRegSet: true})
	return append(e, &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto),
		RegAddrMin: reg1, RegAddrMax: reg1, RegProtoMin: f.regNATPort, RegProtoMax: f.regNATPort, Specified: true})
}

// snatRule translates the source of a connection that consumed a
// pinhole; the key is the tuple after DNAT:
//
//	ct mark & MARK == MARK meta nfproto ipv4 meta l4proto tcp
//	    snat ip to ip saddr . ip daddr . tcp dport map @snat4
func (tb *table) snatRule(f *fam) []expr.Any {
	var e []expr.Any
	e = append(e, hasMark(tb.mark)...)
	e = append(e, nfproto(f)...)
	e = append(e, tcp()...)
	e = append(e, loadKey(f)...)
	e = append(e, &expr.Lookup{SourceRegister: reg1, SetName: f.snat, DestRegister: reg1, IsDestRegSet: true})
	return append(e, &expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.nfproto),
		RegAddrMin: reg1, RegAddrMax: reg1})
}

// ifname is the 16-byte interface name nf_tables compares; a trailing "+"
// (iptables' wildcard) compares the prefix only.
func ifname(name string) []byte {
	if n := len(name); n > 0 && name[n-1] == '+' {
		return []byte(name[:n-1])
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// interceptRule redirects FTP control connections arriving on iface to
// the local listener and marks them, so that the operator's filter lets
// them reach it:
//
//	iifname IF meta l4proto tcp tcp dport 21 ct mark set ct mark | MARK redirect to :PORT
func (tb *table) interceptRule(iface string, port uint16) []expr.Any {
	var e []expr.Any
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ifname(iface)})
	e = append(e, tcp()...)
	e = append(e,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, ftpPort)})
	e = append(e, tb.setMark()...)
	return append(e,
		&expr.Immediate{Register: reg1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Redir{RegisterProtoMin: reg1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED})
}

// listenerRule marks new connections to one of ftpalg's listeners (addr
// invalid: any address of the family f, or of both when f is nil):
//
//	ct state new meta l4proto tcp [ip daddr ADDR] tcp dport PORT ct mark set ct mark | MARK
func (tb *table) listenerRule(f *fam, addr netip.Addr, port uint16) []expr.Any {
	var e []expr.Any
	e = append(e, ctStateNew()...)
	e = append(e, tcp()...)
	if f != nil {
		e = append(e, nfproto(f)...)
	}
	if addr.IsValid() {
		e = append(e,
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.alen},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: addr.AsSlice()})
	}
	e = append(e,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binary.BigEndian.AppendUint16(nil, port)})
	return append(e, tb.setMark()...)
}

// acceptRule is the rule ftpalg inserts at the top of an operator's
// native nftables filter chain:
//
//	ct mark & MARK == MARK accept comment "ftpalg:accept"
func acceptRule(mark uint32) []expr.Any {
	return append(hasMark(mark), &expr.Verdict{Kind: expr.VerdictAccept})
}
