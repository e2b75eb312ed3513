package lb

import (
	"net/netip"
	"testing"
)

// The kernel's jhash is Bob Jenkins' lookup3 hashlittle; these are the
// reference values printed by lookup3.c's driver5.
func TestJhashMatchesLookup3ReferenceValues(t *testing.T) {
	four := []byte("Four score and seven years ago")
	for _, tc := range []struct {
		key  []byte
		seed uint32
		want uint32
	}{
		{nil, 0, 0xdeadbeef},
		{nil, 0xdeadbeef, 0xbd5b7dde},
		{four, 0, 0x17770551},
		{four, 1, 0xcd628161},
	} {
		if got := jhash(tc.key, tc.seed); got != tc.want {
			t.Errorf("jhash(%q, %#x) = %#x, want %#x", tc.key, tc.seed, got, tc.want)
		}
	}
}

func TestReciprocalScaleStaysInRange(t *testing.T) {
	for _, n := range []uint32{1, 2, 3, 251, 4093} {
		for _, h := range []uint32{0, 1, 1 << 31, 0xffffffff} {
			if got := reciprocalScale(h, n); got >= n {
				t.Fatalf("reciprocalScale(%#x, %d) = %d", h, n, got)
			}
		}
	}
}

func TestAddrBucketSpreadsAddresses(t *testing.T) {
	counts := make([]int, 3)
	a := netip.MustParseAddr("10.0.0.0")
	for range 3000 {
		a = a.Next()
		counts[addrBucket(a, 3, DefaultHashSeed)]++
	}
	for i, c := range counts {
		if c < 800 || c > 1200 {
			t.Fatalf("bucket %d got %d of 3000 addresses: %v", i, c, counts)
		}
	}
}
