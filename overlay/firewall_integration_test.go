package overlay

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Root tests of the overlay firewall (firewall.go) on the lab underlay.
// hubAddr stands for a machine on the underlay that holds no key and is
// not a member.

const fwPrefix = "shoal-ovf-"

// routeOverlayVia makes the hub send the overlay range to node.
func routeOverlayVia(t *testing.T, l *lab, node netip.Addr) {
	t.Helper()
	must(t, l.hubH.RouteReplace(&netlink.Route{Dst: prefixToIPNet(DefaultOverlayCIDR), Gw: net.IP(node.AsSlice())}))
}

// expectNoConnect fails the test if a TCP connection from the namespace
// at path to addr succeeds within a short timeout.
func expectNoConnect(t *testing.T, what, path, addr string) {
	t.Helper()
	c, err := dialIn(path, addr, 1500*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("%s connected to %s", what, addr)
	}
}

// dnatTable is a stand-in for the lb package's table: node ports 18080
// and 18081 DNAT'd to the given backends, masqueraded as lb does.
func dnatTable(t *testing.T, path string, backends map[uint16]netip.AddrPort) {
	t.Helper()
	err := inNS(path, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "shoal_test_dnat"})
		pre := c.AddChain(&nftables.Chain{Name: "pre", Table: tbl, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
		post := c.AddChain(&nftables.Chain{Name: "post", Table: tbl, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		for port, to := range backends {
			pb := make([]byte, 2)
			binary.BigEndian.PutUint16(pb, port)
			tb := make([]byte, 2)
			binary.BigEndian.PutUint16(tb, to.Port())
			c.AddRule(&nftables.Rule{Table: tbl, Chain: pre, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: pb},
				&expr.Immediate{Register: 1, Data: to.Addr().AsSlice()},
				&expr.Immediate{Register: 2, Data: tb},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			}})
		}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: post, Exprs: append(ctStatusDNAT().exprs[:3:3], &expr.Masq{})})
		return c.Flush()
	})
	must(t, err)
}

func TestUnderlayHostReachesNoContainerDirectly(t *testing.T) {
	l := newLab(t, fwPrefix)
	nodes := startNodes(t, l, 2)
	n1, n2 := nodes[0], nodes[1]
	c1 := attachContainer(t, l, n1, "c1")
	c2 := attachContainer(t, l, n2, "c2")
	addr1, addr2 := serveIn(t, c1), serveIn(t, c2)
	routeOverlayVia(t, l, n1.underlay)

	// The overlay itself still works: container to container across
	// nodes, node to container.
	expectEcho(t, "c1", c1.path, c2, addr2)
	expectEcho(t, "c2", c2.path, c1, addr1)
	expectEcho(t, "node2", n2.path, c1, addr1)

	t.Run("no container port from the underlay", func(t *testing.T) {
		expectNoConnect(t, "the hub", l.hub, addr1) // on the node it routes through
		expectNoConnect(t, "the hub", l.hub, addr2) // behind it, over VXLAN
	})
	t.Run("no service of the node on its overlay address", func(t *testing.T) {
		gw := netip.AddrPortFrom(Gateway(n1.m.Subnet()), 5353).String()
		serveEcho(listenIn(t, n1.path, gw), "gateway")
		expectNoConnect(t, "the hub", l.hub, gw)
		got, err := echoOnce(c1.path, gw)
		if err != nil || got != "gateway: ping" {
			t.Fatalf("c1 -> its gateway %s: %q %v", gw, got, err)
		}
	})
	t.Run("the node's own DNAT still reaches containers", func(t *testing.T) {
		dnatTable(t, n1.path, map[uint16]netip.AddrPort{
			18080: netip.AddrPortFrom(c1.addr, 8080),
			18081: netip.AddrPortFrom(c2.addr, 8080),
		})
		for port, to := range map[uint16]*container{18080: c1, 18081: c2} {
			expectEcho(t, "the hub via a node port", l.hub, to, netip.AddrPortFrom(n1.underlay, port).String())
		}
		// And still not directly.
		expectNoConnect(t, "the hub", l.hub, addr2)
	})
	t.Run("drops are counted", func(t *testing.T) {
		if n := dropCount(t, n1, nftables.TableFamilyIPv4, chainForward); n == 0 {
			t.Fatal("forward chain counted no drop")
		}
	})
}

// dropCount reads the packet counter of the last rule (counter drop) of a
// chain of node's overlay table.
func dropCount(t *testing.T, n *testNode, fam nftables.TableFamily, chain string) uint64 {
	t.Helper()
	c, err := n.m.nftConn()
	must(t, err)
	rules, err := c.GetRules(&nftables.Table{Family: fam, Name: n.m.tableName()}, &nftables.Chain{Name: chain})
	must(t, err)
	if len(rules) == 0 {
		t.Fatalf("chain %s is empty", chain)
	}
	for _, e := range rules[len(rules)-1].Exprs {
		if ctr, ok := e.(*expr.Counter); ok {
			return ctr.Packets
		}
	}
	t.Fatalf("last rule of %s has no counter", chain)
	return 0
}

// setRPFilter turns reverse-path filtering off in the namespace, so that a
// packet from an unrouted source is dropped only by the firewall.
func setRPFilter(t *testing.T, path string, devs ...string) {
	t.Helper()
	must(t, inNS(path, func() error {
		for _, d := range append([]string{"all"}, devs...) {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+d+"/rp_filter", []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}))
}

// udpReceiver listens on addr in the namespace at path and returns a
// channel of the datagrams it gets.
func udpReceiver(t *testing.T, path string, addr netip.AddrPort) <-chan string {
	t.Helper()
	var conn *net.UDPConn
	must(t, inNS(path, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}))
	t.Cleanup(func() { conn.Close() })
	got := make(chan string, 64)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	return got
}

// sendUDP sends msg to addr from the namespace at path, a few times (the
// first may wait for an ARP or a route).
func sendUDP(t *testing.T, path string, addr netip.AddrPort, msg string) {
	t.Helper()
	must(t, inNS(path, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 5 {
			if _, err := c.Write([]byte(msg)); err != nil {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}))
}

// received reports whether msg arrives within d, draining others.
func received(ch <-chan string, msg string, d time.Duration) bool {
	deadline := time.After(d)
	for {
		select {
		case got := <-ch:
			if got == msg {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

func TestVXLANIsAcceptedOnlyFromMembers(t *testing.T) {
	l := newLab(t, fwPrefix)
	nodes := startNodes(t, l, 1)
	n1 := nodes[0]
	c1 := attachContainer(t, l, n1, "c1")
	target := netip.AddrPortFrom(c1.addr, 9999)
	got := udpReceiver(t, c1.path, target)
	setRPFilter(t, n1.path, DefaultVXLANName)

	// A rogue machine on the underlay builds a VXLAN device of its own
	// that sends to node1 as a peer would; node1 knows nothing of it.
	rogueIP := netip.MustParseAddr("10.97.0.66")
	roguePath := l.addNode("rogue", rogueIP, 1500)
	rogue := newTestManager(t, roguePath, nil)
	must(t, rogue.Setup(ctxT(t), netip.MustParsePrefix("10.42.200.0/24"), rogueIP))
	must(t, rogue.SyncPeers([]Peer{n1.peer()}))

	must(t, n1.m.SyncMembers(nil))
	sendUDP(t, roguePath, target, "not a member")
	if received(got, "not a member", time.Second) {
		t.Fatal("a container received VXLAN-borne traffic from a machine that is not a member")
	}

	// The same packets are let in once the sender is a member...
	must(t, n1.m.SyncMembers([]netip.Addr{rogueIP}))
	sendUDP(t, roguePath, target, "member")
	if !received(got, "member", 2*time.Second) {
		t.Fatal("a member's VXLAN traffic did not reach the container")
	}
	// ... and dropped again when it is no longer one.
	must(t, n1.m.SyncMembers([]netip.Addr{netip.MustParseAddr("10.97.0.2")}))
	sendUDP(t, roguePath, target, "gone")
	if received(got, "gone", time.Second) {
		t.Fatal("VXLAN still accepted from a member that left")
	}

	// A restarted agent keeps the members the kernel has until it is told
	// the new ones, so peers are not cut off while it rejoins.
	must(t, n1.m.SyncMembers([]netip.Addr{rogueIP}))
	stateDir, subnet := n1.m.cfg.StateDir, n1.m.Subnet()
	must(t, n1.m.Close())
	again := newTestManager(t, n1.path, func(cfg *Config) { cfg.StateDir = stateDir })
	must(t, again.Setup(ctxT(t), subnet, n1.underlay))
	sendUDP(t, roguePath, target, "after restart")
	if !received(got, "after restart", 2*time.Second) {
		t.Fatal("a restarted agent dropped its members' VXLAN before rejoining")
	}
	if err := again.SyncMembers([]netip.Addr{netip.MustParseAddr("::1")}); err == nil || !strings.Contains(err.Error(), "::1") {
		t.Fatalf("SyncMembers with an IPv6 address: %v", err)
	}
	sendUDP(t, roguePath, target, "after resync")
	if received(got, "after resync", time.Second) {
		t.Fatal("VXLAN accepted from an address the new member list lacks")
	}
}

// spoofIn gives the container's eth0 another address (and, if mac is set,
// another MAC), with a default route and static neighbours for the
// gateway and target, so that only the bridge's source checks stand in
// the way.
func spoofIn(t *testing.T, c *container, addr netip.Addr, mac net.HardwareAddr, neighbours map[netip.Addr]net.HardwareAddr) {
	t.Helper()
	h := handleAt(t, c.path)
	eth, err := h.LinkByName(ContainerIfName)
	must(t, err)
	addrs, err := h.AddrList(eth, netlink.FAMILY_V4)
	must(t, err)
	for _, a := range addrs {
		must(t, h.AddrDel(eth, &a))
	}
	must(t, h.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(addr, c.node.m.Subnet().Bits()))}))
	if mac != nil {
		must(t, h.LinkSetHardwareAddr(eth, mac))
	}
	must(t, h.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixToIPNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.IP(Gateway(c.node.m.Subnet()).AsSlice()), Flags: int(netlink.FLAG_ONLINK)}))
	for ip, hw := range neighbours {
		must(t, h.NeighSet(&netlink.Neigh{LinkIndex: eth.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: net.IP(ip.AsSlice()), HardwareAddr: hw}))
	}
}

func TestContainerCannotSpoofAnotherOnTheBridge(t *testing.T) {
	l := newLab(t, fwPrefix)
	nodes := startNodes(t, l, 2)
	n1, n2 := nodes[0], nodes[1]
	a := attachContainer(t, l, n1, "a")
	b := attachContainer(t, l, n1, "b")
	c := attachContainer(t, l, n1, "c")
	far := attachContainer(t, l, n2, "far")
	addrC, addrFar := serveIn(t, c), serveIn(t, far)
	gw := netip.AddrPortFrom(Gateway(n1.m.Subnet()), 5353).String()
	serveEcho(listenIn(t, n1.path, gw), "gateway")

	for _, cont := range []*container{a, b, c} {
		eth, err := handleAt(t, cont.path).LinkByName(ContainerIfName)
		must(t, err)
		if want := containerMAC(cont.addr); eth.Attrs().HardwareAddr.String() != want.String() {
			t.Fatalf("%s has MAC %s, want %s", cont.name, eth.Attrs().HardwareAddr, want)
		}
	}
	expectEcho(t, "a", a.path, c, addrC)
	expectEcho(t, "a", a.path, far, addrFar)

	// One-way UDP shows what TCP cannot: a spoofed packet whose replies
	// would go elsewhere must not even arrive.
	udpTargets := map[string]netip.AddrPort{
		"c":       netip.AddrPortFrom(c.addr, 9999),
		"far":     netip.AddrPortFrom(far.addr, 9999),
		"gateway": netip.AddrPortFrom(Gateway(n1.m.Subnet()), 9999),
	}
	inbox := map[string]<-chan string{
		"c":       udpReceiver(t, c.path, udpTargets["c"]),
		"far":     udpReceiver(t, far.path, udpTargets["far"]),
		"gateway": udpReceiver(t, n1.path, udpTargets["gateway"]),
	}
	brMAC := stableMAC("bridge/" + DefaultBridgeName)
	neighbours := map[netip.Addr]net.HardwareAddr{Gateway(n1.m.Subnet()): brMAC, c.addr: containerMAC(c.addr)}
	reach := func(t *testing.T, what string, want bool) {
		t.Helper()
		for _, to := range udpTargets {
			sendUDP(t, a.path, to, what)
		}
		for name := range udpTargets {
			if got := received(inbox[name], what, time.Second); got != want {
				t.Errorf("%s: datagram reached %s: %v, want %v", what, name, got, want)
			}
		}
	}
	reachNothing := func(t *testing.T, what string) {
		t.Helper()
		reach(t, what, false)
		expectNoConnect(t, what, a.path, addrC)
		expectNoConnect(t, what, a.path, addrFar)
		expectNoConnect(t, what, a.path, gw)
	}
	reach(t, "a as itself", true)

	t.Run("with another container's address", func(t *testing.T) {
		before := dropCount(t, n1, nftables.TableFamilyBridge, chainPrerouting)
		spoofIn(t, a, b.addr, nil, neighbours)
		reachNothing(t, "a with b's address")
		if after := dropCount(t, n1, nftables.TableFamilyBridge, chainPrerouting); after <= before {
			t.Fatalf("bridge drop counter %d -> %d", before, after)
		}
		expectEcho(t, "b", b.path, c, addrC) // the real b is unharmed
	})
	t.Run("with another container's MAC", func(t *testing.T) {
		spoofIn(t, a, a.addr, containerMAC(b.addr), neighbours)
		reachNothing(t, "a with b's MAC")
	})
	t.Run("with an address nobody has", func(t *testing.T) {
		spoofIn(t, a, netip.MustParseAddr("10.42.250.9"), containerMAC(a.addr), neighbours)
		reachNothing(t, "a with a made-up address")
	})
	t.Run("attach repairs it", func(t *testing.T) {
		got, err := n1.m.Attach(ctxT(t), a.path, "job/a")
		must(t, err)
		if got != a.addr {
			t.Fatalf("re-attach gave %s, want %s", got, a.addr)
		}
		expectEcho(t, "a", a.path, c, addrC)
		expectEcho(t, "a", a.path, far, addrFar)
		reach(t, "a as itself again", true)
	})
	t.Run("ARP cannot claim another's address or MAC", func(t *testing.T) {
		br, err := n1.h.LinkByName(DefaultBridgeName)
		must(t, err)
		learnt := func(ip netip.Addr) string {
			neighs, err := n1.h.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
			must(t, err)
			for _, nb := range neighs {
				if got, _ := netip.AddrFromSlice(nb.IP); got.Unmap() == ip && nb.HardwareAddr != nil {
					return nb.HardwareAddr.String()
				}
			}
			return ""
		}
		forget := func(ip netip.Addr) {
			err := n1.h.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, IP: net.IP(ip.AsSlice())})
			if err != nil && !isNotFound(err) {
				t.Fatal(err)
			}
		}
		macA, macB := containerMAC(a.addr), containerMAC(b.addr)
		gwIP := Gateway(n1.m.Subnet())
		// A request for the gateway teaches the node the sender: the
		// kernel's ARP does learn from it.
		forget(a.addr)
		sendARPRequest(t, a.path, macA, macA, a.addr, gwIP)
		if got := learnt(a.addr); got != macA.String() {
			t.Fatalf("node learnt %q for a from a's own request, want %s", got, macA)
		}
		for _, tc := range []struct {
			what     string
			frame    net.HardwareAddr
			sha      net.HardwareAddr
			spa      netip.Addr
			poisoned netip.Addr
			wantMAC  string
		}{
			{"b's address", macA, macA, b.addr, b.addr, ""},
			{"b's address and MAC in the payload", macA, macB, b.addr, b.addr, ""},
			{"b's MAC in the payload only", macA, macB, a.addr, a.addr, ""},
		} {
			forget(tc.poisoned)
			sendARPRequest(t, a.path, tc.frame, tc.sha, tc.spa, gwIP)
			if got := learnt(tc.poisoned); got != tc.wantMAC {
				t.Errorf("ARP from a with %s: node learnt %s -> %s", tc.what, tc.poisoned, got)
			}
		}
	})
	t.Run("a veth without an address is cut off", func(t *testing.T) {
		// Setup on a new subnet drops every allocation: the old veths
		// stay until re-attached, and must not speak meanwhile.
		must(t, n1.m.Setup(ctxT(t), netip.MustParsePrefix("10.42.251.0/24"), n1.underlay))
		spoofIn(t, b, b.addr, nil, map[netip.Addr]net.HardwareAddr{c.addr: containerMAC(c.addr)})
		expectNoConnect(t, "b without an address", b.path, addrC)
	})
}

// sendARPRequest sends "who has tpa, tell spa (at sha)" from eth0 of the
// namespace at path, in a frame from frameSrc, three times.
func sendARPRequest(t *testing.T, path string, frameSrc, sha net.HardwareAddr, spa, tpa netip.Addr) {
	t.Helper()
	must(t, inNS(path, func() error {
		ifi, err := net.InterfaceByName(ContainerIfName)
		if err != nil {
			return err
		}
		p := uint16(unix.ETH_P_ARP)
		proto := int(p>>8 | p<<8) // network byte order
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		frame := append(append(append([]byte{}, bcast...), frameSrc...), 0x08, 0x06)
		frame = append(frame, 0, 1, 0x08, 0x00, 6, 4, 0, 1) // Ethernet, IPv4, request
		frame = append(frame, sha...)
		frame = append(frame, spa.AsSlice()...)
		frame = append(frame, make([]byte, 6)...)
		frame = append(frame, tpa.AsSlice()...)
		sa := &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index, Halen: 6}
		copy(sa.Addr[:], bcast)
		for range 3 {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
				return fmt.Errorf("send ARP: %w", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}))
	time.Sleep(200 * time.Millisecond)
}

func TestAttachGivesAnOlderContainerItsMAC(t *testing.T) {
	l := newLab(t, fwPrefix)
	n1 := startNodes(t, l, 1)[0]
	x := attachContainer(t, l, n1, "x")
	addr := serveIn(t, x)
	// A container attached by an older version has a MAC of the kernel's
	// choosing, and the node's neighbour entry names it.
	old, _ := net.ParseMAC("02:11:22:33:44:55")
	h := handleAt(t, x.path)
	eth, err := h.LinkByName(ContainerIfName)
	must(t, err)
	must(t, h.LinkSetHardwareAddr(eth, old))
	br, err := n1.h.LinkByName(DefaultBridgeName)
	must(t, err)
	must(t, n1.h.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE, IP: net.IP(x.addr.AsSlice()), HardwareAddr: old}))
	expectNoConnect(t, "node1 to a container with an unexpected MAC", n1.path, addr)

	// Attach gives it its own MAC, and the node asks again at once
	// instead of sending to the old MAC until its entry goes stale (which
	// would lose the first SYN: a connection would take a retransmission,
	// a second, instead of milliseconds).
	got, err := n1.m.Attach(ctxT(t), x.path, "job/x")
	must(t, err)
	if got != x.addr {
		t.Fatalf("re-attach gave %s, want %s", got, x.addr)
	}
	conn, err := dialIn(n1.path, addr, 900*time.Millisecond)
	if err != nil {
		t.Fatalf("node1 -> re-attached container: %v", err)
	}
	conn.Close()
	expectEcho(t, "node1", n1.path, x, addr)
}

// tableDump renders both overlay tables of m without handles or counter
// values, to compare two syncs.
func tableDump(t *testing.T, m *Manager) string {
	t.Helper()
	c, err := m.nftConn()
	must(t, err)
	var b strings.Builder
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyBridge} {
		tbl := &nftables.Table{Family: fam, Name: m.tableName()}
		sets, err := c.GetSets(tbl)
		must(t, err)
		slices.SortFunc(sets, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
		for _, s := range sets {
			elems, err := c.GetSetElements(s)
			must(t, err)
			var keys []string
			for _, e := range elems {
				keys = append(keys, fmt.Sprintf("%x", e.Key))
			}
			slices.Sort(keys)
			fmt.Fprintf(&b, "%d set %s %v\n", fam, s.Name, keys)
		}
		chains, err := c.ListChainsOfTableFamily(fam)
		must(t, err)
		for _, ch := range chains {
			if ch.Table.Name != m.tableName() {
				continue
			}
			rules, err := c.GetRules(tbl, ch)
			must(t, err)
			fmt.Fprintf(&b, "%d chain %s\n", fam, ch.Name)
			for _, r := range rules {
				for _, e := range r.Exprs {
					if ctr, ok := e.(*expr.Counter); ok {
						e = &expr.Counter{}
						_ = ctr
					}
					if l, ok := e.(*expr.Lookup); ok {
						cp := *l
						cp.SetID = 0
						e = &cp
					}
					fmt.Fprintf(&b, " %s%+v", reflect.TypeOf(e).Elem().Name(), e)
				}
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

// ruleHandles lists the handles of every rule of both tables: a rewrite
// gives new ones.
func ruleHandles(t *testing.T, m *Manager) []uint64 {
	t.Helper()
	c, err := m.nftConn()
	must(t, err)
	var out []uint64
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyBridge} {
		chains, err := c.ListChainsOfTableFamily(fam)
		must(t, err)
		for _, ch := range chains {
			if ch.Table.Name != m.tableName() {
				continue
			}
			rules, err := c.GetRules(ch.Table, ch)
			must(t, err)
			for _, r := range rules {
				out = append(out, r.Handle)
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestFirewallSyncIsIdempotentAndRepairs(t *testing.T) {
	l := newLab(t, fwPrefix)
	nodes := startNodes(t, l, 2)
	n1 := nodes[0]
	attachContainer(t, l, n1, "x")
	members := []netip.Addr{nodes[1].underlay, netip.MustParseAddr("10.97.0.40")}
	must(t, n1.m.SyncMembers(members))
	before := tableDump(t, n1.m)
	for _, want := range []string{"set vxlan-sources", "set ports", "set sources", "chain forward", "chain input", "chain postrouting", "chain prerouting"} {
		if !strings.Contains(before, want) {
			t.Fatalf("tables lack %q:\n%s", want, before)
		}
	}
	handles := ruleHandles(t, n1.m)
	must(t, n1.m.SyncMembers(members))
	must(t, n1.m.SyncPeers(peersOf(nodes, n1)))
	must(t, n1.m.Setup(ctxT(t), n1.m.Subnet(), n1.underlay))
	if after := tableDump(t, n1.m); after != before {
		t.Fatalf("a second sync changed the tables:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Not even rewritten: counters keep counting across resyncs.
	if after := ruleHandles(t, n1.m); !slices.Equal(after, handles) {
		t.Fatalf("a second sync rewrote the rules: handles %v -> %v", handles, after)
	}

	// A rule deleted by hand is put back.
	c, err := n1.m.nftConn()
	must(t, err)
	fwd := &nftables.Chain{Name: chainForward, Table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: n1.m.tableName()}}
	rules, err := c.GetRules(fwd.Table, fwd)
	must(t, err)
	must(t, c.DelRule(rules[len(rules)-1]))
	must(t, c.Flush())
	must(t, n1.m.SyncMembers(members))
	if after := tableDump(t, n1.m); after != before {
		t.Fatalf("sync did not repair a deleted rule:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Deleted by hand: the next sync puts them back.
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: n1.m.tableName()})
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: n1.m.tableName()})
	must(t, c.Flush())
	must(t, n1.m.SyncPeers(peersOf(nodes, n1)))
	if after := tableDump(t, n1.m); after != before {
		t.Fatalf("sync did not repair deleted tables:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A table in the layout of an older version (masquerade only) is
	// replaced whole.
	subnet := n1.m.Subnet()
	must(t, n1.m.Close())
	old := newTestManager(t, n1.path, func(cfg *Config) { cfg.StateDir = n1.m.cfg.StateDir })
	must(t, old.deleteTables())
	c, err = old.nftConn()
	must(t, err)
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: old.tableName()})
	accept := nftables.ChainPolicyAccept
	c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: tbl, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	must(t, c.Flush())
	must(t, old.Setup(ctxT(t), subnet, n1.underlay))
	must(t, old.SyncMembers(members))
	must(t, old.SyncPeers(peersOf(nodes, n1)))
	if after := tableDump(t, old); after != before {
		t.Fatalf("an old table was not replaced:\nwant:\n%s\ngot:\n%s", before, after)
	}
	must(t, old.Teardown())
	if got := nftTables(t, n1.path); len(got) != 0 {
		t.Fatalf("tables left after teardown: %v", got)
	}
}
