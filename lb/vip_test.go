package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestAllocateVIPIsDeterministicAndInsideTheRange(t *testing.T) {
	cidr := netip.MustParsePrefix("10.43.0.0/16")
	for _, name := range []string{"web", "db", "api", "a", "x-1"} {
		a, err := AllocateVIP(name, cidr, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := AllocateVIP(name, cidr, map[netip.Addr]string{})
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Fatalf("%s: %s then %s", name, a, b)
		}
		if !cidr.Contains(a) || a == cidr.Addr() || a == netip.MustParseAddr("10.43.255.255") {
			t.Fatalf("%s: %s is not a usable address of %s", name, a, cidr)
		}
	}
}

func TestAllocateVIPProbesPastAddressesOfOtherNames(t *testing.T) {
	cidr := netip.MustParsePrefix("10.43.0.0/16")
	home, err := AllocateVIP("web", cidr, nil)
	if err != nil {
		t.Fatal(err)
	}
	next := home.Next()
	taken := map[netip.Addr]string{home: "db", next: "api"}
	got, err := AllocateVIP("web", cidr, taken)
	if err != nil {
		t.Fatal(err)
	}
	if want := next.Next(); got != want {
		t.Fatalf("with %s and %s taken: got %s, want %s", home, next, got, want)
	}
	// Its own address is not a collision.
	got, err = AllocateVIP("web", cidr, map[netip.Addr]string{home: "web"})
	if err != nil || got != home {
		t.Fatalf("own address: got %s, %v; want %s", got, err, home)
	}
}

func TestAllocateVIPKeepsAnAddressTheNameAlreadyHolds(t *testing.T) {
	cidr := netip.MustParsePrefix("10.43.0.0/16")
	home, _ := AllocateVIP("web", cidr, nil)
	// web was pushed aside once; the pusher has gone since. web keeps the
	// address it has rather than moving back home.
	held := netip.MustParseAddr("10.43.7.7")
	got, err := AllocateVIP("web", cidr, map[netip.Addr]string{held: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if got != held {
		t.Fatalf("got %s, want the held %s (home is %s)", got, held, home)
	}
	// An address outside the range does not count.
	got, _ = AllocateVIP("web", cidr, map[netip.Addr]string{netip.MustParseAddr("10.44.0.1"): "web"})
	if got != home {
		t.Fatalf("got %s, want home %s", got, home)
	}
}

func TestAllocateVIPWrapsAroundAndSkipsNetworkAndBroadcast(t *testing.T) {
	cidr := netip.MustParsePrefix("10.43.0.0/30") // usable: .1 and .2
	taken := map[netip.Addr]string{}
	var got []netip.Addr
	for i := range 2 {
		name := fmt.Sprintf("svc-%d", i)
		a, err := AllocateVIP(name, cidr, taken)
		if err != nil {
			t.Fatal(err)
		}
		taken[a] = name
		got = append(got, a)
	}
	if got[0] == got[1] {
		t.Fatalf("two names got %s", got[0])
	}
	for _, a := range got {
		if a != netip.MustParseAddr("10.43.0.1") && a != netip.MustParseAddr("10.43.0.2") {
			t.Fatalf("got %s, outside the usable .1-.2", a)
		}
	}
}

func TestAllocateVIPFailsOnAFullRange(t *testing.T) {
	cidr := netip.MustParsePrefix("10.43.0.0/29") // 6 usable
	taken := map[netip.Addr]string{}
	for i := range 6 {
		name := fmt.Sprintf("svc-%d", i)
		a, err := AllocateVIP(name, cidr, taken)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, dup := taken[a]; dup {
			t.Fatalf("%s got %s, already taken", name, a)
		}
		taken[a] = name
	}
	if _, err := AllocateVIP("one-more", cidr, taken); !errors.Is(err, ErrVIPRangeFull) {
		t.Fatalf("got %v, want ErrVIPRangeFull", err)
	}
	// A name that already holds one still gets it in a full range.
	if a, err := AllocateVIP("svc-3", cidr, taken); err != nil || taken[a] != "svc-3" {
		t.Fatalf("svc-3 in a full range: %s, %v", a, err)
	}
	for _, p := range []string{"10.43.0.0/31", "10.43.0.1/32"} {
		if _, err := AllocateVIP("x", netip.MustParsePrefix(p), nil); !errors.Is(err, ErrVIPRangeFull) {
			t.Fatalf("%s: got %v, want ErrVIPRangeFull", p, err)
		}
	}
}

func TestAllocateVIPRejectsIPv6AndInvalidRanges(t *testing.T) {
	for _, p := range []netip.Prefix{{}, netip.MustParsePrefix("fd00::/64")} {
		if _, err := AllocateVIP("x", p, nil); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("%v: got %v, want ErrInvalidConfig", p, err)
		}
	}
}

func TestAllocateVIPSpreadsNamesOverTheRange(t *testing.T) {
	// 1,000 services in a /16: hashing should place nearly all of them at
	// home, and probing must give every one a distinct address.
	cidr := netip.MustParsePrefix("10.43.0.0/16")
	taken := map[netip.Addr]string{}
	moved := 0
	for i := range 1000 {
		name := fmt.Sprintf("service-%d", i)
		home, _ := AllocateVIP(name, cidr, nil)
		a, err := AllocateVIP(name, cidr, taken)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := taken[a]; dup {
			t.Fatalf("%s got %s twice", name, a)
		}
		if a != home {
			moved++
		}
		taken[a] = name
	}
	// Birthday bound: about n^2/2m = 7.6 collisions expected.
	if moved > 30 {
		t.Fatalf("%d of 1000 names collided", moved)
	}
}
