package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Peer is another node as the overlay needs to know it.
type Peer struct {
	// Name is the node name, for logs and errors.
	Name string
	// UnderlayIP is where the peer's VXLAN device receives packets.
	UnderlayIP netip.Addr
	// Subnet is the peer's node subnet (the winner of its claim).
	Subnet netip.Prefix
	// VTEPMAC is the MAC of the peer's VXLAN device.
	VTEPMAC net.HardwareAddr
}

func (p Peer) String() string {
	return fmt.Sprintf("%s (%s at %s)", p.Name, p.Subnet, p.UnderlayIP)
}

// SyncPeers makes the forwarding entries on the VXLAN device match peers
// exactly. For every peer it keeps, in this order,
//
//   - a permanent neighbour entry: peer gateway -> peer VTEP MAC,
//   - an FDB entry: peer VTEP MAC -> peer underlay IP,
//   - a route: peer subnet via peer gateway dev <vxlan> onlink, with this
//     node's gateway as source address,
//
// and it removes every entry on the device that belongs to no peer in the
// list. Neighbour and FDB entries go in before the route: with the route
// first the kernel would ARP for the gateway, and with learning off that
// ARP goes nowhere. Peers that cannot be routed (bad subnet, a subnet
// overlapping this node's or another peer's, a bad MAC) are reported in the
// returned error; the valid ones are programmed anyway. The list is
// remembered and re-applied when Setup changes the subnet. Every peer's
// underlay address is also let through the VXLAN filter (see SyncMembers),
// and both nftables tables are checked against the kernel and replaced if
// they differ, which repairs them on the caller's periodic resync.
func (m *Manager) SyncPeers(peers []Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.ready(); err != nil {
		return fmt.Errorf("sync peers: %w", err)
	}
	_, err := m.syncPeersLocked(peers)
	return errors.Join(err, m.syncTablesLocked())
}

// SyncMembers sets the underlay addresses VXLAN packets are accepted from:
// addrs, plus the peers of the last SyncPeers. Pass every member that is
// not gone for good, failed ones included: a failed node that comes back
// sends VXLAN before anyone has routed it again. Addresses that are not
// IPv4 are reported in the error and left out; the rest is applied.
func (m *Manager) SyncMembers(addrs []netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.ready(); err != nil {
		return fmt.Errorf("sync members: %w", err)
	}
	members := make([]netip.Addr, 0, len(addrs))
	var errs []error
	for _, a := range addrs {
		a = a.Unmap()
		if !a.Is4() || a.IsUnspecified() {
			errs = append(errs, fmt.Errorf("sync members: skip underlay address %s: not a usable IPv4 address", a))
			continue
		}
		members = append(members, a)
	}
	m.members = members
	return errors.Join(append(errs, m.syncTablesLocked())...)
}

// syncTablesLocked brings both nftables tables in line with the Manager's
// state.
func (m *Manager) syncTablesLocked() error {
	return errors.Join(m.syncHostTable(m.subnet), m.syncPortTable())
}

// syncPeersLocked does SyncPeers and returns how many kernel entries it
// changed, so tests can show a second call changes nothing.
func (m *Manager) syncPeersLocked(peers []Peer) (int, error) {
	m.peers = make([]Peer, len(peers))
	copy(m.peers, peers)

	vx, err := m.h.LinkByName(m.cfg.VXLANName)
	if err != nil {
		return 0, fmt.Errorf("sync peers: find vxlan device %s (run Setup first): %w", m.cfg.VXLANName, err)
	}
	want, errs := m.desiredPeers(peers)
	byGateway := make(map[netip.Addr]Peer, len(want))
	byMAC := make(map[string]Peer, len(want))
	for _, p := range want {
		byGateway[Gateway(p.Subnet)] = p
		byMAC[string(p.VTEPMAC)] = p
	}
	idx := vx.Attrs().Index
	src := Gateway(m.subnet)
	changes := 0

	// Remove what is stale or wrong first, routes before the entries they
	// depend on.
	routes, err := listRetry(func() ([]netlink.Route, error) {
		return m.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: idx, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return changes, fmt.Errorf("sync peers: list routes on %s: %w", m.cfg.VXLANName, err)
	}
	routeOK := make(map[netip.Prefix]bool)
	for _, r := range routes {
		dst := ipNetToPrefix(r.Dst)
		if p, ok := want[dst]; ok && !routeOK[dst] && routeMatches(r, p, src) {
			routeOK[dst] = true
			continue
		}
		if err := m.h.RouteDel(&r); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stale route %s on %s: %w", dst, m.cfg.VXLANName, err))
			continue
		}
		m.log.Debug("deleted stale route", "dst", dst, "gw", r.Gw)
		changes++
	}

	neighs, err := listRetry(func() ([]netlink.Neigh, error) { return m.h.NeighList(idx, netlink.FAMILY_V4) })
	if err != nil {
		return changes, fmt.Errorf("sync peers: list neighbours on %s: %w", m.cfg.VXLANName, err)
	}
	neighOK := make(map[netip.Addr]bool)
	for _, n := range neighs {
		ip, _ := netip.AddrFromSlice(n.IP)
		ip = ip.Unmap()
		if p, ok := byGateway[ip]; ok {
			// A wrong MAC or state is overwritten below, in place.
			neighOK[ip] = n.State == netlink.NUD_PERMANENT && bytes.Equal(n.HardwareAddr, p.VTEPMAC)
			continue
		}
		if err := m.h.NeighDel(&n); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stale neighbour %s on %s: %w", ip, m.cfg.VXLANName, err))
			continue
		}
		m.log.Debug("deleted stale neighbour", "ip", ip, "mac", n.HardwareAddr)
		changes++
	}

	fdb, err := listRetry(func() ([]netlink.Neigh, error) { return m.h.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return changes, fmt.Errorf("sync peers: list fdb of %s: %w", m.cfg.VXLANName, err)
	}
	fdbOK := make(map[string]bool)
	for _, n := range fdb {
		ip, _ := netip.AddrFromSlice(n.IP)
		ip = ip.Unmap()
		if p, ok := byMAC[string(n.HardwareAddr)]; ok && p.UnderlayIP == ip {
			// Right remote; a wrong state is overwritten below.
			fdbOK[string(n.HardwareAddr)] = n.State&netlink.NUD_PERMANENT != 0
			continue
		}
		// A stale MAC, or a MAC with an extra or old remote: delete just
		// this (MAC, remote) pair.
		if err := m.h.NeighDel(&n); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete stale fdb entry %s -> %s on %s: %w", n.HardwareAddr, ip, m.cfg.VXLANName, err))
			continue
		}
		m.log.Debug("deleted stale fdb entry", "mac", n.HardwareAddr, "dst", ip)
		changes++
	}

	// Add what is missing, peer by peer in a fixed order: neighbour, FDB,
	// then the route that makes the kernel use them.
	for _, p := range sortedPeers(want) {
		gw := Gateway(p.Subnet)
		if !neighOK[gw] {
			err := m.h.NeighSet(&netlink.Neigh{
				LinkIndex:    idx,
				Family:       netlink.FAMILY_V4,
				State:        netlink.NUD_PERMANENT,
				Type:         unix.RTN_UNICAST,
				IP:           net.IP(gw.AsSlice()),
				HardwareAddr: p.VTEPMAC,
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("add neighbour %s -> %s for peer %s: %w", gw, p.VTEPMAC, p, err))
				continue
			}
			changes++
		}
		if !fdbOK[string(p.VTEPMAC)] {
			err := m.h.NeighSet(&netlink.Neigh{
				LinkIndex:    idx,
				Family:       unix.AF_BRIDGE,
				State:        netlink.NUD_PERMANENT,
				Flags:        netlink.NTF_SELF,
				IP:           net.IP(p.UnderlayIP.AsSlice()),
				HardwareAddr: p.VTEPMAC,
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("add fdb entry %s -> %s for peer %s: %w", p.VTEPMAC, p.UnderlayIP, p, err))
				continue
			}
			changes++
		}
		if !routeOK[p.Subnet] {
			r := peerRoute(idx, p, src)
			if err := m.h.RouteReplace(&r); err != nil {
				errs = append(errs, fmt.Errorf("add route %s via %s for peer %s: %w", p.Subnet, gw, p, err))
				continue
			}
			m.log.Debug("routed peer", "peer", p.Name, "subnet", p.Subnet, "underlay", p.UnderlayIP, "vtep_mac", p.VTEPMAC)
			changes++
		}
	}
	if err := errors.Join(errs...); err != nil {
		return changes, fmt.Errorf("sync peers: %w", err)
	}
	return changes, nil
}

// desiredPeers keeps the peers that can be routed, keyed by subnet, and
// says why the others cannot. When two peers claim one subnet or one MAC
// the name that sorts first is kept, so every node makes the same choice.
func (m *Manager) desiredPeers(peers []Peer) (map[netip.Prefix]Peer, []error) {
	sorted := make([]Peer, len(peers))
	copy(sorted, peers)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	want := make(map[netip.Prefix]Peer, len(peers))
	macs := make(map[string]string, len(peers))
	var errs []error
	for _, p := range sorted {
		var why string
		switch {
		case !inOverlay(p.Subnet, m.cfg.OverlayCIDR, m.cfg.SubnetBits):
			why = fmt.Sprintf("subnet %s is not a /%d of %s", p.Subnet, m.cfg.SubnetBits, m.cfg.OverlayCIDR)
		case p.Subnet.Overlaps(m.subnet):
			why = fmt.Sprintf("subnet %s is this node's", p.Subnet)
		case !p.UnderlayIP.Is4() || p.UnderlayIP.IsUnspecified():
			why = fmt.Sprintf("underlay address %s is not a usable IPv4 address", p.UnderlayIP)
		case m.cfg.OverlayCIDR.Contains(p.UnderlayIP):
			why = fmt.Sprintf("underlay address %s is inside the overlay", p.UnderlayIP)
		case len(p.VTEPMAC) != 6 || p.VTEPMAC[0]&1 != 0:
			why = fmt.Sprintf("VTEP MAC %q is not a unicast Ethernet address", p.VTEPMAC)
		case p.UnderlayIP == m.underlay || bytes.Equal(p.VTEPMAC, m.vtepMAC):
			why = "it has this node's underlay address or VTEP MAC"
		}
		if why == "" {
			if other, dup := want[p.Subnet]; dup {
				why = fmt.Sprintf("subnet %s is also claimed by %s", p.Subnet, other.Name)
			} else if other, dup := macs[string(p.VTEPMAC)]; dup {
				why = fmt.Sprintf("VTEP MAC %s is also used by %s", p.VTEPMAC, other)
			}
		}
		if why != "" {
			errs = append(errs, fmt.Errorf("skip peer %s: %s", p.Name, why))
			continue
		}
		want[p.Subnet] = p
		macs[string(p.VTEPMAC)] = p.Name
	}
	return want, errs
}

func sortedPeers(want map[netip.Prefix]Peer) []Peer {
	out := make([]Peer, 0, len(want))
	for _, p := range want {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// peerRoute is "SUBNET via GATEWAY dev VXLAN onlink src OURGATEWAY". The
// gateway is not on any local subnet, hence onlink; the source makes
// node-to-container traffic carry an overlay address, which the peer
// routes back through the overlay (the underlay address would also work,
// but strict reverse-path filtering on the peer would drop it).
func peerRoute(linkIndex int, p Peer, src netip.Addr) netlink.Route {
	return netlink.Route{
		LinkIndex: linkIndex,
		Dst:       prefixToIPNet(p.Subnet),
		Gw:        net.IP(Gateway(p.Subnet).AsSlice()),
		Src:       net.IP(src.AsSlice()),
		Flags:     int(netlink.FLAG_ONLINK),
		Scope:     netlink.SCOPE_UNIVERSE,
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  unix.RTPROT_STATIC,
	}
}

// routeMatches reports whether r already is peerRoute for p.
func routeMatches(r netlink.Route, p Peer, src netip.Addr) bool {
	gw, _ := netip.AddrFromSlice(r.Gw)
	rsrc, _ := netip.AddrFromSlice(r.Src)
	return gw.Unmap() == Gateway(p.Subnet) && rsrc.Unmap() == src &&
		r.Flags&int(netlink.FLAG_ONLINK) != 0 && r.Priority == 0 && r.Type == unix.RTN_UNICAST
}

// listRetry repeats a netlink dump the kernel interrupted (the table changed
// while it was being read), which would otherwise give a partial list.
func listRetry[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var out []T
		out, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}
