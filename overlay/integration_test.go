package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const itPrefix = "shoal-ovt-"

type testNode struct {
	name     string
	path     string
	underlay netip.Addr
	m        *Manager
	h        *netlink.Handle
}

func (n *testNode) peer() Peer {
	return Peer{Name: n.name, UnderlayIP: n.underlay, Subnet: n.m.Subnet(), VTEPMAC: n.m.VTEPMAC()}
}

// startNodes builds count nodes on the lab underlay, lets them claim
// subnets with NextClaim as the agent would, sets each up and gives each
// the others as peers.
func startNodes(t *testing.T, l *lab, count int) []*testNode {
	t.Helper()
	ctx := ctxT(t)
	var nodes []*testNode
	var claims []Claim
	for i := 1; i <= count; i++ {
		n := &testNode{name: fmt.Sprintf("node%d", i), underlay: netip.AddrFrom4([4]byte{10, 97, 0, byte(i)})}
		n.path = l.addNode(fmt.Sprintf("n%d", i), n.underlay, 1500)
		n.m = newTestManager(t, n.path, nil)
		n.h = handleAt(t, n.path)
		c, err := NextClaim(Claim{Node: n.name}, claims, DefaultOverlayCIDR, DefaultSubnetBits, int64(i))
		must(t, err)
		claims = append(claims, c)
		must(t, n.m.Setup(ctx, c.Subnet, n.underlay))
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		must(t, n.m.SyncPeers(peersOf(nodes, n)))
	}
	return nodes
}

func peersOf(nodes []*testNode, self *testNode) []Peer {
	var out []Peer
	for _, n := range nodes {
		if n != self {
			out = append(out, n.peer())
		}
	}
	return out
}

// container is a namespace attached to a node.
type container struct {
	name string
	path string
	addr netip.Addr
	node *testNode
}

func attachContainer(t *testing.T, l *lab, n *testNode, short string) *container {
	t.Helper()
	c := &container{name: short, path: l.newNS(short), node: n}
	a, err := n.m.Attach(ctxT(t), c.path, "job/"+short)
	must(t, err)
	if !n.m.Subnet().Contains(a) {
		t.Fatalf("%s got %s outside %s", short, a, n.m.Subnet())
	}
	c.addr = a
	return c
}

func serveIn(t *testing.T, c *container) string {
	addr := netip.AddrPortFrom(c.addr, 8080).String()
	serveEcho(listenIn(t, c.path, addr), c.name)
	return addr
}

func expectEcho(t *testing.T, fromName, fromPath string, to *container, toAddr string) {
	t.Helper()
	got, err := echoOnce(fromPath, toAddr)
	if err != nil {
		t.Fatalf("%s -> %s (%s): %v", fromName, to.name, toAddr, err)
	}
	if want := to.name + ": ping"; got != want {
		t.Fatalf("%s -> %s: got %q, want %q", fromName, to.name, got, want)
	}
}

func TestOverlayConnectsContainersAcrossNodes(t *testing.T) {
	l := newLab(t, itPrefix)
	nodes := startNodes(t, l, 3)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	subnets := map[netip.Prefix]bool{}
	for _, n := range nodes {
		subnets[n.m.Subnet()] = true
		if len(n.m.VTEPMAC()) != 6 {
			t.Fatalf("%s has VTEP MAC %v", n.name, n.m.VTEPMAC())
		}
	}
	if len(subnets) != 3 {
		t.Fatalf("nodes share subnets: %v", subnets)
	}

	c1 := attachContainer(t, l, n1, "c1")
	c1b := attachContainer(t, l, n1, "c1b")
	c2 := attachContainer(t, l, n2, "c2")
	c3 := attachContainer(t, l, n3, "c3")
	if c1.addr == c1b.addr {
		t.Fatalf("two containers share %s", c1.addr)
	}
	all := []*container{c1, c1b, c2, c3}
	addrs := map[*container]string{}
	for _, c := range all {
		addrs[c] = serveIn(t, c)
	}

	t.Run("container reaches containers on every node", func(t *testing.T) {
		for _, to := range []*container{c1b, c2, c3} {
			expectEcho(t, "c1", c1.path, to, addrs[to])
		}
		expectEcho(t, "c3", c3.path, c2, addrs[c2])
	})
	t.Run("every node reaches every container", func(t *testing.T) {
		for _, n := range nodes {
			for _, to := range all {
				expectEcho(t, n.name, n.path, to, addrs[to])
			}
		}
	})
	t.Run("container sees the node MTU and its gateway", func(t *testing.T) {
		h := handleAt(t, c2.path)
		eth, err := h.LinkByName("eth0")
		must(t, err)
		if eth.Attrs().MTU != 1450 || n2.m.MTU() != 1450 {
			t.Fatalf("eth0 MTU %d, manager MTU %d; want 1450 for a 1500 underlay", eth.Attrs().MTU, n2.m.MTU())
		}
	})

	t.Run("sync and attach are idempotent", func(t *testing.T) {
		before := dumpVXLAN(t, n1)
		n1.m.mu.Lock()
		changes, err := n1.m.syncPeersLocked(peersOf(nodes, n1))
		n1.m.mu.Unlock()
		must(t, err)
		if changes != 0 {
			t.Fatalf("second SyncPeers changed %d entries", changes)
		}
		if after := dumpVXLAN(t, n1); after != before {
			t.Fatalf("second SyncPeers changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		must(t, n1.m.Setup(ctxT(t), n1.m.Subnet(), n1.underlay))
		if after := dumpVXLAN(t, n1); after != before {
			t.Fatalf("second Setup changed peer entries:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		a, err := n1.m.Attach(ctxT(t), c1.path, "job/c1")
		must(t, err)
		if a != c1.addr {
			t.Fatalf("re-attach gave %s, first attach %s", a, c1.addr)
		}
		expectEcho(t, "c1", c1.path, c2, addrs[c2])
	})

	t.Run("attach repairs a container", func(t *testing.T) {
		h := handleAt(t, c1.path)
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		must(t, err)
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				must(t, h.RouteDel(&r))
			}
		}
		if _, err := echoOnce(c1.path, addrs[c2]); err == nil {
			t.Fatal("c1 reached c2 without a default route")
		}
		a, err := n1.m.Attach(ctxT(t), c1.path, "job/c1")
		must(t, err)
		if a != c1.addr {
			t.Fatalf("repairing attach gave %s, want %s", a, c1.addr)
		}
		expectEcho(t, "c1", c1.path, c2, addrs[c2])
	})

	t.Run("a removed peer loses its entries", func(t *testing.T) {
		must(t, n1.m.SyncPeers([]Peer{n2.peer()}))
		e := vxlanEntries(t, n1)
		p3 := n3.peer()
		if e.routes[p3.Subnet] || e.neigh[Gateway(p3.Subnet)] != "" || e.fdb[p3.VTEPMAC.String()] != "" {
			t.Fatalf("node3's entries survived its removal: %+v", e)
		}
		p2 := n2.peer()
		if !e.routes[p2.Subnet] || e.neigh[Gateway(p2.Subnet)] != p2.VTEPMAC.String() || e.fdb[p2.VTEPMAC.String()] != p2.UnderlayIP.String() {
			t.Fatalf("node2's entries are not all there: %+v", e)
		}
		if _, err := echoOnce(c1.path, addrs[c3]); err == nil {
			t.Fatal("c1 still reaches c3 after node3 was removed")
		}
		must(t, n1.m.SyncPeers(peersOf(nodes, n1)))
		expectEcho(t, "c1", c1.path, c3, addrs[c3])
	})

	t.Run("sync repairs a route deleted by hand", func(t *testing.T) {
		vx, err := n1.h.LinkByName(DefaultVXLANName)
		must(t, err)
		p2 := n2.peer()
		must(t, n1.h.RouteDel(&netlink.Route{LinkIndex: vx.Attrs().Index, Dst: prefixToIPNet(p2.Subnet), Table: unix.RT_TABLE_MAIN}))
		if _, err := echoOnce(c1.path, addrs[c2]); err == nil {
			t.Fatal("c1 reached c2 without the route")
		}
		n1.m.mu.Lock()
		changes, err := n1.m.syncPeersLocked(peersOf(nodes, n1))
		n1.m.mu.Unlock()
		must(t, err)
		if changes != 1 {
			t.Fatalf("repair changed %d entries, want the 1 route", changes)
		}
		expectEcho(t, "c1", c1.path, c2, addrs[c2])
	})

	t.Run("sync repairs a wrong fdb entry and drops a foreign one", func(t *testing.T) {
		vx, err := n1.h.LinkByName(DefaultVXLANName)
		must(t, err)
		p2 := n2.peer()
		// Point node2's MAC at node3 and add a flood entry nobody asked for.
		must(t, n1.h.NeighSet(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: net.IP(n3.underlay.AsSlice()), HardwareAddr: p2.VTEPMAC}))
		must(t, n1.h.NeighAppend(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: net.IP(n2.underlay.AsSlice()), HardwareAddr: make(net.HardwareAddr, 6)}))
		must(t, n1.m.SyncPeers(peersOf(nodes, n1)))
		e := vxlanEntries(t, n1)
		if e.fdb[p2.VTEPMAC.String()] != p2.UnderlayIP.String() || len(e.fdb) != 2 {
			t.Fatalf("fdb after repair: %v", e.fdb)
		}
		expectEcho(t, "c1", c1.path, c2, addrs[c2])
	})

	t.Run("detach removes the veth and frees the address", func(t *testing.T) {
		host := n1.m.vethName("job/c1b")
		if _, err := n1.h.LinkByName(host); err != nil {
			t.Fatalf("host veth %s of c1b: %v", host, err)
		}
		atts, err := n1.m.Attachments()
		must(t, err)
		if len(atts) != 2 || atts[0].Owner != "job/c1" || atts[1].Owner != "job/c1b" || atts[1].Addr != c1b.addr {
			t.Fatalf("Attachments = %+v", atts)
		}
		must(t, n1.m.Detach(ctxT(t), c1b.path, "job/c1b"))
		if _, err := n1.h.LinkByName(host); !isNotFound(err) {
			t.Fatalf("host veth %s still there: %v", host, err)
		}
		if _, ok := n1.m.ipam.Lookup("job/c1b"); ok {
			t.Fatal("c1b's address is still allocated")
		}
		if eth, _ := linkOrNil(handleAt(t, c1b.path), "eth0"); eth != nil {
			t.Fatal("c1b still has eth0")
		}
		must(t, n1.m.Detach(ctxT(t), c1b.path, "job/c1b")) // again: nothing to do
	})

	t.Run("resolv.conf names the gateway", func(t *testing.T) {
		path, err := n1.m.ResolvConf(t.TempDir())
		must(t, err)
		b, err := os.ReadFile(path)
		must(t, err)
		if want := "nameserver " + Gateway(n1.m.Subnet()).String() + "\nsearch shoal.\n"; !strings.HasSuffix(string(b), want) {
			t.Fatalf("resolv.conf = %q, want it to end with %q", b, want)
		}
	})

	t.Run("a new subnet re-addresses the bridge", func(t *testing.T) {
		old := n1.m.Subnet()
		taken := map[netip.Prefix]bool{}
		for _, n := range nodes {
			taken[n.m.Subnet()] = true
		}
		fresh, err := ProposeSubnet("node1-lost", DefaultOverlayCIDR, DefaultSubnetBits, taken)
		must(t, err)
		must(t, n1.m.Setup(ctxT(t), fresh, n1.underlay))
		br, err := n1.h.LinkByName(DefaultBridgeName)
		must(t, err)
		brAddrs, err := n1.h.AddrList(br, netlink.FAMILY_V4)
		must(t, err)
		if len(brAddrs) != 1 || ipNetToPrefix(brAddrs[0].IPNet) != netip.PrefixFrom(Gateway(fresh), 24) {
			t.Fatalf("bridge addresses after moving %s -> %s: %v", old, fresh, brAddrs)
		}
		if l := n1.m.ipam.List(); len(l) != 0 {
			t.Fatalf("allocations of the old subnet kept: %v", l)
		}
		// Routes to peers now carry the new gateway as source.
		e := vxlanEntries(t, n1)
		if len(e.routes) != 2 {
			t.Fatalf("routes after re-address: %v", e.routes)
		}
		// Re-attach: c1 moves into the new subnet; peers learn the move
		// and c1 and c2 talk again.
		a, err := n1.m.Attach(ctxT(t), c1.path, "job/c1")
		must(t, err)
		if !fresh.Contains(a) {
			t.Fatalf("re-attached c1 got %s, outside %s", a, fresh)
		}
		c1.addr = a
		for _, n := range nodes[1:] {
			must(t, n.m.SyncPeers(peersOf(nodes, n)))
		}
		expectEcho(t, "c1", c1.path, c2, addrs[c2])
		addrs[c1] = serveIn(t, c1)
		expectEcho(t, "c3", c3.path, c1, addrs[c1])
		expectEcho(t, "node2", n2.path, c1, addrs[c1])
	})

	t.Run("teardown removes everything", func(t *testing.T) {
		must(t, n3.m.Teardown())
		links, err := n3.h.LinkList()
		must(t, err)
		for _, lk := range links {
			if n := lk.Attrs().Name; n != "lo" && n != "eth0" {
				t.Errorf("link %s (%s) left after teardown", n, lk.Type())
			}
		}
		if tables := nftTables(t, n3.path); len(tables) != 0 {
			t.Errorf("nftables tables left after teardown: %v", tables)
		}
		if files, _ := filepath.Glob(filepath.Join(n3.m.cfg.StateDir, "*")); len(files) != 0 {
			t.Errorf("state files left after teardown: %v", files)
		}
		must(t, n3.m.Teardown()) // again: nothing to do
	})
}

func TestContainerEgressIsMasqueraded(t *testing.T) {
	l := newLab(t, itPrefix)
	nodes := startNodes(t, l, 1)
	c := attachContainer(t, l, nodes[0], "egress")
	if tables := strings.Join(nftTables(t, nodes[0].path), " "); tables != "ip shoal_overlay_shoal0 bridge shoal_overlay_shoal0" {
		t.Fatalf("nftables tables = %v, want the overlay's own two", tables)
	}

	ln := listenIn(t, l.hub, netip.AddrPortFrom(hubAddr, 9090).String())
	seen := make(chan net.Addr, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		seen <- conn.RemoteAddr()
		conn.Close()
	}()
	conn, err := dialIn(c.path, ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatalf("container %s -> outside %s: %v", c.addr, ln.Addr(), err)
	}
	conn.Close()
	src := (<-seen).(*net.TCPAddr).AddrPort().Addr()
	if src != nodes[0].underlay {
		t.Fatalf("outside saw source %s, want the node's underlay %s", src, nodes[0].underlay)
	}
}

func TestTwoManagersShareANamespace(t *testing.T) {
	l := newLab(t, itPrefix)
	path := l.addNode("shared", netip.MustParseAddr("10.97.0.50"), 1500)
	h := handleAt(t, path)
	a := newTestManager(t, path, func(c *Config) { c.BridgeName, c.VXLANName = "shoal-a", "shoal-a.vx" })
	b := newTestManager(t, path, func(c *Config) {
		c.BridgeName, c.VXLANName, c.VXLANPort = "shoal-b", "shoal-b.vx", 4790
		c.OverlayCIDR = netip.MustParsePrefix("10.43.0.0/16")
		c.StateDir = a.cfg.StateDir // one data dir, separate files
	})
	under := netip.MustParseAddr("10.97.0.50")
	must(t, a.Setup(ctxT(t), netip.MustParsePrefix("10.42.1.0/24"), under))
	must(t, b.Setup(ctxT(t), netip.MustParsePrefix("10.43.1.0/24"), under))
	ca, cb := l.newNS("ca"), l.newNS("cb")
	_, err := a.Attach(ctxT(t), ca, "same-owner")
	must(t, err)
	_, err = b.Attach(ctxT(t), cb, "same-owner")
	must(t, err)
	if a.vethName("same-owner") == b.vethName("same-owner") {
		t.Fatal("two agents derive one veth name for one owner")
	}
	if got := nftTables(t, path); len(got) != 4 {
		t.Fatalf("tables = %v, want two per manager", got)
	}
	must(t, a.Teardown())
	for _, name := range []string{"shoal-b", "shoal-b.vx", b.vethName("same-owner")} {
		if _, err := h.LinkByName(name); err != nil {
			t.Errorf("after a's teardown, b's %s is gone: %v", name, err)
		}
	}
	for _, name := range []string{"shoal-a", "shoal-a.vx", a.vethName("same-owner")} {
		if _, err := h.LinkByName(name); err == nil {
			t.Errorf("a's %s survived its teardown", name)
		}
	}
	if got := strings.Join(nftTables(t, path), " "); got != "ip shoal_overlay_shoal_b bridge shoal_overlay_shoal_b" {
		t.Fatalf("tables after a's teardown = %v", got)
	}
	if _, ok := b.ipam.Lookup("same-owner"); !ok {
		t.Fatal("a's teardown removed b's allocations")
	}
}

func TestSetupInTheCallersNamespace(t *testing.T) {
	// The agent runs with Config.NetNS empty. Run that path on a thread
	// locked into a scratch namespace, so the host is never touched.
	l := newLab(t, itPrefix)
	path := l.addNode("self", netip.MustParseAddr("10.97.0.60"), 1500)
	err := inNS(path, func() error {
		cfg := DefaultConfig()
		m, err := New(cfg, nil)
		if err != nil {
			return err
		}
		defer m.Close()
		if err := m.Setup(ctxT(t), netip.MustParsePrefix("10.42.3.0/24"), netip.MustParseAddr("10.97.0.60")); err != nil {
			return err
		}
		b, err := os.ReadFile(ipForwardPath)
		if err != nil || string(bytes.TrimSpace(b)) != "1" {
			return fmt.Errorf("ip_forward = %q, %v", b, err)
		}
		if _, err := netlink.LinkByName(DefaultVXLANName); err != nil {
			return fmt.Errorf("vxlan device not in the locked namespace: %w", err)
		}
		return m.Teardown()
	})
	must(t, err)
	if got := nftTables(t, path); len(got) != 0 {
		t.Fatalf("tables left: %v", got)
	}
}

func TestSetupRejectsForeignDevicesAndBadInput(t *testing.T) {
	l := newLab(t, itPrefix)
	path := l.addNode("bad", netip.MustParseAddr("10.97.0.70"), 1500)
	h := handleAt(t, path)
	m := newTestManager(t, path, nil)
	ctx := ctxT(t)
	under := netip.MustParseAddr("10.97.0.70")
	if err := m.Setup(ctx, netip.MustParsePrefix("10.99.0.0/24"), under); err == nil {
		t.Error("Setup accepted a subnet outside the overlay")
	}
	if err := m.Setup(ctx, netip.MustParsePrefix("10.42.1.0/24"), netip.MustParseAddr("10.97.0.99")); err == nil {
		t.Error("Setup accepted an underlay address no link holds")
	}
	if _, err := m.Attach(ctx, path, "x"); !errors.Is(err, ErrNotSetUp) {
		t.Errorf("Attach before Setup: %v, want ErrNotSetUp", err)
	}
	if err := m.SyncPeers(nil); err == nil {
		t.Error("SyncPeers before Setup succeeded")
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = DefaultBridgeName
	// A veth pair standing in for someone else's device (this kernel has
	// no dummy driver).
	foreign := &netlink.Veth{LinkAttrs: attrs, PeerName: "foreign-peer", PeerTxQLen: -1}
	must(t, h.LinkAdd(foreign))
	err := m.Setup(ctx, netip.MustParsePrefix("10.42.1.0/24"), under)
	if err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Fatalf("Setup over a foreign %s: %v", DefaultBridgeName, err)
	}
	must(t, h.LinkDel(foreign))
	must(t, m.Setup(ctx, netip.MustParsePrefix("10.42.1.0/24"), under))
	if _, err := m.Attach(ctx, path, "x"); !errors.Is(err, ErrOwnNamespace) {
		t.Errorf("Attach into the node's own namespace: %v, want ErrOwnNamespace", err)
	}
	if eth, err := h.LinkByName("eth0"); err != nil || eth.Type() != "veth" {
		t.Fatalf("the node's uplink is gone: %v", err)
	}

	mac, _ := net.ParseMAC("02:00:00:00:00:09")
	bad := []Peer{
		{Name: "self-subnet", UnderlayIP: netip.MustParseAddr("10.97.0.9"), Subnet: netip.MustParsePrefix("10.42.1.0/24"), VTEPMAC: mac},
		{Name: "no-mac", UnderlayIP: netip.MustParseAddr("10.97.0.9"), Subnet: netip.MustParsePrefix("10.42.2.0/24")},
		{Name: "a-good", UnderlayIP: netip.MustParseAddr("10.97.0.9"), Subnet: netip.MustParsePrefix("10.42.5.0/24"), VTEPMAC: mac},
		{Name: "b-dup", UnderlayIP: netip.MustParseAddr("10.97.0.8"), Subnet: netip.MustParsePrefix("10.42.5.0/24"), VTEPMAC: mac},
	}
	err = m.SyncPeers(bad)
	for _, name := range []string{"self-subnet", "no-mac", "b-dup"} {
		if err == nil || !strings.Contains(err.Error(), "skip peer "+name) {
			t.Errorf("SyncPeers error %v does not report %s", err, name)
		}
	}
	if e := vxlanEntries(t, &testNode{h: h}); len(e.routes) != 1 || !e.routes[netip.MustParsePrefix("10.42.5.0/24")] {
		t.Fatalf("valid peer not programmed alone: %+v", e)
	}
}

// entries is what the VXLAN device of a node holds.
type entries struct {
	routes map[netip.Prefix]bool
	neigh  map[netip.Addr]string // gateway -> MAC
	fdb    map[string]string     // MAC -> underlay IP
}

func vxlanEntries(t *testing.T, n *testNode) entries {
	t.Helper()
	vx, err := n.h.LinkByName(DefaultVXLANName)
	must(t, err)
	idx := vx.Attrs().Index
	e := entries{routes: map[netip.Prefix]bool{}, neigh: map[netip.Addr]string{}, fdb: map[string]string{}}
	routes, err := n.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
	must(t, err)
	for _, r := range routes {
		e.routes[ipNetToPrefix(r.Dst)] = true
	}
	neighs, err := n.h.NeighList(idx, netlink.FAMILY_V4)
	must(t, err)
	for _, nb := range neighs {
		a, _ := netip.AddrFromSlice(nb.IP)
		e.neigh[a.Unmap()] = nb.HardwareAddr.String()
	}
	fdb, err := n.h.NeighList(idx, unix.AF_BRIDGE)
	must(t, err)
	for _, f := range fdb {
		e.fdb[f.HardwareAddr.String()] = f.IP.String()
	}
	return e
}

// dumpVXLAN renders every route, neighbour and FDB entry of the VXLAN
// device with all attributes, to compare before and after.
func dumpVXLAN(t *testing.T, n *testNode) string {
	t.Helper()
	vx, err := n.h.LinkByName(DefaultVXLANName)
	must(t, err)
	idx := vx.Attrs().Index
	var b strings.Builder
	routes, err := n.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
	must(t, err)
	for _, r := range routes {
		fmt.Fprintf(&b, "route %s\n", r)
	}
	for _, fam := range []int{netlink.FAMILY_V4, unix.AF_BRIDGE} {
		ns, err := n.h.NeighList(idx, fam)
		must(t, err)
		for _, nb := range ns {
			fmt.Fprintf(&b, "neigh fam=%d %s %s state=%d flags=%d\n", fam, nb.IP, nb.HardwareAddr, nb.State, nb.Flags)
		}
	}
	return b.String()
}

// nftTables lists the nftables tables in the namespace at path as
// "FAMILY NAME", ip tables first.
func nftTables(t *testing.T, path string) []string {
	t.Helper()
	var names []string
	err := inNS(path, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, fam := range []struct {
			f    nftables.TableFamily
			name string
		}{{nftables.TableFamilyIPv4, "ip"}, {nftables.TableFamilyBridge, "bridge"}, {nftables.TableFamilyINet, "inet"}, {nftables.TableFamilyNetdev, "netdev"}} {
			tables, err := c.ListTablesOfFamily(fam.f)
			if err != nil {
				return err
			}
			for _, tb := range tables {
				names = append(names, fam.name+" "+tb.Name)
			}
		}
		return nil
	})
	must(t, err)
	return names
}

func TestRestartedAgentAdoptsTheDataPlane(t *testing.T) {
	l := newLab(t, itPrefix)
	under := netip.MustParseAddr("10.97.0.80")
	path := l.addNode("restart", under, 1500)
	subnet := netip.MustParsePrefix("10.42.8.0/24")
	first := newTestManager(t, path, nil)
	must(t, first.Setup(ctxT(t), subnet, under))
	c := l.newNS("rc")
	addr, err := first.Attach(ctxT(t), c, "web-0")
	must(t, err)
	mac := first.VTEPMAC()
	must(t, first.Close()) // the agent stops; the data plane stays

	second := newTestManager(t, path, func(cfg *Config) { cfg.StateDir = first.cfg.StateDir })
	must(t, second.Setup(ctxT(t), subnet, under))
	if !bytes.Equal(second.VTEPMAC(), mac) {
		t.Fatalf("VTEP MAC changed across a restart: %s -> %s", mac, second.VTEPMAC())
	}
	atts, err := second.Attachments()
	must(t, err)
	if len(atts) != 1 || atts[0].Owner != "web-0" || atts[0].Addr != addr {
		t.Fatalf("Attachments after restart = %+v, want web-0 at %s", atts, addr)
	}
	again, err := second.Attach(ctxT(t), c, "web-0")
	must(t, err)
	if again != addr {
		t.Fatalf("re-attach after restart gave %s, want %s", again, addr)
	}
	other, err := second.Attach(ctxT(t), l.newNS("rc2"), "web-1")
	must(t, err)
	if other == addr {
		t.Fatalf("a new container got %s, already web-0's", other)
	}

	// A new underlay address cannot be changed on a VXLAN device in place:
	// it is recreated, keeping its MAC so peers' entries stay valid.
	h := handleAt(t, path)
	eth, err := h.LinkByName("eth0")
	must(t, err)
	moved := netip.MustParseAddr("10.97.0.81")
	must(t, h.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(moved, 24))}))
	must(t, second.Setup(ctxT(t), subnet, moved))
	vx, err := h.LinkByName(DefaultVXLANName)
	must(t, err)
	if local := vx.(*netlink.Vxlan).SrcAddr; !local.Equal(net.IP(moved.AsSlice())) {
		t.Fatalf("vxlan local address %s, want %s", local, moved)
	}
	if !bytes.Equal(vx.Attrs().HardwareAddr, mac) || !bytes.Equal(second.VTEPMAC(), mac) {
		t.Fatalf("recreated vxlan device has MAC %s, want %s", vx.Attrs().HardwareAddr, mac)
	}
}
