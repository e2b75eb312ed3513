package overlay

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The overlay's two nftables tables, computed here without touching the
// kernel (hostTable, portTable) and written by the Manager (syncHostTable,
// syncPortTable): a table that differs from the kernel's is replaced whole
// in one batch, one that matches is left alone so its counters go on.
//
// The host table (family ip) masquerades container egress and keeps the
// overlay closed to the underlay:
//
//	table ip shoal_overlay_<bridge> {
//	  set vxlan-sources { type ipv4_addr; }  # members' underlay addresses
//	  chain postrouting {  # nat, srcnat
//	    ip saddr <subnet> ip daddr != <overlay> counter masquerade
//	  }
//	  chain input {  # filter, priority filter
//	    udp dport <vxlan port> ip saddr != @vxlan-sources counter drop
//	    ip daddr != <overlay> accept
//	    iifname "lo" accept
//	    iifname "<bridge>" accept
//	    iifname "<vxlan>" accept
//	    ct state established,related accept
//	    counter drop
//	  }
//	  chain forward {  # filter, priority filter
//	    ip daddr != <overlay> accept
//	    iifname "<bridge>" accept
//	    iifname "<vxlan>" accept
//	    ct state established,related accept
//	    ct status dnat accept
//	    counter drop
//	  }
//	}
//
// So a packet enters the overlay range only from a container on this node,
// from a peer's VXLAN device (whose packets come only from members), as a
// reply, or after this node's own DNAT (the lb package's VIPs and node
// ports, which choose the replica and port): a host on the underlay that
// routes the overlay range through a node reaches no replica directly.
//
// The port table (family bridge) stops a container from speaking with any
// address but its own on the node bridge:
//
//	table bridge shoal_overlay_<bridge> {
//	  set ports { type ifname; }  # every container veth of this Manager
//	  set sources { type ifname . ether_addr . ipv4_addr; }  # what each may use
//	  chain prerouting {  # filter, priority -200, before br_netfilter
//	    iifname != @ports accept
//	    ether type ip iifname . ether saddr . ip saddr @sources accept
//	    ether type arp iifname . ether saddr . arp saddr ip @sources iifname . arp saddr ether . arp saddr ip @sources accept
//	    counter drop
//	  }
//	}
//
// Ports are named rather than matched by their bridge (meta ibrname needs
// nft_meta_bridge, which not every kernel has). A veth of this Manager
// whose owner holds no address (its subnet was given up) is in ports but
// not in sources: its frames are dropped until it is attached again.

// Names of the objects in the tables.
const (
	setVXLANSources  = "vxlan-sources"
	setPorts         = "ports"
	setPortSources   = "sources"
	chainPostrouting = "postrouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainPrerouting  = "prerouting"
)

// bridgeFilterPriority is NF_BR_PRI_FILTER_BRIDGED: ahead of br_netfilter
// (priority 0), which hands bridged IPv4 to the ip family's hooks.
const bridgeFilterPriority = -200

// nftTable is the whole desired content of one table.
type nftTable struct {
	family nftables.TableFamily
	name   string
	sets   []*nftSet
	chains []*nftChain
}

// nftSet is a named set; elements are keys as the kernel stores them.
type nftSet struct {
	name     string
	key      nftables.SetDatatype
	concat   bool
	elements [][]byte
	texts    []string // the elements as nft prints them, for String
}

// nftChain is a base chain with policy accept: every drop is a rule.
type nftChain struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority int32
	rules    []nftRule
}

// nftRule is one rule: the expressions the kernel runs and the way nft(8)
// prints them, built together so the text tests compare cannot drift from
// what is applied.
type nftRule struct {
	text  string
	exprs []expr.Any
}

// rule joins statements into one rule.
func rule(parts ...nftRule) nftRule {
	var r nftRule
	var texts []string
	for _, p := range parts {
		texts = append(texts, p.text)
		r.exprs = append(r.exprs, p.exprs...)
	}
	r.text = strings.Join(texts, " ")
	return r
}

// String renders the table roughly as "nft list table" does.
func (t *nftTable) String() string {
	var b strings.Builder
	family := "ip"
	if t.family == nftables.TableFamilyBridge {
		family = "bridge"
	}
	fmt.Fprintf(&b, "table %s %s {\n", family, t.name)
	for _, s := range t.sets {
		fmt.Fprintf(&b, "\tset %s {\n\t\ttype %s\n", s.name, strings.ReplaceAll(s.key.Name, " ", ""))
		if len(s.texts) > 0 {
			fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(s.texts, ", "))
		}
		b.WriteString("\t}\n")
	}
	for _, c := range t.chains {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype %s hook %s priority %d; policy accept;\n", c.name, c.typ, hookName(c.hook), c.priority)
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.text)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func hookName(h *nftables.ChainHook) string {
	switch h {
	case nftables.ChainHookPrerouting:
		return "prerouting"
	case nftables.ChainHookInput:
		return "input"
	case nftables.ChainHookForward:
		return "forward"
	case nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return "?"
}

// hostTable is the ip-family table for a node on subnet that accepts VXLAN
// from sources (sorted and deduplicated here).
func hostTable(name string, cfg Config, subnet netip.Prefix, sources []netip.Addr) *nftTable {
	sources = slices.Clone(sources)
	slices.SortFunc(sources, netip.Addr.Compare)
	sources = slices.Compact(sources)
	vx := &nftSet{name: setVXLANSources, key: nftables.TypeIPAddr}
	for _, a := range sources {
		vx.elements = append(vx.elements, a.AsSlice())
		vx.texts = append(vx.texts, a.String())
	}
	overlay := cfg.OverlayCIDR
	fromOverlay := []nftRule{
		rule(ifname("iifname", cfg.BridgeName), accept()),
		rule(ifname("iifname", cfg.VXLANName), accept()),
	}
	input := []nftRule{
		// VXLAN carries no authentication: whoever can send it to this
		// port can put frames on the overlay as if from a peer.
		rule(udpDport(cfg.VXLANPort), saddrNotIn(vx.name), counter(), drop()),
		rule(ipAddr("daddr", overlay, true), accept()),
		rule(ifname("iifname", "lo"), accept()),
	}
	input = append(input, fromOverlay...)
	input = append(input, rule(ctStateEstablished(), accept()), rule(counter(), drop()))
	forward := []nftRule{rule(ipAddr("daddr", overlay, true), accept())}
	forward = append(forward, fromOverlay...)
	forward = append(forward,
		rule(ctStateEstablished(), accept()),
		// The node's own DNAT (VIPs and node ports) picked the replica and
		// port; conntrack remembers it for the connection's first packet.
		rule(ctStatusDNAT(), accept()),
		rule(counter(), drop()))
	return &nftTable{
		family: nftables.TableFamilyIPv4,
		name:   name,
		sets:   []*nftSet{vx},
		chains: []*nftChain{
			{name: chainPostrouting, typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPostrouting, priority: int32(*nftables.ChainPriorityNATSource), rules: []nftRule{
				// Traffic between containers, on this node or another,
				// keeps its source address; only traffic leaving the
				// overlay gets the node's, so replies come back here.
				rule(ipAddr("saddr", subnet, false), ipAddr("daddr", overlay, true), counter(), masquerade()),
			}},
			{name: chainInput, typ: nftables.ChainTypeFilter, hook: nftables.ChainHookInput, priority: int32(*nftables.ChainPriorityFilter), rules: input},
			{name: chainForward, typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, priority: int32(*nftables.ChainPriorityFilter), rules: forward},
		},
	}
}

// portSource is a container's veth and the only addresses it may use; an
// invalid addr means none.
type portSource struct {
	veth string
	mac  net.HardwareAddr
	addr netip.Addr
}

// portTable is the bridge-family table that holds each container veth to
// its own MAC and IPv4 address.
func portTable(name string, ports []portSource) *nftTable {
	ports = slices.Clone(ports)
	slices.SortFunc(ports, func(a, b portSource) int { return strings.Compare(a.veth, b.veth) })
	names := &nftSet{name: setPorts, key: nftables.TypeIFName}
	src := &nftSet{name: setPortSources, concat: true, key: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)}
	for _, p := range ports {
		names.elements = append(names.elements, ifnameData(p.veth))
		names.texts = append(names.texts, fmt.Sprintf("%q", p.veth))
		if p.addr.Is4() {
			src.elements = append(src.elements, portKey(p.veth, p.mac, p.addr))
			src.texts = append(src.texts, fmt.Sprintf("%q . %s . %s", p.veth, p.mac, p.addr))
		}
	}
	return &nftTable{
		family: nftables.TableFamilyBridge,
		name:   name,
		sets:   []*nftSet{names, src},
		chains: []*nftChain{{name: chainPrerouting, typ: nftables.ChainTypeFilter, hook: nftables.ChainHookPrerouting, priority: bridgeFilterPriority, rules: []nftRule{
			// The table sees every bridge port in the namespace: other
			// agents' containers have their own tables.
			rule(ifnameNotIn(setPorts), accept()),
			rule(etherType(unix.ETH_P_IP, "ip"), sourceKeyIn(src.name, "ip saddr", 12), accept()),
			// An ARP sender must name its own MAC twice (frame and
			// payload) and its own address, or it could poison the
			// gateway's and its neighbours' caches.
			rule(etherType(unix.ETH_P_ARP, "arp"), sourceKeyIn(src.name, "arp saddr ip", 14), arpSenderKeyIn(src.name), accept()),
			// Everything else from a container port: another source,
			// IPv6, VLAN tags, other protocols.
			rule(counter(), drop()),
		}}},
	}
}

// portKey is "ifname . ether_addr . ipv4_addr", each field padded to a
// multiple of four bytes as concatenations are.
func portKey(veth string, mac net.HardwareAddr, addr netip.Addr) []byte {
	k := make([]byte, 16+8+4)
	copy(k, veth)
	copy(k[16:], mac)
	copy(k[24:], addr.AsSlice())
	return k
}

// Registers: a concatenated key is loaded into consecutive 4-byte
// registers from NFT_REG32_00 (which is register 1); an interface name
// takes four of them, a MAC two.
const (
	reg1      = unix.NFT_REG_1
	regName   = unix.NFT_REG32_00
	regMAC    = unix.NFT_REG32_00 + 4
	regIPv4   = unix.NFT_REG32_00 + 6
	ipsDstNAT = 0x20 // IPS_DST_NAT
)

func hostU32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// ifnameData is an interface name as the kernel compares it: NUL-padded to
// IFNAMSIZ, so the match is exact.
func ifnameData(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// ifname is `iifname "NAME"`.
func ifname(key, name string) nftRule {
	return nftRule{
		text: fmt.Sprintf("%s %q", key, name),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ifnameData(name)},
		},
	}
}

// ifnameNotIn is "iifname != @SET".
func ifnameNotIn(set string) nftRule {
	return nftRule{
		text: "iifname != @" + set,
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			&expr.Lookup{SourceRegister: reg1, SetName: set, Invert: true},
		},
	}
}

// ipAddr is "ip saddr|daddr [!=] PREFIX".
func ipAddr(field string, p netip.Prefix, negate bool) nftRule {
	off := uint32(16)
	if field == "saddr" {
		off = 12
	}
	op, neg := expr.CmpOpEq, ""
	if negate {
		op, neg = expr.CmpOpNeq, "!= "
	}
	return nftRule{
		text:  fmt.Sprintf("ip %s %s%s", field, neg, p.Masked()),
		exprs: matchIPv4(off, p, op),
	}
}

// saddrNotIn is "ip saddr != @SET".
func saddrNotIn(set string) nftRule {
	return nftRule{
		text: "ip saddr != @" + set,
		exprs: []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: reg1, SetName: set, Invert: true},
		},
	}
}

// udpDport is "udp dport PORT".
func udpDport(port int) nftRule {
	return nftRule{
		text: fmt.Sprintf("udp dport %d", port),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(uint16(port))},
		},
	}
}

// ctStateEstablished is "ct state established,related".
func ctStateEstablished() nftRule {
	return ctBits("ct state established,related", expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
}

// ctStatusDNAT is "ct status dnat": the connection's destination was
// rewritten by a DNAT rule.
func ctStatusDNAT() nftRule {
	return ctBits("ct status dnat", expr.CtKeySTATUS, ipsDstNAT)
}

func ctBits(text string, key expr.CtKey, bits uint32) nftRule {
	return nftRule{
		text: text,
		exprs: []expr.Any{
			&expr.Ct{Key: key, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: hostU32(bits), Xor: hostU32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: hostU32(0)},
		},
	}
}

// etherType is "ether type ip|arp".
func etherType(proto uint16, name string) nftRule {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, proto)
	return nftRule{
		text: "ether type " + name,
		exprs: []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: b},
		},
	}
}

// sourceKeyIn is "iifname . ether saddr . FIELD @SET", FIELD being the
// IPv4 address at offset of the network header (ip saddr, arp saddr ip).
func sourceKeyIn(set, field string, offset uint32) nftRule {
	return nftRule{
		text: fmt.Sprintf("iifname . ether saddr . %s @%s", field, set),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regName},
			&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Payload{DestRegister: regIPv4, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Lookup{SourceRegister: regName, SetName: set},
		},
	}
}

// arpSenderKeyIn is "iifname . arp saddr ether . arp saddr ip @SET": the
// MAC inside the ARP payload, which is what neighbours learn.
func arpSenderKeyIn(set string) nftRule {
	return nftRule{
		text: "iifname . arp saddr ether . arp saddr ip @" + set,
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regName},
			&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
			&expr.Payload{DestRegister: regIPv4, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
			&expr.Lookup{SourceRegister: regName, SetName: set},
		},
	}
}

func counter() nftRule { return nftRule{text: "counter", exprs: []expr.Any{&expr.Counter{}}} }

func accept() nftRule {
	return nftRule{text: "accept", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}}
}

func drop() nftRule {
	return nftRule{text: "drop", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}}
}

func masquerade() nftRule {
	return nftRule{text: "masquerade", exprs: []expr.Any{&expr.Masq{}}}
}

// containerMAC is the MAC a container's eth0 gets for addr: 0a:58 and the
// four bytes of the address. It is fixed by the address, so the port table
// can be rebuilt from the kernel's veths and the IPAM alone, and an address
// handed to a new container comes with the same MAC, leaving no stale
// neighbour entries behind.
func containerMAC(addr netip.Addr) net.HardwareAddr {
	a := addr.As4()
	return net.HardwareAddr{0x0a, 0x58, a[0], a[1], a[2], a[3]}
}
