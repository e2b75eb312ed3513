package overlay

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
)

func TestHostTableClosesTheOverlayToTheUnderlay(t *testing.T) {
	cfg := DefaultConfig()
	sources := []netip.Addr{
		netip.MustParseAddr("10.99.0.13"),
		netip.MustParseAddr("10.99.0.12"),
		netip.MustParseAddr("10.99.0.13"), // a member that is also a peer
	}
	got := hostTable("shoal_overlay_shoal0", cfg, netip.MustParsePrefix("10.42.7.0/24"), sources).String()
	want := `table ip shoal_overlay_shoal0 {
	set vxlan-sources {
		type ipv4_addr
		elements = { 10.99.0.12, 10.99.0.13 }
	}
	chain postrouting {
		type nat hook postrouting priority 100; policy accept;
		ip saddr 10.42.7.0/24 ip daddr != 10.42.0.0/16 counter masquerade
	}
	chain input {
		type filter hook input priority 0; policy accept;
		udp dport 4789 ip saddr != @vxlan-sources counter drop
		ip daddr != 10.42.0.0/16 accept
		iifname "lo" accept
		iifname "shoal0" accept
		iifname "shoal.vx" accept
		ct state established,related accept
		counter drop
	}
	chain forward {
		type filter hook forward priority 0; policy accept;
		ip daddr != 10.42.0.0/16 accept
		iifname "shoal0" accept
		iifname "shoal.vx" accept
		ct state established,related accept
		ct status dnat accept
		counter drop
	}
}
`
	if got != want {
		t.Fatalf("host table:\n%s\nwant:\n%s", got, want)
	}
}

func TestHostTableFollowsTheConfiguredPortAndDevices(t *testing.T) {
	cfg := DefaultConfig()
	cfg.VXLANPort, cfg.BridgeName, cfg.VXLANName = 8472, "br-b", "vx-b"
	cfg.OverlayCIDR = netip.MustParsePrefix("10.50.0.0/16")
	got := hostTable("t", cfg, netip.MustParsePrefix("10.50.1.0/24"), nil).String()
	for _, want := range []string{"udp dport 8472 ", `iifname "br-b" accept`, `iifname "vx-b" accept`, "ip daddr != 10.50.0.0/16 accept"} {
		if !strings.Contains(got, want) {
			t.Errorf("host table lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "elements") {
		t.Errorf("no sources, yet elements:\n%s", got)
	}
}

func TestPortTableHoldsEachVethToItsAddress(t *testing.T) {
	a, b := netip.MustParseAddr("10.42.7.3"), netip.MustParseAddr("10.42.7.2")
	ports := []portSource{
		{veth: "vsh000000000003", mac: containerMAC(a), addr: a},
		{veth: "vsh000000000002", mac: containerMAC(b), addr: b},
		{veth: "vsh000000000001"}, // its owner lost its address
	}
	tbl := portTable("shoal_overlay_shoal0", ports)
	want := `table bridge shoal_overlay_shoal0 {
	set ports {
		type ifname
		elements = { "vsh000000000001", "vsh000000000002", "vsh000000000003" }
	}
	set sources {
		type ifname.ether_addr.ipv4_addr
		elements = { "vsh000000000002" . 0a:58:0a:2a:07:02 . 10.42.7.2, "vsh000000000003" . 0a:58:0a:2a:07:03 . 10.42.7.3 }
	}
	chain prerouting {
		type filter hook prerouting priority -200; policy accept;
		iifname != @ports accept
		ether type ip iifname . ether saddr . ip saddr @sources accept
		ether type arp iifname . ether saddr . arp saddr ip @sources iifname . arp saddr ether . arp saddr ip @sources accept
		counter drop
	}
}
`
	if got := tbl.String(); got != want {
		t.Fatalf("port table:\n%s\nwant:\n%s", got, want)
	}
	// Keys as the kernel compares them: the name NUL-padded to 16 bytes,
	// the MAC padded to 8, then the address.
	key := tbl.sets[1].elements[0]
	wantKey := append(append(ifnameData("vsh000000000002"), 0x0a, 0x58, 10, 42, 7, 2, 0, 0), 10, 42, 7, 2)
	if !bytes.Equal(key, wantKey) {
		t.Fatalf("key % x, want % x", key, wantKey)
	}
}

func TestConcatenatedLookupsLoadWhereTheKeyLayoutSaysSo(t *testing.T) {
	// The three fields of a source key sit at 4-byte registers 0, 4 and 6
	// from NFT_REG32_00: 16 bytes of name, 6 (padded to 8) of MAC.
	for _, r := range []nftRule{sourceKeyIn("s", "ip saddr", 12), arpSenderKeyIn("s")} {
		var regs []uint32
		for _, e := range r.exprs {
			switch e := e.(type) {
			case *expr.Meta:
				regs = append(regs, e.Register)
			case *expr.Payload:
				regs = append(regs, e.DestRegister)
			case *expr.Lookup:
				if e.SourceRegister != regName {
					t.Errorf("%s: lookup reads register %d", r.text, e.SourceRegister)
				}
			}
		}
		if len(regs) != 3 || regs[1]-regs[0] != 4 || regs[2]-regs[1] != 2 {
			t.Errorf("%s: loads into registers %v", r.text, regs)
		}
	}
}

func TestContainerMACIsFixedByTheAddress(t *testing.T) {
	mac := containerMAC(netip.MustParseAddr("10.42.1.200"))
	if mac.String() != "0a:58:0a:2a:01:c8" {
		t.Fatalf("MAC %s", mac)
	}
	if mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Fatalf("MAC %s is not a locally administered unicast address", mac)
	}
}
