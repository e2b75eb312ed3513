package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/state"
)

// Record kinds in the replicated store.
const kindJob = "job"

// maxJobBody bounds a job spec upload.
const maxJobBody = 1 << 20

// formatVersion renders a record version for the API. Clients treat it as
// opaque and echo it back for compare-and-set.
func formatVersion(v state.Version) string {
	return fmt.Sprintf("%d-%d-%s", v.WallNanos, v.Logical, v.Node)
}

// jobFromRecord decodes a stored job.
func jobFromRecord(r state.Record) (api.Job, error) {
	var j api.Job
	if err := json.Unmarshal(r.Body, &j); err != nil {
		return j, fmt.Errorf("decode stored job %s: %w", r.ID, err)
	}
	j.Version = formatVersion(r.Version)
	return j, nil
}

func (a *Agent) jobStatus(r state.Record, allocs map[string][]api.Allocation) (api.JobStatus, error) {
	j, err := jobFromRecord(r)
	if err != nil {
		return api.JobStatus{}, err
	}
	al := allocs[j.ID]
	if al == nil {
		al = []api.Allocation{}
	}
	return api.JobStatus{Job: j, SpecHash: specHash(j), Allocations: al}, nil
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
	for _, rec := range a.store.List(kindEndpoint) {
		if only != "" && !strings.HasPrefix(rec.ID, only+".") {
			continue
		}
		var ep Endpoint
		if json.Unmarshal(rec.Body, &ep) != nil || (only != "" && ep.Job != only) {
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
	expected := job.Version
	job.Version = ""

	// Compare-and-set and the write happen under one lock so that two API
	// calls on this node cannot both pass the same version check.
	a.jobsMu.Lock()
	cur, exists := a.store.Get(kindJob, job.ID)
	carryRollout(&job, cur, exists)
	if keepReplicas && exists {
		var old api.Job
		if json.Unmarshal(cur.Body, &old) == nil && old.Replicas != nil {
			n := min(max(*old.Replicas, job.Scaling.Min), job.Scaling.Max)
			job.Replicas = &n
		}
	}
	if code, err := a.assignService(&job, cur, exists); err != nil {
		a.jobsMu.Unlock()
		writeError(w, code, "%v", err)
		return
	}
	stored, err := json.Marshal(job)
	if err != nil {
		a.jobsMu.Unlock()
		writeError(w, http.StatusInternalServerError, "encode job: %v", err)
		return
	}
	if expected != "" {
		if !exists {
			a.jobsMu.Unlock()
			writeError(w, http.StatusConflict, "version: job %q does not exist, so version %q cannot match", job.ID, expected)
			return
		}
		if have := formatVersion(cur.Version); have != expected {
			a.jobsMu.Unlock()
			writeError(w, http.StatusConflict, "version: job %q is at version %q, not %q", job.ID, have, expected)
			return
		}
	}
	rec, err := a.store.Write(kindJob, job.ID, stored, false)
	a.jobsMu.Unlock()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "store job: %v", err)
		return
	}
	// Durable here; now tell the peers.
	a.sync.Publish([]state.Record{rec})
	a.notifyJobs()
	st, err := a.jobStatus(rec, a.allocationsByJob(rec.ID))
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	code := http.StatusOK
	if !exists {
		code = http.StatusCreated
	}
	writeJSON(w, code, st)
}

func (a *Agent) handleListJobs(w http.ResponseWriter, _ *http.Request) {
	recs := a.store.List(kindJob)
	allocs := a.allocationsByJob("")
	out := make([]api.JobStatus, 0, len(recs))
	for _, rec := range recs {
		st, err := a.jobStatus(rec, allocs)
		if err != nil {
			a.log.Warn("skip undecodable job", "err", err)
			continue
		}
		out = append(out, st)
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
	rec, found := a.store.Get(kindJob, id)
	if !found {
		writeError(w, http.StatusNotFound, "job %q not found", id)
		return
	}
	st, err := a.jobStatus(rec, a.allocationsByJob(rec.ID))
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *Agent) handleDeleteJob(w http.ResponseWriter, r *http.Request) {
	id, ok := pathJobID(w, r)
	if !ok {
		return
	}
	a.jobsMu.Lock()
	_, found := a.store.Get(kindJob, id)
	if !found {
		a.jobsMu.Unlock()
		writeError(w, http.StatusNotFound, "job %q not found", id)
		return
	}
	rec, err := a.store.Delete(kindJob, id)
	a.jobsMu.Unlock()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "delete job: %v", err)
		return
	}
	a.sync.Publish([]state.Record{rec})
	a.notifyJobs()
	writeJSON(w, http.StatusOK, api.DeleteResponse{ID: id, Deleted: true, Version: formatVersion(rec.Version)})
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
func (a *Agent) gcLoop(stop <-chan struct{}) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-stop:
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
// everyone. A node that comes back writes its records again.
func (a *Agent) forgetGoneNodes() {
	select {
	case <-a.joined:
	default:
		return
	}
	members := a.cluster.Members()
	present := map[string]bool{}
	others := 0
	for _, m := range members {
		present[m.Name] = m.Status != gossip.StatusLeft
		if m.Name != a.cfg.Gossip.NodeName && m.Status == gossip.StatusAlive {
			others++
		}
	}
	// A node that cannot reach anyone would take everyone for gone.
	if others == 0 {
		return
	}
	var out []state.Record
	for _, kind := range []string{kindEndpoint, kindUsage} {
		for _, rec := range a.store.List(kind) {
			var owner struct {
				Node string `json:"node"`
			}
			if json.Unmarshal(rec.Body, &owner) != nil || owner.Node == "" {
				continue
			}
			node := owner.Node
			if present[node] || scalerOf("gone/"+node, members) != a.cfg.Gossip.NodeName {
				continue
			}
			if del, err := a.store.Delete(kind, rec.ID); err == nil {
				out = append(out, del)
			}
		}
	}
	if len(out) > 0 {
		a.log.Info("forgot records of nodes that are gone", "records", len(out))
		a.sync.Publish(out)
	}
}

// updateJob changes a stored job in place for the agent itself (rollout,
// autoscaler): under jobsMu, only if the job still has the task with hash
// wantSpec, and only if change says so; then the write is pushed to peers
// and placement is told. It reports whether it wrote.
func (a *Agent) updateJob(id, wantSpec string, change func(*api.Job) bool) (bool, error) {
	a.jobsMu.Lock()
	cur, ok := a.store.Get(kindJob, id)
	var stored api.Job
	if !ok || json.Unmarshal(cur.Body, &stored) != nil || specHash(stored) != wantSpec || !change(&stored) {
		a.jobsMu.Unlock()
		return false, nil
	}
	stored.Version = ""
	raw, err := json.Marshal(stored)
	var rec state.Record
	if err == nil {
		rec, err = a.store.Write(kindJob, id, raw, false)
	}
	a.jobsMu.Unlock()
	if err != nil {
		return false, fmt.Errorf("store job %s: %w", id, err)
	}
	a.sync.Publish([]state.Record{rec})
	a.notifyJobs()
	return true, nil
}
