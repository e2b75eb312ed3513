package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

func endpointIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%d/%d", i%4, i)
	}
	slices.Sort(ids)
	return ids
}

func TestMaglevGivesEveryEndpointAnEqualShare(t *testing.T) {
	for _, tc := range []struct{ n, m int }{{1, 251}, {3, 251}, {10, 251}, {10, 4093}, {25, 251}, {251, 251}} {
		table, err := Maglev(endpointIDs(tc.n), tc.m)
		if err != nil {
			t.Fatal(err)
		}
		if len(table) != tc.m {
			t.Fatalf("n=%d m=%d: table has %d entries", tc.n, tc.m, len(table))
		}
		count := make([]int, tc.n)
		for _, e := range table {
			count[e]++
		}
		lo, hi := tc.m/tc.n, (tc.m+tc.n-1)/tc.n
		for i, c := range count {
			if c < lo || c > hi {
				t.Fatalf("n=%d m=%d: endpoint %d has %d buckets, want %d-%d", tc.n, tc.m, i, c, lo, hi)
			}
		}
	}
}

func TestMaglevIsDeterministic(t *testing.T) {
	a, _ := Maglev(endpointIDs(10), 251)
	b, _ := Maglev(endpointIDs(10), 251)
	if !slices.Equal(a, b) {
		t.Fatal("two builds of the same input differ")
	}
}

// remapFraction is the share of buckets whose endpoint changes when the
// endpoint at index gone leaves n endpoints.
func remapFraction(t testing.TB, n, m, gone int) float64 {
	ids := endpointIDs(n)
	before, err := Maglev(ids, m)
	if err != nil {
		t.Fatal(err)
	}
	rest := slices.Delete(slices.Clone(ids), gone, gone+1)
	after, err := Maglev(rest, m)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for b := range before {
		if ids[before[b]] != rest[after[b]] {
			moved++
		}
	}
	return float64(moved) / float64(m)
}

func TestMaglevMovesLittleMoreThanTheLeaversShareWhenOneOfTenLeaves(t *testing.T) {
	for _, m := range []int{DefaultMaglevTableSize, 4093} {
		worst := 0.0
		for gone := range 10 {
			f := remapFraction(t, 10, m, gone)
			// Every bucket of the leaver must move: at least its share.
			if f < 0.09 {
				t.Fatalf("m=%d, endpoint %d left: only %.3f of buckets moved", m, gone, f)
			}
			worst = max(worst, f)
		}
		t.Logf("m=%d: worst remap fraction %.3f (ideal 0.100)", m, worst)
		if worst >= 0.15 {
			t.Fatalf("m=%d: %.3f of clients remapped when one of 10 endpoints left, want < 0.15", m, worst)
		}
	}
}

// TestMaglevMovesFewerClientsThanSourceHash compares the two sticky
// strategies as the kernel computes them, for 20,000 client addresses when
// one of ten endpoints leaves. source_hash scales jhash onto N buckets, so
// every boundary between endpoints shifts when N changes.
func TestMaglevMovesFewerClientsThanSourceHash(t *testing.T) {
	ids := endpointIDs(10)
	m := DefaultMaglevTableSize
	before, err := Maglev(ids, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []int{0, 3, 9} {
		rest := slices.Delete(slices.Clone(ids), gone, gone+1)
		after, err := Maglev(rest, m)
		if err != nil {
			t.Fatal(err)
		}
		const clients = 20000
		shMoved, mgMoved := 0, 0
		a := netip.MustParseAddr("10.42.0.0")
		for range clients {
			a = a.Next()
			if ids[addrBucket(a, 10, DefaultHashSeed)] != rest[addrBucket(a, 9, DefaultHashSeed)] {
				shMoved++
			}
			b := addrBucket(a, uint32(m), DefaultHashSeed)
			if ids[before[b]] != rest[after[b]] {
				mgMoved++
			}
		}
		sh, mg := float64(shMoved)/clients, float64(mgMoved)/clients
		t.Logf("endpoint %d of 10 left: source_hash moved %.3f of clients, maglev %.3f", gone, sh, mg)
		if mg >= 0.15 || sh <= mg+0.1 {
			t.Fatalf("endpoint %d left: maglev moved %.3f, source_hash %.3f", gone, mg, sh)
		}
	}
}

func TestMaglevRejectsBadSizes(t *testing.T) {
	for _, tc := range []struct{ n, m int }{{3, 0}, {3, 1}, {3, 250}, {300, 251}} {
		if _, err := Maglev(endpointIDs(tc.n), tc.m); !errors.Is(err, ErrMaglevSize) {
			t.Fatalf("n=%d m=%d: got %v, want ErrMaglevSize", tc.n, tc.m, err)
		}
	}
	if table, err := Maglev(nil, 251); err != nil || table != nil {
		t.Fatalf("no endpoints: %v, %v", table, err)
	}
}

func BenchmarkMaglevBuild(b *testing.B) {
	for _, tc := range []struct{ n, m int }{{10, 251}, {10, 1021}, {10, 4093}, {100, 4093}, {1000, 65537}} {
		ids := endpointIDs(tc.n)
		b.Run(fmt.Sprintf("n=%d/m=%d", tc.n, tc.m), func(b *testing.B) {
			for b.Loop() {
				if _, err := Maglev(ids, tc.m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMaglevRemap reports the fraction of clients remapped when one of
// ten endpoints leaves (averaged over which one), as remap-fraction.
func BenchmarkMaglevRemap(b *testing.B) {
	for _, m := range []int{251, 1021, 4093} {
		b.Run(fmt.Sprintf("m=%d", m), func(b *testing.B) {
			var sum float64
			runs := 0
			for b.Loop() {
				sum += remapFraction(b, 10, m, runs%10)
				runs++
			}
			b.ReportMetric(sum/float64(runs), "remap-fraction")
		})
	}
}
