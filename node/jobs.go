package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/state"
)

// maxJobBody bounds a job spec upload.
const maxJobBody = 1 << 20

// jobStatus is a job as it runs, with its replicas.
func (a *Agent) jobStatus(j api.Job, allocs map[string][]api.Allocation) api.JobStatus {
	al := allocs[j.ID]
	if al == nil {
		al = []api.Allocation{}
	}
	return api.JobStatus{Job: j, SpecHash: specHash(j), Allocations: al, Problems: a.serviceProblems()[j.ID]}
}

// allocations are the job's replicas as their nodes report them, plus the
// replicas placement could not place. Records of nodes that are not alive
// are reported as lost until the replica runs elsewhere.
func (a *Agent) allocations(job string) []api.Allocation {
	return a.allocationsByJob(job)[job]
}

// allocationsByJob reads the endpoint records once and groups them by job;
// with only set, other jobs are skipped.
func (a *Agent) allocationsByJob(only string) map[string][]api.Allocation {
	alive := map[string]bool{}
	for _, m := range a.cluster.Members() {
		alive[m.Name] = m.Status == gossip.StatusAlive
	}
	byJob := map[string][]api.Allocation{}
	for _, ep := range a.records.endpoints() {
		if only != "" && ep.Job != only {
			continue
		}
		al := api.Allocation{Replica: ep.Replica, Node: ep.Node, State: ep.State, IP: ep.IP, Healthy: ep.Healthy,
			Ports: ep.Ports, ExitCode: ep.ExitCode, Restarts: ep.Restarts, Message: ep.Message, SpecHash: ep.SpecHash}
		if !alive[ep.Node] {
			al.State, al.Message = "lost", "node "+ep.Node+" is not alive"
		}
		byJob[ep.Job] = append(byJob[ep.Job], al)
	}
	var unplaced []placement.Unplaced
	if a.reconciler != nil {
		unplaced = a.reconciler.Unplaced(only)
	}
	for _, u := range unplaced {
		byJob[u.Job] = append(byJob[u.Job], api.Allocation{Replica: u.Replica, State: "unplaced", Message: u.Reason})
	}
	for job, out := range byJob {
		byJob[job] = tidyAllocations(out)
	}
	return byJob
}

// tidyAllocations drops lost copies of replicas that run on an alive node
// (noise once the replica has moved) and sorts by replica, then node.
func tidyAllocations(out []api.Allocation) []api.Allocation {
	runningElsewhere := map[int]bool{}
	for _, al := range out {
		if al.State == StateRunning {
			runningElsewhere[al.Replica] = true
		}
	}
	kept := out[:0]
	for _, al := range out {
		if al.State == "lost" && runningElsewhere[al.Replica] {
			continue
		}
		kept = append(kept, al)
	}
	sort.Slice(kept, func(i, j int) bool {
		if kept[i].Replica != kept[j].Replica {
			return kept[i].Replica < kept[j].Replica
		}
		return kept[i].Node < kept[j].Node
	})
	return kept
}

func (a *Agent) handlePutJob(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJobBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "job spec exceeds %d bytes", maxJobBody)
			return
		}
		writeError(w, http.StatusBadRequest, "read job spec: %v", err)
		return
	}
	job, err := api.ParseJob(body, r.Header.Get("Content-Type"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	// Without replicas in the request, an autoscaled job keeps the count
	// the autoscaler chose (the default of 1 would undo it).
	keepReplicas := job.Replicas == nil && job.Scaling != nil
	job.ApplyDefaults()
	if err := job.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	existed, code, err := a.storeJob(&job, keepReplicas)
	if err != nil {
		writeError(w, code, "%v", err)
		return
	}
	a.notifyJobs()
	stored, _ := a.records.job(job.ID)
	code = http.StatusOK
	if !existed {
		code = http.StatusCreated
	}
	writeJSON(w, code, a.jobStatus(stored, a.allocationsByJob(job.ID)))
}

// storeJob writes a user's job: compare-and-set on job.Version when it is
// set, the server-kept fields carried from the stored job, the service's
// address assigned. The check and the write happen under one lock so that
// two API calls on this node cannot both pass the same version check. It
// returns whether the job existed and, on an error, the HTTP status.
func (a *Agent) storeJob(job *api.Job, keepReplicas bool) (existed bool, code int, err error) {
	a.jobsMu.Lock()
	defer a.jobsMu.Unlock()
	expected := job.Version
	job.Version = ""
	cur, exists := a.store.Get(kindJob, job.ID)
	if expected != "" {
		if !exists {
			return false, http.StatusConflict, fmt.Errorf("version: job %q does not exist, so version %q cannot match", job.ID, expected)
		}
		if have := formatVersion(cur.Version); have != expected {
			return true, http.StatusConflict, fmt.Errorf("version: job %q is at version %q, not %q", job.ID, have, expected)
		}
	}
	var old *api.Job
	if exists {
		if running, ok := a.records.job(job.ID); ok {
			old = &running
		}
	}
	carryRollout(job, old)
	if keepReplicas && old != nil && old.Replicas != nil {
		n := min(max(*old.Replicas, job.Scaling.Min), job.Scaling.Max)
		job.Replicas = &n
	}
	if code, err := a.assignService(job, cur, exists); err != nil {
		return exists, code, err
	}
	if _, err := a.records.write(change{kindJob, job.ID, job}); err != nil {
		return exists, http.StatusInternalServerError, fmt.Errorf("store job: %w", err)
	}
	return exists, 0, nil
}

// carryRollout sets the server-kept state of a job being stored from the
// job as it runs now (old, nil for a new job): a changed task remembers
// the one it replaces; an unchanged one keeps what the job had.
func carryRollout(job *api.Job, old *api.Job) {
	job.Rollout, job.Autoscaled = nil, nil
	if old == nil {
		return
	}
	if specHash(*old) == specHash(*job) {
		job.Rollout = old.Clone().Rollout
		return
	}
	prev := old.Clone().Task
	job.Rollout = &api.Rollout{PreviousTask: &prev, Since: time.Now().UTC()}
}

func (a *Agent) handleListJobs(w http.ResponseWriter, _ *http.Request) {
	jobs := a.records.jobs()
	allocs := a.allocationsByJob("")
	out := make([]api.JobStatus, 0, len(jobs))
	for _, id := range slices.Sorted(maps.Keys(jobs)) {
		out = append(out, a.jobStatus(jobs[id], allocs))
	}
	writeJSON(w, http.StatusOK, out)
}

// pathJobID validates the {id} path segment, answering the client itself
// when it is unusable.
func pathJobID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if err := api.ValidateID(id); err != nil {
		writeError(w, http.StatusBadRequest, "job id %q: %v", id, err)
		return "", false
	}
	return id, true
}

func (a *Agent) handleGetJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathJobID(w, r)
	if !ok {
		return
	}
	job, found := a.records.job(id)
	if !found {
		writeError(w, http.StatusNotFound, "job %q not found", id)
		return
	}
	writeJSON(w, http.StatusOK, a.jobStatus(job, a.allocationsByJob(id)))
}

func (a *Agent) handleDeleteJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathJobID(w, r)
	if !ok {
		return
	}
	rec, found, err := a.deleteJob(id)
	switch {
	case !found:
		writeError(w, http.StatusNotFound, "job %q not found", id)
	case err != nil:
		writeError(w, http.StatusInternalServerError, "delete job: %v", err)
	default:
		a.notifyJobs()
		writeJSON(w, http.StatusOK, api.DeleteResponse{ID: id, Deleted: true, Version: formatVersion(rec.Version)})
	}
}

// deleteJob deletes a job with the automatic records that belong to it.
func (a *Agent) deleteJob(id string) (state.Record, bool, error) {
	a.jobsMu.Lock()
	defer a.jobsMu.Unlock()
	if _, found := a.store.Get(kindJob, id); !found {
		return state.Record{}, false, nil
	}
	changes := []change{{kind: kindJob, id: id}}
	for _, kind := range []string{kindScale, kindRolloutMark} {
		if _, ok := a.store.Get(kind, id); ok {
			changes = append(changes, change{kind: kind, id: id})
		}
	}
	recs, err := a.records.write(changes...)
	if err != nil {
		return state.Record{}, true, err
	}
	return recs[0], true, nil
}

// notifyJobs wakes whatever waits for job changes (placement, later).
func (a *Agent) notifyJobs() {
	a.servicesChanged()
	select {
	case a.jobsChanged <- struct{}{}:
	default:
	}
}

// gcLoop collects expired tombstones.
func (a *Agent) gcLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if n, err := a.store.GC(now, a.cfg.TombstoneTTL); err != nil {
				a.log.Warn("collect tombstones", "err", err)
			} else if n > 0 {
				a.log.Info("collected tombstones", "count", n)
			}
			a.forgetGoneNodes()
		}
	}
}

// forgetGoneNodes deletes the endpoint and usage records of nodes that
// left the cluster or were reaped after failing: nobody else would, since
// each node writes only its own. One node per gone node does it (the one
// that ranks first for its name), so the deletions are not repeated by
// everyone. A node that comes back writes its records again. The same node
// removes automatic records (scale, rollout) of jobs that no longer exist.
func (a *Agent) forgetGoneNodes() {
	if !a.isSynced() {
		return
	}
	self := a.cfg.Gossip.NodeName
	members := a.cluster.Members()
	present := map[string]bool{}
	others := 0
	for _, m := range members {
		present[m.Name] = m.Status != gossip.StatusLeft
		if m.Name != self && m.Status == gossip.StatusAlive {
			others++
		}
	}
	// A node that cannot reach anyone would take everyone for gone.
	if others == 0 {
		return
	}
	names := aliveNames(members)
	var changes []change
	for _, kind := range []string{kindEndpoint, kindUsage} {
		for _, rec := range a.store.List(kind) {
			node := recordOwner(rec)
			if node == "" || present[node] || ownerOf("gone/"+node, names) != self {
				continue
			}
			changes = append(changes, change{kind: kind, id: rec.ID})
		}
	}
	for _, kind := range []string{kindScale, kindRolloutMark} {
		for _, rec := range a.store.List(kind) {
			if _, live := a.store.Get(kindJob, rec.ID); live || ownerOf("gone/"+rec.ID, names) != self {
				continue
			}
			changes = append(changes, change{kind: kind, id: rec.ID})
		}
	}
	if len(changes) == 0 {
		return
	}
	if _, err := a.records.write(changes...); err != nil {
		a.log.Warn("forget records of gone nodes and jobs", "err", err)
		return
	}
	a.log.Info("forgot records of gone nodes and jobs", "records", len(changes))
}
