package lb

import (
	"math/bits"
	"net/netip"
)

// DefaultHashSeed seeds nftables' jhash for source_hash and maglev. It is
// a fixed constant rather than the kernel's per-rule random seed so that
// every node, every sync and the userspace proxy map a client address to
// the same bucket.
const DefaultHashSeed uint32 = 0x5ca1ab1e

// jhash is the kernel's jhash() (include/linux/jhash.h, Bob Jenkins'
// lookup3) over key, which is what nftables' "jhash" expression computes.
func jhash(key []byte, seed uint32) uint32 {
	const initval = 0xdeadbeef
	length := uint32(len(key))
	a := initval + length + seed
	b, c := a, a
	k := key
	for len(k) > 12 {
		a += le32(k)
		b += le32(k[4:])
		c += le32(k[8:])
		a, b, c = jhashMix(a, b, c)
		k = k[12:]
	}
	if len(k) == 0 {
		return c
	}
	// The tail is read byte by byte, little-endian, into a, b and c.
	var tail [12]byte
	copy(tail[:], k)
	c += le32(tail[8:])
	b += le32(tail[4:])
	a += le32(tail[:])
	return jhashFinal(a, b, c)
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

func jhashFinal(a, b, c uint32) uint32 {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}

// reciprocalScale maps a 32-bit hash onto [0, n) the way the kernel's
// reciprocal_scale does (a multiply and shift, not a modulo).
func reciprocalScale(h, n uint32) uint32 {
	return uint32(uint64(h) * uint64(n) >> 32)
}

// addrBucket is the value nftables' "jhash ip saddr mod n seed s" yields
// for the IPv4 address a.
func addrBucket(a netip.Addr, n, seed uint32) uint32 {
	b := a.As4()
	return reciprocalScale(jhash(b[:], seed), n)
}
