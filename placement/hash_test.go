package placement

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"testing"
)

// The values below are the ranking's wire contract: every agent in a cluster
// must compute them identically, on every architecture and Go version. If
// one changes, a mixed-version cluster disagrees about placement; change
// them only with a plan for that upgrade.
func TestRankingKeysArePinned(t *testing.T) {
	for name, c := range map[string]struct{ got, want uint64 }{
		"nodeKey(node-a)":    {nodeKey("node-a"), 0x40a36dc372dab80a},
		"jobKey(web)":        {jobKey("web"), 0x6c03c436e9f0d0e8},
		"replicaKey(web, 3)": {replicaKey(jobKey("web"), 3), 0xf07132718cd9a42b},
		"pairHash":           {pairHash(replicaKey(jobKey("web"), 3), nodeKey("node-a")), 0xbe92061aa70be365},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", name, c.got, c.want)
		}
	}
}

func TestFNV64IsFNV1a(t *testing.T) {
	for _, s := range []string{"", "a", "node-0001", "web/frontend"} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got, want := fnv64(s), h.Sum64(); got != want {
			t.Errorf("fnv64(%q) = %#x, hash/fnv says %#x", s, got, want)
		}
	}
}

func TestNegLnIsPinnedBitForBit(t *testing.T) {
	for m, want := range map[uint64]uint64{
		1:               0x40425e4f7b2737fa,
		2:               0x404205966f2b4f12,
		3:               0x4041d1b02751cfe2,
		1 << 52:         0x3fe62e42fefa39ef,
		1<<53 - 1:       0x3ca0000000000000,
		1 << 53:         0,
		0x1234567890abc: 0x400ab17a33635151,
	} {
		if got := math.Float64bits(negLn(m)); got != want {
			t.Errorf("negLn(%#x) bits = %#x, want %#x", m, got, want)
		}
	}
}

func TestNegLnAgreesWithMathLog(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	check := func(m uint64) {
		want := -math.Log(float64(m) * 0x1p-53)
		got := negLn(m)
		if diff := math.Abs(got - want); diff > 4e-16*math.Abs(want) {
			t.Fatalf("negLn(%#x) = %v, -math.Log = %v (relative error %.2g)", m, got, want, diff/want)
		}
	}
	for _, m := range []uint64{1, 2, 3, 1 << 26, 1<<52 - 1, 1 << 52, 1<<52 + 1, 1<<53 - 2, 1<<53 - 1} {
		check(m)
	}
	for range 200000 {
		check(unit(r.Uint64()))
		check(1<<53 - r.Uint64N(1<<20)) // u close to 1, where the winners are
	}
}

func TestWeightIsGeometricMeanOfCapacity(t *testing.T) {
	tests := []struct {
		n    Node
		want float64
	}{
		{Node{CPUMillis: 4000, MemoryMB: 16000}, 8000},
		{Node{CPUMillis: 8000, MemoryMB: 32000}, 16000}, // twice the node, twice the weight
		{Node{CPUMillis: 0, MemoryMB: 100}, 10},         // zero counts as 1
		{Node{CPUMillis: -5, MemoryMB: -5}, 1},
	}
	for _, tt := range tests {
		if got := weight(tt.n); got != tt.want {
			t.Errorf("weight(%+v) = %v, want %v", tt.n, got, tt.want)
		}
	}
}
