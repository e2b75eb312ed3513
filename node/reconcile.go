package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// kindEndpoint records are written only by the node that runs the replica:
// id "<job>.<replica>.<node>", so an old and a new owner never write the
// same record during a move.
const kindEndpoint = "endpoint"

// Replica states as endpoint records and the API report them.
const (
	StatePending   = "pending"
	StateRunning   = "running"
	StateFailed    = "failed"
	StateCompleted = "completed"
)

// TaskRunner is what the reconcile loop needs of a runtime driver.
type TaskRunner interface {
	Start(ctx context.Context, spec runtime.TaskSpec) (runtime.TaskStatus, error)
	Stop(ctx context.Context, id string) error
	List(ctx context.Context) ([]runtime.TaskStatus, error)
}

// Endpoint is one replica as its node publishes it.
type Endpoint struct {
	Job      string         `json:"job"`
	Replica  int            `json:"replica"`
	Node     string         `json:"node"`
	State    string         `json:"state"`
	IP       string         `json:"ip,omitempty"`
	Ports    map[string]int `json:"ports,omitempty"`
	Healthy  *bool          `json:"healthy,omitempty"`
	ExitCode *int           `json:"exit_code,omitempty"`
	Restarts int            `json:"restarts,omitempty"`
	Message  string         `json:"message,omitempty"`
	SpecHash string         `json:"spec_hash,omitempty"`
	// Since is when the running task started (rolling updates count how
	// long a new replica has been healthy from it).
	Since time.Time `json:"since,omitzero"`
}

func endpointID(job string, replica int, node string) string {
	return job + "." + strconv.Itoa(replica) + "." + node
}

func taskID(job string, replica int) string { return job + "-" + strconv.Itoa(replica) }

// startCall is one replica start of a reconcile pass and its outcome.
type startCall struct {
	id   string
	rep  placement.Replica
	job  api.Job
	spec runtime.TaskSpec
	st   runtime.TaskStatus
	err  error
}

// parallelStarts bounds the starts in flight: each spawns a shim or a
// process and may pull an image.
const parallelStarts = 4

// runStarts runs the starts, parallelStarts at a time, each with its own
// deadline (a start may pull the image first), and fills in their results.
func (r *reconciler) runStarts(ctx context.Context, calls []startCall) {
	sem := make(chan struct{}, parallelStarts)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		sem <- struct{}{}
		go func(c *startCall) {
			defer func() { <-sem; wg.Done() }()
			sctx, cancel := context.WithTimeout(ctx, taskCallTimeout+r.a.cfg.PullTimeout)
			defer cancel()
			c.st, c.err = r.runner.Start(sctx, c.spec)
		}(&calls[i])
	}
	wg.Wait()
}

// unplacedOf is the set of a job's replicas that fit on no node.
func unplacedOf(asg placement.Assignment, job string) map[int]bool {
	out := map[int]bool{}
	for _, u := range asg.Unplaced {
		if u.Job == job {
			out[u.Replica] = true
		}
	}
	return out
}

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

// specHash identifies what a replica runs, so a changed spec replaces it.
func specHash(j api.Job) string {
	raw, _ := json.Marshal(struct {
		Task api.Task `json:"task"`
	}{j.Task})
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:6])
}

// ReconcileConfig tunes the reconcile loop.
type ReconcileConfig struct {
	// Debounce coalesces bursts of membership changes (a mass join or a
	// rack failing), which move many replicas at once.
	Debounce time.Duration
	// JobDebounce coalesces bursts of job writes; short, because it is
	// most of the submit-to-running latency of a single job.
	JobDebounce time.Duration
	// Resync re-runs the loop even without changes (repairs, restarts).
	Resync time.Duration
	// HandoffTimeout bounds make-before-break: a moved replica's old copy
	// is stopped when the new owner reports it running, or after this.
	HandoffTimeout time.Duration
	// LoadFactor is placement's bounded-load factor c.
	LoadFactor float64
}

// DefaultReconcileConfig returns the defaults.
func DefaultReconcileConfig() ReconcileConfig {
	return ReconcileConfig{Debounce: 200 * time.Millisecond, JobDebounce: 20 * time.Millisecond, Resync: 2 * time.Second, HandoffTimeout: 30 * time.Second, LoadFactor: placement.DefaultLoadFactor}
}

// reconciler computes the cluster-wide assignment and drives this node's
// share. Its run goroutine owns every field but snapshot.
type reconciler struct {
	a      *Agent
	runner TaskRunner
	cfg    ReconcileConfig

	prev      placement.Assignment
	moveSince map[string]time.Time // task id -> when it was assigned elsewhere
	restarts  map[string]*restartState

	health *prober

	// attached is each local replica's overlay address, with the netns
	// and subnet generation it was attached for.
	attached map[string]attachment
	// netMoved is signalled when the node's overlay subnet changed.
	netMoved chan struct{}
	// membersSeen fingerprints the membership the last change was about.
	membersSeen uint64

	mu       sync.Mutex // guards snapshot
	snapshot placement.Assignment
}

type attachment struct {
	netns      string
	generation int
	ip         netip.Addr
}

type restartState struct {
	attempts int
	next     time.Time
	exitCode int
	// lastFinished identifies the exit already counted.
	lastFinished time.Time
	counted      bool
}

// stableAfter is how long a replica must stay up for its crash count and
// backoff to reset.
const stableAfter = 10 * time.Minute

func newReconciler(a *Agent, runner TaskRunner, cfg ReconcileConfig) *reconciler {
	return &reconciler{a: a, runner: runner, cfg: cfg, moveSince: map[string]time.Time{}, restarts: map[string]*restartState{},
		attached: map[string]attachment{}, netMoved: make(chan struct{}, 1),
		health: newProber(a.healthChanged, func(id string, healthy bool, msg string) {
			job, replica := splitTaskID(id)
			if healthy {
				a.events.add("healthy", job, replica, "health check passes")
			} else {
				a.events.add("unhealthy", job, replica, msg)
			}
		})}
}

// Unplaced returns the replicas of job ("" for every job) that fit
// nowhere, from the last run.
func (r *reconciler) Unplaced(job string) []placement.Unplaced {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []placement.Unplaced
	for _, u := range r.snapshot.Unplaced {
		if job == "" || u.Job == job {
			out = append(out, u)
		}
	}
	return out
}

func (r *reconciler) run(ctx context.Context) {
	if !r.a.waitJoined(ctx) {
		return
	}
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	defer r.health.stopAll()
	var debounce <-chan time.Time
	var due time.Time
	// schedule runs a pass after d unless one is due sooner: a steady
	// stream of changes cannot postpone the pass for ever.
	schedule := func(d time.Duration) {
		if at := time.Now().Add(d); debounce == nil || at.Before(due) {
			due, debounce = at, time.After(d)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.a.cluster.Changes():
			// Load tags change every few seconds and do not move replicas.
			if key := membershipKey(r.a.cluster.Members()); key != r.membersSeen {
				r.membersSeen = key
				schedule(r.cfg.Debounce)
			}
		case <-r.a.jobsChanged:
			schedule(r.cfg.JobDebounce)
		case <-r.a.endpointsChanged:
			// Only make-before-break waits on peers' endpoints.
			if len(r.moveSince) > 0 {
				schedule(r.cfg.Debounce)
			}
		case <-r.netMoved:
			// New addresses for every replica, published at once.
			r.pass(ctx)
		case <-r.a.healthChanged:
			// Publish health at once: load balancers act on it.
			r.pass(ctx)
		case <-debounce:
			debounce = nil
			r.pass(ctx)
		case <-resync.C:
			r.pass(ctx)
		}
	}
}

// networkMoved is called (from the overlay's goroutine) when the node's
// subnet changed: every replica needs a new address.
func (r *reconciler) networkMoved() {
	select {
	case r.netMoved <- struct{}{}:
	default:
	}
}

// attach makes sure a running replica is on the overlay and returns its
// address; attaching is repeated only for a new netns or a new subnet.
func (r *reconciler) attach(t runtime.TaskStatus) (netip.Addr, error) {
	if r.a.net == nil || t.NetNS == "" {
		return netip.Addr{}, nil
	}
	gen, _ := r.a.net.state()
	if at, ok := r.attached[t.ID]; ok && at.netns == t.NetNS && at.generation == gen {
		return at.ip, nil
	}
	ip, err := r.a.net.attach(context.Background(), t.NetNS, t.ID)
	if err != nil {
		delete(r.attached, t.ID)
		return netip.Addr{}, fmt.Errorf("attach to the overlay: %w", err)
	}
	r.attached[t.ID] = attachment{netns: t.NetNS, generation: gen, ip: ip}
	return ip, nil
}

// view is the alive, non-draining members as placement sees them.
func (r *reconciler) view() ([]placement.Node, map[string]bool) {
	alive := map[string]bool{}
	var nodes []placement.Node
	for _, m := range r.a.cluster.Members() {
		if m.Status != gossip.StatusAlive {
			continue
		}
		alive[m.Name] = true
		if m.Meta.Health == gossip.HealthDrain {
			continue
		}
		nodes = append(nodes, placement.Node{
			Name: m.Name, CPUMillis: m.Meta.Capacity.CPUMillis, MemoryMB: m.Meta.Capacity.MemoryMB, Labels: m.Meta.Labels,
		})
	}
	return nodes, alive
}

func (r *reconciler) jobs() (map[string]api.Job, []placement.Job) {
	byID := map[string]api.Job{}
	var out []placement.Job
	for _, rec := range r.a.store.List(kindJob) {
		j, err := jobFromRecord(rec)
		if err != nil {
			continue
		}
		byID[j.ID] = j
		pj := placement.Job{ID: j.ID, Replicas: 1, CPUMillis: j.Task.Resources.CPUMillis, MemoryMB: j.Task.Resources.MemoryMB}
		if j.Replicas != nil {
			pj.Replicas = *j.Replicas
		}
		for _, c := range j.Constraints {
			pj.Constraints = append(pj.Constraints, placement.Constraint{Label: c.Label, Op: c.Op, Value: c.Value})
		}
		out = append(out, pj)
	}
	return byID, out
}

// peerEndpoints returns every endpoint record by task id -> node -> endpoint.
func (r *reconciler) peerEndpoints() map[string]map[string]Endpoint {
	out := map[string]map[string]Endpoint{}
	for _, rec := range r.a.store.List(kindEndpoint) {
		var ep Endpoint
		if json.Unmarshal(rec.Body, &ep) != nil {
			continue
		}
		k := taskID(ep.Job, ep.Replica)
		if out[k] == nil {
			out[k] = map[string]Endpoint{}
		}
		out[k][ep.Node] = ep
	}
	return out
}

// pass is one reconcile round: place, then start, stop and publish.
func (r *reconciler) pass(ctx context.Context) {
	self := r.a.cfg.Gossip.NodeName
	view, alive := r.view()
	jobs, pjobs := r.jobs()

	start := time.Now()
	asg := placement.Assign(view, pjobs, placement.Options{LoadFactor: r.cfg.LoadFactor})
	r.a.metrics.placementRuns.Inc()
	r.a.metrics.placementSeconds.Observe(time.Since(start).Seconds())
	r.a.metrics.placementMoved.Add(float64(placement.Movement(r.prev, asg)))
	r.a.metrics.unplaced.Set(float64(len(asg.Unplaced)))
	r.prev = asg
	r.mu.Lock()
	r.snapshot = asg
	r.mu.Unlock()

	desired := map[string]placement.Replica{}
	for _, rep := range asg.ByNode()[self] {
		desired[taskID(rep.Job, rep.Index)] = rep
	}

	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tasks, err := r.runner.List(tctx)
	switch {
	case err == nil:
	case errors.Is(err, runtime.ErrUnavailable):
		// containerd is down or not installed: go on with the other
		// driver's tasks; containerd replicas fail to start with the
		// reason in their allocation.
		r.a.log.Debug("list tasks", "err", err)
	default:
		r.a.log.Warn("list tasks", "err", err)
		return
	}
	actual := map[string]runtime.TaskStatus{}
	for _, t := range tasks {
		actual[t.ID] = t
	}
	peers := r.peerEndpoints()
	published := map[string]Endpoint{}

	// Stop what should not run here.
	rollable := map[string]map[int]bool{}
	for id, t := range actual {
		job, ok := jobs[t.Job]
		replicas := 0
		if ok && job.Replicas != nil {
			replicas = *job.Replicas
		} else if ok {
			replicas = 1
		}
		_, want := desired[id]
		switch {
		case want && t.SpecHash == specHash(job):
			// Placed back here (or never moved): no handoff pending.
			delete(r.moveSince, id)
			continue
		case want:
			if t.State == runtime.StateRunning && job.Update != nil {
				if _, ok := rollable[job.ID]; !ok {
					rollable[job.ID], _ = r.rolloutState(job, alive, unplacedOf(asg, job.ID))
				}
				if !rollable[job.ID][t.Replica] {
					published[id] = r.endpointFor(t, job, fmt.Sprintf("waiting its turn in a rolling update (%d at a time)", job.Update.MaxParallel))
					continue
				}
			}
			r.a.log.Info("replacing replica with changed spec", "task", id)
			r.a.events.add("replacing", t.Job, t.Replica, "the job's spec changed")
		case !ok || t.Replica >= replicas:
			r.a.log.Info("stopping replica of removed or scaled-down job", "task", id)
			r.a.events.add("stopping", t.Job, t.Replica, "the job was removed or scaled down")
		default:
			// Moved elsewhere: make before break.
			owner := ""
			if nodes := asg.Placements[t.Job]; t.Replica < len(nodes) {
				owner = nodes[t.Replica]
			}
			if owner != "" && t.State == runtime.StateRunning {
				since, seen := r.moveSince[id]
				if !seen {
					since = time.Now()
					r.moveSince[id] = since
				}
				// The new copy must run the current spec and, when the job
				// has a health check, pass it before the old one stops.
				ep, has := peers[id][owner]
				ready := has && alive[owner] && ep.State == StateRunning && ep.SpecHash == specHash(job) &&
					(job.Health == nil || (ep.Healthy != nil && *ep.Healthy))
				if !ready && time.Since(since) < r.cfg.HandoffTimeout {
					published[id] = r.endpointFor(t, job, "moving to "+owner)
					continue
				}
				r.a.log.Info("handing replica over", "task", id, "to", owner, "new_owner_running", ready)
				if ready {
					r.a.events.add("handed-over", t.Job, t.Replica, owner+" runs it now")
				} else {
					r.a.events.add("handed-over", t.Job, t.Replica, fmt.Sprintf("%s did not report it running within %s; stopping anyway", owner, r.cfg.HandoffTimeout))
				}
			}
		}
		delete(r.moveSince, id)
		if err := r.stopTask(ctx, id); err != nil {
			r.a.log.Warn("stop replica", "task", id, "err", err)
			continue
		}
		delete(actual, id)
		// A new spec or a new home starts with a clean restart history.
		delete(r.restarts, id)
	}
	for id := range r.moveSince {
		if _, still := actual[id]; !still {
			delete(r.moveSince, id)
		}
	}

	// Start what should run here and is not running.
	var starts []startCall
	for id, rep := range desired {
		job := jobs[rep.Job]
		t, exists := actual[id]
		if exists && t.State == runtime.StateRunning {
			// A replica that has stayed up long enough forgets its crashes.
			if rs := r.restarts[id]; rs != nil && !t.StartedAt.IsZero() && time.Since(t.StartedAt) > stableAfter {
				delete(r.restarts, id)
			}
			published[id] = r.endpointFor(t, job, "")
			continue
		}
		if exists { // exited
			if ep, keep := r.exited(t, job); keep {
				published[id] = ep
				continue
			}
		}
		rs := r.restarts[id]
		if rs != nil && time.Now().Before(rs.next) {
			published[id] = Endpoint{Job: rep.Job, Replica: rep.Index, Node: self, State: StatePending, Restarts: rs.attempts,
				Message: fmt.Sprintf("restarting in %s after exit code %d (crash loop: %d restarts)", time.Until(rs.next).Round(100*time.Millisecond), rs.exitCode, rs.attempts)}
			continue
		}
		if exists {
			_ = r.stopTask(ctx, id) // clean the exited task before starting anew
		}
		spec, err := r.taskSpec(job, rep)
		if err != nil {
			published[id] = Endpoint{Job: rep.Job, Replica: rep.Index, Node: self, State: StateFailed, Message: err.Error()}
			continue
		}
		starts = append(starts, startCall{id: id, rep: rep, job: job, spec: spec})
	}
	// The starts themselves run a few at a time (a slow image pull does
	// not hold up the others); their results are handled here, in order.
	r.runStarts(ctx, starts)
	if ctx.Err() != nil {
		return // shutting down: not the tasks' fault
	}
	for _, c := range starts {
		id, rep, job := c.id, c.rep, c.job
		if c.err != nil {
			r.a.log.Warn("start replica", "task", id, "err", c.err)
			r.a.events.add("start-failed", rep.Job, rep.Index, c.err.Error())
			published[id] = Endpoint{Job: rep.Job, Replica: rep.Index, Node: self, State: StateFailed, Message: c.err.Error()}
			r.noteExit(id, job, -1)
			r.checkRollout(job, runtime.TaskStatus{ID: id, Job: rep.Job, Replica: rep.Index, State: runtime.StateExited, ExitCode: -1, SpecHash: c.spec.SpecHash})
			continue
		}
		r.a.log.Info("started replica", "task", id, "pid", c.st.PID)
		r.a.events.add("started", rep.Job, rep.Index, fmt.Sprintf("pid %d", c.st.PID))
		published[id] = r.endpointFor(c.st, job, "")
	}
	for id, t := range actual {
		if _, want := desired[id]; want {
			if job, ok := jobs[t.Job]; ok {
				r.checkRollout(job, t)
			}
		}
	}
	for _, job := range jobs {
		r.finishRollout(job, alive, unplacedOf(asg, job.ID))
	}
	keep := map[string]bool{}
	for id, ep := range published {
		if ep.State == StateRunning {
			keep[id] = true
		}
	}
	r.health.retain(keep)
	r.publish(published)
	inUse := map[string]bool{}
	for id := range desired {
		inUse[id] = true
	}
	for id := range actual {
		inUse[id] = true
	}
	r.sweepEphemeral(inUse)
	if err == nil { // a driver that did not answer may still run replicas
		r.a.sweepData(inUse)
	}
	if r.a.net != nil && err == nil {
		r.a.net.sweep(ctx, inUse)
		for id := range r.attached {
			if !inUse[id] {
				delete(r.attached, id)
			}
		}
	}
}

// taskCallTimeout bounds one Start or Stop (a stop waits out the task's
// grace period); each call gets its own, so replacing many replicas in one
// pass does not starve the last ones.
const taskCallTimeout = 30 * time.Second

func (r *reconciler) stopTask(ctx context.Context, id string) error {
	sctx, cancel := context.WithTimeout(ctx, taskCallTimeout)
	defer cancel()
	err := r.runner.Stop(sctx, id)
	if err == nil && r.a.net != nil {
		r.a.net.detach(ctx, "", id)
		delete(r.attached, id)
	}
	return err
}

// exited decides what an exited task means under the job's restart policy.
// It reports keep=true when the task must stay down.
func (r *reconciler) exited(t runtime.TaskStatus, job api.Job) (Endpoint, bool) {
	policy := "always"
	maxAttempts := 0
	if job.Restart != nil {
		policy, maxAttempts = job.Restart.Policy, job.Restart.MaxAttempts
	}
	ep := r.endpointFor(t, job, "")
	code := t.ExitCode
	ep.ExitCode = &code
	if policy == "never" || policy == "on_failure" && code == 0 {
		if code == 0 {
			ep.State = StateCompleted
		} else {
			ep.State = StateFailed
		}
		return ep, true
	}
	// Count each exit once: the same exited task is seen on every pass
	// until its backoff ends.
	rs := r.restarts[t.ID]
	if rs == nil || !rs.counted || !t.FinishedAt.Equal(rs.lastFinished) {
		r.noteExit(t.ID, job, code)
		rs = r.restarts[t.ID]
		rs.counted, rs.lastFinished = true, t.FinishedAt
		r.a.events.add("exited", t.Job, t.Replica, fmt.Sprintf("exit code %d; restart %d in %s", code, rs.attempts, time.Until(rs.next).Round(100*time.Millisecond)))
	}
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
func (r *reconciler) noteExit(id string, job api.Job, code int) {
	backoff, maxBackoff := time.Second, time.Minute
	if job.Restart != nil {
		if job.Restart.Backoff > 0 {
			backoff = time.Duration(job.Restart.Backoff)
		}
		if job.Restart.MaxBackoff > 0 {
			maxBackoff = time.Duration(job.Restart.MaxBackoff)
		}
	}
	rs := r.restarts[id]
	if rs == nil {
		rs = &restartState{}
		r.restarts[id] = rs
	}
	delay := backoff << min(rs.attempts, 20)
	if delay > maxBackoff || delay <= 0 {
		delay = maxBackoff
	}
	rs.attempts++
	rs.exitCode = code
	rs.next = time.Now().Add(delay)
}

func (r *reconciler) taskSpec(job api.Job, rep placement.Replica) (runtime.TaskSpec, error) {
	env := map[string]string{}
	for k, v := range job.Task.Env {
		env[k] = v
	}
	env["SHOAL_JOB"] = job.ID
	env["SHOAL_REPLICA"] = strconv.Itoa(rep.Index)
	env["SHOAL_NODE"] = r.a.cfg.Gossip.NodeName
	id := taskID(job.ID, rep.Index)
	spec := runtime.TaskSpec{
		ID: id, Job: job.ID, Replica: rep.Index, Driver: job.Task.Driver,
		Command: job.Task.Command, Args: job.Task.Args, Env: env,
		CPUMillis: job.Task.Resources.CPUMillis, MemoryMB: job.Task.Resources.MemoryMB,
		Hostname: id, SpecHash: specHash(job),
		Image: job.Task.Image, ReadOnlyRootfs: job.Task.ReadOnlyRootfs, Privileged: job.Task.Privileged,
	}
	if len(job.Task.Mounts) > 0 && job.Task.Driver != api.DriverContainerd {
		return runtime.TaskSpec{}, fmt.Errorf("mounts need the containerd driver")
	}
	if r.a.net != nil && job.Task.Driver == api.DriverContainerd {
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: r.a.net.resolvConf, Target: "/etc/resolv.conf", ReadOnly: true})
	}
	for kind, mounts := range map[string][]api.DataMount{api.KindSecret: job.Task.Secrets, api.KindConfig: job.Task.Configs} {
		for _, m := range mounts {
			dir, err := r.a.materialize(id, kind, m)
			if err != nil {
				return runtime.TaskSpec{}, err
			}
			spec.Mounts = append(spec.Mounts, runtime.Mount{Source: dir, Target: m.Path, ReadOnly: true})
		}
	}
	for _, m := range job.Task.Mounts {
		dir, err := r.volumeDir(job, id, m.Volume)
		if err != nil {
			return runtime.TaskSpec{}, err
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: dir, Target: m.Path, ReadOnly: m.ReadOnly})
	}
	return spec, nil
}

// volumeDir creates the host directory behind one of the job's volumes:
// persistent volumes live per job under the data dir and survive the
// replica; ephemeral ones live per task and go when it stops for good.
func (r *reconciler) volumeDir(job api.Job, task, name string) (string, error) {
	var dir string
	for _, v := range job.Volumes {
		if v.Name != name {
			continue
		}
		if v.Type == api.VolumePersistent {
			dir = filepath.Join(r.a.cfg.Gossip.DataDir, "volumes", "persistent", job.ID, name)
		} else {
			dir = filepath.Join(r.ephemeralRoot(), task, name)
		}
	}
	if dir == "" {
		return "", fmt.Errorf("mount of unknown volume %q", name)
	}
	// World-writable like /tmp: the image decides the user the task runs
	// as, and the directory is reachable only through the task's mounts
	// and the root-only data dir.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	return dir, nil
}

func (r *reconciler) ephemeralRoot() string {
	return filepath.Join(r.a.cfg.Gossip.DataDir, "volumes", "ephemeral")
}

// sweepEphemeral removes the ephemeral volumes of tasks that neither run
// here nor are meant to.
func (r *reconciler) sweepEphemeral(keep map[string]bool) {
	entries, err := os.ReadDir(r.ephemeralRoot())
	if err != nil {
		return
	}
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(r.ephemeralRoot(), e.Name())); err != nil {
				r.a.log.Warn("remove ephemeral volumes", "task", e.Name(), "err", err)
			}
		}
	}
}

func (r *reconciler) endpointFor(t runtime.TaskStatus, job api.Job, msg string) Endpoint {
	ep := Endpoint{Job: t.Job, Replica: t.Replica, Node: r.a.cfg.Gossip.NodeName, Message: msg, SpecHash: t.SpecHash, Since: t.StartedAt}
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
		for _, p := range job.Task.Ports {
			ep.Ports[p.Name] = p.Port
		}
	}
	if rs := r.restarts[t.ID]; rs != nil {
		ep.Restarts = rs.attempts
	}
	if t.State == runtime.StateRunning {
		ip, err := r.attach(t)
		switch {
		case err != nil:
			r.a.log.Warn("attach replica", "task", t.ID, "err", err)
			if ep.Message == "" {
				ep.Message = err.Error()
			}
		case ip.IsValid():
			ep.IP = ip.String()
		}
	}
	if t.State == runtime.StateRunning && job.Health != nil {
		r.health.ensure(t, job.Health)
		if h := r.health.result(t.ID); h.known {
			healthy := h.healthy
			ep.Healthy = &healthy
			if !healthy && ep.Message == "" {
				ep.Message = "unhealthy: " + h.message
			}
		}
	}
	return ep
}

// publish writes this node's endpoint records that changed and tombstones
// those of replicas it no longer has.
func (r *reconciler) publish(eps map[string]Endpoint) {
	self := r.a.cfg.Gossip.NodeName
	mine := map[string]state.Record{}
	for _, rec := range r.a.store.List(kindEndpoint) {
		if !strings.HasSuffix(rec.ID, "."+self) {
			continue
		}
		// Names may contain dots: the body says whose record it is.
		var ep Endpoint
		if json.Unmarshal(rec.Body, &ep) == nil && ep.Node == self {
			mine[rec.ID] = rec
		}
	}
	var out []state.Record
	running := 0
	ids := make([]string, 0, len(eps))
	for id := range eps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ep := eps[id]
		if ep.State == StateRunning {
			running++
		}
		rid := endpointID(ep.Job, ep.Replica, self)
		body, _ := json.Marshal(ep)
		if cur, ok := mine[rid]; ok && string(cur.Body) == string(body) {
			delete(mine, rid)
			continue
		}
		delete(mine, rid)
		rec, err := r.a.store.Write(kindEndpoint, rid, body, false)
		if err != nil {
			r.a.log.Warn("publish endpoint", "id", rid, "err", err)
			continue
		}
		out = append(out, rec)
	}
	for rid := range mine {
		rec, err := r.a.store.Delete(kindEndpoint, rid)
		if err == nil {
			out = append(out, rec)
		}
	}
	if len(out) > 0 {
		r.a.sync.Publish(out)
		r.a.servicesChanged()
	}
	if err := r.a.cluster.UpdateMeta(func(m *gossip.Meta) { m.Load.Replicas = running }); err != nil {
		r.a.log.Warn("publish replica count", "err", err)
	}
}
