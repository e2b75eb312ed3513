package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// without returns the view minus the named node.
func without(view []Node, name string) []Node {
	return slices.DeleteFunc(slices.Clone(view), func(n Node) bool { return n.Name == name })
}

// churn is what one membership change did to an assignment.
type churn struct {
	ideal int // replicas that had to move: those on the leaving node, or those the new node took
	moved int // replicas whose node changed
}

func (c churn) extra() int { return c.moved - c.ideal }

func leaveChurn(view []Node, jobs []Job, opts Options, before Assignment, leaving string) churn {
	after := Assign(without(view, leaving), jobs, opts)
	return churn{ideal: loads(before)[leaving], moved: Movement(before, after)}
}

func joinChurn(view []Node, jobs []Job, opts Options, before Assignment, joining Node) churn {
	after := Assign(append(slices.Clone(view), joining), jobs, opts)
	return churn{ideal: loads(after)[joining.Name], moved: Movement(before, after)}
}

func TestLeaveMovesOnlyItsReplicas(t *testing.T) {
	for _, spec := range []clusterSpec{
		{nodes: 100, jobs: 2000, meanReplicas: 5, constrained: 20, seed: 1},
		{nodes: 100, jobs: 2000, meanReplicas: 5, constrained: 20, mixed: true, seed: 2},
		{nodes: 300, jobs: 3000, meanReplicas: 10, constrained: 0, seed: 3},
	} {
		t.Run(fmt.Sprintf("%dnodes/mixed=%v", spec.nodes, spec.mixed), func(t *testing.T) {
			view, jobs := testCluster(spec)
			before := Assign(view, jobs, Options{})
			var ideal, extra int
			for i := range 10 {
				leaving := view[(i*37+11)%len(view)].Name
				c := leaveChurn(view, jobs, Options{}, before, leaving)
				t.Logf("%s left: %d replicas on it, %d moved, %d extra", leaving, c.ideal, c.moved, c.extra())
				if c.extra() < 0 {
					t.Fatalf("%s left: %d moved but %d were on it", leaving, c.moved, c.ideal)
				}
				ideal += c.ideal
				extra += c.extra()
			}
			if extra*10 > ideal {
				t.Errorf("cascades moved %d replicas beyond the %d on leaving nodes (> 10%%)", extra, ideal)
			}
		})
	}
}

func TestJoinMovesAboutOneNthToTheNewNode(t *testing.T) {
	for _, spec := range []clusterSpec{
		{nodes: 100, jobs: 2000, meanReplicas: 5, constrained: 20, seed: 1},
		{nodes: 100, jobs: 2000, meanReplicas: 5, constrained: 20, mixed: true, seed: 2},
		{nodes: 300, jobs: 3000, meanReplicas: 10, constrained: 0, seed: 3},
	} {
		t.Run(fmt.Sprintf("%dnodes/mixed=%v", spec.nodes, spec.mixed), func(t *testing.T) {
			view, jobs := testCluster(spec)
			before := Assign(view, jobs, Options{})
			var total float64
			for _, n := range view {
				total += weight(n)
			}
			r := rand.New(rand.NewPCG(spec.seed, 99))
			var took, extra int
			var fair float64
			for i := range 10 {
				joining := testNode(r, fmt.Sprintf("joiner-%d", i), i, spec.mixed)
				// The ideal share is 1/N of the replicas for equal nodes,
				// w/W in general.
				share := float64(totalReplicas(jobs)) * weight(joining) / (total + weight(joining))
				c := joinChurn(view, jobs, Options{}, before, joining)
				t.Logf("%s joined: took %d (ideal %.0f), %d moved, %d extra", joining.Name, c.ideal, share, c.moved, c.extra())
				if c.extra() < 0 {
					t.Fatalf("%s joined: took %d but only %d moved", joining.Name, c.ideal, c.moved)
				}
				took += c.ideal
				fair += share
				extra += c.extra()
			}
			if got := float64(took) / fair; got < 0.85 || got > 1.15 {
				t.Errorf("new nodes took %.2f× their fair share (w/W of the replicas) on average, want within 15%%", got)
			}
			if extra*10 > took {
				t.Errorf("cascades moved %d replicas beyond the %d the new nodes took (> 10%%)", extra, took)
			}
		})
	}
}

// With room everywhere and no effective load bound, the only cascade left is
// the spread rule: the replica displaced from the leaving node may take a
// node that a later replica of its own job held. So no job without a replica
// on the leaving node may change at all.
func TestLeaveTouchesOnlyJobsThatHadAReplicaThere(t *testing.T) {
	view, jobs := testCluster(clusterSpec{nodes: 80, jobs: 800, meanReplicas: 6, constrained: 20, seed: 5})
	for i := range view {
		view[i].CPUMillis *= 100
		view[i].MemoryMB *= 100
	}
	opts := Options{LoadFactor: 1000}
	before := Assign(view, jobs, opts)
	for i := range 5 {
		leaving := view[i*13].Name
		after := Assign(without(view, leaving), jobs, opts)
		for job, slots := range before.Placements {
			if slices.Contains(slots, leaving) {
				continue
			}
			if !slices.Equal(slots, after.Placements[job]) {
				t.Errorf("%s left: job %s had no replica there but changed from %v to %v",
					leaving, job, slots, after.Placements[job])
			}
		}
	}
}

func TestScalingAJobKeepsItsOtherReplicasInPlace(t *testing.T) {
	view, jobs := testCluster(clusterSpec{nodes: 60, jobs: 300, meanReplicas: 4, seed: 6})
	before := Assign(view, jobs, Options{})
	j := slices.IndexFunc(jobs, func(j Job) bool { return j.Replicas >= 4 })
	for _, delta := range []int{+3, -2} {
		scaled := slices.Clone(jobs)
		scaled[j].Replicas += delta
		after := Assign(view, scaled, Options{})
		id, kept := jobs[j].ID, min(jobs[j].Replicas, scaled[j].Replicas)
		if got, want := after.Placements[id][:kept], before.Placements[id][:kept]; !slices.Equal(got, want) {
			t.Errorf("scaling %s by %+d moved its existing replicas: %v -> %v", id, delta, want, got)
		}
		if moved := Movement(before, after); moved > totalReplicas(jobs)/100 {
			t.Errorf("scaling %s by %+d moved %d replicas (> 1%%)", id, delta, moved)
		}
	}
}

func TestMovementCountsReplicasWhoseNodeChanged(t *testing.T) {
	a := Assignment{Placements: map[string][]string{
		"web": {"n1", "n2", "n3"},
		"db":  {"n1", ""},
		"old": {"n4"},
	}}
	tests := []struct {
		name  string
		after map[string][]string
		want  int
	}{
		{"same", map[string][]string{"web": {"n1", "n2", "n3"}, "db": {"n1", ""}, "old": {"n4"}}, 0},
		{"one moved", map[string][]string{"web": {"n1", "n5", "n3"}, "db": {"n1", ""}, "old": {"n4"}}, 1},
		{"swap counts twice", map[string][]string{"web": {"n2", "n1", "n3"}, "db": {"n1", ""}, "old": {"n4"}}, 2},
		{"placed and unplaced count", map[string][]string{"web": {"n1", "n2", ""}, "db": {"n1", "n2"}, "old": {"n4"}}, 2},
		{"removed job and scale-down are not movement", map[string][]string{"web": {"n1"}, "db": {"n1", ""}}, 0},
		{"new job and scale-up are not movement", map[string][]string{"web": {"n1", "n2", "n3", "n9"}, "db": {"n1", ""}, "old": {"n4"}, "new": {"n1"}}, 0},
	}
	for _, tt := range tests {
		if got := Movement(a, Assignment{Placements: tt.after}); got != tt.want {
			t.Errorf("%s: Movement = %d, want %d", tt.name, got, tt.want)
		}
	}
}
