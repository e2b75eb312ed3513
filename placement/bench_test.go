package placement

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// BenchmarkAssign10kJobs100kReplicas1000Nodes times one full placement of
// 10,000 jobs (1 to 19 replicas each, 100,000 in all, 10% with label
// constraints) on 1,000 equal nodes (32 cores, 128 GiB; about 60% of cpu
// ends up requested).
func BenchmarkAssign10kJobs100kReplicas1000Nodes(b *testing.B) {
	benchmarkAssign(b, clusterSpec{nodes: 1000, jobs: 10000, meanReplicas: 10, constrained: 10, seed: 1})
}

// BenchmarkAssign10kJobs100kReplicas1000MixedNodes is the same with node
// sizes from 1x to 4x, so ranking weights differ.
func BenchmarkAssign10kJobs100kReplicas1000MixedNodes(b *testing.B) {
	benchmarkAssign(b, clusterSpec{nodes: 1000, jobs: 10000, meanReplicas: 10, constrained: 10, mixed: true, seed: 1})
}

func benchmarkAssign(b *testing.B, spec clusterSpec) {
	view, jobs := testCluster(spec)
	b.ReportAllocs()
	var a Assignment
	for b.Loop() {
		a = Assign(view, jobs, Options{})
	}
	b.ReportMetric(float64(len(a.Unplaced)), "unplaced")
}

// BenchmarkMovement measures, rather than times, what a membership change
// costs: at 100 replicas per node on average, five nodes leave and five
// join (one at a time, each against the same starting assignment).
// Reported:
//
//	leave/ideal  replicas moved when a node leaves, over replicas/N
//	leave-extra  replicas moved beyond those that were on the leaving node,
//	             over those (cascades from the spread rule and load bound)
//	join/ideal   replicas moved when a node joins, over replicas/(N+1)
//	join-extra   replicas moved beyond those the new node took, over those
//	max/avg      the most loaded node's replica count over the average
//	max/bound    the highest load over its node's load bound (never > 1)
//
// Run it once: go test ./placement -run '^$' -bench Movement -benchtime 1x
func BenchmarkMovement(b *testing.B) {
	for _, constrained := range []int{0, 10} {
		for _, n := range []int{100, 500, 1000} {
			b.Run(fmt.Sprintf("constrained=%d%%/nodes=%d", constrained, n), func(b *testing.B) {
				benchmarkMovement(b, clusterSpec{nodes: n, jobs: 10 * n, meanReplicas: 10, constrained: constrained, seed: 1})
			})
		}
	}
}

func benchmarkMovement(b *testing.B, spec clusterSpec) {
	n := spec.nodes
	view, jobs := testCluster(spec)
	total := float64(totalReplicas(jobs))
	for b.Loop() {
		before := Assign(view, jobs, Options{})
		l := loads(before)
		maxLoad := slices.Max(slices.Collect(maps.Values(l)))
		r := rand.New(rand.NewPCG(7, 7))
		var leave, join churn
		const trials = 5
		for i := range trials {
			c := leaveChurn(view, jobs, Options{}, before, view[i*n/trials+3].Name)
			leave.ideal += c.ideal
			leave.moved += c.moved
			c = joinChurn(view, jobs, Options{}, before, testNode(r, fmt.Sprintf("joiner-%d", i), i, false))
			join.ideal += c.ideal
			join.moved += c.moved
		}
		b.ReportMetric(float64(leave.moved)/trials/(total/float64(n)), "leave/ideal")
		b.ReportMetric(float64(leave.extra())/float64(leave.ideal), "leave-extra")
		b.ReportMetric(float64(join.moved)/trials/(total/float64(n+1)), "join/ideal")
		b.ReportMetric(float64(join.extra())/float64(join.ideal), "join-extra")
		b.ReportMetric(float64(maxLoad)/(total/float64(n)), "max/avg")
		b.ReportMetric(maxOverBound(view, jobs, l), "max/bound")
		b.ReportMetric(0, "ns/op") // a measurement, not a timing
	}
}

// maxOverBound is the highest ratio of a node's load to its load bound.
func maxOverBound(view []Node, jobs []Job, loads map[string]int) float64 {
	s := newSolver(view, Options{}.loadFactor())
	s.planJobs(jobs)
	s.computeBounds()
	worst := 0.0
	for i, n := range s.nodes {
		worst = max(worst, float64(loads[n.Name])/float64(s.bound[i]))
	}
	return worst
}
