package node

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// Rolling updates without a coordinator: when a job's task changes, every
// node holding a replica of the old spec asks the same question of the
// same records (all nodes' endpoints): which replicas may be replaced now?
// A replica is "done" once a copy of the new spec has run healthy for
// min_healthy_time, "old" while its running copy has the old spec, and "in
// flight" otherwise (being replaced, starting, not yet healthy). The old
// replicas with the lowest indexes may go while fewer than max_parallel
// are in flight. Nodes act on what they have seen, so two nodes deciding
// in the same instant may briefly exceed max_parallel; the next decision
// sees both.

// rolloutState returns the replicas that may be replaced now, and whether
// every replica runs the current spec, healthy for min_healthy_time.
func (r *reconciler) rolloutState(job api.Job, alive map[string]bool, unplaced map[int]bool) (map[int]bool, bool) {
	current := specHash(job)
	want := 1
	if job.Replicas != nil {
		want = *job.Replicas
	}
	maxParallel, minHealthy := 1, api.DefaultMinHealthyTime
	if u := job.Update; u != nil {
		maxParallel, minHealthy = u.MaxParallel, time.Duration(u.MinHealthyTime)
	}
	done := map[int]bool{}
	old := map[int]bool{}
	for _, ep := range r.jobEndpoints(job.ID) {
		if !alive[ep.Node] || ep.State != StateRunning || ep.Replica >= want {
			continue
		}
		if ep.SpecHash != current {
			old[ep.Replica] = true
			continue
		}
		healthy := job.Health == nil || ep.Healthy != nil && *ep.Healthy
		if healthy && !ep.Since.IsZero() && time.Since(ep.Since) >= minHealthy {
			done[ep.Replica] = true
		}
	}
	inFlight := 0
	var waiting []int
	for i := 0; i < want; i++ {
		switch {
		case done[i]:
		case old[i]:
			waiting = append(waiting, i)
		case unplaced[i]:
			// Fits nowhere: waiting for it would stall the update for good.
		default:
			inFlight++
		}
	}
	slices.Sort(waiting)
	complete := inFlight == 0 && len(waiting) == 0
	out := map[int]bool{}
	for _, i := range waiting {
		if inFlight >= maxParallel {
			break
		}
		out[i] = true
		inFlight++
	}
	return out, complete
}

// jobEndpoints decodes every node's endpoint records of one job.
func (r *reconciler) jobEndpoints(job string) []Endpoint {
	var out []Endpoint
	for _, rec := range r.a.store.List(kindEndpoint) {
		var ep Endpoint
		if json.Unmarshal(rec.Body, &ep) == nil && ep.Job == job {
			out = append(out, ep)
		}
	}
	return out
}

// checkRollout rolls a job back to its previous task when one of this
// node's replicas of the new spec failed its update: not healthy within
// healthy_deadline, or restarted repeatedly. Only jobs that asked for
// automatic rollback and have a previous task are touched.
func (r *reconciler) checkRollout(job api.Job, t runtime.TaskStatus) {
	u := job.Update
	ro := job.Rollout
	if u == nil || u.AutoRollback == nil || !*u.AutoRollback || ro == nil || ro.PreviousTask == nil || ro.Done {
		return
	}
	// Only copies of the new spec started by this update are judged: an
	// adopted or older copy says nothing about the new spec.
	if t.SpecHash != specHash(job) || (!t.StartedAt.IsZero() && t.StartedAt.Before(ro.Since)) {
		return
	}
	var reason string
	rs := r.restarts[t.ID]
	h := r.health.result(t.ID)
	policy := "always"
	if job.Restart != nil {
		policy = job.Restart.Policy
	}
	switch {
	case rs != nil && rs.attempts >= rolloutMaxRestarts:
		reason = fmt.Sprintf("replica %d of the new spec exited %d times (last exit code %d)", t.Replica, rs.attempts, rs.exitCode)
	case t.State == runtime.StateExited && policy != "always" && t.ExitCode >= 0:
		reason = fmt.Sprintf("replica %d of the new spec exited (code %d) and its restart policy is %s", t.Replica, t.ExitCode, policy)
	case t.State == runtime.StateRunning && job.Health != nil && h.known && !h.healthy &&
		!t.StartedAt.IsZero() && time.Since(t.StartedAt) > time.Duration(u.HealthyDeadline):
		reason = fmt.Sprintf("replica %d of the new spec was not healthy within %s", t.Replica, time.Duration(u.HealthyDeadline))
	default:
		return
	}
	r.rollback(job, reason)
}

// rolloutMaxRestarts is how many exits of a new-spec replica fail an update.
const rolloutMaxRestarts = 3

// rollback stores the job with its previous task. Every node that sees
// the failure may write it; the writes carry the same task, so whichever
// wins, the job goes back to the spec it had.
func (r *reconciler) rollback(job api.Job, reason string) {
	var invalid error
	wrote, err := r.a.updateJob(job.ID, specHash(job), func(stored *api.Job) bool {
		if stored.Rollout == nil || stored.Rollout.PreviousTask == nil {
			return false // already rolled back
		}
		back := stored.Clone()
		back.Task = *stored.Rollout.PreviousTask
		back.Rollout = &api.Rollout{RolledBack: fmt.Sprintf("rolled back at %s: %s", time.Now().UTC().Format(time.RFC3339), reason), Since: time.Now().UTC()}
		if invalid = back.Validate(); invalid != nil {
			return false
		}
		*stored = back
		return true
	})
	switch {
	case invalid != nil:
		msg := fmt.Sprintf("update failed (%s) but the previous task no longer fits the job: %v", reason, invalid)
		r.a.log.Error("cannot roll back", "job", job.ID, "err", msg)
		r.a.events.add("rollback-failed", job.ID, -1, msg)
	case err != nil:
		r.a.log.Error("store rolled-back job", "job", job.ID, "err", err)
	case wrote:
		r.a.log.Warn("update failed: rolling back", "job", job.ID, "reason", reason)
		r.a.events.add("rolled-back", job.ID, -1, reason)
	}
}

// finishRollout marks a job's update done once every replica runs the
// new spec healthy, which ends the watch for a rollback. One node per job
// writes it.
func (r *reconciler) finishRollout(job api.Job, alive map[string]bool, unplaced map[int]bool) {
	if job.Rollout == nil || job.Rollout.Done || job.Rollout.PreviousTask == nil {
		return
	}
	if scalerOf("rollout/"+job.ID, r.a.cluster.Members()) != r.a.cfg.Gossip.NodeName {
		return
	}
	if _, complete := r.rolloutState(job, alive, unplaced); !complete {
		return
	}
	wrote, err := r.a.updateJob(job.ID, specHash(job), func(stored *api.Job) bool {
		if stored.Rollout == nil || stored.Rollout.Done {
			return false
		}
		stored.Rollout.Done = true
		return true
	})
	if err != nil {
		r.a.log.Warn("store finished rollout", "job", job.ID, "err", err)
	}
	if !wrote {
		return
	}
	r.a.events.add("updated", job.ID, -1, "every replica runs the new spec")
}

// carryRollout sets the server-kept state of a job being stored (rollout
// and autoscaler):
// a changed task remembers the one it replaces; an unchanged one keeps
// what the stored job had.
func carryRollout(job *api.Job, cur state.Record, exists bool) {
	job.Rollout, job.Autoscaled = nil, nil
	if !exists {
		return
	}
	var old api.Job
	if json.Unmarshal(cur.Body, &old) != nil {
		return
	}
	// The autoscaler's cooldown runs on across a user's update.
	job.Autoscaled = old.Autoscaled
	if specHash(old) == specHash(*job) {
		job.Rollout = old.Rollout
		return
	}
	prev := old.Clone().Task
	job.Rollout = &api.Rollout{PreviousTask: &prev, Since: time.Now().UTC()}
}
