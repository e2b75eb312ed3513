package lb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// ErrVIPRangeFull is returned by AllocateVIP when every usable address of
// the range belongs to another name.
var ErrVIPRangeFull = errors.New("service VIP range full")

// AllocateVIP picks the virtual IP of the service called name in cidr. It
// is deterministic, so every node computes the same address from the same
// inputs without asking anyone:
//
//   - if taken already maps an address of cidr to name, that address is
//     kept (the smallest, if there are several), so a VIP does not move when
//     the collision that pushed it aside goes away;
//   - otherwise it starts at hash(name) within the usable addresses (the
//     network and broadcast addresses are skipped) and probes forward,
//     wrapping around, past addresses taken by other names.
//
// taken maps addresses in use to the names holding them; nil is an empty
// map. Only IPv4 ranges with at least one usable address are accepted.
func AllocateVIP(name string, cidr netip.Prefix, taken map[netip.Addr]string) (netip.Addr, error) {
	if !cidr.IsValid() || !cidr.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("allocate VIP for %q: range %s is not an IPv4 prefix: %w", name, cidr, ErrInvalidConfig)
	}
	cidr = cidr.Masked()
	bits := 32 - cidr.Bits()
	if bits < 2 {
		// /31 and /32 have no address left once network and broadcast go.
		return netip.Addr{}, fmt.Errorf("allocate VIP for %q in %s: %w", name, cidr, ErrVIPRangeFull)
	}
	base := binary.BigEndian.Uint32(cidr.Addr().AsSlice())
	usable := uint64(1)<<bits - 2 // without network and broadcast
	at := func(i uint64) netip.Addr {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], base+1+uint32(i))
		return netip.AddrFrom4(b)
	}

	var kept netip.Addr
	for a, owner := range taken {
		if owner == name && a.Is4() && cidr.Contains(a) && isUsable(a, cidr) {
			if !kept.IsValid() || a.Less(kept) {
				kept = a
			}
		}
	}
	if kept.IsValid() {
		return kept, nil
	}

	start := hash64(name) % usable
	for i := range usable {
		a := at((start + i) % usable)
		if owner, ok := taken[a]; !ok || owner == name {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate VIP for %q in %s (%d addresses): %w", name, cidr, usable, ErrVIPRangeFull)
}

// isUsable reports whether a is neither the network nor the broadcast
// address of cidr.
func isUsable(a netip.Addr, cidr netip.Prefix) bool {
	bits := 32 - cidr.Bits()
	v := binary.BigEndian.Uint32(a.AsSlice()) - binary.BigEndian.Uint32(cidr.Masked().Addr().AsSlice())
	return v != 0 && uint64(v) != uint64(1)<<bits-1
}

// hash64 is FNV-1a followed by a murmur3 finaliser: stable across
// processes and versions (unlike hash/maphash), with good avalanche on the
// short, similar strings service and endpoint names are.
func hash64(s string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime
	}
	return fmix64(h)
}

// fmix64 is murmur3's 64-bit finaliser.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
