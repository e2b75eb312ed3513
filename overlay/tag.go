package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// TagKey is the serf tag a node's Advert is published under.
const TagKey = "ov"

// maxTagLen bounds what ParseTag reads; the longest valid value
// ("255.255.255.252/30," + 19 digits + "," + 17) is 56 bytes.
const maxTagLen = 64

// ErrBadTag is wrapped by every ParseTag error.
var ErrBadTag = errors.New("bad overlay tag")

// Advert is what a node tells the cluster about its overlay, in one serf
// tag: the subnet it claims, since when, and the MAC of its VXLAN device
// (nil until the device exists, so a node can claim before it builds).
// Together with the member's address that is all a peer needs to route to
// it.
type Advert struct {
	Subnet    netip.Prefix
	ClaimedAt int64
	VTEPMAC   net.HardwareAddr
}

// Tag encodes a as "SUBNET,CLAIMEDAT[,MAC]", e.g.
// "10.42.7.0/24,1732550000000000000,aa:bb:cc:dd:ee:ff": at most 56 bytes,
// because all of a member's tags share 512.
func (a Advert) Tag() string {
	var b strings.Builder
	b.WriteString(a.Subnet.String())
	b.WriteByte(',')
	b.WriteString(strconv.FormatInt(a.ClaimedAt, 10))
	if len(a.VTEPMAC) > 0 {
		b.WriteByte(',')
		b.WriteString(a.VTEPMAC.String())
	}
	return b.String()
}

// Claim is a's claim, made by node.
func (a Advert) Claim(node string) Claim {
	return Claim{Node: node, Subnet: a.Subnet, ClaimedAt: a.ClaimedAt}
}

// Equal reports whether a and o advertise the same thing.
func (a Advert) Equal(o Advert) bool {
	return a.Subnet == o.Subnet && a.ClaimedAt == o.ClaimedAt && bytes.Equal(a.VTEPMAC, o.VTEPMAC)
}

// ParseTag decodes a tag written by Advert.Tag. Tags come from the network,
// so anything but a masked IPv4 subnet, a positive claim time and a unicast
// 6-byte MAC is rejected with an error saying which part is wrong.
func ParseTag(v string) (Advert, error) {
	bad := func(format string, args ...any) (Advert, error) {
		return Advert{}, fmt.Errorf("%w %q: %s", ErrBadTag, truncate(v, maxTagLen), fmt.Sprintf(format, args...))
	}
	if len(v) > maxTagLen {
		return bad("longer than %d bytes", maxTagLen)
	}
	parts := strings.Split(v, ",")
	if len(parts) < 2 || len(parts) > 3 {
		return bad("want SUBNET,CLAIMEDAT[,MAC], got %d fields", len(parts))
	}
	var a Advert
	p, err := netip.ParsePrefix(parts[0])
	if err != nil {
		return bad("subnet: %v", err)
	}
	if !p.Addr().Is4() {
		return bad("subnet %s is not IPv4", p)
	}
	if p.Masked() != p {
		return bad("subnet %s has host bits set", p)
	}
	a.Subnet = p
	t, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return bad("claim time: %v", err)
	}
	if t <= 0 || strconv.FormatInt(t, 10) != parts[1] {
		return bad("claim time %q is not a positive decimal number", parts[1])
	}
	a.ClaimedAt = t
	if len(parts) == 3 {
		mac, err := net.ParseMAC(parts[2])
		if err != nil {
			return bad("VTEP MAC: %v", err)
		}
		if len(mac) != 6 {
			return bad("VTEP MAC %s is not 6 bytes", mac)
		}
		if mac[0]&1 != 0 || bytes.Equal(mac, make(net.HardwareAddr, 6)) {
			return bad("VTEP MAC %s is not a unicast address", mac)
		}
		a.VTEPMAC = mac
	}
	return a, nil
}

// truncate keeps error messages about hostile input short.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
