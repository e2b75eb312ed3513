package node

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/state"
)

// twoSides are the stores of two nodes on either side of a partition,
// each with its own clock.
type twoSides struct {
	a, b       records
	clockA     time.Time
	clockB     time.Time
	storeA, sB *state.Store
}

func newTwoSides(t *testing.T) *twoSides {
	t.Helper()
	s := &twoSides{clockA: planNow, clockB: planNow}
	var err error
	if s.storeA, err = state.OpenMemory(state.Options{Node: "a", Clock: func() time.Time { return s.clockA }}); err != nil {
		t.Fatal(err)
	}
	if s.sB, err = state.OpenMemory(state.Options{Node: "b", Clock: func() time.Time { return s.clockB }}); err != nil {
		t.Fatal(err)
	}
	s.a, s.b = records{store: s.storeA}, records{store: s.sB}
	return s
}

// heal exchanges every record both ways, as anti-entropy does.
func (s *twoSides) heal(t *testing.T) {
	t.Helper()
	for _, kind := range []string{kindJob, kindScale, kindRolloutMark} {
		for _, pair := range [][2]*state.Store{{s.storeA, s.sB}, {s.sB, s.storeA}} {
			recs := pair[0].List(kind)
			if pair[0].Deleted(kind, "web") {
				recs = append(recs, state.Record{Kind: kind, ID: "web", Deleted: true, Version: deletedVersion(pair[0], kind, "web")})
			}
			if _, err := pair[1].Apply(recs); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// deletedVersion finds a tombstone's version through the digest buckets.
func deletedVersion(s *state.Store, kind, id string) state.Version {
	for i := range state.NumBuckets {
		for _, r := range s.BucketRecords(i) {
			if r.Kind == kind && r.ID == id {
				return r.Version
			}
		}
	}
	return state.Version{}
}

func scaledWeb(replicas int) api.Job {
	return api.Job{ID: "web", Replicas: ptr(replicas), Task: api.Task{Driver: api.DriverExec, Command: []string{"/bin/sleep", "1d"}},
		Scaling: &api.ScalingPolicy{Min: 1, Max: 10, CPUPercent: 50, Cooldown: api.Duration(time.Minute)}}
}

func writeJob(t *testing.T, r records, j api.Job) api.Job {
	t.Helper()
	j.Version = ""
	if _, err := r.write(change{kindJob, j.ID, j}); err != nil {
		t.Fatal(err)
	}
	got, ok := r.job(j.ID)
	if !ok {
		t.Fatal("job not stored")
	}
	return got
}

func TestAutoscalerNeverUndoesALaterUserWrite(t *testing.T) {
	s := newTwoSides(t)
	read := writeJob(t, s.a, scaledWeb(2))
	s.heal(t)
	// Partition. On b, a user sets 5 replicas; later, on a, the autoscaler
	// decides 4 on the job it had read.
	s.clockB = planNow.Add(time.Second)
	writeJob(t, s.b, scaledWeb(5))
	s.clockA = planNow.Add(2 * time.Second)
	if _, err := s.a.write(change{kindScale, "web", scaleRecord{Job: "web", Base: read.Version, Replicas: 4, From: 2, At: s.clockA}}); err != nil {
		t.Fatal(err)
	}
	if j, _ := s.a.job("web"); *j.Replicas != 4 {
		t.Fatalf("before the heal, a runs %d replicas, want the autoscaler's 4", *j.Replicas)
	}
	s.heal(t)
	for name, side := range map[string]records{"a": s.a, "b": s.b} {
		j, ok := side.job("web")
		if !ok || *j.Replicas != 5 {
			t.Errorf("after the heal %s runs %v replicas, want the user's 5", name, j.Replicas)
		}
		if j.Autoscaled == nil || j.Autoscaled.To != 4 {
			t.Errorf("%s: the autoscaler's last decision is not shown: %+v", name, j.Autoscaled)
		}
	}
}

func TestAutomaticRecordsNeverBringBackADeletedJob(t *testing.T) {
	s := newTwoSides(t)
	old := api.Job{ID: "web", Replicas: ptr(2), Task: api.Task{Driver: api.DriverExec, Command: []string{"/bin/sleep", "1d"}}}
	writeJob(t, s.a, old)
	cur := old
	cur.Task.Args = []string{"v2"}
	prev := old.Task
	cur.Rollout = &api.Rollout{PreviousTask: &prev}
	read := writeJob(t, s.a, cur)
	s.heal(t)
	// Partition: b deletes the job; later a decides a rollback and an
	// autoscaling of the job it still has.
	s.clockB = planNow.Add(time.Second)
	if _, err := s.b.write(change{kind: kindJob, id: "web"}); err != nil {
		t.Fatal(err)
	}
	s.clockA = planNow.Add(2 * time.Second)
	if _, err := s.a.write(
		change{kindRolloutMark, "web", rolloutMark{Job: "web", Base: read.Version, Spec: specHash(read), RolledBack: "failed", At: s.clockA}},
		change{kindScale, "web", scaleRecord{Job: "web", Base: read.Version, Replicas: 3, At: s.clockA}},
	); err != nil {
		t.Fatal(err)
	}
	s.heal(t)
	for name, side := range map[string]records{"a": s.a, "b": s.b} {
		if j, ok := side.job("web"); ok {
			t.Errorf("%s: the deleted job is back: %+v", name, j)
		}
		if jobs := side.jobs(); len(jobs) != 0 {
			t.Errorf("%s: jobs %v", name, jobs)
		}
	}
}

func TestRollbackMarkAppliesToTheVersionItJudged(t *testing.T) {
	s := newTwoSides(t)
	old := api.Job{ID: "web", Task: api.Task{Driver: api.DriverExec, Command: []string{"/bin/sleep", "1d"}}}
	cur := old
	cur.Task.Args = []string{"broken"}
	prev := old.Task
	cur.Rollout = &api.Rollout{PreviousTask: &prev}
	read := writeJob(t, s.a, cur)
	if _, err := s.a.write(change{kindRolloutMark, "web", rolloutMark{Job: "web", Base: read.Version, Spec: specHash(read), RolledBack: "exited 3 times", At: planNow}}); err != nil {
		t.Fatal(err)
	}
	j, _ := s.a.job("web")
	if specHash(j) != specHash(old) || j.Rollout == nil || j.Rollout.RolledBack != "exited 3 times" || j.Rollout.PreviousTask != nil {
		t.Fatalf("rolled back job: task %v rollout %+v", j.Task.Args, j.Rollout)
	}
	if j.Version != read.Version {
		t.Errorf("a rollback changed the job's version (%s -> %s): clients' compare-and-set would break", read.Version, j.Version)
	}
	// The user's next write voids the mark.
	fixed := cur
	fixed.Task.Args = []string{"fixed"}
	fixed.Rollout = &api.Rollout{PreviousTask: &prev}
	if got := writeJob(t, s.a, fixed); specHash(got) != specHash(fixed) || got.Rollout.RolledBack != "" {
		t.Fatalf("after the user's update: task %v rollout %+v", got.Task.Args, got.Rollout)
	}
}

func TestDecodersRejectRecordsWhoseIDAndBodyDisagree(t *testing.T) {
	body, _ := json.Marshal(Endpoint{Job: "web", Replica: 0, Node: "b", State: StateRunning})
	if _, err := decodeEndpoint(state.Record{Kind: kindEndpoint, ID: endpointID("web", 0, "a"), Body: body}); err == nil {
		t.Error("an endpoint record of b stored under a's id was accepted")
	}
	if _, err := decodeEndpoint(state.Record{Kind: kindEndpoint, ID: endpointID("web", 0, "b"), Body: body}); err != nil {
		t.Errorf("a well-formed endpoint record: %v", err)
	}
	jb, _ := json.Marshal(api.Job{ID: "other"})
	if _, err := decodeJob(state.Record{Kind: kindJob, ID: "web", Body: jb}); err == nil {
		t.Error("a job record whose body names another job was accepted")
	}
	ub, _ := json.Marshal(usageRecord{Job: "web", Node: "b"})
	if _, err := decodeUsage(state.Record{Kind: kindUsage, ID: usageID("web", "a"), Body: ub}); err == nil {
		t.Error("a usage record under another node's id was accepted")
	}
	for _, raw := range []string{`{"job":"x"}`, `not json`} {
		if _, err := decodeScale(state.Record{Kind: kindScale, ID: "web", Body: []byte(raw)}); err == nil {
			t.Errorf("scale record %s accepted", raw)
		}
		if _, err := decodeRolloutMark(state.Record{Kind: kindRolloutMark, ID: "web", Body: []byte(raw)}); err == nil {
			t.Errorf("rollout record %s accepted", raw)
		}
	}
}
