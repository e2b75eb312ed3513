package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// vethPrefix starts the name of every container veth's host end.
const vethPrefix = "vsh"

// aliasPrefix starts the alias of every container veth's host end; the
// bridge name and the owner follow, so a veth can be traced back to its
// container and to the agent that made it.
const aliasPrefix = "shoal-overlay:"

// maxAliasLen is IFALIASZ-1.
const maxAliasLen = 255

// ContainerIfName is the name of the interface a container sees.
const ContainerIfName = "eth0"

// Attachment is a container plugged into the bridge, as found in the kernel.
type Attachment struct {
	Owner    string
	HostVeth string
	// Addr is the owner's address in IPAM; invalid if it holds none.
	Addr netip.Addr
}

// vethName is the host end of owner's veth: vsh + 12 hex digits of a hash
// of bridge and owner (15 characters, the kernel's limit). The bridge name
// is in the hash so agents sharing a namespace do not collide on an owner.
func (m *Manager) vethName(owner string) string {
	h := fnv.New64a()
	h.Write([]byte(m.cfg.BridgeName))
	h.Write([]byte{0})
	h.Write([]byte(owner))
	return fmt.Sprintf("%s%012x", vethPrefix, h.Sum64()&(1<<48-1))
}

func (m *Manager) aliasFor(owner string) string {
	return aliasPrefix + m.cfg.BridgeName + ":" + owner
}

// ownerOfAlias returns the owner named by a veth alias, if the alias is
// this Manager's.
func (m *Manager) ownerOfAlias(alias string) (string, bool) {
	owner, ok := strings.CutPrefix(alias, aliasPrefix+m.cfg.BridgeName+":")
	return owner, ok && owner != ""
}

func (m *Manager) checkOwner(owner string) error {
	if owner == "" {
		return errors.New("empty owner")
	}
	if len(m.aliasFor(owner)) > maxAliasLen {
		return fmt.Errorf("owner %.40q... is too long to fit an interface alias", owner)
	}
	return nil
}

// Attach plugs the network namespace at netnsPath (a container's, or the
// namespace of a plain process) into the node's bridge for owner and
// returns its address: a veth pair whose host end is on the bridge and
// whose other end is eth0 in the namespace, with the owner's address, the
// MAC derived from it (containerMAC), the bridge MTU, and a default route
// via the gateway. The bridge then accepts frames from the veth only with
// that MAC and address. Attaching again returns the same address and
// repairs anything missing or changed; a namespace replaced under the same
// owner (a restarted container) gets a fresh veth. If the attachment
// fails, an address allocated by this call is released.
func (m *Manager) Attach(ctx context.Context, netnsPath, owner string) (netip.Addr, error) {
	if err := m.checkOwner(owner); err != nil {
		return netip.Addr{}, fmt.Errorf("attach %s: %w", netnsPath, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.ready(); err != nil {
		return netip.Addr{}, fmt.Errorf("attach %s: %w", owner, err)
	}
	_, had := m.ipam.Lookup(owner)
	addr, err := m.ipam.Allocate(owner)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("attach %s: %w", owner, err)
	}
	if err := m.attach(ctx, netnsPath, owner, addr); err != nil {
		if !had {
			if rerr := m.ipam.Release(owner); rerr != nil {
				m.log.Warn("release address after failed attach", "owner", owner, "err", rerr)
			}
		}
		return netip.Addr{}, fmt.Errorf("attach %s in %s: %w", owner, netnsPath, err)
	}
	return addr, nil
}

func (m *Manager) attach(ctx context.Context, nsPath, owner string, addr netip.Addr) error {
	br, err := m.h.LinkByName(m.cfg.BridgeName)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", m.cfg.BridgeName, err)
	}
	cns, err := m.openTarget(nsPath)
	if err != nil {
		return err
	}
	defer cns.Close()
	ch, err := netlink.NewHandleAt(cns)
	if err != nil {
		return fmt.Errorf("open netlink in network namespace: %w", err)
	}
	defer ch.Close()

	hostName := m.vethName(owner)
	host, err := linkOrNil(m.h, hostName)
	if err != nil {
		return err
	}
	peer, err := linkOrNil(ch, ContainerIfName)
	if err != nil {
		return err
	}
	paired := host != nil && peer != nil && host.Type() == "veth" && peer.Type() == "veth" &&
		host.Attrs().ParentIndex == peer.Attrs().Index && peer.Attrs().ParentIndex == host.Attrs().Index
	if host != nil && !paired {
		if other, ok := m.ownerOfAlias(host.Attrs().Alias); ok && other != owner {
			return fmt.Errorf("host veth name %s is taken by %q (hash collision)", hostName, other)
		}
		// Ours, but its other end is not this namespace's eth0 (a
		// replaced namespace, or a half-made attachment): start over.
		if err := m.h.LinkDel(host); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete stale veth %s: %w", hostName, err)
		}
		m.log.Info("replaced stale veth", "owner", owner, "veth", hostName)
		host = nil
		if peer, err = linkOrNil(ch, ContainerIfName); err != nil {
			return err
		}
	}
	if peer != nil && !paired {
		if peer.Type() != "veth" {
			return fmt.Errorf("the namespace already has a %s called %s", peer.Type(), ContainerIfName)
		}
		if err := ch.LinkDel(peer); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete stale %s in the namespace: %w", ContainerIfName, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if host == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.MTU = hostName, m.mtu
		v := &netlink.Veth{
			LinkAttrs: attrs,
			// Created straight in the namespace under its final name: no
			// temporary name in the host namespace to clash or leak.
			PeerName:         ContainerIfName,
			PeerNamespace:    netlink.NsFd(int(cns)),
			PeerMTU:          uint32(m.mtu),
			PeerTxQLen:       -1,
			PeerHardwareAddr: containerMAC(addr),
		}
		if err := m.h.LinkAdd(v); err != nil {
			return fmt.Errorf("create veth %s: %w", hostName, err)
		}
		if host, err = m.h.LinkByName(hostName); err != nil {
			return fmt.Errorf("read back veth %s: %w", hostName, err)
		}
	}

	// Host end: alias first, so a crash from here on leaves a veth that
	// Teardown and the next Attach recognise.
	ha := host.Attrs()
	if ha.Alias != m.aliasFor(owner) {
		if err := m.h.LinkSetAlias(host, m.aliasFor(owner)); err != nil {
			return fmt.Errorf("set alias of %s: %w", hostName, err)
		}
	}
	// The port table learns the veth (by its alias) and its one address
	// before the veth joins the bridge, so no frame of the container ever
	// crosses the bridge unchecked.
	if err := m.syncPortTable(); err != nil {
		return err
	}
	if ha.MTU != m.mtu {
		if err := m.h.LinkSetMTU(host, m.mtu); err != nil {
			return fmt.Errorf("set MTU of %s: %w", hostName, err)
		}
	}
	if ha.MasterIndex != br.Attrs().Index {
		if err := m.h.LinkSetMasterByIndex(host, br.Attrs().Index); err != nil {
			return fmt.Errorf("add %s to bridge %s: %w", hostName, m.cfg.BridgeName, err)
		}
	}
	// Hairpin: with br_netfilter loaded, a replica's connection to its own
	// service VIP that the load balancer sends back to the same replica is
	// bridged out of the port it came in on, which a bridge does only in
	// hairpin mode (kubelet's hairpin-veth).
	if ha.Protinfo == nil || !ha.Protinfo.Hairpin {
		if err := m.h.LinkSetHairpin(host, true); err != nil {
			return fmt.Errorf("set hairpin mode on %s: %w", hostName, err)
		}
	}
	if ha.Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(host); err != nil {
			return fmt.Errorf("set %s up: %w", hostName, err)
		}
	}
	macChanged, err := m.configureContainer(ch, addr)
	if err != nil {
		return err
	}
	if macChanged {
		// The node's own neighbour entry would keep sending to the old MAC
		// until it goes stale; make it ask again.
		err := m.h.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, IP: net.IP(addr.AsSlice())})
		if err != nil && !isNotFound(err) {
			m.log.Warn("forget neighbour entry of a re-addressed container", "addr", addr, "err", err)
		}
	}
	return nil
}

// configureContainer sets up eth0 and lo inside the namespace and reports
// whether it had to change eth0's MAC.
func (m *Manager) configureContainer(ch *netlink.Handle, addr netip.Addr) (macChanged bool, err error) {
	lo, err := ch.LinkByName("lo")
	if err != nil {
		return macChanged, fmt.Errorf("find lo in the namespace: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := ch.LinkSetUp(lo); err != nil {
			return macChanged, fmt.Errorf("set lo up in the namespace: %w", err)
		}
	}
	eth, err := ch.LinkByName(ContainerIfName)
	if err != nil {
		return macChanged, fmt.Errorf("find %s in the namespace: %w", ContainerIfName, err)
	}
	if eth.Attrs().MTU != m.mtu {
		if err := ch.LinkSetMTU(eth, m.mtu); err != nil {
			return macChanged, fmt.Errorf("set MTU of %s in the namespace: %w", ContainerIfName, err)
		}
	}
	// The port table lets only this MAC through (a veth made by an older
	// version, or an address that changed with the subnet, has another).
	if mac := containerMAC(addr); !bytes.Equal(eth.Attrs().HardwareAddr, mac) {
		if err := ch.LinkSetHardwareAddr(eth, mac); err != nil {
			return macChanged, fmt.Errorf("set MAC %s of %s in the namespace: %w", mac, ContainerIfName, err)
		}
		macChanged = true
	}
	want := netip.PrefixFrom(addr, m.subnet.Bits())
	addrs, err := ch.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		return macChanged, fmt.Errorf("list addresses of %s in the namespace: %w", ContainerIfName, err)
	}
	have := false
	for _, a := range addrs {
		if ipNetToPrefix(a.IPNet) == want {
			have = true
			continue
		}
		// An address of an old subnet, or someone else's.
		if err := ch.AddrDel(eth, &a); err != nil {
			return macChanged, fmt.Errorf("remove address %s from %s in the namespace: %w", a.IPNet, ContainerIfName, err)
		}
	}
	if !have {
		if err := ch.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(want)}); err != nil {
			return macChanged, fmt.Errorf("add address %s to %s in the namespace: %w", want, ContainerIfName, err)
		}
	}
	if eth.Attrs().Flags&net.FlagUp == 0 {
		if err := ch.LinkSetUp(eth); err != nil {
			return macChanged, fmt.Errorf("set %s up in the namespace: %w", ContainerIfName, err)
		}
	}
	gw := Gateway(m.subnet)
	routes, err := listRetry(func() ([]netlink.Route, error) {
		return ch.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return macChanged, fmt.Errorf("list routes in the namespace: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && ipNetToPrefix(r.Dst).Bits() != 0 {
			continue
		}
		rgw, _ := netip.AddrFromSlice(r.Gw)
		if rgw.Unmap() == gw && r.LinkIndex == eth.Attrs().Index && r.Priority == 0 {
			return macChanged, nil
		}
	}
	def := netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        net.IP(gw.AsSlice()),
		Table:     unix.RT_TABLE_MAIN,
	}
	if err := ch.RouteReplace(&def); err != nil {
		return macChanged, fmt.Errorf("add default route via %s in the namespace: %w", gw, err)
	}
	return macChanged, nil
}

// Detach unplugs owner: it deletes the host end of its veth (the kernel
// deletes the other end with it) and releases its address. Missing pieces
// are not errors, so Detach also finishes a half-done Attach. netnsPath,
// if it still exists, is cleaned of an eth0 left without its host end.
func (m *Manager) Detach(ctx context.Context, netnsPath, owner string) error {
	if err := m.checkOwner(owner); err != nil {
		return fmt.Errorf("detach %s: %w", netnsPath, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return fmt.Errorf("detach %s: manager is closed", owner)
	}
	hostName := m.vethName(owner)
	host, err := linkOrNil(m.h, hostName)
	if err != nil {
		return fmt.Errorf("detach %s: %w", owner, err)
	}
	switch {
	case host != nil:
		if other, ok := m.ownerOfAlias(host.Attrs().Alias); ok && other != owner {
			// Another owner's veth (hash collision): not ours to delete.
			break
		}
		if err := m.h.LinkDel(host); err != nil && !isNotFound(err) {
			return fmt.Errorf("detach %s: delete veth %s: %w", owner, hostName, err)
		}
	case netnsPath != "":
		if err := m.removeContainerVeth(netnsPath); err != nil {
			return fmt.Errorf("detach %s: %w", owner, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("detach %s: %w", owner, err)
	}
	if m.ipam != nil {
		if err := m.ipam.Release(owner); err != nil {
			return fmt.Errorf("detach %s: %w", owner, err)
		}
	}
	if m.ready() == nil {
		if err := m.syncPortTable(); err != nil {
			return fmt.Errorf("detach %s: %w", owner, err)
		}
	}
	return nil
}

// removeContainerVeth deletes eth0 in the namespace at path if it is a
// veth; a namespace that is gone already is fine.
func (m *Manager) removeContainerVeth(path string) error {
	cns, err := m.openTarget(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer cns.Close()
	ch, err := netlink.NewHandleAt(cns)
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w", path, err)
	}
	defer ch.Close()
	eth, err := linkOrNil(ch, ContainerIfName)
	if err != nil || eth == nil || eth.Type() != "veth" {
		return err
	}
	if err := ch.LinkDel(eth); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s in %s: %w", ContainerIfName, path, err)
	}
	return nil
}

// Attachments lists the containers plugged into this node's bridge, from
// the veths in the kernel, with their addresses: what a restarted agent
// compares with the containers it adopts, to detach the leftovers.
func (m *Manager) Attachments() ([]Attachment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return nil, errors.New("list attachments: manager is closed")
	}
	links, err := m.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list attachments: %w", err)
	}
	var out []Attachment
	for _, l := range links {
		owner, ok := m.ownerOfAlias(l.Attrs().Alias)
		if !ok {
			continue
		}
		a := Attachment{Owner: owner, HostVeth: l.Attrs().Name}
		if m.ipam != nil {
			a.Addr, _ = m.ipam.Lookup(owner)
		}
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Owner < out[j].Owner })
	return out, nil
}

// AddressOwners lists the owners holding an address of the node's
// subnet, attached or not: what a sweep compares with the replicas that
// exist, to release addresses whose veth went away with its namespace.
func (m *Manager) AddressOwners() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ipam == nil {
		return nil
	}
	var out []string
	for _, al := range m.ipam.List() {
		out = append(out, al.Owner)
	}
	return out
}

// ResolvConf writes dir/resolv.conf naming this node's gateway as the name
// server, where the DNS server of the lb package answers for NAME.shoal.
// and forwards the rest, and returns its path, to be bind-mounted into
// containers. The node's gateway rather than a cluster-wide address:
// every node answers for the whole cluster, so the nearest one is best.
func (m *Manager) ResolvConf(dir string) (string, error) {
	m.mu.Lock()
	subnet := m.subnet
	m.mu.Unlock()
	if !subnet.IsValid() {
		return "", fmt.Errorf("write resolv.conf: %w", ErrNotSetUp)
	}
	path := filepath.Join(dir, "resolv.conf")
	content := fmt.Sprintf("# Written by shoal: the node's overlay gateway serves DNS.\nnameserver %s\nsearch shoal.\n", Gateway(subnet))
	// Rewritten in place, not replaced: containers bind-mount this inode,
	// and after a subnet change they must see the new gateway.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := f.WriteAt([]byte(content), 0)
	if werr == nil {
		werr = f.Truncate(int64(len(content)))
	}
	if werr == nil {
		werr = f.Sync()
	}
	if err := errors.Join(werr, f.Close()); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// ErrOwnNamespace is returned when Attach or Detach is given the node's own
// network namespace: its eth0 is the node's uplink, not a container's.
var ErrOwnNamespace = errors.New("the node's own network namespace is not a container's")

// openTarget opens a container's namespace, refusing the node's own.
func (m *Manager) openTarget(path string) (netns.NsHandle, error) {
	cns, err := netns.GetFromPath(path)
	if err != nil {
		return -1, fmt.Errorf("open network namespace: %w", err)
	}
	own := m.ns
	if own < 0 {
		if own, err = netns.Get(); err != nil {
			cns.Close()
			return -1, fmt.Errorf("open own network namespace: %w", err)
		}
		defer own.Close()
	}
	if cns.Equal(own) {
		cns.Close()
		return -1, ErrOwnNamespace
	}
	return cns, nil
}

// linkOrNil looks a link up by name; a missing link is (nil, nil).
func linkOrNil(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find link %s: %w", name, err)
	}
	return l, nil
}
