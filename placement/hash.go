package placement

import (
	"math"
	"math/bits"
)

// The ranking must be bit-for-bit identical on every node, whatever its CPU
// architecture or Go build flags. Hence:
//   - keys are FNV-1a 64 of the name, finished with the splitmix64 mixer
//     (hash/maphash is seeded per process and would not do);
//   - the score uses our own natural logarithm, because math.Log is assembly
//     on amd64 and Go code elsewhere, and the two may differ in the last bit;
//   - every product that feeds an addition is rounded explicitly with
//     float64(), which the Go spec defines as a barrier against fused
//     multiply-add (used on arm64, ppc64, s390x, and amd64 with GOAMD64=v3).
// Division, square root and single products are exactly rounded IEEE 754
// operations and so identical everywhere. To check after editing, this
// should print nothing:
//
//	for a in arm64 ppc64le s390x riscv64; do GOARCH=$a go build -gcflags=-S ./placement 2>&1; done |
//	    grep -E 'F(N)?M(ADD|SUB)' | grep -E 'hash.go|assign.go'

// nodeKey, jobKey and replicaKey are independent 64-bit keys; replica i of
// a job ranks node n by pairHash(replicaKey(jobKey(job), i), nodeKey(n)).
func nodeKey(name string) uint64 { return mix64(fnv64(name)) }

func jobKey(id string) uint64 { return mix64(fnv64(id) ^ 0x6a09e667f3bcc909) }

func replicaKey(jobKey uint64, replica int) uint64 {
	return mix64(jobKey + uint64(replica)*0xd1b54a32d192ed03)
}

// pairHash combines two keys with one 64×64→128-bit multiply, folding the
// halves (the "mum" step of wyhash). Both inputs are already mixed, and this
// is the innermost operation of Assign (replicas × nodes times), so one
// multiply is the right cost.
func pairHash(replica, node uint64) uint64 {
	hi, lo := bits.Mul64(replica, node)
	return hi ^ lo
}

// fnv64 is FNV-1a 64 (as hash/fnv's New64a), inlined to avoid allocating.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the splitmix64 output function: a bijection on 64 bits in which
// every input bit affects every output bit.
func mix64(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// unit maps a pair hash to m in [1, 2^53]; the uniform variate is
// u = m × 2^-53 in (0, 1], never 0 so its logarithm is finite.
func unit(h uint64) uint64 { return h>>11 + 1 }

// mul is a product rounded to float64 before any later addition.
func mul(a, b float64) float64 { return float64(a * b) }

// Coefficients of the FreeBSD / Go math.Log algorithm (e_log.c).
const (
	ln2Hi = 6.93147180369123816490e-01 // 3fe62e42 fee00000
	ln2Lo = 1.90821492927058770002e-10 // 3dea39ef 35793c76
	lg1   = 6.666666666666735130e-01   // 3FE55555 55555593
	lg2   = 3.999999999940941908e-01   // 3FD99999 9997FA04
	lg3   = 2.857142874366239149e-01   // 3FD24924 94229359
	lg4   = 2.222219843214978396e-01   // 3FCC71C5 1D8E78AF
	lg5   = 1.818357216161805012e-01   // 3FC74664 96CB03DE
	lg6   = 1.531383769920937332e-01   // 3FC39A09 D078C69F
	lg7   = 1.479819860511658591e-01   // 3FC2F112 DF3E5244
)

// negLn returns -ln(u) for u = m × 2^-53, m in [1, 2^53], to within about
// one ulp, with the same bits on every platform. It is the FreeBSD algorithm
// behind math.Log with the argument reduction done in integers.
func negLn(m uint64) float64 {
	if m == 1<<53 {
		return 0 // u = 1; the formula below would give -0
	}
	// u = f1 × 2^k with f1 in [sqrt(2)/2, sqrt(2)).
	n := bits.Len64(m)                                              // m in [2^(n-1), 2^n)
	f1 := mul(float64(m), math.Float64frombits(uint64(1023-n)<<52)) // exact: [0.5, 1)
	k := n - 53
	if f1 < math.Sqrt2/2 {
		f1 = mul(f1, 2)
		k--
	}
	f := f1 - 1 // exact (Sterbenz)
	kf := float64(k)

	s := f / (2 + f)
	s2 := mul(s, s)
	s4 := mul(s2, s2)
	t1 := mul(s2, lg1+mul(s4, lg3+mul(s4, lg5+mul(s4, lg7))))
	t2 := mul(s4, lg2+mul(s4, lg4+mul(s4, lg6)))
	r := t1 + t2
	hfsq := mul(mul(0.5, f), f)
	ln := mul(kf, ln2Hi) - ((hfsq - (mul(s, hfsq+r) + mul(kf, ln2Lo))) - f)
	return -ln
}

// weight is a node's ranking weight: the geometric mean of its cpu and
// memory capacity. It depends on the node alone (so other nodes coming and
// going never re-rank it) and is unchanged in ratio if either unit is
// rescaled. Zero or negative capacities count as 1 so the weight stays finite
// and positive.
func weight(n Node) float64 {
	return math.Sqrt(float64(max(n.CPUMillis, 1)) * float64(max(n.MemoryMB, 1)))
}
