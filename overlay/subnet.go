package overlay

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"
)

// ErrNoFreeSubnet is returned when every subnet of the overlay is taken.
var ErrNoFreeSubnet = errors.New("no free subnet in the overlay")

// maxSubnets bounds how finely an overlay may be cut, so a typo such as a
// /0 overlay with /30 subnets is an error rather than a billion-entry space.
const maxSubnets = 1 << 24

// Claim is a node's claim on a subnet, as gossiped by it. ClaimedAt (Unix
// nanoseconds) is when the node first claimed this subnet; it must survive
// restarts (persist it), or a restarted node would lose every conflict.
type Claim struct {
	Node      string
	Subnet    netip.Prefix
	ClaimedAt int64
}

// Older reports whether c beats o in a conflict: the earlier claim wins, and
// between claims made in the same nanosecond the node name that sorts first.
// It is a strict total order on claims of distinct nodes, which is what
// guarantees every conflict has exactly one winner.
func (c Claim) Older(o Claim) bool {
	if c.ClaimedAt != o.ClaimedAt {
		return c.ClaimedAt < o.ClaimedAt
	}
	return c.Node < o.Node
}

// MustRepick reports whether self loses its subnet: some other node claims
// an overlapping subnet and its claim is older. Claims by self.Node in
// peers (its own entry in the member list) are ignored.
func MustRepick(self Claim, peers []Claim) bool {
	if !self.Subnet.IsValid() {
		return true
	}
	for _, p := range peers {
		if p.Node == self.Node || !p.Subnet.IsValid() {
			continue
		}
		if p.Subnet.Overlaps(self.Subnet) && p.Older(self) {
			return true
		}
	}
	return false
}

// NextClaim is the whole masterless subnet protocol for one node: given
// its current claim (zero Claim if it has none), what it sees others claim
// and the time now, it returns the claim to hold. A claim that loses no
// conflict is kept as it is (same ClaimedAt); otherwise a fresh subnet is
// proposed past every subnet a peer claims, and stamped now.
//
// Two nodes that pick the same subnet at once both see the conflict once
// gossip delivers the other's tag; the younger one moves, so the cluster
// converges on distinct subnets without asking anyone.
func NextClaim(self Claim, peers []Claim, overlay netip.Prefix, bits int, now int64) (Claim, error) {
	if self.Subnet.IsValid() && inOverlay(self.Subnet, overlay, bits) && !MustRepick(self, peers) {
		return self, nil
	}
	taken := make(map[netip.Prefix]bool, len(peers)+1)
	for _, p := range peers {
		if p.Node != self.Node && p.Subnet.IsValid() {
			taken[p.Subnet] = true
		}
	}
	if self.Subnet.IsValid() && MustRepick(self, peers) {
		// The subnet just lost is taken even if the winner's tag is not
		// in peers for some reason.
		taken[self.Subnet] = true
	}
	subnet, err := ProposeSubnet(self.Node, overlay, bits, taken)
	if err != nil {
		return Claim{}, err
	}
	return Claim{Node: self.Node, Subnet: subnet, ClaimedAt: now}, nil
}

// ProposeSubnet picks a free bits-long subnet of overlay for the node
// called name: it starts at hash(name) modulo the number of subnets, so a
// node tends to get the same subnet every time and different nodes spread
// out, and probes forward (wrapping around) past subnets in taken. Every
// subnet is usable, including the first and last one of the overlay.
func ProposeSubnet(name string, overlay netip.Prefix, bits int, taken map[netip.Prefix]bool) (netip.Prefix, error) {
	n, err := subnetCount(overlay, bits)
	if err != nil {
		return netip.Prefix{}, err
	}
	// Count the taken subnets that are really in this space, so a full
	// overlay is detected without probing it all; otherwise the probe
	// below ends within len(taken)+1 steps.
	used := uint64(0)
	for p, ok := range taken {
		if ok && inOverlay(p, overlay, bits) {
			used++
		}
	}
	if used >= n {
		return netip.Prefix{}, fmt.Errorf("propose subnet for %s in %s: all %d /%d subnets are taken: %w", name, overlay, n, bits, ErrNoFreeSubnet)
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	start := h.Sum64() % n
	for i := uint64(0); i < n; i++ {
		p := nthSubnet(overlay, bits, (start+i)%n)
		if !taken[p] {
			return p, nil
		}
	}
	// Unreachable: used < n guarantees a free subnet.
	return netip.Prefix{}, fmt.Errorf("propose subnet for %s in %s: %w", name, overlay, ErrNoFreeSubnet)
}

// subnetCount is the number of bits-long subnets in overlay.
func subnetCount(overlay netip.Prefix, bits int) (uint64, error) {
	if !overlay.IsValid() || !overlay.Addr().Is4() || overlay.Masked() != overlay {
		return 0, fmt.Errorf("overlay %s is not a masked IPv4 prefix", overlay)
	}
	if bits < overlay.Bits() || bits > 30 {
		return 0, fmt.Errorf("subnet length /%d does not fit overlay %s (allowed /%d to /30)", bits, overlay, overlay.Bits())
	}
	n := uint64(1) << (bits - overlay.Bits())
	if n > maxSubnets {
		return 0, fmt.Errorf("overlay %s cut into /%d subnets gives %d subnets, more than %d", overlay, bits, n, maxSubnets)
	}
	return n, nil
}

// nthSubnet is the i-th bits-long subnet of overlay.
func nthSubnet(overlay netip.Prefix, bits int, i uint64) netip.Prefix {
	base := addrToUint32(overlay.Addr())
	a := base + uint32(i)<<(32-bits)
	return netip.PrefixFrom(uint32ToAddr(a), bits)
}

// inOverlay reports whether p is one of the bits-long subnets of overlay.
func inOverlay(p, overlay netip.Prefix, bits int) bool {
	return p.IsValid() && p.Addr().Is4() && p.Bits() == bits && p.Masked() == p && overlay.Contains(p.Addr())
}

// Gateway is the address of a node subnet's bridge: the first host address
// (10.42.7.1 for 10.42.7.0/24). Containers route through it, and peers
// point their route for the subnet at it.
func Gateway(subnet netip.Prefix) netip.Addr {
	return subnet.Masked().Addr().Next()
}

// broadcast is the last address of p.
func broadcast(p netip.Prefix) netip.Addr {
	a := addrToUint32(p.Masked().Addr())
	return uint32ToAddr(a | (1<<(32-p.Bits()) - 1))
}

func addrToUint32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uint32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Survivors returns the claims that keep their subnet once every node has
// applied MustRepick, sorted by node name. Useful to build the peer list
// from gossip: a subnet is routed to its winner only.
func Survivors(claims []Claim) []Claim {
	var out []Claim
	for _, c := range claims {
		if !MustRepick(c, claims) {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
