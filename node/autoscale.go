package node

import (
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/state"
)

// Autoscaling without a controller: every node publishes, for each job
// with a scaling policy, what its replicas of that job use (a usage
// record, written only by that node). One node per job, the alive node
// that ranks first by hashing the job's id with the node names, reads all
// of them and decides the job's replica count, at most once per cooldown,
// in a scale record of its own (never the user's job record). Every node
// agrees on that node from the same membership, so one writer acts; if two
// briefly disagree, the scale record's last writer wins and the cooldown
// holds both back afterwards. Ages (usage freshness, cooldown) are
// measured on the deciding node's clock, from when it first saw a record,
// never by comparing its clock with the writer's.

// usageRecord is what one node's replicas of one job use.
type usageRecord struct {
	Job       string    `json:"job"`
	Node      string    `json:"node"`
	Replicas  int       `json:"replicas"`
	CPUMillis int64     `json:"cpu_millis"`
	MemoryMB  int64     `json:"memory_mb"`
	At        time.Time `json:"at"`
}

// scalingTolerance is how far from the target utilisation a job may be
// before it is rescaled (as Kubernetes' HPA does), so noise does not flap.
const scalingTolerance = 0.1

// autoscaler is the load loop's share of autoscaling; the load loop's
// goroutine owns it.
type autoscaler struct {
	self    string
	cluster membership
	records records
	events  *eventLog
	log     *slog.Logger
	// ready reports whether the node has joined and synced: a node alone
	// would decide on partial usage.
	ready func() bool
	// fresh is how long a usage record counts after it was first seen.
	fresh time.Duration
	// seen is when this node first saw each version of a usage or scale
	// record, on its own clock.
	seen sightings
}

// sightings remembers when this node first saw each record version.
type sightings map[string]sighting

type sighting struct {
	version state.Version
	at      time.Time
}

// firstSeen returns when key was first seen at version v (now, if this is
// the first time).
func (s sightings) firstSeen(key string, v state.Version, now time.Time) time.Time {
	if cur, ok := s[key]; ok && cur.version == v {
		return cur.at
	}
	s[key] = sighting{version: v, at: now}
	return now
}

// retain forgets the keys not in keep.
func (s sightings) retain(keep map[string]bool) {
	for k := range s {
		if !keep[k] {
			delete(s, k)
		}
	}
}

// autoscaledJobs returns the jobs that have a scaling policy, as they run.
func (s *autoscaler) autoscaledJobs() map[string]api.Job {
	out := map[string]api.Job{}
	for id, j := range s.records.jobs() {
		if j.Scaling != nil && j.Replicas != nil {
			out[id] = j
		}
	}
	return out
}

// publishUsage writes this node's usage records of autoscaled jobs and
// deletes those it no longer needs. Called by the load loop.
func (s *autoscaler) publishUsage(jobs map[string]api.Job, perTask map[string]taskUsage) {
	mine := map[string]*usageRecord{}
	now := time.Now().UTC()
	for _, u := range perTask {
		if _, ok := jobs[u.Job]; !ok {
			continue
		}
		r := mine[u.Job]
		if r == nil {
			r = &usageRecord{Job: u.Job, Node: s.self, At: now}
			mine[u.Job] = r
		}
		r.Replicas++
		r.CPUMillis += u.CPUMillis
		r.MemoryMB += u.MemoryMB
	}
	var changes []change
	for _, job := range slices.Sorted(maps.Keys(mine)) {
		changes = append(changes, change{kindUsage, usageID(job, s.self), mine[job]})
	}
	for _, rec := range s.records.store.List(kindUsage) {
		if job, ok := strings.CutSuffix(rec.ID, "."+s.self); ok && mine[job] == nil {
			changes = append(changes, change{kind: kindUsage, id: rec.ID})
		}
	}
	if _, err := s.records.write(changes...); err != nil {
		s.log.Warn("publish usage", "err", err)
	}
}

// ownerOf is the node among names that ranks first for key: every node
// computes the same owner from the same alive set.
func ownerOf(key string, names []string) string {
	best, bestScore := "", uint64(0)
	for _, name := range names {
		h := fnv.New64a()
		fmt.Fprintf(h, "%s/%s", key, name)
		if s := h.Sum64(); best == "" || s > bestScore || s == bestScore && name < best {
			best, bestScore = name, s
		}
	}
	return best
}

// aliveNames are the names of the alive members.
func aliveNames(members []gossip.Member) []string {
	var out []string
	for _, m := range members {
		if m.Status == gossip.StatusAlive {
			out = append(out, m.Name)
		}
	}
	return out
}

// autoscale rescales the jobs this node decides for. Called by the load
// loop after publishUsage.
func (s *autoscaler) autoscale(jobs map[string]api.Job) {
	if !s.ready() {
		return
	}
	now := time.Now()
	members := s.cluster.Members()
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = m.Status == gossip.StatusAlive
	}
	names := aliveNames(members)
	usage := map[string][]usageRecord{}
	keep := map[string]bool{}
	for id, u := range s.records.usage() {
		key := kindUsage + "/" + id
		keep[key] = true
		if alive[u.usage.Node] && now.Sub(s.seen.firstSeen(key, u.version, now)) < s.fresh {
			usage[u.usage.Job] = append(usage[u.usage.Job], u.usage)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(jobs)) {
		job := jobs[id]
		if ownerOf(id, names) != s.self {
			continue
		}
		sinceLast := time.Duration(math.MaxInt64)
		if rec, ok := s.records.store.Get(kindScale, id); ok {
			key := kindScale + "/" + id
			keep[key] = true
			sinceLast = now.Sub(s.seen.firstSeen(key, rec.Version, now))
		}
		desired, reason, ok := scaleDecision(job, usage[id], sinceLast)
		if ok {
			s.setReplicas(job, desired, reason)
		}
	}
	s.seen.retain(keep)
}

// scaleDecision is the pure part: from a job and its replicas' usage,
// the replica count to move to, and why; ok is false to keep it.
// sinceLast is how long ago this node first saw the last decision.
func scaleDecision(job api.Job, usage []usageRecord, sinceLast time.Duration) (desired int, reason string, ok bool) {
	sp := job.Scaling
	current := *job.Replicas
	if sinceLast < time.Duration(sp.Cooldown) {
		return 0, "", false
	}
	n := 0
	var cpu, mem int64
	for _, u := range usage {
		n += u.Replicas
		cpu += u.CPUMillis
		mem += u.MemoryMB
	}
	// Decide on every replica's usage, not on a part of them.
	if current == 0 || n < current {
		return 0, "", false
	}
	res := job.Task.Resources
	ratio := 0.0
	var parts []string
	if sp.CPUPercent > 0 && res.CPUMillis > 0 {
		util := float64(cpu) / float64(int64(n)*res.CPUMillis) * 100
		ratio = math.Max(ratio, util/float64(sp.CPUPercent))
		parts = append(parts, fmt.Sprintf("cpu %.0f%% of reserved (target %d%%)", util, sp.CPUPercent))
	}
	if sp.MemoryPercent > 0 && res.MemoryMB > 0 {
		util := float64(mem) / float64(int64(n)*res.MemoryMB) * 100
		ratio = math.Max(ratio, util/float64(sp.MemoryPercent))
		parts = append(parts, fmt.Sprintf("memory %.0f%% of reserved (target %d%%)", util, sp.MemoryPercent))
	}
	if math.Abs(ratio-1) <= scalingTolerance {
		return 0, "", false
	}
	desired = int(math.Ceil(float64(current) * ratio))
	// Never below one on utilisation: a job at zero replicas has no usage
	// to scale back up from.
	desired = min(max(desired, sp.Min, 1), sp.Max)
	if desired == current {
		return 0, "", false
	}
	return desired, strings.Join(parts, ", "), true
}

// setReplicas stores a new replica count for the job in its scale
// record, decided on the job version it read: a user's later write of the
// job makes it void.
func (s *autoscaler) setReplicas(job api.Job, desired int, reason string) {
	from := *job.Replicas
	rec := scaleRecord{Job: job.ID, Base: job.Version, Replicas: desired, From: from, At: time.Now().UTC(), Reason: reason}
	if _, err := s.records.write(change{kindScale, job.ID, rec}); err != nil {
		s.log.Warn("store autoscaled replicas", "job", job.ID, "err", err)
		return
	}
	msg := fmt.Sprintf("replicas %d -> %d: %s", from, desired, reason)
	s.log.Info("autoscaled", "job", job.ID, "from", from, "to", desired, "reason", reason)
	s.events.add("scaled", job.ID, -1, msg)
}
