package placement

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// referenceAssign is Assign written the slow, obvious way: every replica
// scores every node and takes the best acceptable one. It shares the
// definitions (keys, scores, bounds, reasons) with Assign and checks only the
// search: that pick's thresholds never skip the node that should win.
func referenceAssign(view []Node, jobs []Job, opts Options) Assignment {
	s := newSolver(view, opts.loadFactor())
	plans := s.planJobs(jobs)
	s.computeBounds()
	out := Assignment{Placements: map[string][]string{}}
	for _, p := range plans {
		slots := make([]string, p.slots)
		out.Placements[p.job.ID] = slots
		if p.invalid != "" {
			out.Unplaced = appendUnplaced(out.Unplaced, p.job.ID, 0, max(p.slots, 1), p.invalid)
			continue
		}
		job, g := p.job, p.group
		if job.Replicas > 0 && len(g.nodes) == 0 {
			out.Unplaced = appendUnplaced(out.Unplaced, job.ID, 0, job.Replicas, s.constraintReason(&job))
			continue
		}
		count := map[int32]int32{}
		if pairwise(job.Replicas, len(g.nodes)) {
			// Brute force of the pairwise order: again and again, the best
			// (replica, node) pair of an unplaced replica and a fitting node
			// holding the fewest replicas of the job.
			placed := make([]bool, job.Replicas)
			for range job.Replicas {
				minCount := int32(math.MaxInt32)
				for _, n := range g.nodes {
					if s.fits(n, &job) {
						minCount = min(minCount, count[n])
					}
				}
				best, bestReplica := cand{math.Inf(1), -1}, -1
				for i := range job.Replicas {
					if placed[i] {
						continue
					}
					rk := replicaKey(jobKey(job.ID), i)
					for _, n := range g.nodes {
						if !s.fits(n, &job) || count[n] != minCount {
							continue
						}
						c := cand{float64(negLn(unit(pairHash(rk, s.key[n]))) * s.invW[n]), n}
						if better(c, best) || (c == best && i < bestReplica) {
							best, bestReplica = c, i
						}
					}
				}
				if bestReplica < 0 {
					for i, ok := range placed {
						if !ok {
							out.Unplaced = appendUnplaced(out.Unplaced, job.ID, i, i+1, s.resourceReason(&job, g.nodes))
						}
					}
					break
				}
				n := best.node
				placed[bestReplica] = true
				slots[bestReplica] = s.nodes[n].Name
				count[n]++
				s.load[n]++
				s.cpu[n] -= job.CPUMillis
				s.mem[n] -= job.MemoryMB
			}
			continue
		}
		for i := range job.Replicas {
			rk := replicaKey(jobKey(job.ID), i)
			best := cand{math.Inf(1), -1}
			minCount := int32(math.MaxInt32)
			for _, n := range g.nodes {
				if s.fits(n, &job) {
					minCount = min(minCount, count[n])
				}
			}
			for _, n := range g.nodes {
				if !s.fits(n, &job) || count[n] != minCount {
					continue
				}
				c := cand{float64(negLn(unit(pairHash(rk, s.key[n]))) * s.invW[n]), n}
				if better(c, best) {
					best = c
				}
			}
			if best.node < 0 {
				out.Unplaced = appendUnplaced(out.Unplaced, job.ID, i, job.Replicas, s.resourceReason(&job, g.nodes))
				break
			}
			n := best.node
			slots[i] = s.nodes[n].Name
			count[n]++
			s.load[n]++
			s.cpu[n] -= job.CPUMillis
			s.mem[n] -= job.MemoryMB
		}
	}
	return out
}

func TestAssignMatchesReferenceImplementation(t *testing.T) {
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 77))
		spec := clusterSpec{
			nodes:        5 + r.IntN(400),
			jobs:         1 + r.IntN(300),
			meanReplicas: 1 + r.IntN(8),
			constrained:  r.IntN(60),
			mixed:        seed%2 == 0,
			seed:         seed,
		}
		nodes, jobs := testCluster(spec)
		if seed%3 == 0 { // crowd the cluster so fit, spread levels and bounds bind
			for i := range nodes {
				nodes[i].CPUMillis /= 25
				nodes[i].MemoryMB /= 25
			}
		}
		if seed%5 == 0 && len(jobs) > 0 { // more replicas than nodes
			jobs[0].Replicas = 3*spec.nodes + 1
		}
		opts := Options{LoadFactor: []float64{0, 1, 1.1, 2}[seed%4]}
		got, want := Assign(nodes, jobs, opts), referenceAssign(nodes, jobs, opts)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d %+v: Assign differs from the reference (moved %d, unplaced %d vs %d)",
				seed, spec, Movement(want, got), len(got.Unplaced), len(want.Unplaced))
		}
	}
}
