package placement

import "math"

// cand is a node and its score for one replica; lower is better.
type cand struct {
	score float64
	node  int32
}

// better is the ranking order: lower score, then lower node index (name).
func better(a, b cand) bool {
	return a.score < b.score || (a.score == b.score && a.node < b.node)
}

// firstPassCandidates is about how many nodes pass pick's first filter.
// Fewer means fewer logarithms per replica; more means fewer second passes
// when the best few nodes cannot take the replica. With 6, a second pass
// is needed about e^-6 = 0.25% of the time on an uncrowded cluster.
const firstPassCandidates = 6

// pick returns the best-ranked node for the replica with key rk among the
// nodes of g that fit job and hold at most level replicas of it, or -1 if
// there is none.
//
// The score of node n is -ln(u)/w with u = unit(pairHash(rk, key))×2^-53: an
// exponential race, in which about W×t nodes score at most t (W the total
// weight). Taking a logarithm per node would dominate the cost of Assign, so
// each pass skips, by one integer comparison, every node whose lower bound
// (1-u)/w <= -ln(u)/w already exceeds a threshold t, and scores the rest
// exactly. If the best acceptable node found scores at most t, no skipped
// node could beat it and it is the exact answer; otherwise t grows fourfold
// and the pass repeats, until no node is skipped.
func (s *solver) pick(rk uint64, g *group, job *Job, level int32) int32 {
	t := firstPassCandidates / g.weight
	thr, all := g.thr, g.thrAll
	for {
		best := cand{math.Inf(1), -1}
		for i, k := range g.keys {
			h := pairHash(rk, k)
			if h < thr[i] {
				continue
			}
			n := g.nodes[i]
			if s.jobCount[n] > level || !s.fits(n, job) {
				continue
			}
			if c := (cand{float64(negLn(unit(h)) * s.invW[n]), n}); better(c, best) {
				best = c
			}
		}
		if all || (best.node >= 0 && best.score <= t) {
			return best.node
		}
		t *= 4
		if cap(s.thr) < len(g.nodes) {
			s.thr = make([]uint64, len(g.nodes))
		}
		thr = s.thr[:len(g.nodes)]
		all = s.thresholds(thr, g.nodes, t)
	}
}

// thresholds sets thr[i] to the smallest pair hash for which node nodes[i]
// may score at most t, and reports whether every threshold is 0 (no node
// can be skipped).
//
// With D = 2^53 - m = (1-u)×2^53, the lower bound (1-u)/w <= t reads
// D <= t×w×2^53, that is m >= 2^53 - t×w×2^53, that is
// h >= (2^53 - 1 - floor(t×w×2^53)) << 11. The factor 1+1e-9 keeps rounding
// from ever skipping a node that belongs.
func (s *solver) thresholds(thr []uint64, nodes []int32, t float64) (all bool) {
	all = true
	for i, n := range nodes {
		d := t * s.w[n] * 0x1p53 * (1 + 1e-9)
		if d >= 1<<53-1 {
			thr[i] = 0
			continue
		}
		thr[i] = (1<<53 - 1 - uint64(d)) << 11
		all = all && thr[i] == 0
	}
	return all
}
