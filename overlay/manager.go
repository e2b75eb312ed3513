package overlay

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNotSetUp is returned by methods that need the node's devices before
// Setup has succeeded.
var ErrNotSetUp = errors.New("overlay not set up")

// ipamFileName is the IPAM state file inside Config.StateDir; it carries
// the bridge name so agents sharing a directory keep separate files.
func ipamFileName(bridge string) string { return "overlay-ipam-" + bridge + ".json" }

// Manager builds and maintains one node's overlay data plane: the bridge,
// the VXLAN device, the forwarding entries to peers, the masquerade rule,
// the firewall that keeps the overlay closed to the underlay, and the
// container veths with their source checks. Every method reconciles: it
// compares what the kernel has with what it should have and changes only
// the difference, so calling it again is cheap and repairs manual damage. Safe for concurrent
// use; calls are serialised.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	ns netns.NsHandle // the namespace of cfg.NetNS; -1 for the caller's own
	h  *netlink.Handle

	// Set by Setup.
	subnet   netip.Prefix
	underlay netip.Addr
	mtu      int
	vtepMAC  net.HardwareAddr
	ipam     *IPAM
	// peers is the last SyncPeers input, re-applied when Setup changes the
	// subnet (the routes carry our gateway as source address).
	peers []Peer
	// members is the last SyncMembers input: with the peers, the underlay
	// addresses VXLAN is accepted from. Nil until the first SyncMembers,
	// or until Setup adopts what the kernel table holds.
	members []netip.Addr
}

// New returns a Manager for cfg. It touches no kernel state until Setup.
// log may be nil.
func New(cfg Config, log *slog.Logger) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: log.With("component", "overlay"), ns: -1}
	var err error
	if cfg.NetNS != "" {
		m.ns, err = netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", cfg.NetNS, err)
		}
		m.h, err = netlink.NewHandleAt(m.ns)
	} else {
		m.h, err = netlink.NewHandle()
	}
	if err != nil {
		if m.ns >= 0 {
			m.ns.Close()
		}
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return m, nil
}

// Close releases the Manager's sockets and namespace handle. The data plane
// stays as it is, so containers keep their network while the agent
// restarts; Teardown is what removes it.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h != nil {
		m.h.Close()
		m.h = nil
	}
	if m.ns >= 0 {
		err := m.ns.Close()
		m.ns = -1
		if err != nil {
			return fmt.Errorf("close network namespace handle: %w", err)
		}
	}
	return nil
}

// Setup builds or repairs the node's side of the overlay for subnet, with
// VXLAN packets leaving from underlayIP: a bridge holding the subnet's
// gateway address, a VXLAN device on the link that holds underlayIP, IP
// forwarding, masquerading of container traffic that leaves the overlay,
// the overlay firewall and the containers' source checks (see
// firewall.go). Calling it again with another subnet (after losing a
// subnet conflict) re-addresses the bridge, drops the old address
// allocations and re-routes the peers; containers must then be attached
// again to get new addresses.
func (m *Manager) Setup(ctx context.Context, subnet netip.Prefix, underlayIP netip.Addr) error {
	if !inOverlay(subnet, m.cfg.OverlayCIDR, m.cfg.SubnetBits) {
		return fmt.Errorf("set up overlay: subnet %s is not a /%d of %s", subnet, m.cfg.SubnetBits, m.cfg.OverlayCIDR)
	}
	if !underlayIP.Is4() {
		return fmt.Errorf("set up overlay: underlay address %s is not IPv4", underlayIP)
	}
	if m.cfg.OverlayCIDR.Contains(underlayIP) {
		return fmt.Errorf("set up overlay: underlay address %s is inside the overlay %s", underlayIP, m.cfg.OverlayCIDR)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return errors.New("set up overlay: manager is closed")
	}

	ulink, err := m.linkWithAddr(underlayIP)
	if err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	mtu := m.cfg.MTU
	if mtu == 0 {
		mtu = ulink.Attrs().MTU - vxlanOverhead
	}
	br, err := m.ensureBridge(mtu)
	if err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.ensureBridgeAddr(br, subnet); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.ensureVethMTU(br, mtu); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	vx, err := m.ensureVXLAN(ulink, underlayIP, mtu)
	if err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.inNetNS(enableIPForward); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.inNetNS(disableRedirects(m.cfg.BridgeName)); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.syncHostTable(subnet); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.ensureIPAM(subnet); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}
	if err := m.syncPortTable(); err != nil {
		return fmt.Errorf("set up overlay: %w", err)
	}

	changed := m.subnet != subnet
	if changed && m.subnet.IsValid() {
		m.log.Info("overlay subnet changed", "from", m.subnet, "to", subnet)
	}
	m.subnet, m.underlay, m.mtu = subnet, underlayIP, mtu
	m.vtepMAC = append(net.HardwareAddr(nil), vx.Attrs().HardwareAddr...)
	m.log.Debug("overlay set up", "subnet", subnet, "underlay", underlayIP, "underlay_link", ulink.Attrs().Name, "mtu", mtu, "vtep_mac", m.vtepMAC)
	if changed && m.peers != nil {
		// Routes to peers name our gateway as their source; a new subnet
		// invalidates them (the kernel drops routes whose source address
		// goes away).
		if _, err := m.syncPeersLocked(m.peers); err != nil {
			return fmt.Errorf("set up overlay: re-route peers for the new subnet: %w", err)
		}
	}
	return nil
}

// ready reports whether the data plane may be programmed; callers hold mu.
func (m *Manager) ready() error {
	if m.h == nil {
		return errors.New("manager is closed")
	}
	if !m.subnet.IsValid() || m.ipam == nil {
		return ErrNotSetUp
	}
	return nil
}

// VTEPMAC is the MAC of this node's VXLAN device, which peers need to
// reach it (gossip it in the Advert). Nil before Setup.
func (m *Manager) VTEPMAC() net.HardwareAddr {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append(net.HardwareAddr(nil), m.vtepMAC...)
}

// Subnet is the node subnet of the last successful Setup.
func (m *Manager) Subnet() netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.subnet
}

// MTU is the MTU of the bridge, the VXLAN device and container veths, as
// set by the last Setup.
func (m *Manager) MTU() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mtu
}

// Teardown removes everything the Manager created: container veths, the
// VXLAN device (and with it every peer route, neighbour and FDB entry), the
// bridge, both nftables tables and the IPAM state file. Missing pieces are
// not errors, so it also cleans up after a crashed agent. IP forwarding is
// left on: other software may rely on it.
func (m *Manager) Teardown() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return errors.New("tear down overlay: manager is closed")
	}
	var errs []error
	if err := m.deleteTables(); err != nil {
		errs = append(errs, err)
	}
	links, err := m.h.LinkList()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		a := l.Attrs()
		if _, ok := m.ownerOfAlias(a.Alias); ok || a.Name == m.cfg.VXLANName || a.Name == m.cfg.BridgeName {
			if err := m.h.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", a.Name, err))
			}
		}
	}
	if m.ipam != nil {
		if err := m.ipam.remove(); err != nil {
			errs = append(errs, err)
		}
	} else if m.cfg.StateDir != "" {
		// Not set up in this process: remove a file a previous run left.
		ipam := &IPAM{path: filepath.Join(m.cfg.StateDir, ipamFileName(m.cfg.BridgeName))}
		if err := ipam.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	m.subnet, m.underlay, m.mtu, m.vtepMAC, m.ipam, m.peers, m.members = netip.Prefix{}, netip.Addr{}, 0, nil, nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down overlay: %w", err)
	}
	return nil
}

// linkWithAddr finds the link that holds ip: VXLAN packets leave through it.
func (m *Manager) linkWithAddr(ip netip.Addr) (netlink.Link, error) {
	addrs, err := m.h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			l, err := m.h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("find link of underlay address %s: %w", ip, err)
			}
			return l, nil
		}
	}
	return nil, fmt.Errorf("underlay address %s is on no link", ip)
}

// ensureBridge creates the bridge or brings an existing one in line.
func (m *Manager) ensureBridge(mtu int) (netlink.Link, error) {
	name := m.cfg.BridgeName
	l, err := m.h.LinkByName(name)
	switch {
	case isNotFound(err):
		// A fixed MAC: a bridge without one takes the lowest MAC of its
		// ports and changes it as containers come and go, which strands
		// the gateway entry in every container's ARP cache.
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU, attrs.HardwareAddr = name, mtu, stableMAC("bridge/"+name)
		br := &netlink.Bridge{LinkAttrs: attrs}
		if err := m.h.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		m.log.Info("created bridge", "name", name)
		if l, err = m.h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("read back bridge %s: %w", name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("find bridge %s: %w", name, err)
	case l.Type() != "bridge":
		return nil, fmt.Errorf("%s exists and is a %s, not a bridge; remove it or choose another BridgeName", name, l.Type())
	}
	if l.Attrs().MTU != mtu {
		// An explicit MTU also stops the bridge from following the
		// smallest MTU of its ports.
		if err := m.h.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set MTU %d on bridge %s: %w", mtu, name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", name, err)
		}
	}
	return l, nil
}

// ensureBridgeAddr leaves exactly the gateway address of subnet on the
// bridge.
func (m *Manager) ensureBridgeAddr(br netlink.Link, subnet netip.Prefix) error {
	want := netip.PrefixFrom(Gateway(subnet), subnet.Bits())
	addrs, err := m.h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", br.Attrs().Name, err)
	}
	have := false
	for _, a := range addrs {
		p := ipNetToPrefix(a.IPNet)
		if p == want {
			have = true
			continue
		}
		if err := m.h.AddrDel(br, &a); err != nil {
			return fmt.Errorf("remove old address %s from bridge %s: %w", p, br.Attrs().Name, err)
		}
		m.log.Info("removed old gateway address", "bridge", br.Attrs().Name, "addr", p)
	}
	if !have {
		if err := m.h.AddrAdd(br, &netlink.Addr{IPNet: prefixToIPNet(want)}); err != nil {
			return fmt.Errorf("add gateway address %s to bridge %s: %w", want, br.Attrs().Name, err)
		}
	}
	return nil
}

// ensureVethMTU keeps the host ends of container veths at the bridge MTU
// when it changes (the container ends follow on the next Attach).
func (m *Manager) ensureVethMTU(br netlink.Link, mtu int) error {
	links, err := m.h.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != br.Attrs().Index || a.MTU == mtu {
			continue
		}
		if _, ours := m.ownerOfAlias(a.Alias); !ours {
			continue
		}
		if err := m.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set MTU %d on %s: %w", mtu, a.Name, err)
		}
	}
	return nil
}

// ensureVXLAN creates the VXLAN device or brings an existing one in line.
// The kernel cannot change a VXLAN device's VNI, port or local address in
// place, so an incompatible device is recreated, keeping its MAC so peers'
// entries stay valid.
func (m *Manager) ensureVXLAN(ulink netlink.Link, local netip.Addr, mtu int) (netlink.Link, error) {
	name := m.cfg.VXLANName
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = name, mtu
	want := &netlink.Vxlan{
		LinkAttrs:    attrs,
		VxlanId:      m.cfg.VNI,
		VtepDevIndex: ulink.Attrs().Index,
		SrcAddr:      net.IP(local.AsSlice()),
		Port:         m.cfg.VXLANPort,
		// Learning off: every remote MAC is programmed by SyncPeers, so
		// spoofed or stray packets cannot teach the device new entries.
		Learning: false,
	}
	l, err := m.h.LinkByName(name)
	switch {
	case isNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("find vxlan device %s: %w", name, err)
	default:
		have, ok := l.(*netlink.Vxlan)
		if !ok {
			return nil, fmt.Errorf("%s exists and is a %s, not vxlan; remove it or choose another VXLANName", name, l.Type())
		}
		if why := vxlanIncompatible(have, want); why != "" {
			m.log.Warn("recreating vxlan device", "name", name, "reason", why)
			want.HardwareAddr = have.HardwareAddr
			if err := m.h.LinkDel(l); err != nil {
				return nil, fmt.Errorf("delete incompatible vxlan device %s (%s): %w", name, why, err)
			}
			l = nil
		}
	}
	if l == nil {
		if err := m.h.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("create vxlan device %s (vni %d, port %d, local %s): %w", name, m.cfg.VNI, m.cfg.VXLANPort, local, err)
		}
		m.log.Info("created vxlan device", "name", name, "vni", m.cfg.VNI, "port", m.cfg.VXLANPort, "local", local, "dev", ulink.Attrs().Name)
		// Read it back: the MAC is chosen by the kernel.
		if l, err = m.h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("read back vxlan device %s: %w", name, err)
		}
	}
	if l.Attrs().MTU != mtu {
		if err := m.h.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set MTU %d on vxlan device %s: %w", mtu, name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set vxlan device %s up: %w", name, err)
		}
	}
	return l, nil
}

// vxlanIncompatible says why an existing device cannot serve as want, or
// "" if it can.
func vxlanIncompatible(have, want *netlink.Vxlan) string {
	switch {
	case have.VxlanId != want.VxlanId:
		return fmt.Sprintf("vni %d, want %d", have.VxlanId, want.VxlanId)
	case have.Port != want.Port:
		return fmt.Sprintf("port %d, want %d", have.Port, want.Port)
	case !have.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("local address %s, want %s", have.SrcAddr, want.SrcAddr)
	case have.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("underlay link index %d, want %d", have.VtepDevIndex, want.VtepDevIndex)
	case have.Learning != want.Learning:
		return "learning is on"
	case len(have.Group) > 0 && !have.Group.IsUnspecified():
		return fmt.Sprintf("multicast group %s set", have.Group)
	case have.FlowBased:
		return "external (flow based) mode"
	}
	return ""
}

// ensureIPAM opens the allocations for subnet, or switches them to it.
func (m *Manager) ensureIPAM(subnet netip.Prefix) error {
	if m.ipam == nil {
		path := ""
		if m.cfg.StateDir != "" {
			path = filepath.Join(m.cfg.StateDir, ipamFileName(m.cfg.BridgeName))
		}
		ipam, err := OpenIPAM(path, subnet)
		if err != nil {
			return err
		}
		m.ipam = ipam
		return nil
	}
	dropped, err := m.ipam.SetSubnet(subnet)
	if err != nil {
		return err
	}
	if len(dropped) > 0 {
		m.log.Info("dropped address allocations of the old subnet", "count", len(dropped))
	}
	return nil
}

// stableMAC derives a locally administered unicast MAC from seed.
func stableMAC(seed string) net.HardwareAddr {
	h := fnv.New64a()
	h.Write([]byte(seed))
	s := h.Sum64()
	mac := net.HardwareAddr{byte(s), byte(s >> 8), byte(s >> 16), byte(s >> 24), byte(s >> 32), byte(s >> 40)}
	mac[0] = mac[0]&^1 | 2 // unicast, locally administered
	return mac
}

func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

func ipNetToPrefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
