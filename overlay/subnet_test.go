package overlay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

var overlay16 = netip.MustParsePrefix("10.42.0.0/16")

func TestProposeSubnetIsDeterministicAndInside(t *testing.T) {
	a, err := ProposeSubnet("node-a", overlay16, 24, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ProposeSubnet("node-a", overlay16, 24, nil)
	if a != b {
		t.Fatalf("same name gave %s then %s", a, b)
	}
	if !inOverlay(a, overlay16, 24) {
		t.Fatalf("%s is not a /24 of %s", a, overlay16)
	}
}

func TestProposeSubnetProbesPastTaken(t *testing.T) {
	first, _ := ProposeSubnet("n1", overlay16, 24, nil)
	next := nthSubnet(overlay16, 24, (uint64(first.Addr().As4()[2])+1)%256)
	got, err := ProposeSubnet("n1", overlay16, 24, map[netip.Prefix]bool{first: true})
	if err != nil {
		t.Fatal(err)
	}
	if got != next {
		t.Fatalf("with %s taken got %s, want the next one %s", first, got, next)
	}
}

func TestProposeSubnetWrapsAround(t *testing.T) {
	overlay := netip.MustParsePrefix("10.42.0.0/22") // four /24s
	taken := map[netip.Prefix]bool{}
	for i := range 3 {
		taken[nthSubnet(overlay, 24, uint64(i))] = true
	}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		got, err := ProposeSubnet(name, overlay, 24, taken)
		if err != nil {
			t.Fatal(err)
		}
		if got != netip.MustParsePrefix("10.42.3.0/24") {
			t.Fatalf("%s got %s, want the only free 10.42.3.0/24", name, got)
		}
	}
}

func TestProposeSubnetFullOverlay(t *testing.T) {
	overlay := netip.MustParsePrefix("10.42.0.0/23")
	taken := map[netip.Prefix]bool{
		netip.MustParsePrefix("10.42.0.0/24"): true,
		netip.MustParsePrefix("10.42.1.0/24"): true,
		netip.MustParsePrefix("10.99.0.0/24"): true, // outside: ignored
	}
	if _, err := ProposeSubnet("x", overlay, 24, taken); !errors.Is(err, ErrNoFreeSubnet) {
		t.Fatalf("full overlay: err = %v, want ErrNoFreeSubnet", err)
	}
}

func TestProposeSubnetRejectsBadSpaces(t *testing.T) {
	for _, tc := range []struct {
		overlay string
		bits    int
	}{
		{"10.42.0.0/16", 15}, {"10.42.0.0/16", 31}, {"0.0.0.0/0", 30}, {"10.42.1.0/16", 24},
	} {
		if _, err := ProposeSubnet("x", netip.MustParsePrefix(tc.overlay), tc.bits, nil); err == nil {
			t.Errorf("ProposeSubnet(%s, /%d) accepted", tc.overlay, tc.bits)
		}
	}
}

func TestProposeSubnetSpreadsNodes(t *testing.T) {
	// Not a promise, a sanity check of the hash: 50 nodes in 256 subnets
	// should mostly land on different starting points.
	seen := map[netip.Prefix]bool{}
	for i := range 50 {
		p, _ := ProposeSubnet(fmt.Sprintf("node-%d", i), overlay16, 24, nil)
		seen[p] = true
	}
	if len(seen) < 40 {
		t.Fatalf("50 nodes start on only %d distinct subnets", len(seen))
	}
}

func TestGatewayAndBroadcast(t *testing.T) {
	p := netip.MustParsePrefix("10.42.7.0/24")
	if g := Gateway(p); g != netip.MustParseAddr("10.42.7.1") {
		t.Errorf("Gateway = %s", g)
	}
	if b := broadcast(p); b != netip.MustParseAddr("10.42.7.255") {
		t.Errorf("broadcast = %s", b)
	}
}

func TestOlderClaimWins(t *testing.T) {
	s := netip.MustParsePrefix("10.42.7.0/24")
	tests := []struct {
		name       string
		self, peer Claim
		repick     bool
	}{
		{"older peer wins", Claim{"b", s, 20}, Claim{"a", s, 10}, true},
		{"younger peer loses", Claim{"b", s, 10}, Claim{"a", s, 20}, false},
		{"tie broken by name, self first", Claim{"a", s, 10}, Claim{"b", s, 10}, false},
		{"tie broken by name, peer first", Claim{"b", s, 10}, Claim{"a", s, 10}, true},
		{"different subnets never conflict", Claim{"b", s, 20}, Claim{"a", netip.MustParsePrefix("10.42.8.0/24"), 10}, false},
		{"own entry ignored", Claim{"a", s, 20}, Claim{"a", s, 10}, false},
		{"overlapping sizes conflict", Claim{"b", s, 20}, Claim{"a", netip.MustParsePrefix("10.42.0.0/20"), 10}, true},
	}
	for _, tt := range tests {
		if got := MustRepick(tt.self, []Claim{tt.peer}); got != tt.repick {
			t.Errorf("%s: MustRepick = %v, want %v", tt.name, got, tt.repick)
		}
	}
	if !MustRepick(Claim{Node: "a"}, nil) {
		t.Error("a node without a subnet must pick one")
	}
}

// randomClaims makes n claims by distinct nodes, crowded into few subnets
// and few timestamps so conflicts and ties are common.
func randomClaims(r *rand.Rand, n, subnets int) []Claim {
	out := make([]Claim, n)
	for i := range out {
		out[i] = Claim{
			Node:      fmt.Sprintf("n%03d", r.IntN(1000)*1000+i),
			Subnet:    nthSubnet(overlay16, 24, uint64(r.IntN(subnets))),
			ClaimedAt: int64(r.IntN(4)),
		}
	}
	return out
}

func TestPropertySurvivorsHaveDistinctSubnets(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		claims := randomClaims(r, 1+r.IntN(12), 1+r.IntN(5))
		survivors := Survivors(claims)
		seen := map[netip.Prefix]string{}
		for _, c := range survivors {
			if other, dup := seen[c.Subnet]; dup {
				t.Fatalf("round %d: %s and %s both keep %s; claims %v", round, other, c.Node, c.Subnet, claims)
			}
			seen[c.Subnet] = c.Node
		}
		// Every claimed subnet keeps exactly one owner: the rule never
		// leaves a contested subnet to nobody.
		for _, c := range claims {
			if _, ok := seen[c.Subnet]; !ok {
				t.Fatalf("round %d: subnet %s lost all its claimants; claims %v", round, c.Subnet, claims)
			}
		}
	}
}

func TestPropertyNextClaimConverges(t *testing.T) {
	// Nodes that all start from the same few subnets apply NextClaim in
	// rounds, each seeing everyone's claims of the previous round (what
	// gossip delivers), until nothing changes. They must end up on
	// distinct subnets, and a node that never lost must keep its claim.
	r := rand.New(rand.NewPCG(3, 4))
	overlay := netip.MustParsePrefix("10.42.0.0/20") // 16 subnets
	for round := range 300 {
		n := 1 + r.IntN(16)
		claims := make([]Claim, n)
		for i := range claims {
			claims[i] = Claim{Node: fmt.Sprintf("node-%d", i)}
			if r.IntN(2) == 0 {
				claims[i].Subnet = nthSubnet(overlay, 24, uint64(r.IntN(3)))
				claims[i].ClaimedAt = int64(1 + r.IntN(3))
			}
		}
		now := int64(100)
		for step := 0; ; step++ {
			if step > 2*n+2 {
				t.Fatalf("round %d: no convergence after %d steps: %v", round, step, claims)
			}
			now++
			next := make([]Claim, n)
			changed := false
			for i, c := range claims {
				nc, err := NextClaim(c, claims, overlay, 24, now)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if nc != c {
					changed = true
					if c.Subnet.IsValid() && !MustRepick(c, claims) {
						t.Fatalf("round %d: %s moved from %s though it won", round, c.Node, c.Subnet)
					}
				}
				next[i] = nc
			}
			claims = next
			if !changed {
				break
			}
		}
		seen := map[netip.Prefix]string{}
		for _, c := range claims {
			if other, dup := seen[c.Subnet]; dup {
				t.Fatalf("round %d: converged with %s and %s on %s", round, other, c.Node, c.Subnet)
			}
			seen[c.Subnet] = c.Node
		}
	}
}

func TestNextClaimKeepsAWinningClaim(t *testing.T) {
	self := Claim{"a", netip.MustParsePrefix("10.42.9.0/24"), 5}
	got, err := NextClaim(self, []Claim{{"b", netip.MustParsePrefix("10.42.9.0/24"), 6}}, overlay16, 24, 99)
	if err != nil || got != self {
		t.Fatalf("NextClaim = %v, %v; want the unchanged %v", got, err, self)
	}
}

func TestNextClaimRepicksAfterLosing(t *testing.T) {
	lost := netip.MustParsePrefix("10.42.9.0/24")
	self := Claim{"b", lost, 6}
	got, err := NextClaim(self, []Claim{{"a", lost, 5}}, overlay16, 24, 99)
	if err != nil {
		t.Fatal(err)
	}
	if got.Subnet == lost || got.ClaimedAt != 99 || got.Node != "b" {
		t.Fatalf("NextClaim = %v; want a new subnet claimed at 99", got)
	}
}

func BenchmarkProposeSubnetCrowded(b *testing.B) {
	taken := map[netip.Prefix]bool{}
	for i := range 250 {
		taken[nthSubnet(overlay16, 24, uint64(i))] = true
	}
	for b.Loop() {
		if _, err := ProposeSubnet("node-x", overlay16, 24, taken); err != nil {
			b.Fatal(err)
		}
	}
}

func TestClaimSurvivesARestart(t *testing.T) {
	path := t.TempDir() + "/claim.json"
	if c, err := LoadClaim(path); err != nil || c != (Claim{}) {
		t.Fatalf("LoadClaim of a missing file = %v, %v; want zero, nil", c, err)
	}
	want := Claim{Node: "n1", Subnet: netip.MustParsePrefix("10.42.7.0/24"), ClaimedAt: 1732550000000000000}
	if err := SaveClaim(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadClaim(path)
	if err != nil || got != want {
		t.Fatalf("LoadClaim = %v, %v; want %v", got, err, want)
	}
}
