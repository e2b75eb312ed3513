package node

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/shoalmesh/shoal/gossip"
)

func TestVXLANSourcesAreMembersThatHaveNotLeft(t *testing.T) {
	members := []gossip.Member{
		{Name: "self", Addr: net.ParseIP("10.99.0.11"), Status: gossip.StatusAlive},
		{Name: "alive", Addr: net.ParseIP("10.99.0.12"), Status: gossip.StatusAlive},
		{Name: "failed", Addr: net.ParseIP("10.99.0.13"), Status: gossip.StatusFailed},
		{Name: "left", Addr: net.ParseIP("10.99.0.14"), Status: gossip.StatusLeft},
		{Name: "no-overlay-tag", Addr: net.IPv4(10, 99, 0, 15).To4(), Status: gossip.StatusAlive},
		{Name: "no-address", Status: gossip.StatusAlive},
	}
	got := vxlanSources("self", members)
	want := []netip.Addr{
		netip.MustParseAddr("10.99.0.12"),
		netip.MustParseAddr("10.99.0.13"),
		netip.MustParseAddr("10.99.0.15"),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("vxlanSources = %v, want %v", got, want)
	}
}
