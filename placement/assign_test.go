package placement

import (
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// specs is a spread of clusters for the property tests: roomy and crowded,
// equal and mixed nodes, with and without constraints.
var specs = []clusterSpec{
	{nodes: 50, jobs: 400, meanReplicas: 4, constrained: 30, seed: 11},
	{nodes: 50, jobs: 400, meanReplicas: 4, constrained: 30, mixed: true, seed: 12},
	{nodes: 7, jobs: 100, meanReplicas: 5, constrained: 50, seed: 13},
	{nodes: 200, jobs: 1500, meanReplicas: 8, constrained: 10, mixed: true, seed: 14},
}

// crowded shrinks the nodes so that fit, spread levels and bounds bind.
func crowded(view []Node) []Node {
	out := slices.Clone(view)
	for i := range out {
		out[i].CPUMillis /= 30
		out[i].MemoryMB /= 30
		out[i].UsedCPUMillis = out[i].CPUMillis / 10
	}
	return out
}

// eachCluster runs f on every spec, roomy and crowded.
func eachCluster(t *testing.T, f func(t *testing.T, view []Node, jobs []Job)) {
	for _, spec := range specs {
		view, jobs := testCluster(spec)
		t.Run(fmt.Sprintf("seed%d", spec.seed), func(t *testing.T) { f(t, view, jobs) })
		t.Run(fmt.Sprintf("seed%d/crowded", spec.seed), func(t *testing.T) { f(t, crowded(view), jobs) })
	}
}

func nodeMap(view []Node) map[string]Node {
	m := make(map[string]Node, len(view))
	for _, n := range view {
		m[n.Name] = n
	}
	return m
}

func TestAssignIgnoresInputOrder(t *testing.T) {
	eachCluster(t, func(t *testing.T, view []Node, jobs []Job) {
		want := Assign(view, jobs, Options{})
		r := rand.New(rand.NewPCG(3, 4))
		for range 3 {
			v, j := slices.Clone(view), slices.Clone(jobs)
			r.Shuffle(len(v), func(a, b int) { v[a], v[b] = v[b], v[a] })
			r.Shuffle(len(j), func(a, b int) { j[a], j[b] = j[b], j[a] })
			for i := range j {
				c := slices.Clone(j[i].Constraints)
				r.Shuffle(len(c), func(a, b int) { c[a], c[b] = c[b], c[a] })
				j[i].Constraints = c
			}
			if got := Assign(v, j, Options{}); !reflect.DeepEqual(got, want) {
				t.Fatalf("shuffled input changed the assignment: %d replicas moved", Movement(want, got))
			}
		}
	})
}

func TestAssignDoesNotMutateInputs(t *testing.T) {
	eachCluster(t, func(t *testing.T, view []Node, jobs []Job) {
		v, j := deepCopyNodes(view), deepCopyJobs(jobs)
		Assign(view, jobs, Options{})
		if !reflect.DeepEqual(v, view) || !reflect.DeepEqual(j, jobs) {
			t.Fatal("Assign modified its input")
		}
	})
}

func deepCopyNodes(view []Node) []Node {
	out := slices.Clone(view)
	for i := range out {
		out[i].Labels = maps.Clone(out[i].Labels)
	}
	return out
}

func deepCopyJobs(jobs []Job) []Job {
	out := slices.Clone(jobs)
	for i := range out {
		out[i].Constraints = slices.Clone(out[i].Constraints)
	}
	return out
}

func TestAssignNeverOvercommitsNodes(t *testing.T) {
	eachCluster(t, func(t *testing.T, view []Node, jobs []Job) {
		a := Assign(view, jobs, Options{})
		nodes := nodeMap(view)
		cpu, mem := map[string]int64{}, map[string]int64{}
		for _, j := range jobs {
			for _, n := range a.Placements[j.ID] {
				if n != "" {
					cpu[n] += j.CPUMillis
					mem[n] += j.MemoryMB
				}
			}
		}
		for name, n := range nodes {
			if cpu[name]+n.UsedCPUMillis > n.CPUMillis || mem[name]+n.UsedMemoryMB > n.MemoryMB {
				t.Errorf("%s over capacity: cpu %d+%d/%d, memory %d+%d/%d", name,
					cpu[name], n.UsedCPUMillis, n.CPUMillis, mem[name], n.UsedMemoryMB, n.MemoryMB)
			}
		}
	})
}

func TestAssignRespectsConstraints(t *testing.T) {
	eachCluster(t, func(t *testing.T, view []Node, jobs []Job) {
		a := Assign(view, jobs, Options{})
		nodes := nodeMap(view)
		for _, j := range jobs {
			for i, n := range a.Placements[j.ID] {
				for _, c := range j.Constraints {
					if n != "" && !c.Matches(nodes[n].Labels) {
						t.Errorf("%s[%d] on %s (labels %v) breaks %s", j.ID, i, n, nodes[n].Labels, c)
					}
				}
			}
		}
	})
}

func TestEveryReplicaIsPlacedOrReportedWithAReason(t *testing.T) {
	eachCluster(t, func(t *testing.T, view []Node, jobs []Job) {
		a := Assign(view, jobs, Options{})
		reported := map[Replica]int{}
		for _, u := range a.Unplaced {
			if u.Reason == "" {
				t.Errorf("%s[%d] unplaced without a reason", u.Job, u.Replica)
			}
			reported[Replica{u.Job, u.Replica}]++
		}
		if len(a.Placements) != len(jobs) {
			t.Errorf("%d jobs in Placements, want %d", len(a.Placements), len(jobs))
		}
		for _, j := range jobs {
			slots := a.Placements[j.ID]
			if len(slots) != j.Replicas {
				t.Fatalf("%s: %d slots, want %d", j.ID, len(slots), j.Replicas)
			}
			for i, n := range slots {
				want := 0
				if n == "" {
					want = 1
				}
				if got := reported[Replica{j.ID, i}]; got != want {
					t.Errorf("%s[%d] on %q reported unplaced %d times, want %d", j.ID, i, n, got, want)
				}
			}
		}
		if !slices.IsSortedFunc(a.Unplaced, func(x, y Unplaced) int {
			return cmpReplica(Replica{x.Job, x.Replica}, Replica{y.Job, y.Replica})
		}) {
			t.Error("Unplaced not sorted by job and replica")
		}
	})
}

func cmpReplica(a, b Replica) int {
	if c := strings.Compare(a.Job, b.Job); c != 0 {
		return c
	}
	return a.Index - b.Index
}

func TestReplicasOfAJobGoToDistinctNodes(t *testing.T) {
	// Roomy clusters: every job has at least as many eligible nodes as
	// replicas, so no node may hold two replicas of one job.
	for _, spec := range specs[:2] {
		view, jobs := testCluster(spec)
		a := Assign(view, jobs, Options{})
		if len(a.Unplaced) > 0 {
			t.Fatalf("seed %d: %d unplaced in a roomy cluster: %+v", spec.seed, len(a.Unplaced), a.Unplaced[0])
		}
		for _, j := range jobs {
			seen := map[string]bool{}
			for i, n := range a.Placements[j.ID] {
				if seen[n] {
					t.Errorf("seed %d: %s[%d] doubles up on %s", spec.seed, j.ID, i, n)
				}
				seen[n] = true
			}
		}
	}
}

func TestReplicasDoubleUpOnlyAfterEveryEligibleNodeHasOne(t *testing.T) {
	view := []Node{
		{Name: "a", CPUMillis: 4000, MemoryMB: 4096, Labels: map[string]string{"zone": "1"}},
		{Name: "b", CPUMillis: 4000, MemoryMB: 4096, Labels: map[string]string{"zone": "1"}},
		{Name: "c", CPUMillis: 4000, MemoryMB: 4096, Labels: map[string]string{"zone": "1"}},
		{Name: "d", CPUMillis: 4000, MemoryMB: 4096, Labels: map[string]string{"zone": "2"}},
	}
	job := Job{ID: "web", Replicas: 8, CPUMillis: 100, MemoryMB: 64,
		Constraints: []Constraint{{"zone", OpEqual, "1"}}}
	a := Assign(view, []Job{job}, Options{})
	count := map[string]int{}
	for _, n := range a.Placements["web"] {
		count[n]++
	}
	if count["d"] != 0 || len(a.Unplaced) != 0 {
		t.Fatalf("placements %v, unplaced %v", a.Placements["web"], a.Unplaced)
	}
	// 8 replicas on 3 nodes: 3, 3, 2 in some order.
	if c := []int{count["a"], count["b"], count["c"]}; slices.Max(c)-slices.Min(c) > 1 {
		t.Errorf("uneven spread %v from %v", c, a.Placements["web"])
	}
	// The first three replicas take one node each.
	if first := a.Placements["web"][:3]; len(slices.Compact(slices.Sorted(slices.Values(first)))) != 3 {
		t.Errorf("first three replicas %v share a node", first)
	}
}

func TestLoadStaysWithinTheBound(t *testing.T) {
	// Equal nodes, no constraints: the bound is ceil(c × replicas/nodes).
	spec := clusterSpec{nodes: 100, jobs: 2000, meanReplicas: 5, seed: 21}
	view, jobs := testCluster(spec)
	for _, c := range []float64{1, 1.1, 1.25, 2} {
		a := Assign(view, jobs, Options{LoadFactor: c})
		if len(a.Unplaced) > 0 {
			t.Fatalf("c=%v: %d unplaced: %+v", c, len(a.Unplaced), a.Unplaced[0])
		}
		bound := int(math.Ceil(c * float64(totalReplicas(jobs)) / float64(spec.nodes)))
		maxLoad := slices.Max(slices.Collect(maps.Values(loads(a))))
		if maxLoad > bound {
			t.Errorf("c=%v: a node holds %d replicas, bound %d", c, maxLoad, bound)
		}
		t.Logf("c=%v: max load %d, average %d, bound %d", c, maxLoad, totalReplicas(jobs)/spec.nodes, bound)
	}
}

func TestHeavierNodesGetProportionallyMoreReplicas(t *testing.T) {
	var view []Node
	for i := range 40 {
		scale := int64(1 + 3*(i%2)) // half 1x, half 4x
		view = append(view, Node{Name: fmt.Sprintf("n%02d", i), CPUMillis: 64000 * scale, MemoryMB: 262144 * scale})
	}
	jobs := make([]Job, 4000)
	for i := range jobs {
		jobs[i] = Job{ID: fmt.Sprintf("j%04d", i), Replicas: 2, CPUMillis: 10, MemoryMB: 10}
	}
	l := loads(Assign(view, jobs, Options{}))
	var small, big int
	for i, n := range view {
		if i%2 == 0 {
			small += l[n.Name]
		} else {
			big += l[n.Name]
		}
	}
	// The spread rule (two replicas never share a node) pulls a little
	// towards the small nodes; the ratio stays near 4.
	if ratio := float64(big) / float64(small); ratio < 3.4 || ratio > 4.3 {
		t.Errorf("4x nodes got %.2f× the replicas of 1x nodes (%d vs %d), want about 4", ratio, big, small)
	}
}

func TestUnplacedReasons(t *testing.T) {
	node := func(name string, cpu, mem int64, labels ...string) Node {
		l := map[string]string{}
		for i := 0; i+1 < len(labels); i += 2 {
			l[labels[i]] = labels[i+1]
		}
		return Node{Name: name, CPUMillis: cpu, MemoryMB: mem, Labels: l}
	}
	tests := []struct {
		name string
		view []Node
		jobs []Job
		opts Options
		want string // reason of the last job's first unplaced replica
	}{
		{"no nodes", nil, []Job{{ID: "j", Replicas: 1}}, Options{}, "no nodes in view"},
		{"constraint nobody meets",
			[]Node{node("a", 1000, 1000, "zone", "a")},
			[]Job{{ID: "j", Replicas: 1, Constraints: []Constraint{{"zone", OpEqual, "b"}}}}, Options{},
			"no node satisfies constraint zone=b"},
		{"constraints nobody meets together",
			[]Node{node("a", 1000, 1000, "zone", "a"), node("b", 1000, 1000, "zone", "b", "disk", "ssd")},
			[]Job{{ID: "j", Replicas: 1, Constraints: []Constraint{{"zone", OpIn, "a"}, {"disk", OpEqual, "ssd"}}}}, Options{},
			"no node satisfies all of the constraints zone in a, disk=ssd"},
		{"memory",
			[]Node{node("a", 4000, 256), node("b", 4000, 1024)},
			[]Job{{ID: "j", Replicas: 1, CPUMillis: 100, MemoryMB: 2048}}, Options{},
			"insufficient memory: needs 2048 MB, largest free 1024 MB"},
		{"memory after declared usage",
			[]Node{{Name: "a", CPUMillis: 4000, MemoryMB: 1024, UsedMemoryMB: 768}},
			[]Job{{ID: "j", Replicas: 1, MemoryMB: 512}}, Options{},
			"insufficient memory: needs 512 MB, largest free 256 MB"},
		{"cpu",
			[]Node{node("a", 500, 4096)},
			[]Job{{ID: "j", Replicas: 1, CPUMillis: 1000, MemoryMB: 10}}, Options{},
			"insufficient cpu: needs 1000 millis, largest free 500 millis"},
		{"no node has both",
			[]Node{node("a", 4000, 100), node("b", 100, 4000)},
			[]Job{{ID: "j", Replicas: 1, CPUMillis: 1000, MemoryMB: 1000}}, Options{},
			"insufficient resources: no node has both 1000 cpu millis and 1000 MB free"},
		{"filled up by earlier replicas",
			[]Node{node("a", 1000, 1000)},
			[]Job{{ID: "j", Replicas: 3, CPUMillis: 400, MemoryMB: 10}}, Options{},
			"insufficient cpu: needs 400 millis, largest free 200 millis"},
		{
			// Jobs a1 and a2 need memory only node a has, so both land there
			// although their fair share is split between a and b. Then z,
			// pinned to a, finds a at its bound of ceil(1 × 2) = 2.
			"load bound",
			[]Node{node("a", 1000, 1000, "zone", "a"), {Name: "b", CPUMillis: 1000, MemoryMB: 1000, UsedMemoryMB: 900}},
			[]Job{
				{ID: "a1", Replicas: 1, MemoryMB: 200},
				{ID: "a2", Replicas: 1, MemoryMB: 200},
				{ID: "z", Replicas: 1, MemoryMB: 10, Constraints: []Constraint{{"zone", OpEqual, "a"}}},
			},
			Options{LoadFactor: 1},
			"load bound reached on all eligible nodes (load factor 1)"},
		{"invalid job",
			[]Node{node("a", 1000, 1000)},
			[]Job{{ID: "j", Replicas: 1, Constraints: []Constraint{{"zone", "~", "a"}}}}, Options{},
			`invalid job: j: constraint 0: invalid constraint: zone: unknown operator "~" (want "=", "!=" or "in")`},
		{"conflicting definitions",
			[]Node{node("a", 1000, 1000)},
			[]Job{{ID: "j", Replicas: 1}, {ID: "j", Replicas: 2}}, Options{},
			`conflicting definitions for job ID "j"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Assign(tt.view, tt.jobs, tt.opts)
			last := tt.jobs[len(tt.jobs)-1].ID
			i := slices.IndexFunc(a.Unplaced, func(u Unplaced) bool { return u.Job == last })
			if i < 0 {
				t.Fatalf("%s not reported unplaced; placements %v", last, a.Placements)
			}
			if got := a.Unplaced[i].Reason; got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDuplicateJobDefinitions(t *testing.T) {
	view := []Node{{Name: "a", CPUMillis: 1000, MemoryMB: 1000}, {Name: "b", CPUMillis: 1000, MemoryMB: 1000}}
	same := Assign(view, []Job{{ID: "j", Replicas: 2}, {ID: "j", Replicas: 2}}, Options{})
	if len(same.Unplaced) != 0 || slices.Contains(same.Placements["j"], "") {
		t.Errorf("identical duplicates: %v, unplaced %v; want placed once", same.Placements, same.Unplaced)
	}
	conflict := Assign(view, []Job{{ID: "j", Replicas: 1}, {ID: "j", Replicas: 2}}, Options{})
	if len(conflict.Unplaced) != 2 || !slices.Equal(conflict.Placements["j"], []string{"", ""}) {
		t.Errorf("conflicting duplicates: %v, unplaced %v; want both replicas unplaced", conflict.Placements, conflict.Unplaced)
	}
}

func TestDuplicateNodeNamesResolveTheSameWhateverTheOrder(t *testing.T) {
	small := Node{Name: "a", CPUMillis: 100, MemoryMB: 100}
	big := Node{Name: "a", CPUMillis: 4000, MemoryMB: 4000}
	jobs := []Job{{ID: "j", Replicas: 1, CPUMillis: 1000}}
	x := Assign([]Node{small, big}, jobs, Options{})
	y := Assign([]Node{big, small}, jobs, Options{})
	if !reflect.DeepEqual(x, y) {
		t.Errorf("order of duplicate nodes matters: %+v vs %+v", x, y)
	}
}

func TestOutOfRangeReplicaCountsAreReportedOnce(t *testing.T) {
	view := []Node{{Name: "a", CPUMillis: 1000, MemoryMB: 1000}}
	for _, n := range []int{-1, MaxReplicas + 1, 1 << 40} {
		a := Assign(view, []Job{{ID: "j", Replicas: n}, {ID: "k", Replicas: 1}}, Options{})
		if len(a.Placements["j"]) != 0 || len(a.Unplaced) != 1 || a.Unplaced[0].Job != "j" || a.Placements["k"][0] != "a" {
			t.Errorf("replicas %d: %d slots for j, %d unplaced, k on %v; want 0, 1 (j), a",
				n, len(a.Placements["j"]), len(a.Unplaced), a.Placements["k"])
		}
	}
}

func TestAnInfiniteLoadFactorTurnsTheBoundOff(t *testing.T) {
	view, jobs := testCluster(specs[0])
	a := Assign(view, jobs, Options{LoadFactor: math.Inf(1)})
	b := Assign(view, jobs, Options{LoadFactor: 1e9})
	if !reflect.DeepEqual(a, b) || len(a.Unplaced) != 0 {
		t.Errorf("+Inf and 1e9 differ (%d moved) or leave replicas unplaced (%d)", Movement(a, b), len(a.Unplaced))
	}
}

func TestNodesWithoutNamesAreIgnored(t *testing.T) {
	a := Assign([]Node{{CPUMillis: 1000, MemoryMB: 1000}}, []Job{{ID: "j", Replicas: 1}}, Options{})
	if len(a.Unplaced) != 1 || a.Unplaced[0].Reason != "no nodes in view" {
		t.Errorf("got %+v", a)
	}
}

func TestZeroReplicasAndEmptyInputs(t *testing.T) {
	if a := Assign(nil, nil, Options{}); len(a.Placements) != 0 || len(a.Unplaced) != 0 {
		t.Errorf("empty input gave %+v", a)
	}
	a := Assign([]Node{{Name: "a", CPUMillis: 1, MemoryMB: 1}}, []Job{{ID: "j"}}, Options{})
	if slots, ok := a.Placements["j"]; !ok || len(slots) != 0 || len(a.Unplaced) != 0 {
		t.Errorf("zero-replica job gave %+v", a)
	}
}

func TestLoadFactorDefaults(t *testing.T) {
	for in, want := range map[float64]float64{0: DefaultLoadFactor, math.NaN(): DefaultLoadFactor, -1: 1, 0.5: 1, 1: 1, 1.5: 1.5, math.Inf(1): 1e9} {
		if got := (Options{LoadFactor: in}).loadFactor(); got != want {
			t.Errorf("LoadFactor %v -> %v, want %v", in, got, want)
		}
	}
}

func TestByNodeListsEachPlacedReplicaOnce(t *testing.T) {
	view, jobs := testCluster(specs[0])
	a := Assign(crowded(view), jobs, Options{})
	byNode := a.ByNode()
	n := 0
	for node, reps := range byNode {
		if !slices.IsSortedFunc(reps, cmpReplica) {
			t.Errorf("%s: replicas not sorted", node)
		}
		for _, r := range reps {
			if a.Placements[r.Job][r.Index] != node {
				t.Errorf("ByNode puts %v on %s, Placements on %s", r, node, a.Placements[r.Job][r.Index])
			}
		}
		n += len(reps)
	}
	if want := totalReplicas(jobs) - len(a.Unplaced); n != want {
		t.Errorf("ByNode lists %d replicas, want %d placed", n, want)
	}
}

// goldenInput is built by arithmetic alone, so it is the same on every
// machine and Go version.
func goldenInput() ([]Node, []Job) {
	var view []Node
	for i := range 40 {
		labels := map[string]string{"zone": fmt.Sprintf("z%d", i%3)}
		if i%2 == 0 {
			labels["disk"] = "ssd"
		}
		view = append(view, Node{
			Name:      fmt.Sprintf("n%02d", i),
			CPUMillis: 16000 * int64(1+i%3),
			MemoryMB:  32768 * int64(1+i%4),
			Labels:    labels,
		})
	}
	var jobs []Job
	for i := range 300 {
		j := Job{
			ID:        fmt.Sprintf("j%03d", i),
			Replicas:  1 + i%7,
			CPUMillis: 100 * int64(1+i%5),
			MemoryMB:  256 * int64(1+i%6),
		}
		switch i % 10 {
		case 0:
			j.Constraints = []Constraint{{"zone", OpEqual, "z1"}}
		case 1:
			j.Constraints = []Constraint{{"disk", OpNotEqual, "ssd"}}
		case 2:
			j.Constraints = []Constraint{{"zone", OpIn, "z0,z2"}}
		}
		jobs = append(jobs, j)
	}
	jobs = append(jobs,
		Job{ID: "huge", Replicas: 2, MemoryMB: 1 << 20},
		Job{ID: "nowhere", Replicas: 1, Constraints: []Constraint{{"zone", OpEqual, "z9"}}})
	return view, jobs
}

func fingerprint(a Assignment) (uint64, string) {
	var b strings.Builder
	for _, job := range slices.Sorted(maps.Keys(a.Placements)) {
		for i, n := range a.Placements[job] {
			fmt.Fprintf(&b, "%s/%d=%s\n", job, i, n)
		}
	}
	for _, u := range a.Unplaced {
		fmt.Fprintf(&b, "unplaced %s/%d: %s\n", u.Job, u.Replica, u.Reason)
	}
	h := fnv.New64a()
	h.Write([]byte(b.String()))
	return h.Sum64(), b.String()
}

// TestAssignMatchesGoldenFingerprint pins the whole of Assign's output for a
// fixed input. Every agent of a cluster must agree on it; if it changes, a
// mixed-version cluster would place differently on old and new agents.
func TestAssignMatchesGoldenFingerprint(t *testing.T) {
	view, jobs := goldenInput()
	a := Assign(view, jobs, Options{})
	const want = 0x2ab60cd95c87ddda
	if got, text := fingerprint(a); got != want {
		t.Errorf("fingerprint %#x, want %#x; assignment:\n%.600s...", got, uint64(want), text)
	}
	if a.Placements["j000"][0] == "" || len(a.Unplaced) != 3 {
		t.Errorf("golden input: j000 on %v, %d unplaced, want placed and 3 (huge ×2, nowhere)",
			a.Placements["j000"], len(a.Unplaced))
	}
}
