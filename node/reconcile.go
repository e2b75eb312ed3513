package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

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
	// Since is when the running task started, on its node's clock.
	Since time.Time `json:"since,omitzero"`
	// Settled is set once the replica has run the current spec healthy
	// for the job's min_healthy_time, measured by its node: rolling
	// updates read it instead of comparing clocks across nodes.
	Settled bool `json:"settled,omitempty"`
}

// taskCallTimeout bounds one Start or Stop (a stop waits out the task's
// grace period); each call gets its own, so replacing many replicas in one
// pass does not starve the last ones.
const taskCallTimeout = 30 * time.Second

// parallelStarts bounds the starts in flight: each spawns a shim or a
// process and may pull an image.
const parallelStarts = 4

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
	return ReconcileConfig{
		// A mass join settles in well under a second; 200 ms keeps one
		// pass per burst without delaying a failover noticeably.
		Debounce: 200 * time.Millisecond,
		// Most of a single job's submit-to-running time: kept short.
		JobDebounce: 20 * time.Millisecond,
		// Repairs (a task killed by hand, a missed event) wait at most
		// this long; each pass lists the runtime's tasks once.
		Resync: 2 * time.Second,
		// Long enough for an image pull and a health check on the new
		// owner; a dead new owner costs at most this much overlap.
		HandoffTimeout: 30 * time.Second,
		LoadFactor:     placement.DefaultLoadFactor,
	}
}

// membership is what the agent's loops need of gossip.
type membership interface {
	Members() []gossip.Member
	Changes() <-chan struct{}
	UpdateMeta(fn func(*gossip.Meta)) error
}

// replicaNetwork is the overlay as the reconcile loop uses it.
type replicaNetwork interface {
	state() (generation int, subnet netip.Prefix)
	attach(ctx context.Context, netnsPath, task string) (netip.Addr, error)
	detach(ctx context.Context, netnsPath, task string)
	sweep(ctx context.Context, exists map[string]bool)
	resolvConfPath() string
}

// reconcileDeps are the few things the reconcile loop uses, so a fake
// cluster and a fake runtime can drive the real loop in-process.
type reconcileDeps struct {
	self    string
	cluster membership
	records records
	runner  TaskRunner
	// net is nil without an overlay.
	net    replicaNetwork
	files  *taskFiles
	events *eventLog
	// metrics may be nil.
	metrics *metrics
	log     *slog.Logger
	// ready waits until the node may act on its view of the cluster (the
	// first join attempt ended); synced reports whether its store has
	// caught up with a peer.
	ready  func(context.Context) bool
	synced func() bool
	// Wake-ups: job records changed, peers' endpoint records changed, a
	// local replica's health flipped.
	jobsChanged      <-chan struct{}
	endpointsChanged <-chan struct{}
	healthChanged    chan struct{}
	// servicesChanged is told when this node's endpoints changed.
	servicesChanged func()
	// pullTimeout extends a start's deadline (it may pull its image).
	pullTimeout time.Duration
}

// reconciler computes the cluster-wide assignment and drives this node's
// share: gather, plan (planPass), execute, publish. Its run goroutine owns
// every field but snapshot.
type reconciler struct {
	deps reconcileDeps
	cfg  ReconcileConfig

	prev   placement.Assignment
	memory planMemory
	health *prober
	// attached is each local replica's overlay address, with the netns
	// and subnet generation it was attached for.
	attached map[string]attachment
	// netMoved is signalled when the node's overlay subnet changed.
	netMoved chan struct{}
	// membersSeen fingerprints the membership the last change was about.
	membersSeen uint64
	// degraded is what the node last announced about its runtime.
	degraded bool

	mu       sync.Mutex // guards snapshot
	snapshot placement.Assignment
}

type attachment struct {
	netns      string
	generation int
	ip         netip.Addr
}

func newReconciler(deps reconcileDeps, cfg ReconcileConfig) *reconciler {
	// The runtime runs exec checks inside the replica; fakes may not.
	execer, _ := deps.runner.(taskExecer)
	return &reconciler{deps: deps, cfg: cfg, memory: newPlanMemory(), attached: map[string]attachment{}, netMoved: make(chan struct{}, 1),
		health: newProber(deps.healthChanged, execer, func(id string, healthy bool, msg string) {
			job, replica := splitTaskID(id)
			if healthy {
				deps.events.add("healthy", job, replica, "health check passes")
			} else {
				deps.events.add("unhealthy", job, replica, msg)
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
	if !r.deps.ready(ctx) {
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
		case <-r.deps.cluster.Changes():
			// Load tags change every few seconds and do not move replicas.
			if key := membershipKey(r.deps.cluster.Members()); key != r.membersSeen {
				r.membersSeen = key
				schedule(r.cfg.Debounce)
			}
		case <-r.deps.jobsChanged:
			schedule(r.cfg.JobDebounce)
		case <-r.deps.endpointsChanged:
			// Only make-before-break waits on peers' endpoints; rolling
			// updates catch up on the next resync.
			if len(r.memory.MoveSince) > 0 {
				schedule(r.cfg.Debounce)
			}
		case <-r.netMoved:
			// New addresses for every replica, published at once.
			r.pass(ctx)
		case <-r.deps.healthChanged:
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

// pass is one reconcile round: gather, plan, execute, publish.
func (r *reconciler) pass(ctx context.Context) {
	in, ok := r.gather(ctx)
	if !ok {
		return
	}
	out := planPass(in)
	r.execute(ctx, in, &out)
}

// view is the alive, non-draining members as placement sees them, and
// the alive set.
func view(members []gossip.Member) ([]placement.Node, map[string]bool) {
	alive := map[string]bool{}
	var nodes []placement.Node
	for _, m := range members {
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

// placementJobs is what placement needs of the jobs, in id order.
func placementJobs(jobs map[string]api.Job) []placement.Job {
	out := make([]placement.Job, 0, len(jobs))
	for _, id := range slices.Sorted(maps.Keys(jobs)) {
		j := jobs[id]
		pj := placement.Job{ID: j.ID, Replicas: replicasOf(j), CPUMillis: j.Task.Resources.CPUMillis, MemoryMB: j.Task.Resources.MemoryMB}
		for _, c := range j.Constraints {
			pj.Constraints = append(pj.Constraints, placement.Constraint{Label: c.Label, Op: c.Op, Value: c.Value})
		}
		out = append(out, pj)
	}
	return out
}

// gather reads everything a pass decides on. It reports false when the
// runtime gave an error that says nothing reliable about the tasks.
func (r *reconciler) gather(ctx context.Context) (planInput, bool) {
	d := r.deps
	nodes, alive := view(d.cluster.Members())
	jobs := d.records.jobs()

	began := time.Now()
	asg := placement.Assign(nodes, placementJobs(jobs), placement.Options{LoadFactor: r.cfg.LoadFactor})
	if m := d.metrics; m != nil {
		m.placementRuns.Inc()
		m.placementSeconds.Observe(time.Since(began).Seconds())
		m.placementMoved.Add(float64(placement.Movement(r.prev, asg)))
		m.unplaced.Set(float64(len(asg.Unplaced)))
	}
	r.prev = asg
	r.mu.Lock()
	r.snapshot = asg
	r.mu.Unlock()

	tctx, cancel := context.WithTimeout(ctx, taskCallTimeout)
	defer cancel()
	tasks, err := d.runner.List(tctx)
	unavailable := map[string]bool{}
	switch {
	case err == nil:
	case errors.Is(err, runtime.ErrUnavailable):
		// containerd is down, restarting or not installed: its tasks are
		// unknown; the exec driver's are listed.
		unavailable[runtime.DriverContainerd] = true
		d.log.Debug("list tasks", "err", err)
	default:
		d.log.Warn("list tasks", "err", err)
		return planInput{}, false
	}
	actual := make(map[string]runtime.TaskStatus, len(tasks))
	deleted := map[string]bool{}
	for _, t := range tasks {
		actual[t.ID] = t
		if _, known := jobs[t.Job]; !known && d.records.store.Deleted(kindJob, t.Job) {
			deleted[t.Job] = true
		}
	}
	return planInput{
		Self: d.self, Now: time.Now(), Synced: d.synced(), Assignment: asg, Jobs: jobs, Deleted: deleted, Tasks: actual, Unavailable: unavailable,
		Endpoints: d.records.endpoints(), Alive: alive, Health: r.health.verdicts(), HandoffTimeout: r.cfg.HandoffTimeout, Memory: r.memory,
	}, true
}

// execute carries out a plan: stops, then starts (a few at a time), then
// rollout marks, overlay addresses, health probes, the endpoint records,
// and the sweep of what no task uses any more.
func (r *reconciler) execute(ctx context.Context, in planInput, out *planOutput) {
	d := r.deps
	for _, s := range out.Stops {
		d.log.Info("stopping replica", "task", s.ID, "reason", s.Reason)
		if err := r.stopTask(ctx, s.ID); err != nil {
			d.log.Warn("stop replica", "task", s.ID, "err", err)
			out.InUse[s.ID] = true // still there: keep what it uses
		}
	}
	results := r.runStarts(ctx, out.Starts)
	if ctx.Err() != nil {
		return // shutting down: not the tasks' fault
	}
	settleStarts(in, out, results)
	r.memory = out.Memory
	for _, ev := range out.Events {
		d.log.Info("replica "+ev.Kind, "job", ev.Job, "replica", ev.Replica, "detail", ev.Message)
		d.events.add(ev.Kind, ev.Job, ev.Replica, ev.Message)
	}
	r.writeRolloutMarks(out)
	for _, id := range slices.Sorted(maps.Keys(out.Running)) {
		t := out.Running[id]
		ep := out.Publish[id]
		ip, err := r.attach(ctx, t)
		switch {
		case err != nil:
			d.log.Warn("attach replica", "task", id, "err", err)
			if ep.Message == "" {
				ep.Message = err.Error()
			}
		case ip.IsValid():
			ep.IP = ip.String()
		}
		out.Publish[id] = ep
		if job, ok := in.Jobs[t.Job]; ok && job.Health != nil {
			r.health.ensure(t, job.Health)
		}
	}
	keep := maps.Clone(out.Unknown)
	for id := range out.Running {
		keep[id] = true
	}
	r.health.retain(keep)
	r.publish(out.Publish)
	r.announceDegraded(out.Degraded)
	if !out.Sweep {
		return // a driver that did not answer may still run replicas
	}
	d.files.sweepEphemeral(out.InUse)
	d.files.sweepData(out.InUse)
	if d.net != nil {
		d.net.sweep(ctx, out.InUse)
	}
	for id := range r.attached {
		if !out.InUse[id] {
			delete(r.attached, id)
		}
	}
}

// runStarts describes and starts the tasks, parallelStarts at a time,
// each with its own deadline (a start may pull the image first); results
// come back in the order of the decisions.
func (r *reconciler) runStarts(ctx context.Context, starts []startDecision) []startResult {
	results := make([]startResult, len(starts))
	sem := make(chan struct{}, parallelStarts)
	var wg sync.WaitGroup
	for i, s := range starts {
		results[i].ID = s.ID
		spec, err := r.taskSpec(s.Job, s.Rep)
		if err != nil {
			results[i].Err, results[i].SpecErr = err, true
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(res *startResult) {
			defer func() { <-sem; wg.Done() }()
			sctx, cancel := context.WithTimeout(ctx, taskCallTimeout+r.deps.pullTimeout)
			defer cancel()
			res.Status, res.Err = r.deps.runner.Start(sctx, spec)
		}(&results[i])
	}
	wg.Wait()
	return results
}

// writeRolloutMarks stores the rollbacks and finished updates the plan
// decided, each on the job version it judged.
func (r *reconciler) writeRolloutMarks(out *planOutput) {
	d := r.deps
	now := time.Now().UTC()
	for _, rb := range out.Rollbacks {
		job := rb.Job
		back := job.Clone()
		back.Task = *job.Rollout.PreviousTask
		back.Rollout = nil
		if err := back.Validate(); err != nil {
			msg := fmt.Sprintf("update failed (%s) but the previous task no longer fits the job: %v", rb.Reason, err)
			d.log.Error("cannot roll back", "job", job.ID, "err", msg)
			d.events.add("rollback-failed", job.ID, -1, msg)
			continue
		}
		if r.marked(job) {
			continue
		}
		mark := rolloutMark{Job: job.ID, Base: job.Version, Spec: specHash(job), At: now,
			RolledBack: fmt.Sprintf("rolled back at %s: %s", now.Format(time.RFC3339), rb.Reason)}
		if _, err := d.records.write(change{kindRolloutMark, job.ID, mark}); err != nil {
			d.log.Error("store rollback", "job", job.ID, "err", err)
			continue
		}
		d.log.Warn("update failed: rolling back", "job", job.ID, "reason", rb.Reason)
		d.events.add("rolled-back", job.ID, -1, rb.Reason)
	}
	for _, job := range out.Finished {
		if r.marked(job) {
			continue
		}
		mark := rolloutMark{Job: job.ID, Base: job.Version, Spec: specHash(job), Done: true, At: now}
		if _, err := d.records.write(change{kindRolloutMark, job.ID, mark}); err != nil {
			d.log.Warn("store finished rollout", "job", job.ID, "err", err)
			continue
		}
		d.events.add("updated", job.ID, -1, "every replica runs the new spec")
	}
	if len(out.Rollbacks)+len(out.Finished) > 0 && d.servicesChanged != nil {
		d.servicesChanged()
	}
}

// marked reports whether job's current version already has a rollout mark
// (another node's, or this node's from an earlier pass).
func (r *reconciler) marked(job api.Job) bool {
	rec, ok := r.deps.records.store.Get(kindRolloutMark, job.ID)
	if !ok {
		return false
	}
	m, err := decodeRolloutMark(rec)
	return err == nil && m.Base == job.Version
}

func (r *reconciler) stopTask(ctx context.Context, id string) error {
	sctx, cancel := context.WithTimeout(ctx, taskCallTimeout)
	defer cancel()
	err := r.deps.runner.Stop(sctx, id)
	if err == nil && r.deps.net != nil {
		r.deps.net.detach(ctx, "", id)
		delete(r.attached, id)
	}
	return err
}

// attach makes sure a running replica is on the overlay and returns its
// address; attaching is repeated only for a new netns or a new subnet.
func (r *reconciler) attach(ctx context.Context, t runtime.TaskStatus) (netip.Addr, error) {
	if r.deps.net == nil || t.NetNS == "" {
		return netip.Addr{}, nil
	}
	gen, _ := r.deps.net.state()
	if at, ok := r.attached[t.ID]; ok && at.netns == t.NetNS && at.generation == gen {
		return at.ip, nil
	}
	ip, err := r.deps.net.attach(ctx, t.NetNS, t.ID)
	if err != nil {
		delete(r.attached, t.ID)
		return netip.Addr{}, fmt.Errorf("attach to the overlay: %w", err)
	}
	r.attached[t.ID] = attachment{netns: t.NetNS, generation: gen, ip: ip}
	return ip, nil
}

// announceDegraded puts the runtime's state in this node's gossip health
// word, which `shoal nodes` shows; draining wins over it.
func (r *reconciler) announceDegraded(degraded bool) {
	if degraded == r.degraded {
		return
	}
	err := r.deps.cluster.UpdateMeta(func(m *gossip.Meta) {
		if m.Health == gossip.HealthDrain {
			return
		}
		m.Health = gossip.HealthOK
		if degraded {
			m.Health = gossip.HealthDegraded
		}
	})
	if err != nil {
		r.deps.log.Warn("announce runtime health", "err", err)
		return
	}
	r.degraded = degraded
	if degraded {
		r.deps.log.Warn("runtime unreachable: keeping the last known state of its replicas")
		r.deps.events.add("runtime-degraded", "", -1, "containerd is unreachable; its replicas keep their last known state")
	} else {
		r.deps.events.add("runtime-ok", "", -1, "containerd answers again")
	}
}

func (r *reconciler) taskSpec(job api.Job, rep placement.Replica) (runtime.TaskSpec, error) {
	env := map[string]string{}
	for k, v := range job.Task.Env {
		env[k] = v
	}
	env["SHOAL_JOB"] = job.ID
	env["SHOAL_REPLICA"] = strconv.Itoa(rep.Index)
	env["SHOAL_NODE"] = r.deps.self
	id := taskID(job.ID, rep.Index)
	spec := runtime.TaskSpec{
		ID: id, Job: job.ID, Replica: rep.Index, Driver: job.Task.Driver,
		Command: job.Task.Command, Args: job.Task.Args, Env: env,
		CPUMillis: job.Task.Resources.CPUMillis, MemoryMB: job.Task.Resources.MemoryMB, Pids: job.Task.Resources.Pids,
		Hostname: id, SpecHash: specHash(job),
		Image: job.Task.Image, ReadOnlyRootfs: job.Task.ReadOnlyRootfs, Privileged: job.Task.Privileged,
		CapAdd: slices.Clone(job.Task.CapAdd),
	}
	if len(job.Task.Mounts) > 0 && job.Task.Driver != api.DriverContainerd {
		return runtime.TaskSpec{}, fmt.Errorf("mounts need the containerd driver")
	}
	if r.deps.net != nil && job.Task.Driver == api.DriverContainerd {
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: r.deps.net.resolvConfPath(), Target: "/etc/resolv.conf", ReadOnly: true})
	}
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		mounts := job.Task.Secrets
		if kind == api.KindConfig {
			mounts = job.Task.Configs
		}
		for _, m := range mounts {
			dir, err := r.deps.files.materialize(id, kind, m)
			if err != nil {
				return runtime.TaskSpec{}, err
			}
			spec.Mounts = append(spec.Mounts, runtime.Mount{Source: dir, Target: m.Path, ReadOnly: true})
		}
	}
	for _, m := range job.Task.Mounts {
		dir, err := r.deps.files.volumeDir(job, id, m.Volume)
		if err != nil {
			return runtime.TaskSpec{}, err
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: dir, Target: m.Path, ReadOnly: m.ReadOnly})
	}
	return spec, nil
}

// publish writes this node's endpoint records that changed and withdraws
// those of replicas it no longer has.
func (r *reconciler) publish(eps map[string]Endpoint) {
	d := r.deps
	mine := map[string]state.Record{}
	for _, rec := range d.records.store.List(kindEndpoint) {
		// Names may contain dots: the body says whose record it is.
		if ep, err := decodeEndpoint(rec); err == nil && ep.Node == d.self {
			mine[rec.ID] = rec
		}
	}
	var changes []change
	running := 0
	for _, id := range slices.Sorted(maps.Keys(eps)) {
		ep := eps[id]
		if ep.State == StateRunning {
			running++
		}
		rid := endpointID(ep.Job, ep.Replica, d.self)
		cur, had := mine[rid]
		delete(mine, rid)
		if body, err := json.Marshal(ep); err == nil && had && string(cur.Body) == string(body) {
			continue
		}
		changes = append(changes, change{kindEndpoint, rid, ep})
	}
	for _, rid := range slices.Sorted(maps.Keys(mine)) {
		changes = append(changes, change{kind: kindEndpoint, id: rid})
	}
	if len(changes) > 0 {
		if _, err := d.records.write(changes...); err != nil {
			d.log.Warn("publish endpoints", "err", err)
		}
		if d.servicesChanged != nil {
			d.servicesChanged()
		}
	}
	if err := d.cluster.UpdateMeta(func(m *gossip.Meta) { m.Load.Replicas = running }); err != nil {
		d.log.Warn("publish replica count", "err", err)
	}
}
