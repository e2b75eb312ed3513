// Package placement decides which node runs each replica of each job. It is a
// pure, deterministic function of the membership view and the job set: every
// node computes the same Assignment from the same inputs, on any machine, and
// then runs only its own share. It does no I/O and reads no clock or random
// source.
//
// Each replica ranks the nodes by weighted rendezvous (HRW) hashing, so a
// node joining or leaving moves close to the ideal 1/N of the replicas and
// the others keep their nodes. A replica goes to the best-ranked node that
// fits it, satisfies the job's constraints, stays under a load bound
// (consistent hashing with bounded loads) and does not yet hold a replica of
// the same job. Jobs are processed in ID order and replicas in index order
// (or, for a job with about as many replicas as nodes, its (replica, node)
// pairs in score order, see placeJobPairwise), so the greedy fill is the
// same whatever the order of the inputs.
//
// # Why one ranking per replica
//
// With a single ranking per job, replica i is the job's i-th pick, so when a
// node leaves every replica ranked below it shifts up one index: the set of
// nodes running the job changes by one, but on average half of its replica
// indices change node, several times the ideal 1/N movement. No relabelling can fix that without state: for two replicas
// over four nodes, the labels forced by single removals already contradict
// each other. Giving each replica its own ranking keys a replica's node to
// its index, so only the replicas on a leaving node move, plus the few that
// the spread rule or the load bound pushes along. The price is a scan of the
// nodes per replica instead of per job, which pick keeps cheap.
//
// # Determinism
//
// The ranking hashes and the arithmetic behind them are part of the cluster's
// wire contract: two agent versions that rank differently would disagree
// about who runs what. TestAssignMatchesGoldenFingerprint pins them.
package placement

// DefaultLoadFactor is the load factor c used when Options.LoadFactor is 0.
// A node may hold at most ceil(c × its fair share) replicas. Lower values
// balance load more tightly but make more replicas spill past their
// best-ranked node, so joins and leaves cascade further; 1.25 is the usual
// trade-off from "consistent hashing with bounded loads" (Mirrokni et al.).
const DefaultLoadFactor = 1.25

// Node is one member of the cluster as placement sees it.
type Node struct {
	// Name identifies the node and must be unique in the view. Nodes with an
	// empty name are ignored.
	Name string
	// CPUMillis and MemoryMB are the node's capacity. They also weight the
	// node in the ranking: a node twice as large attracts about twice the
	// replicas.
	CPUMillis int64
	MemoryMB  int64
	// Labels are matched by job constraints.
	Labels map[string]string
	// UsedCPUMillis and UsedMemoryMB declare usage by things outside the job
	// set being placed (system daemons, unmanaged containers). They reduce
	// the room left but not the node's ranking weight. Optional.
	UsedCPUMillis int64
	UsedMemoryMB  int64
}

// MaxReplicas is the most replicas Job.Validate accepts for one job. Every
// agent runs Assign on the same input, so an input that exhausted memory
// would stop the whole cluster at once; this keeps one job from doing so.
const MaxReplicas = 1 << 16

// Job is a set of identical replicas to place.
type Job struct {
	// ID identifies the job; with the replica index it seeds each replica's
	// node ranking.
	ID string
	// Replicas is the number of copies to run.
	Replicas int
	// CPUMillis and MemoryMB are what one replica declares it needs.
	CPUMillis int64
	MemoryMB  int64
	// Constraints must all hold for a node to run a replica.
	Constraints []Constraint
}

// Options tunes Assign. The zero value is the default.
type Options struct {
	// LoadFactor is c in the load bound ceil(c × fair share) per node.
	// 0 means DefaultLoadFactor; values below 1 are raised to 1, since a
	// bound below the fair share could not hold every replica. A very large
	// value (up to +Inf) turns the bound off.
	LoadFactor float64
}

func (o Options) loadFactor() float64 {
	c := o.LoadFactor
	switch {
	case c == 0 || c != c: // unset or NaN
		return DefaultLoadFactor
	case c < 1:
		return 1
	case c > 1e9: // keeps c × share finite; no bound is tighter than this
		return 1e9
	}
	return c
}

// Assignment is the result of Assign.
type Assignment struct {
	// Placements maps every job ID in the input to the node name of each
	// replica, by replica index; "" marks a replica that could not be placed.
	Placements map[string][]string
	// Unplaced lists every replica that could not be placed and why, sorted
	// by job ID and replica index.
	Unplaced []Unplaced
}

// Unplaced is a replica that fits nowhere, with a human-readable reason such
// as "insufficient memory: needs 512 MB, largest free 256 MB".
type Unplaced struct {
	Job     string
	Replica int
	Reason  string
}

// Replica names one replica of a job.
type Replica struct {
	Job   string
	Index int
}

// ByNode returns, for each node that was given replicas, those replicas
// sorted by job ID and index. It is what a node reads to learn its share.
func (a Assignment) ByNode() map[string][]Replica {
	out := make(map[string][]Replica)
	for _, job := range sortedKeys(a.Placements) {
		for i, node := range a.Placements[job] {
			if node != "" {
				out[node] = append(out[node], Replica{Job: job, Index: i})
			}
		}
	}
	return out
}

// Movement counts the replicas whose node differs between two assignments:
// those with the same job ID and index in both, where at least one side placed
// it and the nodes differ (a replica that became unplaced, or got placed,
// counts as moved). Replicas of jobs added, removed or scaled away are not
// movement.
func Movement(before, after Assignment) (moved int) {
	for job, b := range before.Placements {
		a, ok := after.Placements[job]
		if !ok {
			continue
		}
		for i := range min(len(a), len(b)) {
			if a[i] != b[i] {
				moved++
			}
		}
	}
	return moved
}
