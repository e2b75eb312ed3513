package placement

import (
	"fmt"
	"math/rand/v2"
)

// clusterSpec describes a synthetic cluster for tests and benchmarks.
type clusterSpec struct {
	nodes        int
	jobs         int
	meanReplicas int // replicas per job average exactly this (pairs of mean±d)
	constrained  int // percent of jobs with label constraints
	mixed        bool
	seed         uint64
}

// testNodes returns n nodes named node-0000..., spread over four zones, half
// with ssd disks. With mixed, capacities vary from 1x to 4x.
func testNodes(r *rand.Rand, n int, mixed bool) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		nodes[i] = testNode(r, fmt.Sprintf("node-%04d", i), i, mixed)
	}
	return nodes
}

func testNode(r *rand.Rand, name string, i int, mixed bool) Node {
	scale := int64(1)
	if mixed {
		scale = 1 + r.Int64N(4)
	}
	disk := "hdd"
	if r.IntN(2) == 0 {
		disk = "ssd"
	}
	return Node{
		Name:      name,
		CPUMillis: 32000 * scale,
		MemoryMB:  131072 * scale,
		Labels:    map[string]string{"zone": fmt.Sprintf("z%d", i%4), "disk": disk},
	}
}

// testJobs returns jobs whose replica counts average spec.meanReplicas
// exactly (so the total is jobs × mean), with small random sizes.
func testJobs(r *rand.Rand, spec clusterSpec) []Job {
	jobs := make([]Job, spec.jobs)
	d := 0
	for i := range jobs {
		reps := spec.meanReplicas
		if i%2 == 0 {
			d = r.IntN(spec.meanReplicas)
			reps += d
		} else {
			reps -= d
		}
		jobs[i] = Job{
			ID:        fmt.Sprintf("job-%05d", i),
			Replicas:  reps,
			CPUMillis: 50 * (1 + r.Int64N(7)),
			MemoryMB:  64 * (1 + r.Int64N(16)),
		}
		if r.IntN(100) < spec.constrained {
			jobs[i].Constraints = randomConstraints(r)
		}
	}
	if len(jobs)%2 == 1 {
		jobs[len(jobs)-1].Replicas = spec.meanReplicas
	}
	return jobs
}

func randomConstraints(r *rand.Rand) []Constraint {
	switch r.IntN(4) {
	case 0:
		return []Constraint{{Label: "zone", Op: OpEqual, Value: fmt.Sprintf("z%d", r.IntN(4))}}
	case 1:
		return []Constraint{{Label: "disk", Op: OpNotEqual, Value: "hdd"}}
	case 2:
		return []Constraint{{Label: "zone", Op: OpIn, Value: "z1, z3"}}
	default:
		return []Constraint{
			{Label: "zone", Op: OpNotEqual, Value: fmt.Sprintf("z%d", r.IntN(4))},
			{Label: "disk", Op: OpEqual, Value: "ssd"},
		}
	}
}

func testCluster(spec clusterSpec) ([]Node, []Job) {
	r := rand.New(rand.NewPCG(spec.seed, 0x5ba1))
	return testNodes(r, spec.nodes, spec.mixed), testJobs(r, spec)
}

func totalReplicas(jobs []Job) int {
	t := 0
	for _, j := range jobs {
		t += j.Replicas
	}
	return t
}

// loads counts the replicas placed on each node.
func loads(a Assignment) map[string]int {
	l := make(map[string]int)
	for _, slots := range a.Placements {
		for _, n := range slots {
			if n != "" {
				l[n]++
			}
		}
	}
	return l
}
