package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/state"
)

// The kinds of records in the replicated store, and who writes them.
const (
	// kindJob records are the users' job specs, written only through the
	// API: id is the job id.
	kindJob = "job"
	// kindEndpoint records are written only by the node that runs the
	// replica: id "<job>.<replica>.<node>", so an old and a new owner never
	// write the same record during a move.
	kindEndpoint = "endpoint"
	// kindUsage records are what one node's replicas of an autoscaled job
	// use: id "<job>.<node>", written by that node.
	kindUsage = "usage"
	// kindScale records hold the autoscaler's replica count for a job:
	// id is the job id.
	kindScale = "scale"
	// kindRolloutMark records say a job's update finished or was rolled
	// back: id is the job id.
	kindRolloutMark = "rollout"
)

// Automatic changes (autoscaler, rollout, rollback) live in records of
// their own, each naming the version of the user's job record it was
// decided on. They apply only while that version is the stored one, so a
// user's later write or delete always wins over them, also across a
// partition, and they can never bring back a deleted job.

// scaleRecord is the autoscaler's decision for one job.
type scaleRecord struct {
	Job string `json:"job"`
	// Base is the version of the job record the decision was made on.
	Base     string    `json:"base"`
	Replicas int       `json:"replicas"`
	From     int       `json:"from"`
	At       time.Time `json:"at"`
	Reason   string    `json:"reason"`
}

// rolloutMark ends a job's update: done, or rolled back to the job's
// previous task.
type rolloutMark struct {
	Job  string `json:"job"`
	Base string `json:"base"`
	// Spec is the spec hash the update was judged on.
	Spec       string    `json:"spec"`
	Done       bool      `json:"done,omitempty"`
	RolledBack string    `json:"rolled_back,omitempty"`
	At         time.Time `json:"at"`
}

func endpointID(job string, replica int, node string) string {
	return job + "." + strconv.Itoa(replica) + "." + node
}

func usageID(job, node string) string { return job + "." + node }

func taskID(job string, replica int) string { return job + "-" + strconv.Itoa(replica) }

// splitTaskID reverses taskID; replica is -1 for an id it did not make.
func splitTaskID(id string) (job string, replica int) {
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return id, -1
	}
	n, err := strconv.Atoi(id[i+1:])
	if err != nil {
		return id, -1
	}
	return id[:i], n
}

// formatVersion renders a record version for the API. Clients treat it as
// opaque and echo it back for compare-and-set.
func formatVersion(v state.Version) string {
	return fmt.Sprintf("%d-%d-%s", v.WallNanos, v.Logical, v.Node)
}

// decodeJob decodes a user's job record as stored, without automatic
// changes.
func decodeJob(r state.Record) (api.Job, error) {
	var j api.Job
	if err := json.Unmarshal(r.Body, &j); err != nil {
		return j, fmt.Errorf("decode stored job %s: %w", r.ID, err)
	}
	if j.ID != r.ID {
		return j, fmt.Errorf("decode stored job %s: body names job %q", r.ID, j.ID)
	}
	j.Version = formatVersion(r.Version)
	return j, nil
}

// decodeEndpoint decodes an endpoint record; its id must be the one its
// body implies, so a node cannot publish under another's name by mistake.
func decodeEndpoint(r state.Record) (Endpoint, error) {
	var ep Endpoint
	if err := json.Unmarshal(r.Body, &ep); err != nil {
		return ep, fmt.Errorf("decode endpoint %s: %w", r.ID, err)
	}
	if ep.Node == "" || ep.Replica < 0 || endpointID(ep.Job, ep.Replica, ep.Node) != r.ID {
		return ep, fmt.Errorf("decode endpoint %s: body names %s", r.ID, endpointID(ep.Job, ep.Replica, ep.Node))
	}
	return ep, nil
}

func decodeUsage(r state.Record) (usageRecord, error) {
	var u usageRecord
	if err := json.Unmarshal(r.Body, &u); err != nil {
		return u, fmt.Errorf("decode usage %s: %w", r.ID, err)
	}
	if u.Node == "" || usageID(u.Job, u.Node) != r.ID {
		return u, fmt.Errorf("decode usage %s: body names %s", r.ID, usageID(u.Job, u.Node))
	}
	return u, nil
}

func decodeScale(r state.Record) (scaleRecord, error) {
	var s scaleRecord
	if err := json.Unmarshal(r.Body, &s); err != nil || s.Job != r.ID {
		return s, fmt.Errorf("decode scale record %s: %v", r.ID, errors.Join(err, errors.New("body and id disagree")))
	}
	return s, nil
}

func decodeRolloutMark(r state.Record) (rolloutMark, error) {
	var m rolloutMark
	if err := json.Unmarshal(r.Body, &m); err != nil || m.Job != r.ID {
		return m, fmt.Errorf("decode rollout record %s: %v", r.ID, errors.Join(err, errors.New("body and id disagree")))
	}
	return m, nil
}

// recordOwner reads the "node" field of a per-node record (endpoint,
// usage) without knowing its kind.
func recordOwner(r state.Record) string {
	var owner struct {
		Node string `json:"node"`
	}
	if json.Unmarshal(r.Body, &owner) != nil {
		return ""
	}
	return owner.Node
}

// applyAutomatic returns the job as it runs: the user's record with the
// automatic changes decided on exactly that record.
func applyAutomatic(j api.Job, scale *scaleRecord, mark *rolloutMark) api.Job {
	if scale != nil {
		// The cooldown runs on across users' writes, so the last decision
		// is shown whatever record it was made on.
		j.Autoscaled = &api.Autoscaled{At: scale.At, From: scale.From, To: scale.Replicas, Reason: scale.Reason}
		if scale.Base == j.Version && j.Scaling != nil {
			n := scale.Replicas
			j.Replicas = &n
		}
	}
	if mark != nil && mark.Base == j.Version && j.Rollout != nil && mark.Spec == specHash(j) {
		ro := *j.Rollout
		switch {
		case mark.RolledBack != "" && ro.PreviousTask != nil:
			j.Task = *ro.PreviousTask
			ro = api.Rollout{RolledBack: mark.RolledBack, Since: mark.At}
		case mark.Done:
			ro.Done = true
		}
		j.Rollout = &ro
	}
	return j
}

// recordStore is what the typed layer needs of the replicated store.
type recordStore interface {
	Get(kind, id string) (state.Record, bool)
	List(kind string) []state.Record
	Deleted(kind, id string) bool
	Write(kind, id string, body []byte, deleted bool) (state.Record, error)
	WriteSigned(kind, id string, body []byte, sign state.Signer) (state.Record, error)
}

// publisher sends records written here to peers.
type publisher interface {
	Publish(recs []state.Record)
}

// records is the typed face of the replicated store: one decoder per
// kind, the jobs as they run, and one way to write and publish.
type records struct {
	store recordStore
	pub   publisher
	// sign signs this node's endpoint and usage records with its p2p
	// identity key, so that peers can tell them from a key holder's
	// forgeries (see peerrecords.go). Nil writes them unsigned, which
	// peers that check signatures drop (tests and simulations only).
	sign state.Signer
}

// signedKind reports whether records of kind are signed by the node that
// owns them: those only their owner may write.
func signedKind(kind string) bool { return kind == kindEndpoint || kind == kindUsage }

// jobs returns every job as it runs, by id. Records that do not decode
// are left out (a peer's bug must not stop this node).
func (r records) jobs() map[string]api.Job {
	scales := map[string]*scaleRecord{}
	for _, rec := range r.store.List(kindScale) {
		if s, err := decodeScale(rec); err == nil {
			scales[s.Job] = &s
		}
	}
	marks := map[string]*rolloutMark{}
	for _, rec := range r.store.List(kindRolloutMark) {
		if m, err := decodeRolloutMark(rec); err == nil {
			marks[m.Job] = &m
		}
	}
	out := map[string]api.Job{}
	for _, rec := range r.store.List(kindJob) {
		j, err := decodeJob(rec)
		if err != nil {
			continue
		}
		out[j.ID] = applyAutomatic(j, scales[j.ID], marks[j.ID])
	}
	return out
}

// job returns one job as it runs.
func (r records) job(id string) (api.Job, bool) {
	rec, ok := r.store.Get(kindJob, id)
	if !ok {
		return api.Job{}, false
	}
	j, err := decodeJob(rec)
	if err != nil {
		return api.Job{}, false
	}
	var scale *scaleRecord
	if rec, ok := r.store.Get(kindScale, id); ok {
		if s, err := decodeScale(rec); err == nil {
			scale = &s
		}
	}
	var mark *rolloutMark
	if rec, ok := r.store.Get(kindRolloutMark, id); ok {
		if m, err := decodeRolloutMark(rec); err == nil {
			mark = &m
		}
	}
	return applyAutomatic(j, scale, mark), true
}

// endpoints returns every node's endpoint records.
func (r records) endpoints() []Endpoint {
	recs := r.store.List(kindEndpoint)
	out := make([]Endpoint, 0, len(recs))
	for _, rec := range recs {
		if ep, err := decodeEndpoint(rec); err == nil {
			out = append(out, ep)
		}
	}
	return out
}

// usage returns every node's usage records with their versions.
func (r records) usage() map[string]usageSeen {
	out := map[string]usageSeen{}
	for _, rec := range r.store.List(kindUsage) {
		if u, err := decodeUsage(rec); err == nil {
			out[rec.ID] = usageSeen{usage: u, version: rec.Version}
		}
	}
	return out
}

type usageSeen struct {
	usage   usageRecord
	version state.Version
}

// change is one record to write or delete.
type change struct {
	kind, id string
	value    any // nil deletes
}

// write stores the changes and pushes those that were written to peers
// in one batch. It stops at the first error.
func (r records) write(changes ...change) ([]state.Record, error) {
	var out []state.Record
	var err error
	for _, c := range changes {
		var body []byte
		if c.value != nil {
			if body, err = json.Marshal(c.value); err != nil {
				err = fmt.Errorf("encode %s %s: %w", c.kind, c.id, err)
				break
			}
		}
		var rec state.Record
		var werr error
		if c.value != nil && r.sign != nil && signedKind(c.kind) {
			rec, werr = r.store.WriteSigned(c.kind, c.id, body, r.sign)
		} else {
			rec, werr = r.store.Write(c.kind, c.id, body, c.value == nil)
		}
		if werr != nil {
			err = werr
			break
		}
		out = append(out, rec)
	}
	if len(out) > 0 && r.pub != nil {
		r.pub.Publish(out)
	}
	return out, err
}

// signUnsigned rewrites, signed, this node's endpoint and usage records
// stored before records were signed: peers drop unsigned ones, and an
// endpoint whose body does not change would otherwise never be rewritten.
func (r records) signUnsigned(self string) error {
	if r.sign == nil {
		return nil
	}
	var changes []change
	for _, kind := range []string{kindEndpoint, kindUsage} {
		for _, rec := range r.store.List(kind) {
			if len(rec.Sig) == 0 && rec.Version.Node == self && recordOwner(rec) == self {
				changes = append(changes, change{kind, rec.ID, json.RawMessage(rec.Body)})
			}
		}
	}
	if _, err := r.write(changes...); err != nil {
		return fmt.Errorf("sign this node's records: %w", err)
	}
	return nil
}
