package placement

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// Assign places every replica of jobs on the nodes of view and reports the
// replicas that fit nowhere. It is deterministic: the result depends only on
// the contents of view and jobs, not on their order, and is the same on every
// machine. It does not modify its inputs.
//
// The rules, applied to jobs in ID order and to each job's replicas in index
// order:
//
//  1. Rank: each replica orders the nodes by weighted rendezvous hashing:
//     score(replica, node) = -ln(u)/w, lowest first, where u in (0, 1] is a
//     hash of the job ID, the replica index and the node name, and w is the
//     node's capacity weight (sqrt(cpu × memory)). This is the same order as
//     the textbook weighted HRW score -w/ln(u), highest first. Ties, which
//     need a 2^-53 hash coincidence, go to the node whose name sorts first.
//     Each replica has its own ranking, rather than one per job, so that
//     replica indices keep their nodes when others come and go (see the
//     package documentation).
//  2. Eligible: a node is eligible for a replica if it satisfies every
//     constraint, has the replica's cpu and memory free (capacity minus
//     declared usage minus replicas already placed), and holds fewer
//     replicas than its load bound.
//  3. Spread: the replica goes to the eligible node that it ranks best among
//     those holding the fewest replicas of this job, so a job gets distinct nodes while enough
//     eligible nodes exist and doubles up only once every eligible node has
//     one (triples only once every one has two, and so on).
//  4. Load bound: a node may hold at most ceil(c × share) replicas, where c
//     is Options.LoadFactor and share is the node's fair share of all
//     replicas: the sum, over jobs whose constraints it satisfies, of
//     replicas × w / W, with W the total weight of the nodes satisfying that
//     job's constraints. With identical nodes and no constraints this is the
//     classic ceil(c × replicas / nodes). The bound depends only on the view
//     and the job set, not on the order of the fill, and it moves little
//     when one node joins or leaves; resources in use do not enter it.
//  5. A replica with no eligible node is reported in Unplaced with the reason;
//     later replicas of the same job then fail for the same reason.
//
// Jobs that fail Job.Validate are not placed; their replicas are reported
// with the validation error (once, as replica 0, if the replica count itself
// is out of range). Node names must be unique: if the view repeats a
// name, one entry is chosen by a fixed rule (smallest capacity, then usage,
// then labels). A job ID given more than once with identical definitions is
// placed once; with differing definitions none is placed.
func Assign(view []Node, jobs []Job, opts Options) Assignment {
	s := newSolver(view, opts.loadFactor())
	plans := s.planJobs(jobs)
	s.computeBounds()

	total := 0
	for i := range plans {
		total += plans[i].slots
	}
	backing := make([]string, total)
	out := Assignment{Placements: make(map[string][]string, len(plans))}
	for i := range plans {
		p := &plans[i]
		slots := backing[:p.slots:p.slots]
		backing = backing[p.slots:]
		out.Placements[p.job.ID] = slots
		if p.invalid != "" {
			out.Unplaced = appendUnplaced(out.Unplaced, p.job.ID, 0, max(p.slots, 1), p.invalid)
			continue
		}
		s.placeJob(p, slots, &out)
	}
	return out
}

// solver holds the nodes in name order and the state of the greedy fill.
// Node indices are positions in that order.
type solver struct {
	c     float64
	nodes []Node
	key   []uint64  // nodeKey per node
	w     []float64 // ranking weight per node
	invW  []float64 // 1/w
	cpu   []int64   // free cpu millis
	mem   []int64   // free memory MB
	load  []int32   // replicas placed
	bound []int32   // load bound
	all   []int32   // every node index, the eligible list of unconstrained jobs

	groups map[string]*group // by constraintSet.key

	// Scratch reused across jobs.
	jobCount []int32 // replicas of the current job per node
	touched  []int32
	thr      []uint64
}

// group is the nodes satisfying one set of constraints, shared by every job
// with that set.
type group struct {
	nodes    []int32  // ascending node index
	keys     []uint64 // nodeKey of each of nodes, contiguous for pick's scan
	weight   float64  // sum of w over nodes
	replicas int      // replicas of valid jobs with this set

	// First-pass thresholds for pick, by position in nodes; nil until the
	// first job of the group is placed.
	thr    []uint64
	thrAll bool
}

type jobPlan struct {
	job     Job
	slots   int    // replica slots to report
	invalid string // non-empty: not placed at all, for this reason
	group   *group
}

func newSolver(view []Node, c float64) *solver {
	nodes := make([]Node, 0, len(view))
	for _, n := range view {
		if n.Name != "" {
			nodes = append(nodes, n)
		}
	}
	slices.SortFunc(nodes, compareNodes)
	nodes = slices.CompactFunc(nodes, func(a, b Node) bool { return a.Name == b.Name })

	n := len(nodes)
	s := &solver{
		c:        c,
		nodes:    nodes,
		key:      make([]uint64, n),
		w:        make([]float64, n),
		invW:     make([]float64, n),
		cpu:      make([]int64, n),
		mem:      make([]int64, n),
		load:     make([]int32, n),
		bound:    make([]int32, n),
		all:      make([]int32, n),
		jobCount: make([]int32, n),
		groups:   make(map[string]*group),
	}
	for i, nd := range nodes {
		s.key[i] = nodeKey(nd.Name)
		s.w[i] = weight(nd)
		s.invW[i] = 1 / s.w[i]
		s.cpu[i] = nd.CPUMillis - nd.UsedCPUMillis
		s.mem[i] = nd.MemoryMB - nd.UsedMemoryMB
		s.all[i] = int32(i)
	}
	return s
}

// compareNodes orders by name, then (for duplicate names only) by the rest of
// the node, so that the entry kept for a duplicate name is input-order free.
func compareNodes(a, b Node) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := cmp.Compare(a.CPUMillis, b.CPUMillis); c != 0 {
		return c
	}
	if c := cmp.Compare(a.MemoryMB, b.MemoryMB); c != 0 {
		return c
	}
	if c := cmp.Compare(a.UsedCPUMillis, b.UsedCPUMillis); c != 0 {
		return c
	}
	if c := cmp.Compare(a.UsedMemoryMB, b.UsedMemoryMB); c != 0 {
		return c
	}
	ka, kb := sortedKeys(a.Labels), sortedKeys(b.Labels)
	for i := range min(len(ka), len(kb)) {
		if c := strings.Compare(ka[i], kb[i]); c != 0 {
			return c
		}
		if c := strings.Compare(a.Labels[ka[i]], b.Labels[kb[i]]); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(ka), len(kb))
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// planJobs sorts the jobs by ID, resolves duplicate IDs, validates, and
// groups the valid jobs by constraint set.
func (s *solver) planJobs(jobs []Job) []jobPlan {
	sorted := slices.Clone(jobs)
	slices.SortStableFunc(sorted, func(a, b Job) int { return strings.Compare(a.ID, b.ID) })

	plans := make([]jobPlan, 0, len(sorted))
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j].ID == sorted[i].ID {
			j++
		}
		plans = append(plans, s.planJob(sorted[i:j]))
		i = j
	}
	return plans
}

// planJob plans the definitions given for one job ID.
func (s *solver) planJob(defs []Job) jobPlan {
	job := defs[0]
	p := jobPlan{job: job}
	for _, d := range defs {
		if d.Replicas <= MaxReplicas { // out of range: no slots, one report
			p.slots = max(p.slots, d.Replicas)
		}
		if !sameJob(job, d) {
			p.invalid = fmt.Sprintf("conflicting definitions for job ID %q", job.ID)
		}
	}
	if p.invalid != "" {
		return p
	}
	if err := job.Validate(); err != nil {
		p.invalid = err.Error()
		return p
	}
	set, _ := compileConstraints(job.Constraints) // valid: checked above
	g, ok := s.groups[set.key]
	if !ok {
		g = &group{}
		if set.key == "" {
			g.nodes = s.all
		} else {
			for i := range s.nodes {
				if set.matches(s.nodes[i].Labels) {
					g.nodes = append(g.nodes, int32(i))
				}
			}
		}
		g.keys = make([]uint64, len(g.nodes))
		for i, n := range g.nodes {
			g.weight += s.w[n]
			g.keys[i] = s.key[n]
		}
		s.groups[set.key] = g
	}
	g.replicas += job.Replicas
	p.group = g
	return p
}

func sameJob(a, b Job) bool {
	return a.ID == b.ID && a.Replicas == b.Replicas && a.CPUMillis == b.CPUMillis &&
		a.MemoryMB == b.MemoryMB && slices.Equal(a.Constraints, b.Constraints)
}

// computeBounds sets each node's load bound to ceil(c × share); see Assign.
// Groups are summed in key order so the float arithmetic is input-order free.
func (s *solver) computeBounds() {
	share := make([]float64, len(s.nodes))
	total := 0
	for _, k := range sortedKeys(s.groups) {
		g := s.groups[k]
		total += g.replicas
		if g.replicas == 0 || len(g.nodes) == 0 {
			continue
		}
		f := float64(g.replicas) / g.weight
		for _, n := range g.nodes {
			share[n] += mul(s.w[n], f)
		}
	}
	for i, sh := range share {
		// The 1e-9 absorbs rounding in share so that an exact integer such
		// as 1.25 × 100 does not become 126.
		b := math.Ceil(mul(s.c, sh) - 1e-9)
		s.bound[i] = int32(min(max(b, 0), float64(min(total, math.MaxInt32))))
	}
}

// fits reports whether node n can take one more replica of job now.
func (s *solver) fits(n int32, job *Job) bool {
	return s.load[n] < s.bound[n] && s.cpu[n] >= job.CPUMillis && s.mem[n] >= job.MemoryMB
}

// placeJob fills slots with the node of each replica of p, in index order;
// see Assign.
//
// level is the spread level: the fewest replicas of this job held by any node
// that can still take one. A node below the level cannot take one now and,
// since counts only grow and room only shrinks, never will again during this
// job; so picking among nodes holding at most level replicas picks among
// those holding the fewest.
func (s *solver) placeJob(p *jobPlan, slots []string, out *Assignment) {
	job, g := &p.job, p.group
	if job.Replicas == 0 {
		return
	}
	if len(g.nodes) == 0 {
		out.Unplaced = appendUnplaced(out.Unplaced, job.ID, 0, job.Replicas, s.constraintReason(job))
		return
	}
	if g.thr == nil {
		g.thr = make([]uint64, len(g.nodes))
		g.thrAll = s.thresholds(g.thr, g.nodes, firstPassCandidates/g.weight)
	}
	if pairwise(job.Replicas, len(g.nodes)) {
		s.placeJobPairwise(p, slots, out)
		return
	}
	jk := jobKey(job.ID)
	level := int32(0)
	for i := range job.Replicas {
		rk := replicaKey(jk, i)
		node := s.pick(rk, g, job, level)
		for node < 0 && s.anyFits(g.nodes, job) {
			level++
			node = s.pick(rk, g, job, level)
		}
		if node < 0 {
			out.Unplaced = appendUnplaced(out.Unplaced, job.ID, i, job.Replicas, s.resourceReason(job, g.nodes))
			break
		}
		slots[i] = s.nodes[node].Name
		s.take(node, job)
	}
	s.forgetJob()
}

// take books one replica of job on node n: its load, resources and the
// job's count there.
func (s *solver) take(n int32, job *Job) {
	s.load[n]++
	s.cpu[n] -= job.CPUMillis
	s.mem[n] -= job.MemoryMB
	if s.jobCount[n] == 0 {
		s.touched = append(s.touched, n)
	}
	s.jobCount[n]++
}

// forgetJob clears the per-job counts take kept, for the next job.
func (s *solver) forgetJob() {
	for _, n := range s.touched {
		s.jobCount[n] = 0
	}
	s.touched = s.touched[:0]
}

func (s *solver) anyFits(nodes []int32, job *Job) bool {
	for _, n := range nodes {
		if s.fits(n, job) {
			return true
		}
	}
	return false
}

func appendUnplaced(u []Unplaced, job string, from, to int, reason string) []Unplaced {
	for i := from; i < to; i++ {
		u = append(u, Unplaced{Job: job, Replica: i, Reason: reason})
	}
	return u
}

// constraintReason explains why no node satisfies the job's constraints,
// naming a single constraint that no node satisfies if there is one.
func (s *solver) constraintReason(job *Job) string {
	if len(s.nodes) == 0 {
		return "no nodes in view"
	}
	for _, c := range job.Constraints {
		m, _ := compileConstraint(c)
		if !slices.ContainsFunc(s.nodes, func(n Node) bool { return m.matches(n.Labels) }) {
			return "no node satisfies constraint " + c.String()
		}
	}
	parts := make([]string, len(job.Constraints))
	for i, c := range job.Constraints {
		parts[i] = c.String()
	}
	return "no node satisfies all of the constraints " + strings.Join(parts, ", ")
}

// resourceReason explains why none of the nodes satisfying the job's
// constraints can take a replica now.
func (s *solver) resourceReason(job *Job, elig []int32) string {
	var freeCPU, freeMem int64
	room := false
	for _, n := range elig {
		freeCPU, freeMem = max(freeCPU, s.cpu[n]), max(freeMem, s.mem[n])
		room = room || (s.cpu[n] >= job.CPUMillis && s.mem[n] >= job.MemoryMB)
	}
	switch {
	case room:
		return fmt.Sprintf("load bound reached on all eligible nodes (load factor %g)", s.c)
	case freeMem < job.MemoryMB:
		return fmt.Sprintf("insufficient memory: needs %d MB, largest free %d MB", job.MemoryMB, freeMem)
	case freeCPU < job.CPUMillis:
		return fmt.Sprintf("insufficient cpu: needs %d millis, largest free %d millis", job.CPUMillis, freeCPU)
	}
	return fmt.Sprintf("insufficient resources: no node has both %d cpu millis and %d MB free",
		job.CPUMillis, job.MemoryMB)
}

// pairwise says whether a job is placed pair by pair (placeJobPairwise)
// rather than replica by replica: when its replicas are many for its
// nodes, which is when spreading them over distinct nodes makes one
// replica's move push others along, and when the pairs are few enough to
// rank them all.
func pairwise(replicas, nodes int) bool {
	return replicas > 1 && 2*replicas >= nodes && replicas*nodes <= maxPairwise
}

// maxPairwise bounds the (replica, node) pairs a job may have to be placed
// pairwise: ranking them costs a sort.
const maxPairwise = 1 << 16

// placeJobPairwise places a job by ranking every (replica, node) pair by
// the replica's score on the node and filling in that order, level by
// level (a node first takes at most one replica of the job, then two, ...).
// Placing replicas in index order instead lets replica 0 take the node
// replica 1 ranks best whenever a node leaves, which pushes replica 1 on,
// and so forth: in a simulation of one node leaving 3-20 nodes running
// as many replicas as nodes, index order moved 1.5-3.6 times the replicas
// that were on the node, the pairwise order 1.2-2.4 times.
func (s *solver) placeJobPairwise(p *jobPlan, slots []string, out *Assignment) {
	job, g := &p.job, p.group
	jk := jobKey(job.ID)
	type pair struct {
		c       cand
		replica int
	}
	pairs := make([]pair, 0, job.Replicas*len(g.nodes))
	for i := range job.Replicas {
		rk := replicaKey(jk, i)
		for j, n := range g.nodes {
			pairs = append(pairs, pair{cand{float64(negLn(unit(pairHash(rk, g.keys[j]))) * s.invW[n]), n}, i})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		switch {
		case better(a.c, b.c):
			return -1
		case better(b.c, a.c):
			return 1
		}
		return a.replica - b.replica
	})
	placed := make([]bool, job.Replicas)
	left := job.Replicas
	for level := int32(0); left > 0; level++ {
		for _, pr := range pairs {
			n := pr.c.node
			if placed[pr.replica] || s.jobCount[n] > level || !s.fits(n, job) {
				continue
			}
			placed[pr.replica] = true
			left--
			slots[pr.replica] = s.nodes[n].Name
			s.take(n, job)
		}
		if left > 0 && !s.anyFits(g.nodes, job) {
			reason := s.resourceReason(job, g.nodes)
			for i, ok := range placed {
				if !ok {
					out.Unplaced = appendUnplaced(out.Unplaced, job.ID, i, i+1, reason)
				}
			}
			break
		}
	}
	s.forgetJob()
}
