package node

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
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
// of them and changes the job's replica count, at most once per cooldown.
// Every node agrees on that node from the same membership, so one writer
// acts; if two briefly disagree, last writer wins on the job record and
// the cooldown holds both back afterwards.

const kindUsage = "usage"

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

// autoscaledJobs returns the stored jobs that have a scaling policy.
func (a *Agent) autoscaledJobs() map[string]api.Job {
	out := map[string]api.Job{}
	for _, rec := range a.store.List(kindJob) {
		var j api.Job
		if json.Unmarshal(rec.Body, &j) == nil && j.Scaling != nil && j.Replicas != nil {
			out[j.ID] = j
		}
	}
	return out
}

// publishUsage writes this node's usage records of autoscaled jobs and
// deletes those it no longer needs. Called by the load loop.
func (a *Agent) publishUsage(jobs map[string]api.Job, perTask map[string]taskUsage) {
	self := a.cfg.Gossip.NodeName
	mine := map[string]*usageRecord{}
	now := time.Now().UTC()
	for _, u := range perTask {
		if _, ok := jobs[u.Job]; !ok {
			continue
		}
		r := mine[u.Job]
		if r == nil {
			r = &usageRecord{Job: u.Job, Node: self, At: now}
			mine[u.Job] = r
		}
		r.Replicas++
		r.CPUMillis += u.CPUMillis
		r.MemoryMB += u.MemoryMB
	}
	var out []state.Record
	for job, r := range mine {
		raw, err := json.Marshal(r)
		if err != nil {
			continue
		}
		rec, err := a.store.Write(kindUsage, job+"."+self, raw, false)
		if err != nil {
			a.log.Warn("publish usage", "job", job, "err", err)
			continue
		}
		out = append(out, rec)
	}
	for _, rec := range a.store.List(kindUsage) {
		if job, ok := strings.CutSuffix(rec.ID, "."+self); ok && mine[job] == nil {
			if del, err := a.store.Delete(kindUsage, rec.ID); err == nil {
				out = append(out, del)
			}
		}
	}
	if len(out) > 0 {
		a.sync.Publish(out)
	}
}

// scalerOf is the alive node that decides a job's replica count.
func scalerOf(job string, members []gossip.Member) string {
	best, bestScore := "", uint64(0)
	for _, m := range members {
		if m.Status != gossip.StatusAlive {
			continue
		}
		h := fnv.New64a()
		fmt.Fprintf(h, "%s/%s", job, m.Name)
		if s := h.Sum64(); best == "" || s > bestScore {
			best, bestScore = m.Name, s
		}
	}
	return best
}

// autoscale rescales the jobs this node decides for. Called by the load
// loop after publishUsage.
func (a *Agent) autoscale(jobs map[string]api.Job) {
	select {
	case <-a.joined:
	default:
		return // a node alone would decide on partial usage
	}
	members := a.cluster.Members()
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = m.Status == gossip.StatusAlive
	}
	fresh := 4 * a.cfg.LoadInterval
	usage := map[string][]usageRecord{}
	for _, rec := range a.store.List(kindUsage) {
		var u usageRecord
		if json.Unmarshal(rec.Body, &u) == nil && alive[u.Node] && time.Since(u.At) < fresh {
			usage[u.Job] = append(usage[u.Job], u)
		}
	}
	for id, job := range jobs {
		if scalerOf(id, members) != a.cfg.Gossip.NodeName {
			continue
		}
		desired, reason, ok := scaleDecision(job, usage[id], time.Now())
		if ok {
			a.setReplicas(job, desired, reason)
		}
	}
}

// scaleDecision is the pure part: from a job and its replicas' usage,
// the replica count to move to, and why; ok is false to keep it.
func scaleDecision(job api.Job, usage []usageRecord, now time.Time) (desired int, reason string, ok bool) {
	sp := job.Scaling
	current := *job.Replicas
	if job.Autoscaled != nil && now.Sub(job.Autoscaled.At) < time.Duration(sp.Cooldown) {
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

// setReplicas stores the job with a new replica count, unless the job
// changed since it was read.
func (a *Agent) setReplicas(job api.Job, desired int, reason string) {
	var from int
	wrote, err := a.updateJob(job.ID, specHash(job), func(stored *api.Job) bool {
		if stored.Replicas == nil || *stored.Replicas != *job.Replicas {
			return false // changed since it was read
		}
		from = *stored.Replicas
		stored.Replicas = &desired
		stored.Autoscaled = &api.Autoscaled{At: time.Now().UTC(), From: from, To: desired, Reason: reason}
		return true
	})
	if err != nil {
		a.log.Warn("store autoscaled job", "job", job.ID, "err", err)
	}
	if !wrote {
		return
	}
	msg := fmt.Sprintf("replicas %d -> %d: %s", from, desired, reason)
	a.log.Info("autoscaled", "job", job.ID, "from", from, "to", desired, "reason", reason)
	a.events.add("scaled", job.ID, -1, msg)
}
