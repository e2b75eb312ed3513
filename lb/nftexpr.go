package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// stmt is one nftables statement: the expressions the kernel runs and the
// way nft(8) would print them. Building both together keeps the readable
// form, which the table tests compare, from drifting from what is applied.
type stmt struct {
	text  string
	exprs []expr.Any
}

// Registers. nftables has four 16-byte registers (1-4) that overlay sixteen
// 4-byte ones (8-23): register 1 is 8 to 11. Concatenated keys and the
// address . port data of DNAT maps sit in consecutive 4-byte registers.
const (
	reg1   = unix.NFT_REG_1
	reg32a = unix.NFT_REG32_00 + 1 // second 4-byte word of register 1
	reg32b = unix.NFT_REG32_00 + 2 // third
)

// Values the kernel stores in host byte order (ct state/status, meta mark,
// fib results, numgen and jhash outputs).
func hostU32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

const (
	ctStateNew    = expr.CtStateBitNEW
	ipsDstNAT     = 0x20 // IPS_DST_NAT
	rtnLocal      = unix.RTN_LOCAL
	icmpPortUnrch = 3 // ICMP_PORT_UNREACH
)

func seq(parts ...stmt) stmt {
	var s stmt
	var texts []string
	for _, p := range parts {
		if p.text != "" {
			texts = append(texts, p.text)
		}
		s.exprs = append(s.exprs, p.exprs...)
	}
	s.text = strings.Join(texts, " ")
	return s
}

// ipField loads ip saddr (offset 12) or ip daddr (16) into register dst.
func ipField(field string, dst uint32) expr.Any {
	off := uint32(16)
	if field == "saddr" {
		off = 12
	}
	return &expr.Payload{DestRegister: dst, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}
}

// matchPrefix compares the IPv4 address in register 1 with a prefix.
func matchPrefix(p netip.Prefix, negate bool) []expr.Any {
	p = p.Masked()
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	addr := p.Addr().AsSlice()
	if p.Bits() == 32 {
		return []expr.Any{&expr.Cmp{Op: op, Register: reg1, Data: addr}}
	}
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: reg1, Data: addr},
	}
}

func prefixText(p netip.Prefix) string {
	if p.Bits() == 32 {
		return p.Addr().String()
	}
	return p.Masked().String()
}

// ipAddrIn is "ip saddr|daddr [!=] PREFIX".
func ipAddrIn(field string, p netip.Prefix, negate bool) stmt {
	neg := ""
	if negate {
		neg = "!= "
	}
	return stmt{
		text:  fmt.Sprintf("ip %s %s%s", field, neg, prefixText(p)),
		exprs: append([]expr.Any{ipField(field, reg1)}, matchPrefix(p, negate)...),
	}
}

// l4proto is "meta l4proto tcp|udp".
func l4proto(proto string) stmt {
	return stmt{
		text: "meta l4proto " + proto,
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{protoNum(proto)}},
		},
	}
}

func protoNum(proto string) byte {
	if proto == ProtocolUDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// fibDaddrLocal is "fib daddr type local": the destination is one of this
// node's addresses.
func fibDaddrLocal() stmt {
	return stmt{
		text: "fib daddr type local",
		exprs: []expr.Any{
			&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: hostU32(rtnLocal)},
		},
	}
}

// daddrInSet is "ip daddr @SET".
func daddrInSet(set *setSpec) stmt {
	return stmt{
		text: "ip daddr @" + set.name,
		exprs: []expr.Any{
			ipField("daddr", reg1),
			&expr.Lookup{SourceRegister: reg1, SetName: set.name, SetID: set.id},
		},
	}
}

// protoPortKey loads "meta l4proto . th dport" into registers 1 and 1+.
func protoPortKey(first uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: first},
		&expr.Payload{DestRegister: first + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// vipKeyVmap is "ip daddr . meta l4proto . th dport vmap @SET".
func vipKeyVmap(set *setSpec) stmt {
	return stmt{
		text: "ip daddr . meta l4proto . th dport vmap @" + set.name,
		exprs: []expr.Any{
			ipField("daddr", unix.NFT_REG32_00),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32a},
			&expr.Payload{DestRegister: reg32b, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true, SetName: set.name, SetID: set.id},
		},
	}
}

// protoPortVmap is "meta l4proto . th dport vmap @SET".
func protoPortVmap(set *setSpec) stmt {
	return stmt{
		text: "meta l4proto . th dport vmap @" + set.name,
		exprs: append(protoPortKey(unix.NFT_REG32_00),
			&expr.Lookup{SourceRegister: reg1, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true, SetName: set.name, SetID: set.id}),
	}
}

// protoPortInSet is "meta l4proto . th dport @SET".
func protoPortInSet(set *setSpec) stmt {
	return stmt{
		text: "meta l4proto . th dport @" + set.name,
		exprs: append(protoPortKey(unix.NFT_REG32_00),
			&expr.Lookup{SourceRegister: reg1, SetName: set.name, SetID: set.id}),
	}
}

// ctStateIsNew is "ct state new".
func ctStateIsNew() stmt {
	return stmt{
		text: "ct state new",
		exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: hostU32(ctStateNew), Xor: hostU32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: hostU32(0)},
		},
	}
}

// ctStatusDNAT is "ct status dnat": the connection's destination was
// rewritten.
func ctStatusDNAT() stmt {
	return stmt{
		text: "ct status dnat",
		exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: hostU32(ipsDstNAT), Xor: hostU32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: hostU32(0)},
		},
	}
}

// ctOriginalDaddrIn is "ct original ip daddr PREFIX": where the client sent
// the connection, before DNAT.
func ctOriginalDaddrIn(p netip.Prefix) stmt {
	return stmt{
		text:  "ct original ip daddr " + prefixText(p),
		exprs: append([]expr.Any{&expr.Ct{Key: expr.CtKeyDST, Register: reg1, Direction: 0}}, matchPrefix(p, false)...),
	}
}

// fibDaddrViaIif is "fib daddr . iif oif != 0": the (already DNAT'd)
// destination is routed out of the interface the packet came in on, so the
// backend's replies would go straight to the client without passing back
// through this node.
func fibDaddrViaIif() stmt {
	return stmt{
		text: "fib daddr . iif oif != 0",
		exprs: []expr.Any{
			&expr.Fib{Register: reg1, FlagDADDR: true, FlagIIF: true, ResultOIF: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: hostU32(0)},
		},
	}
}

// setMark is "meta mark set meta mark | BIT".
func setMark(bit uint32) stmt {
	return stmt{
		text: fmt.Sprintf("meta mark set meta mark | %#08x", bit),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: hostU32(^bit), Xor: hostU32(bit)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
		},
	}
}

// clearMark is "meta mark set meta mark & ^BIT".
func clearMark(bit uint32) stmt {
	return stmt{
		text: fmt.Sprintf("meta mark set meta mark & %#08x", ^bit),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: hostU32(^bit), Xor: hostU32(0)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
		},
	}
}

// markUnset is "meta mark & BIT == 0".
func markUnset(bit uint32) stmt {
	return stmt{
		text: fmt.Sprintf("meta mark & %#08x == 0", bit),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: hostU32(bit), Xor: hostU32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: hostU32(0)},
		},
	}
}

func verdict(kind expr.VerdictKind, chain string) stmt {
	var text string
	switch kind {
	case expr.VerdictJump:
		text = "jump " + chain
	case expr.VerdictGoto:
		text = "goto " + chain
	case expr.VerdictReturn:
		text = "return"
	case expr.VerdictDrop:
		text = "drop"
	case expr.VerdictAccept:
		text = "accept"
	}
	return stmt{text: text, exprs: []expr.Any{&expr.Verdict{Kind: kind, Chain: chain}}}
}

func masquerade() stmt {
	return stmt{text: "masquerade fully-random", exprs: []expr.Any{&expr.Masq{FullyRandom: true}}}
}

func rejectTCPReset() stmt {
	return stmt{text: "reject with tcp reset", exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}}
}

func rejectPortUnreachable() stmt {
	return stmt{text: "reject with icmp port-unreachable", exprs: []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnrch}}}
}

// dnatTo is "dnat to IP:PORT".
func dnatTo(ip netip.Addr, port uint16) stmt {
	return stmt{
		text: fmt.Sprintf("dnat to %s", netip.AddrPortFrom(ip, port)),
		exprs: []expr.Any{
			&expr.Immediate{Register: reg1, Data: ip.AsSlice()},
			&expr.Immediate{Register: reg32a, Data: binaryutil.BigEndian.PutUint16(port)},
			dnatRegs(),
		},
	}
}

func dnatRegs() *expr.NAT {
	return &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg32a, Specified: true}
}

// selector is the expressions that put a bucket number into register 1.
type selector struct {
	text  string
	exprs []expr.Any
}

func numgen(kind uint32, n uint32) selector {
	name := "inc"
	if kind == unix.NFT_NG_RANDOM {
		name = "random"
	}
	return selector{
		text:  fmt.Sprintf("numgen %s mod %d", name, n),
		exprs: []expr.Any{&expr.Numgen{Register: reg1, Type: kind, Modulus: n}},
	}
}

func jhashSaddr(n, seed uint32) selector {
	return selector{
		text: fmt.Sprintf("jhash ip saddr mod %d seed %#x", n, seed),
		exprs: []expr.Any{
			ipField("saddr", reg1),
			&expr.Hash{SourceRegister: reg1, DestRegister: reg1, Length: 4, Modulus: n, Seed: seed, Type: expr.HashTypeJenkins},
		},
	}
}

// dnatMap is "dnat to SELECTOR map { bucket : ip . port, ... }": the map
// (anonymous, added to the batch before the rule) turns the bucket into the
// backend's address and port, which DNAT reads from two 4-byte registers.
func dnatMap(sel selector, m *setSpec) stmt {
	exprs := append([]expr.Any{}, sel.exprs...)
	exprs = append(exprs,
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: m.name, SetID: m.id},
		dnatRegs())
	// The rule's String adds " map { ... }" from the map when asked.
	return stmt{text: "dnat to " + sel.text, exprs: exprs}
}
