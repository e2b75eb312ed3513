package node

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/runtime"
)

// The planner is the agent's decisions as a pure function, in the spirit
// of raft's Step/Ready split: planPass reads no clock and does no I/O.
// Everything it needs comes in a planInput (gathered by the reconcile
// loop), and everything it decides comes out in a planOutput (executed by
// the loop): tasks to stop and start, endpoint records to publish, events,
// rollout writes, and the memory to carry to the next pass. The outcome of
// the starts comes back through settleStarts, also pure.

// planInput is what one reconcile pass knows.
type planInput struct {
	Self string
	Now  time.Time
	// Synced is false until the store has caught up with a peer once: a
	// job missing from it may only be missing here, so nothing is stopped.
	Synced     bool
	Assignment placement.Assignment
	// Jobs are the jobs as they run (automatic changes applied), by id.
	Jobs map[string]api.Job
	// Deleted are jobs known to be deleted (a tombstone is stored) that
	// local tasks still belong to.
	Deleted map[string]bool
	// Tasks is what the runtime reports, by task id.
	Tasks map[string]runtime.TaskStatus
	// Unavailable names the drivers that could not be asked (containerd
	// restarting): their tasks are unknown, not exited.
	Unavailable map[string]bool
	// Endpoints are every node's endpoint records, this node's included
	// (its last published view).
	Endpoints []Endpoint
	// Alive is the set of alive members.
	Alive map[string]bool
	// Health is the latest probe verdict per local task.
	Health         map[string]healthResult
	HandoffTimeout time.Duration
	Memory         planMemory
}

// planMemory is what passes remember: all of it is local to this node and
// measured on its own clock.
type planMemory struct {
	// MoveSince is when a task was first seen assigned elsewhere.
	MoveSince map[string]time.Time
	// Restarts is each task's crash history.
	Restarts map[string]restartState
	// StartedFor is the job version this node started each task under:
	// an automatic rollback judges only copies started by the update.
	StartedFor map[string]string
}

func newPlanMemory() planMemory {
	return planMemory{MoveSince: map[string]time.Time{}, Restarts: map[string]restartState{}, StartedFor: map[string]string{}}
}

func (m planMemory) clone() planMemory {
	c := newPlanMemory()
	maps.Copy(c.MoveSince, m.MoveSince)
	maps.Copy(c.Restarts, m.Restarts)
	maps.Copy(c.StartedFor, m.StartedFor)
	return c
}

func (m *planMemory) forget(id string) {
	delete(m.MoveSince, id)
	delete(m.Restarts, id)
	delete(m.StartedFor, id)
}

type restartState struct {
	attempts int
	next     time.Time
	exitCode int
	// lastFinished identifies the exit already counted; counted is false
	// while the history holds only failed starts.
	lastFinished time.Time
	counted      bool
}

// stableAfter is how long a replica must stay up for its crash count and
// backoff to reset.
const stableAfter = 10 * time.Minute

// rolloutMaxRestarts is how many exits of a new-spec replica fail an update.
const rolloutMaxRestarts = 3

// planOutput is what one pass decided.
type planOutput struct {
	// Stops run before Starts; a replica being replaced is in both.
	Stops  []stopDecision
	Starts []startDecision
	// Publish is this node's endpoint record per task id; records of
	// tasks not in it are withdrawn.
	Publish map[string]Endpoint
	// Running are the local tasks kept running: the overlay attaches them
	// and the prober checks them.
	Running map[string]runtime.TaskStatus
	// Unknown are the tasks of a driver that could not be asked, kept on
	// their last records: their health probes go on.
	Unknown map[string]bool
	Events  []planEvent
	// Rollbacks and Finished are rollout marks to write (job ids).
	Rollbacks []rollbackDecision
	Finished  []api.Job
	// InUse are the tasks whose files, volumes and addresses must stay
	// (a task whose stop fails is added back by the executor).
	InUse map[string]bool
	// Sweep is true when every driver answered: leftovers of tasks not in
	// InUse may then be removed.
	Sweep bool
	// Degraded is true when a driver this node needs could not be asked.
	Degraded bool
	Memory   planMemory
}

type stopDecision struct {
	ID     string
	Reason string
}

type startDecision struct {
	ID  string
	Rep placement.Replica
	Job api.Job
}

type planEvent struct {
	Kind    string
	Job     string
	Replica int
	Message string
}

type rollbackDecision struct {
	Job    api.Job
	Reason string
}

// startResult is the outcome of one startDecision.
type startResult struct {
	ID     string
	Status runtime.TaskStatus
	Err    error
	// SpecErr is set when the task could not even be described (a secret
	// missing): the replica fails without counting as a crash.
	SpecErr bool
}

func replicasOf(j api.Job) int {
	if j.Replicas == nil {
		return 1
	}
	return *j.Replicas
}

func driverOf(j api.Job) string {
	if j.Task.Driver == "" {
		return runtime.DriverExec
	}
	return j.Task.Driver
}

// planner holds one pass's derived views while planPass runs.
type planner struct {
	in       planInput
	out      planOutput
	mem      *planMemory
	desired  map[string]placement.Replica
	byTask   map[string]map[string]Endpoint // task id -> node -> endpoint
	byJob    map[string][]Endpoint
	unplaced map[string]map[int]bool
	rollable map[string]map[int]bool
	rolled   map[string]bool
}

// planPass decides one reconcile pass.
func planPass(in planInput) planOutput {
	p := &planner{
		in: in,
		out: planOutput{Publish: map[string]Endpoint{}, Running: map[string]runtime.TaskStatus{}, Unknown: map[string]bool{}, InUse: map[string]bool{},
			Sweep: len(in.Unavailable) == 0, Memory: in.Memory.clone()},
		desired:  map[string]placement.Replica{},
		byTask:   map[string]map[string]Endpoint{},
		byJob:    map[string][]Endpoint{},
		unplaced: map[string]map[int]bool{},
		rollable: map[string]map[int]bool{},
		rolled:   map[string]bool{},
	}
	p.mem = &p.out.Memory
	for _, rep := range in.Assignment.ByNode()[in.Self] {
		p.desired[taskID(rep.Job, rep.Index)] = rep
	}
	for _, u := range in.Assignment.Unplaced {
		if p.unplaced[u.Job] == nil {
			p.unplaced[u.Job] = map[int]bool{}
		}
		p.unplaced[u.Job][u.Replica] = true
	}
	for _, ep := range in.Endpoints {
		id := taskID(ep.Job, ep.Replica)
		if p.byTask[id] == nil {
			p.byTask[id] = map[string]Endpoint{}
		}
		p.byTask[id][ep.Node] = ep
		p.byJob[ep.Job] = append(p.byJob[ep.Job], ep)
	}
	stopping := p.planStops()
	p.planDesired(stopping)
	p.planUnknown()
	for _, id := range slices.Sorted(maps.Keys(in.Tasks)) {
		t := in.Tasks[id]
		if _, want := p.desired[id]; want && !stopping[id] {
			if job, ok := in.Jobs[t.Job]; ok {
				p.checkRollout(job, t)
			}
		}
	}
	p.planFinishedRollouts()
	for id := range p.desired {
		p.out.InUse[id] = true
	}
	for id := range in.Tasks {
		if !stopping[id] {
			p.out.InUse[id] = true
		}
	}
	for id := range p.mem.MoveSince {
		if _, still := in.Tasks[id]; !still || stopping[id] {
			delete(p.mem.MoveSince, id)
		}
	}
	return p.out
}

func (p *planner) event(kind, job string, replica int, format string, args ...any) {
	p.out.Events = append(p.out.Events, planEvent{Kind: kind, Job: job, Replica: replica, Message: fmt.Sprintf(format, args...)})
}

// planStops decides which local tasks go: removed or scaled-down jobs,
// replaced specs, and replicas placed elsewhere once their new copy runs.
func (p *planner) planStops() map[string]bool {
	in := p.in
	stopping := map[string]bool{}
	stop := func(id, reason string) {
		p.out.Stops = append(p.out.Stops, stopDecision{ID: id, Reason: reason})
		stopping[id] = true
		// A new spec or a new home starts with a clean history.
		p.mem.forget(id)
	}
	for _, id := range slices.Sorted(maps.Keys(in.Tasks)) {
		t := in.Tasks[id]
		job, known := in.Jobs[t.Job]
		_, want := p.desired[id]
		switch {
		case want && t.SpecHash == specHash(job):
			// Placed back here (or never moved): no handoff pending.
			delete(p.mem.MoveSince, id)
		case !known && in.Deleted[t.Job]:
			p.event("stopping", t.Job, t.Replica, "the job was removed")
			stop(id, "job removed")
		case !in.Synced:
			// The store may not have caught up yet: what runs here may be
			// a job this node has not heard of, a newer spec, or placed here by records
			// it lacks. Stopping waits for the first sync.
			if known && t.State == runtime.StateRunning {
				p.keep(t, job, "kept until this node has synced its state")
			}
		case want:
			if t.State == runtime.StateRunning && job.Update != nil && !p.mayReplace(job, t.Replica) {
				p.keep(t, job, fmt.Sprintf("waiting its turn in a rolling update (%d at a time)", job.Update.MaxParallel))
				continue
			}
			p.event("replacing", t.Job, t.Replica, "the job's spec changed")
			stop(id, "spec changed")
		case !known || t.Replica >= replicasOf(job):
			p.event("stopping", t.Job, t.Replica, "the job was removed or scaled down")
			stop(id, "removed or scaled down")
		default:
			// Moved elsewhere: make before break.
			owner := ""
			if nodes := in.Assignment.Placements[t.Job]; t.Replica < len(nodes) {
				owner = nodes[t.Replica]
			}
			if owner == "" || t.State != runtime.StateRunning {
				stop(id, "placed elsewhere")
				continue
			}
			since, seen := p.mem.MoveSince[id]
			if !seen {
				since = in.Now
				p.mem.MoveSince[id] = since
			}
			// The new copy must run the current spec and, when the job
			// has a health check, pass it before the old one stops.
			ep, has := p.byTask[id][owner]
			ready := has && in.Alive[owner] && ep.State == StateRunning && ep.SpecHash == specHash(job) &&
				(job.Health == nil || (ep.Healthy != nil && *ep.Healthy))
			if !ready && in.Now.Sub(since) < in.HandoffTimeout {
				p.keep(t, job, "moving to "+owner)
				continue
			}
			if ready {
				p.event("handed-over", t.Job, t.Replica, "%s runs it now", owner)
			} else {
				p.event("handed-over", t.Job, t.Replica, "%s did not report it running within %s; stopping anyway", owner, in.HandoffTimeout)
			}
			stop(id, "handed over to "+owner)
		}
	}
	return stopping
}

// keep publishes a task that stays as it is for now.
func (p *planner) keep(t runtime.TaskStatus, job api.Job, msg string) {
	p.out.Publish[t.ID] = p.endpointFor(t, job, msg)
	if t.State == runtime.StateRunning {
		p.out.Running[t.ID] = t
	}
}

// planDesired decides, for every replica placed here, whether it runs,
// waits, restarts or is started.
func (p *planner) planDesired(stopping map[string]bool) {
	in := p.in
	for _, id := range slices.Sorted(maps.Keys(p.desired)) {
		rep := p.desired[id]
		job := in.Jobs[rep.Job]
		t, exists := in.Tasks[id]
		if stopping[id] {
			exists = false
		} else if _, decided := p.out.Publish[id]; decided {
			continue // kept for a rolling update
		}
		if exists && t.State == runtime.StateRunning {
			// A replica that has stayed up long enough forgets its crashes.
			if _, ok := p.mem.Restarts[id]; ok && !t.StartedAt.IsZero() && in.Now.Sub(t.StartedAt) > stableAfter {
				delete(p.mem.Restarts, id)
			}
			p.keep(t, job, "")
			continue
		}
		if !exists && in.Unavailable[driverOf(job)] {
			p.keepUnknown(id, rep.Job, rep.Index, driverOf(job))
			continue
		}
		if exists { // exited
			if ep, keepDown := p.exited(t, job); keepDown {
				p.out.Publish[id] = ep
				continue
			}
		}
		if rs, ok := p.mem.Restarts[id]; ok && in.Now.Before(rs.next) {
			p.out.Publish[id] = Endpoint{Job: rep.Job, Replica: rep.Index, Node: in.Self, State: StatePending, Restarts: rs.attempts,
				Message: fmt.Sprintf("restarting in %s after exit code %d (crash loop: %d restarts)", rs.next.Sub(in.Now).Round(100*time.Millisecond), rs.exitCode, rs.attempts)}
			continue
		}
		if exists && !stopping[id] {
			// Clean the exited task before starting anew.
			p.out.Stops = append(p.out.Stops, stopDecision{ID: id, Reason: "restart"})
		}
		p.out.Starts = append(p.out.Starts, startDecision{ID: id, Rep: rep, Job: job})
	}
}

// keepUnknown republishes the last known endpoint of a task whose driver
// cannot be asked: it most likely still runs (containers outlive their
// daemon), so nothing is counted, removed or restarted.
func (p *planner) keepUnknown(id, job string, replica int, driver string) {
	p.out.Degraded = true
	p.out.Unknown[id] = true
	msg := driver + " is unreachable on this node: last known state"
	if ep, ok := p.byTask[id][p.in.Self]; ok {
		ep.Message = msg
		p.out.Publish[id] = ep
		return
	}
	p.out.Publish[id] = Endpoint{Job: job, Replica: replica, Node: p.in.Self, State: StatePending, Message: "waiting for " + driver + ", unreachable on this node"}
}

// planUnknown keeps the records of local tasks of an unreachable driver
// that are no longer placed here: they cannot be stopped yet, and still
// serve until they are.
func (p *planner) planUnknown() {
	if len(p.in.Unavailable) == 0 {
		return
	}
	for id, eps := range p.byTask {
		ep, mine := eps[p.in.Self]
		if !mine {
			continue
		}
		if _, decided := p.out.Publish[id]; decided {
			continue
		}
		if _, listed := p.in.Tasks[id]; listed {
			continue
		}
		job, known := p.in.Jobs[ep.Job]
		if !known || !p.in.Unavailable[driverOf(job)] {
			continue
		}
		p.out.InUse[id] = true
		p.keepUnknown(id, ep.Job, ep.Replica, driverOf(job))
	}
}

// exited decides what an exited task means under the job's restart
// policy. It reports keepDown=true when the task must stay down.
func (p *planner) exited(t runtime.TaskStatus, job api.Job) (Endpoint, bool) {
	policy := api.RestartAlways
	maxAttempts := 0
	if job.Restart != nil {
		policy, maxAttempts = job.Restart.Policy, job.Restart.MaxAttempts
	}
	ep := p.endpointFor(t, job, "")
	code := t.ExitCode
	ep.ExitCode = &code
	if policy == api.RestartNever || policy == api.RestartOnFailure && code == 0 {
		if code == 0 {
			ep.State = StateCompleted
		} else {
			ep.State = StateFailed
		}
		return ep, true
	}
	// Count each exit once: the same exited task is seen on every pass
	// until its backoff ends.
	rs, ok := p.mem.Restarts[t.ID]
	if !ok || !rs.counted || !t.FinishedAt.Equal(rs.lastFinished) {
		rs = p.noteExit(t.ID, job, code)
		rs.counted, rs.lastFinished = true, t.FinishedAt
		p.mem.Restarts[t.ID] = rs
		p.event("exited", t.Job, t.Replica, "exit code %d; restart %d in %s", code, rs.attempts, rs.next.Sub(p.in.Now).Round(100*time.Millisecond))
	}
	ep.Restarts = rs.attempts
	// attempts counts exits; the first run plus MaxAttempts restarts may
	// each exit before the replica is given up.
	if maxAttempts > 0 && rs.attempts > maxAttempts {
		ep.State = StateFailed
		ep.Restarts = rs.attempts - 1
		ep.Message = fmt.Sprintf("gave up after %d restarts (last exit code %d)", rs.attempts-1, code)
		return ep, true
	}
	return ep, false
}

// noteExit schedules a restart with capped exponential backoff.
func (p *planner) noteExit(id string, job api.Job, code int) restartState {
	backoff, maxBackoff := time.Second, time.Minute
	if job.Restart != nil {
		if job.Restart.Backoff > 0 {
			backoff = time.Duration(job.Restart.Backoff)
		}
		if job.Restart.MaxBackoff > 0 {
			maxBackoff = time.Duration(job.Restart.MaxBackoff)
		}
	}
	rs := p.mem.Restarts[id]
	delay := backoff << min(rs.attempts, 20)
	if delay > maxBackoff || delay <= 0 {
		delay = maxBackoff
	}
	rs.attempts++
	rs.exitCode = code
	rs.next = p.in.Now.Add(delay)
	p.mem.Restarts[id] = rs
	return rs
}

// endpointFor describes a local task as its record says it. The address
// is filled in when the overlay attaches it.
func (p *planner) endpointFor(t runtime.TaskStatus, job api.Job, msg string) Endpoint {
	ep := Endpoint{Job: t.Job, Replica: t.Replica, Node: p.in.Self, Message: msg, SpecHash: t.SpecHash, Since: t.StartedAt}
	switch t.State {
	case runtime.StateRunning:
		ep.State = StateRunning
	default:
		ep.State = StateFailed
		code := t.ExitCode
		ep.ExitCode = &code
	}
	if len(job.Task.Ports) > 0 {
		ep.Ports = map[string]int{}
		for _, port := range job.Task.Ports {
			ep.Ports[port.Name] = port.Port
		}
	}
	if rs, ok := p.mem.Restarts[t.ID]; ok {
		ep.Restarts = rs.attempts
	}
	if t.State != runtime.StateRunning {
		return ep
	}
	healthy := true
	if job.Health != nil {
		h := p.in.Health[t.ID]
		healthy = h.known && h.healthy
		if h.known {
			ep.Healthy = &h.healthy
			if !h.healthy && ep.Message == "" {
				ep.Message = "unhealthy: " + h.message
			}
		}
	}
	// Settled is measured here, on the clock that saw the task start, so
	// peers judging a rollout never compare clocks.
	if healthy && t.SpecHash == specHash(job) && !t.StartedAt.IsZero() && p.in.Now.Sub(t.StartedAt) >= minHealthyTime(job) {
		ep.Settled = true
	}
	return ep
}

func minHealthyTime(job api.Job) time.Duration {
	if job.Update != nil {
		return time.Duration(job.Update.MinHealthyTime)
	}
	return api.DefaultMinHealthyTime
}

// settleStarts turns the outcome of the starts into records, events and
// memory.
func settleStarts(in planInput, out *planOutput, results []startResult) {
	p := &planner{in: in, out: *out, rolled: map[string]bool{}}
	p.mem = &p.out.Memory
	defer func() { *out = p.out }()
	for _, rb := range out.Rollbacks {
		p.rolled[rb.Job.ID] = true
	}
	starts := map[string]startDecision{}
	for _, s := range out.Starts {
		starts[s.ID] = s
	}
	for _, r := range results {
		s, ok := starts[r.ID]
		if !ok {
			continue
		}
		rep, job := s.Rep, s.Job
		switch {
		case r.Err == nil:
			p.mem.StartedFor[r.ID] = job.Version
			p.event("started", rep.Job, rep.Index, "pid %d", r.Status.PID)
			p.keep(r.Status, job, "")
		case errors.Is(r.Err, runtime.ErrUnavailable):
			// The driver went away between listing and starting: unknown,
			// not a crash.
			p.keepUnknown(r.ID, rep.Job, rep.Index, driverOf(job))
		case r.SpecErr:
			p.out.Publish[r.ID] = Endpoint{Job: rep.Job, Replica: rep.Index, Node: in.Self, State: StateFailed, Message: r.Err.Error()}
		default:
			p.mem.StartedFor[r.ID] = job.Version
			p.event("start-failed", rep.Job, rep.Index, "%v", r.Err)
			rs := p.noteExit(r.ID, job, -1)
			p.out.Publish[r.ID] = Endpoint{Job: rep.Job, Replica: rep.Index, Node: in.Self, State: StateFailed, Message: r.Err.Error(), Restarts: rs.attempts}
			p.checkRollout(job, runtime.TaskStatus{ID: r.ID, Job: rep.Job, Replica: rep.Index, State: runtime.StateExited, ExitCode: -1, SpecHash: specHash(job)})
		}
	}
}

// Rolling updates without a coordinator: when a job's task changes, every
// node holding a replica of the old spec asks the same question of the
// same records (all nodes' endpoints): which replicas may be replaced now?
// A replica is "done" once a copy of the new spec has settled (its node
// saw it healthy for min_healthy_time), "old" while its running copy has
// the old spec, and "in flight" otherwise (being replaced, starting, not
// yet healthy). The old replicas with the lowest indexes may go while
// fewer than max_parallel are in flight. Nodes act on what they have
// seen, so two nodes deciding in the same instant may briefly exceed
// max_parallel; the next decision sees both.

// mayReplace reports whether replica i of job may be replaced now.
func (p *planner) mayReplace(job api.Job, i int) bool {
	if _, ok := p.rollable[job.ID]; !ok {
		p.rollable[job.ID], _ = rolloutState(job, p.byJob[job.ID], p.in.Alive, p.unplaced[job.ID])
	}
	return p.rollable[job.ID][i]
}

// rolloutState returns the replicas of job that may be replaced now, and
// whether every replica runs the current spec, settled.
func rolloutState(job api.Job, endpoints []Endpoint, alive map[string]bool, unplaced map[int]bool) (map[int]bool, bool) {
	current := specHash(job)
	want := replicasOf(job)
	maxParallel := 1
	if job.Update != nil {
		maxParallel = job.Update.MaxParallel
	}
	done := map[int]bool{}
	old := map[int]bool{}
	for _, ep := range endpoints {
		if !alive[ep.Node] || ep.State != StateRunning || ep.Replica >= want {
			continue
		}
		if ep.SpecHash != current {
			old[ep.Replica] = true
			continue
		}
		if ep.Settled {
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

// checkRollout decides a rollback when one of this node's replicas of the
// new spec failed its update: not healthy within healthy_deadline, or
// restarted repeatedly. Only jobs that asked for automatic rollback and
// have a previous task are judged, and only on copies this node started
// under the job's current version: an adopted or older copy says nothing
// about the new spec.
func (p *planner) checkRollout(job api.Job, t runtime.TaskStatus) {
	u, ro := job.Update, job.Rollout
	if u == nil || u.AutoRollback == nil || !*u.AutoRollback || ro == nil || ro.PreviousTask == nil || ro.Done || p.rolled[job.ID] {
		return
	}
	if t.SpecHash != specHash(job) || p.mem.StartedFor[t.ID] != job.Version {
		return
	}
	var reason string
	rs, crashed := p.mem.Restarts[t.ID]
	h := p.in.Health[t.ID]
	policy := api.RestartAlways
	if job.Restart != nil {
		policy = job.Restart.Policy
	}
	switch {
	case crashed && rs.attempts >= rolloutMaxRestarts:
		reason = fmt.Sprintf("replica %d of the new spec exited %d times (last exit code %d)", t.Replica, rs.attempts, rs.exitCode)
	case t.State == runtime.StateExited && policy != api.RestartAlways && t.ExitCode >= 0:
		reason = fmt.Sprintf("replica %d of the new spec exited (code %d) and its restart policy is %s", t.Replica, t.ExitCode, policy)
	case t.State == runtime.StateRunning && job.Health != nil && h.known && !h.healthy &&
		!t.StartedAt.IsZero() && p.in.Now.Sub(t.StartedAt) > time.Duration(u.HealthyDeadline):
		reason = fmt.Sprintf("replica %d of the new spec was not healthy within %s", t.Replica, time.Duration(u.HealthyDeadline))
	default:
		return
	}
	p.rolled[job.ID] = true
	p.out.Rollbacks = append(p.out.Rollbacks, rollbackDecision{Job: job, Reason: reason})
}

// planFinishedRollouts marks a job's update done once every replica runs
// the new spec settled, which ends the watch for a rollback. One node
// per job decides it: the alive node ranking first for the job.
func (p *planner) planFinishedRollouts() {
	alive := slices.Sorted(maps.Keys(p.in.Alive))
	for _, id := range slices.Sorted(maps.Keys(p.in.Jobs)) {
		job := p.in.Jobs[id]
		if job.Rollout == nil || job.Rollout.Done || job.Rollout.PreviousTask == nil || p.rolled[id] {
			continue
		}
		if ownerOf("rollout/"+id, alive) != p.in.Self {
			continue
		}
		if _, complete := rolloutState(job, p.byJob[id], p.in.Alive, p.unplaced[id]); complete {
			p.out.Finished = append(p.out.Finished, job)
		}
	}
}
