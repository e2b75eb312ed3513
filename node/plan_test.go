package node

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/runtime"
)

// Table tests of the planner: every case is a planInput built by hand and
// the decisions it must give. No clock, no runtime, no network.

var planNow = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// job builds a containerd job with n replicas; opts adjust it.
func job(id string, n int, opts ...func(*api.Job)) api.Job {
	j := api.Job{ID: id, Replicas: ptr(n), Version: "v1",
		Task: api.Task{Driver: api.DriverContainerd, Image: "hello:1", Ports: []api.Port{{Name: "http", Port: 8080}}}}
	for _, o := range opts {
		o(&j)
	}
	return j
}

func withImage(img string) func(*api.Job) { return func(j *api.Job) { j.Task.Image = img } }

func withHealth(j *api.Job) { j.Health = &api.HealthCheck{HTTP: &api.HTTPCheck{Port: 8080}} }

func withUpdate(maxParallel int) func(*api.Job) {
	return func(j *api.Job) {
		j.Update = &api.UpdatePolicy{MaxParallel: maxParallel, MinHealthyTime: api.Duration(5 * time.Second),
			HealthyDeadline: api.Duration(time.Minute), AutoRollback: ptr(true)}
	}
}

// updatedFrom makes j an update of prev: the rollout remembers prev's task.
func updatedFrom(prev api.Job) func(*api.Job) {
	return func(j *api.Job) {
		task := prev.Task
		j.Rollout = &api.Rollout{PreviousTask: &task, Since: planNow.Add(-time.Minute)}
		j.Version = "v2"
	}
}

func running(j api.Job, replica int, startedAgo time.Duration) runtime.TaskStatus {
	return runtime.TaskStatus{ID: taskID(j.ID, replica), Job: j.ID, Replica: replica, State: runtime.StateRunning, PID: 1000 + replica,
		SpecHash: specHash(j), StartedAt: planNow.Add(-startedAgo), NetNS: "/run/netns/x-" + taskID(j.ID, replica), Driver: runtime.DriverContainerd}
}

func exited(j api.Job, replica, code int, finishedAgo time.Duration) runtime.TaskStatus {
	t := running(j, replica, finishedAgo+time.Second)
	t.State, t.PID, t.ExitCode, t.FinishedAt = runtime.StateExited, 0, code, planNow.Add(-finishedAgo)
	return t
}

// endpoint is a peer's record of a replica of j.
func endpoint(j api.Job, replica int, node string, healthy bool, settled bool) Endpoint {
	return Endpoint{Job: j.ID, Replica: replica, Node: node, State: StateRunning, SpecHash: specHash(j), Healthy: ptr(healthy), Settled: settled}
}

// input is a pass of node "a" in a cluster of a, b and c.
func input(jobs []api.Job, placements map[string][]string, tasks ...runtime.TaskStatus) planInput {
	in := planInput{Self: "a", Now: planNow, Synced: true, Assignment: placement.Assignment{Placements: placements},
		Jobs: map[string]api.Job{}, Tasks: map[string]runtime.TaskStatus{}, Alive: map[string]bool{"a": true, "b": true, "c": true},
		Health: map[string]healthResult{}, HandoffTimeout: 30 * time.Second, Memory: newPlanMemory()}
	for _, j := range jobs {
		in.Jobs[j.ID] = j
	}
	for _, t := range tasks {
		in.Tasks[t.ID] = t
	}
	return in
}

func stopIDs(out planOutput) []string {
	var ids []string
	for _, s := range out.Stops {
		ids = append(ids, s.ID)
	}
	return ids
}

func startIDs(out planOutput) []string {
	var ids []string
	for _, s := range out.Starts {
		ids = append(ids, s.ID)
	}
	return ids
}

func eventKinds(out planOutput) []string {
	var kinds []string
	for _, e := range out.Events {
		kinds = append(kinds, e.Kind)
	}
	return kinds
}

func TestPlanStartsWhatIsPlacedHereAndKeepsWhatRuns(t *testing.T) {
	web := job("web", 3)
	in := input([]api.Job{web}, map[string][]string{"web": {"a", "b", "a"}}, running(web, 0, time.Minute))
	out := planPass(in)
	if got := startIDs(out); !slices.Equal(got, []string{"web-2"}) {
		t.Errorf("starts = %v, want [web-2]", got)
	}
	if len(out.Stops) != 0 {
		t.Errorf("stops = %v, want none", stopIDs(out))
	}
	if ep := out.Publish["web-0"]; ep.State != StateRunning || ep.Ports["http"] != 8080 || ep.Node != "a" {
		t.Errorf("web-0 published as %+v", ep)
	}
	if _, ok := out.Running["web-0"]; !ok {
		t.Error("web-0 not kept running (no overlay address, no probe)")
	}
	if !out.Sweep || out.Degraded {
		t.Errorf("sweep=%v degraded=%v with every driver answering", out.Sweep, out.Degraded)
	}
}

func TestPlanHandoffWaitsForTheNewOwnerThenTimesOut(t *testing.T) {
	web := job("web", 1, withHealth)
	moved := map[string][]string{"web": {"b"}}
	for _, tc := range []struct {
		name      string
		peer      *Endpoint
		movedAgo  time.Duration
		wantStop  bool
		wantEvent string
	}{
		{"new owner not running yet", nil, 5 * time.Second, false, ""},
		{"new owner running but not healthy yet", ptr(endpoint(web, 0, "b", false, false)), 5 * time.Second, false, ""},
		{"new owner healthy", ptr(endpoint(web, 0, "b", true, false)), 5 * time.Second, true, "runs it now"},
		{"new owner silent past the handoff timeout", nil, 31 * time.Second, true, "did not report it running within 30s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input([]api.Job{web}, moved, running(web, 0, time.Hour))
			in.Memory.MoveSince["web-0"] = planNow.Add(-tc.movedAgo)
			if tc.peer != nil {
				in.Endpoints = []Endpoint{*tc.peer}
			}
			out := planPass(in)
			if stopped := slices.Contains(stopIDs(out), "web-0"); stopped != tc.wantStop {
				t.Fatalf("stopped = %v, want %v (events %+v)", stopped, tc.wantStop, out.Events)
			}
			if !tc.wantStop {
				if ep := out.Publish["web-0"]; ep.State != StateRunning || ep.Message != "moving to b" {
					t.Errorf("old copy published as %+v, want running, moving to b", ep)
				}
				if since := out.Memory.MoveSince["web-0"]; !since.Equal(planNow.Add(-tc.movedAgo)) {
					t.Errorf("move start forgotten: %v", since)
				}
				return
			}
			if len(out.Events) != 1 || out.Events[0].Kind != "handed-over" || !strings.Contains(out.Events[0].Message, tc.wantEvent) {
				t.Errorf("events = %+v, want handed-over %q", out.Events, tc.wantEvent)
			}
			if _, still := out.Memory.MoveSince["web-0"]; still {
				t.Error("handoff still remembered after the stop")
			}
		})
	}
}

func TestPlanHandoffClockStartsAtTheFirstPassThatSeesTheMove(t *testing.T) {
	web := job("web", 1)
	in := input([]api.Job{web}, map[string][]string{"web": {"b"}}, running(web, 0, time.Hour))
	out := planPass(in)
	if len(out.Stops) != 0 || !out.Memory.MoveSince["web-0"].Equal(planNow) {
		t.Fatalf("first pass: stops %v, move since %v", stopIDs(out), out.Memory.MoveSince["web-0"])
	}
	// The next pass, past the timeout, stops it.
	in.Memory, in.Now = out.Memory, planNow.Add(31*time.Second)
	if out := planPass(in); !slices.Contains(stopIDs(out), "web-0") {
		t.Fatal("not stopped after the handoff timeout")
	}
}

func TestPlanCrashLoopBacksOffThenGivesUp(t *testing.T) {
	web := job("web", 1, func(j *api.Job) {
		j.Restart = &api.RestartPolicy{Policy: api.RestartOnFailure, MaxAttempts: 2, Backoff: api.Duration(time.Second), MaxBackoff: api.Duration(4 * time.Second)}
	})
	here := map[string][]string{"web": {"a"}}
	mem := newPlanMemory()
	now := planNow
	wantDelays := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
	for attempt, delay := range wantDelays {
		task := exited(web, 0, 3, 0)
		task.FinishedAt = now
		in := input([]api.Job{web}, here, task)
		in.Memory, in.Now = mem, now
		out := planPass(in)
		rs := out.Memory.Restarts["web-0"]
		if rs.attempts != attempt+1 || !rs.next.Equal(now.Add(delay)) {
			t.Fatalf("exit %d: attempts %d, next in %s; want %d, %s", attempt+1, rs.attempts, rs.next.Sub(now), attempt+1, delay)
		}
		if attempt < 2 {
			if len(out.Starts) != 0 || out.Publish["web-0"].State != StatePending && out.Publish["web-0"].State != StateFailed {
				t.Fatalf("exit %d: started at once (%v) or published %+v", attempt+1, startIDs(out), out.Publish["web-0"])
			}
			// The same exit seen again is not counted twice.
			in.Memory = out.Memory
			again := planPass(in)
			if again.Memory.Restarts["web-0"].attempts != attempt+1 {
				t.Fatalf("exit %d counted twice", attempt+1)
			}
			// After the backoff it starts again.
			in.Now = rs.next.Add(time.Millisecond)
			later := planPass(in)
			if !slices.Equal(startIDs(later), []string{"web-0"}) || !slices.Contains(stopIDs(later), "web-0") {
				t.Fatalf("exit %d: after backoff starts %v stops %v, want the exited task cleaned and started", attempt+1, startIDs(later), stopIDs(later))
			}
			mem, now = later.Memory, in.Now.Add(time.Second)
			continue
		}
		// The third exit is past max_attempts=2: given up, not restarted.
		ep := out.Publish["web-0"]
		if len(out.Starts) != 0 || ep.State != StateFailed || !strings.Contains(ep.Message, "gave up after 2 restarts") {
			t.Fatalf("after the last attempt: starts %v, published %+v", startIDs(out), ep)
		}
	}
}

func TestPlanStableReplicaForgetsItsCrashes(t *testing.T) {
	web := job("web", 1)
	in := input([]api.Job{web}, map[string][]string{"web": {"a"}}, running(web, 0, 11*time.Minute))
	in.Memory.Restarts["web-0"] = restartState{attempts: 3, counted: true}
	if out := planPass(in); len(out.Memory.Restarts) != 0 {
		t.Fatalf("restarts kept: %+v", out.Memory.Restarts)
	}
	in.Tasks["web-0"] = running(web, 0, time.Minute)
	if out := planPass(in); out.Memory.Restarts["web-0"].attempts != 3 || out.Publish["web-0"].Restarts != 3 {
		t.Fatalf("a young replica forgot its crashes: %+v", out.Memory.Restarts)
	}
}

func TestPlanRollingUpdateReplacesMaxParallelAtATime(t *testing.T) {
	old := job("web", 4, withUpdate(2))
	cur := job("web", 4, withUpdate(2), withImage("hello:2"), updatedFrom(old))
	here := map[string][]string{"web": {"a", "a", "a", "a"}}
	for _, tc := range []struct {
		name     string
		tasks    []runtime.TaskStatus
		peers    []Endpoint
		wantStop []string
	}{
		{
			"first turn takes the two lowest",
			[]runtime.TaskStatus{running(old, 0, time.Hour), running(old, 1, time.Hour), running(old, 2, time.Hour), running(old, 3, time.Hour)},
			nil, []string{"web-0", "web-1"},
		},
		{
			"a new copy not yet settled holds a slot",
			[]runtime.TaskStatus{running(cur, 0, time.Second), running(old, 1, time.Hour), running(old, 2, time.Hour), running(old, 3, time.Hour)},
			[]Endpoint{endpoint(cur, 0, "a", true, false)}, []string{"web-1"},
		},
		{
			"settled copies free their slots",
			[]runtime.TaskStatus{running(cur, 0, time.Minute), running(cur, 1, time.Minute), running(old, 2, time.Hour), running(old, 3, time.Hour)},
			[]Endpoint{endpoint(cur, 0, "a", true, true), endpoint(cur, 1, "a", true, true)}, []string{"web-2", "web-3"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := input([]api.Job{cur}, here, tc.tasks...)
			in.Endpoints = tc.peers
			for _, task := range tc.tasks {
				if task.SpecHash != specHash(cur) {
					in.Endpoints = append(in.Endpoints, endpoint(old, task.Replica, "a", true, true))
				}
			}
			out := planPass(in)
			if got := stopIDs(out); !slices.Equal(got, tc.wantStop) {
				t.Fatalf("replaced %v, want %v", got, tc.wantStop)
			}
			if got := startIDs(out); !slices.Equal(got, tc.wantStop) {
				t.Fatalf("started %v, want %v", got, tc.wantStop)
			}
			for id, ep := range out.Publish {
				if !slices.Contains(tc.wantStop, id) && ep.SpecHash == specHash(old) && !strings.Contains(ep.Message, "waiting its turn") {
					t.Errorf("%s: old copy published as %+v, want waiting its turn", id, ep)
				}
			}
		})
	}
}

func TestPlanSettledIsMeasuredOnTheReplicasOwnNode(t *testing.T) {
	old := job("web", 1, withUpdate(1), withHealth)
	cur := job("web", 1, withUpdate(1), withHealth, withImage("hello:2"), updatedFrom(old))
	for _, tc := range []struct {
		name    string
		up      time.Duration
		healthy bool
		want    bool
	}{
		{"healthy for min_healthy_time", 6 * time.Second, true, true},
		{"healthy but too young", 2 * time.Second, true, false},
		{"old enough but unhealthy", time.Minute, false, false},
	} {
		in := input([]api.Job{cur}, map[string][]string{"web": {"a"}}, running(cur, 0, tc.up))
		in.Health["web-0"] = healthResult{known: true, healthy: tc.healthy}
		if got := planPass(in).Publish["web-0"].Settled; got != tc.want {
			t.Errorf("%s: settled = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPlanReplicaMovedDuringAnUpdate(t *testing.T) {
	old := job("web", 2, withUpdate(1), withHealth)
	cur := job("web", 2, withUpdate(1), withHealth, withImage("hello:2"), updatedFrom(old))
	// Replica 1 runs the old spec here but is now placed on b, which runs
	// the new spec healthy: the old copy is handed over, not replaced in
	// place, and no turn of the update is spent on it.
	in := input([]api.Job{cur}, map[string][]string{"web": {"b", "b"}}, running(old, 1, time.Hour))
	in.Memory.MoveSince["web-1"] = planNow.Add(-time.Second)
	in.Endpoints = []Endpoint{endpoint(cur, 0, "b", true, true), endpoint(cur, 1, "b", true, false)}
	out := planPass(in)
	if !slices.Equal(stopIDs(out), []string{"web-1"}) || len(out.Starts) != 0 {
		t.Fatalf("stops %v starts %v, want the old copy stopped and nothing started", stopIDs(out), startIDs(out))
	}
	if !slices.Contains(eventKinds(out), "handed-over") {
		t.Errorf("events %v, want handed-over", eventKinds(out))
	}
	// While b's new copy is not healthy, the old one keeps serving.
	in.Endpoints[1].Healthy = ptr(false)
	out = planPass(in)
	if len(out.Stops) != 0 || out.Publish["web-1"].State != StateRunning {
		t.Fatalf("stops %v, published %+v: the old copy must wait for a healthy new one", stopIDs(out), out.Publish["web-1"])
	}
}

func TestPlanScaleDownStopsTheHighestReplicas(t *testing.T) {
	web := job("web", 1)
	was := job("web", 3)
	in := input([]api.Job{web}, map[string][]string{"web": {"a"}},
		running(was, 0, time.Hour), running(was, 1, time.Hour), running(was, 2, time.Hour))
	out := planPass(in)
	if got := stopIDs(out); !slices.Equal(got, []string{"web-1", "web-2"}) {
		t.Fatalf("stops = %v, want [web-1 web-2]", got)
	}
	if _, ok := out.Publish["web-1"]; ok {
		t.Error("a stopped replica is still published")
	}
	if !out.InUse["web-0"] || len(out.Starts) != 0 {
		t.Errorf("in use %v, starts %v", out.InUse, startIDs(out))
	}
}

func TestPlanRuntimeUnavailableIsUnknownNotExited(t *testing.T) {
	web := job("web", 3, func(j *api.Job) { j.Task.Secrets = []api.DataMount{{Name: "db", Path: "/run/secrets/db"}} })
	batch := job("batch", 1, func(j *api.Job) { j.Task.Driver = api.DriverExec; j.Task.Image = "" })
	in := input([]api.Job{web, batch}, map[string][]string{"web": {"a", "b", "a"}, "batch": {"a"}}, running(batch, 0, time.Minute))
	in.Unavailable = map[string]bool{runtime.DriverContainerd: true}
	last := endpoint(web, 0, "a", true, true)
	last.IP, last.Restarts = "10.42.1.5", 2
	in.Endpoints = []Endpoint{last, endpoint(web, 1, "b", true, true)}
	in.Memory.Restarts["web-0"] = restartState{attempts: 2, counted: true}
	out := planPass(in)
	if len(out.Starts) != 0 || len(out.Stops) != 0 {
		t.Fatalf("starts %v stops %v while containerd is away", startIDs(out), stopIDs(out))
	}
	ep := out.Publish["web-0"]
	if ep.State != StateRunning || ep.IP != "10.42.1.5" || ep.Restarts != 2 || !strings.Contains(ep.Message, "unreachable") {
		t.Errorf("web-0 published %+v, want its last known record kept", ep)
	}
	if ep := out.Publish["web-2"]; ep.State != StatePending || ep.State == StateFailed {
		t.Errorf("web-2 (never seen) published %+v, want pending", ep)
	}
	if out.Memory.Restarts["web-0"].attempts != 2 || len(out.Events) != 0 || len(out.Rollbacks) != 0 {
		t.Errorf("counted something: restarts %+v events %+v rollbacks %+v", out.Memory.Restarts, out.Events, out.Rollbacks)
	}
	if out.Sweep || !out.Degraded || !out.InUse["web-0"] {
		t.Errorf("sweep=%v degraded=%v in use=%v: nothing of containerd's replicas may be removed", out.Sweep, out.Degraded, out.InUse)
	}
	if out.Publish["batch-0"].State != StateRunning {
		t.Errorf("the exec driver's replica: %+v", out.Publish["batch-0"])
	}
	// A start refused because containerd went away meanwhile is not a crash.
	in.Unavailable = nil
	out = planPass(in)
	settleStarts(in, &out, []startResult{{ID: "web-2", Err: fmt.Errorf("start: %w", runtime.ErrUnavailable)}})
	if out.Publish["web-2"].State == StateFailed || out.Memory.Restarts["web-2"].attempts != 0 || !out.Degraded {
		t.Errorf("unavailable start: published %+v, restarts %+v, degraded %v", out.Publish["web-2"], out.Memory.Restarts, out.Degraded)
	}
}

func TestPlanUnsyncedStoreStopsNothing(t *testing.T) {
	web := job("web", 1)
	ghost := job("ghost", 1) // runs here, unknown to this node's store
	for _, tc := range []struct {
		name       string
		jobs       []api.Job
		syncedStop []string
	}{
		{"empty store after a restart", nil, []string{"ghost-0", "web-0"}},
		// web is known and placed on b: synced, it waits for its handoff.
		{"store that lacks one job", []api.Job{web}, []string{"ghost-0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			placements := map[string][]string{}
			for _, j := range tc.jobs {
				placements[j.ID] = []string{"b"}
			}
			in := input(tc.jobs, placements, running(ghost, 0, time.Hour), running(web, 0, time.Hour))
			in.Synced = false
			out := planPass(in)
			if len(out.Stops) != 0 {
				t.Fatalf("stopped %v before the first sync", stopIDs(out))
			}
			if !out.InUse["ghost-0"] || !out.InUse["web-0"] {
				t.Errorf("in use %v: their files and addresses must stay", out.InUse)
			}
			// Synced, the same input stops what is not this node's.
			in.Synced = true
			if got := stopIDs(planPass(in)); !slices.Equal(got, tc.syncedStop) {
				t.Errorf("synced: stops %v, want %v", got, tc.syncedStop)
			}
		})
	}
	// A job deleted here (its tombstone is stored) stops even unsynced.
	in := input(nil, nil, running(ghost, 0, time.Hour))
	in.Synced, in.Deleted = false, map[string]bool{"ghost": true}
	if got := stopIDs(planPass(in)); !slices.Equal(got, []string{"ghost-0"}) {
		t.Errorf("deleted job unsynced: stops %v", got)
	}
}

func TestPlanDuplicatesAfterAPartitionHeals(t *testing.T) {
	// Both sides of a partition ran web-0; placement now gives it to b,
	// which runs it healthy: this node's copy goes, make before break.
	web := job("web", 1, withHealth)
	in := input([]api.Job{web}, map[string][]string{"web": {"b"}}, running(web, 0, time.Hour))
	in.Endpoints = []Endpoint{endpoint(web, 0, "a", true, true), endpoint(web, 0, "b", true, true)}
	out := planPass(in)
	if !slices.Equal(stopIDs(out), []string{"web-0"}) {
		t.Fatalf("stops %v, want this node's duplicate", stopIDs(out))
	}
	// On b (the owner), its copy stays and a's record is no reason to act.
	in.Self = "b"
	in.Tasks = map[string]runtime.TaskStatus{"web-0": running(web, 0, time.Hour)}
	if out := planPass(in); len(out.Stops) != 0 || out.Publish["web-0"].Node != "b" {
		t.Fatalf("owner: stops %v, published %+v", stopIDs(out), out.Publish["web-0"])
	}
}

func TestPlanRollbackJudgesOnlyCopiesStartedByTheUpdate(t *testing.T) {
	old := job("web", 1, withUpdate(1), withHealth)
	cur := job("web", 1, withUpdate(1), withHealth, withImage("hello:2"), updatedFrom(old))
	here := map[string][]string{"web": {"a"}}
	sick := func(startedFor string) planInput {
		in := input([]api.Job{cur}, here, running(cur, 0, 2*time.Minute))
		in.Health["web-0"] = healthResult{known: true, healthy: false, message: "status 500"}
		if startedFor != "" {
			in.Memory.StartedFor["web-0"] = startedFor
		}
		return in
	}
	out := planPass(sick("v2"))
	if len(out.Rollbacks) != 1 || !strings.Contains(out.Rollbacks[0].Reason, "not healthy within 1m0s") {
		t.Fatalf("rollbacks = %+v, want one for the unhealthy new copy", out.Rollbacks)
	}
	if out := planPass(sick("")); len(out.Rollbacks) != 0 {
		t.Errorf("an adopted copy caused a rollback: %+v", out.Rollbacks)
	}
	if out := planPass(sick("v1")); len(out.Rollbacks) != 0 {
		t.Errorf("a copy started under another version caused a rollback: %+v", out.Rollbacks)
	}
	// Repeated failed starts of the new spec also roll back, once.
	in := input([]api.Job{cur}, here)
	in.Memory.Restarts["web-0"] = restartState{attempts: 2}
	out = planPass(in)
	settleStarts(in, &out, []startResult{{ID: "web-0", Err: errors.New("image hello:2 is not present")}})
	if len(out.Rollbacks) != 1 || !strings.Contains(out.Rollbacks[0].Reason, "exited 3 times") {
		t.Fatalf("rollbacks after 3 failed starts: %+v", out.Rollbacks)
	}
	if out.Publish["web-0"].State != StateFailed || !slices.Contains(eventKinds(out), "start-failed") {
		t.Errorf("published %+v events %v", out.Publish["web-0"], eventKinds(out))
	}
}

func TestPlanFinishedRolloutIsDecidedByOneNode(t *testing.T) {
	old := job("web", 2, withUpdate(1))
	cur := job("web", 2, withUpdate(1), withImage("hello:2"), updatedFrom(old))
	in := input([]api.Job{cur}, map[string][]string{"web": {"b", "c"}})
	in.Endpoints = []Endpoint{endpoint(cur, 0, "b", true, true), endpoint(cur, 1, "c", true, true)}
	finished := 0
	for _, self := range []string{"a", "b", "c"} {
		in.Self = self
		finished += len(planPass(in).Finished)
	}
	if finished != 1 {
		t.Fatalf("%d nodes marked the update finished, want exactly 1", finished)
	}
	in.Endpoints[1].Settled = false
	for _, self := range []string{"a", "b", "c"} {
		in.Self = self
		if got := planPass(in).Finished; len(got) != 0 {
			t.Fatalf("%s finished an update with a replica not settled", self)
		}
	}
}

func TestPlanStartResultsBecomeRecordsAndMemory(t *testing.T) {
	web := job("web", 2)
	in := input([]api.Job{web}, map[string][]string{"web": {"a", "a"}})
	out := planPass(in)
	st := running(web, 0, 0)
	settleStarts(in, &out, []startResult{
		{ID: "web-0", Status: st},
		{ID: "web-1", Err: errors.New(`secret "db" does not exist`), SpecErr: true},
	})
	if ep := out.Publish["web-0"]; ep.State != StateRunning || out.Memory.StartedFor["web-0"] != "v1" {
		t.Errorf("started: %+v, started for %q", ep, out.Memory.StartedFor["web-0"])
	}
	if _, ok := out.Running["web-0"]; !ok {
		t.Error("started task not handed to the overlay and prober")
	}
	if ep := out.Publish["web-1"]; ep.State != StateFailed || !strings.Contains(ep.Message, "does not exist") || out.Memory.Restarts["web-1"].attempts != 0 {
		t.Errorf("spec error: %+v, restarts %+v", ep, out.Memory.Restarts["web-1"])
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	web := job("web", 6, withUpdate(2))
	next := job("web", 6, withUpdate(2), withImage("hello:2"), updatedFrom(web))
	db := job("db", 2)
	var tasks []runtime.TaskStatus
	for i := range 6 {
		tasks = append(tasks, running(web, i, time.Hour))
	}
	in := input([]api.Job{next, db}, map[string][]string{"web": {"a", "a", "b", "a", "a", "c"}, "db": {"a", "a"}}, tasks...)
	first := planPass(in)
	for range 20 {
		again := planPass(in)
		if !slices.Equal(stopIDs(again), stopIDs(first)) || !slices.Equal(startIDs(again), startIDs(first)) || !slices.Equal(eventKinds(again), eventKinds(first)) {
			t.Fatalf("two passes over one input differ: %v/%v vs %v/%v", stopIDs(first), startIDs(first), stopIDs(again), startIDs(again))
		}
	}
	// The input's memory is not changed by planning.
	if len(in.Memory.MoveSince) != 0 {
		t.Fatalf("planPass wrote into its input's memory: %+v", in.Memory.MoveSince)
	}
}
