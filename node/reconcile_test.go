package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// The real reconcile loop, driven in-process by a fake cluster and a fake
// runtime through its narrow dependencies.

type fakeCluster struct {
	mu      sync.Mutex
	members []gossip.Member
	meta    gossip.Meta
	changes chan struct{}
}

func (f *fakeCluster) Members() []gossip.Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]gossip.Member(nil), f.members...)
}

func (f *fakeCluster) Changes() <-chan struct{} { return f.changes }

func (f *fakeCluster) UpdateMeta(fn func(*gossip.Meta)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.meta)
	return nil
}

func (f *fakeCluster) health() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.meta.Health
}

// fakeRuntime runs "tasks" in a map; down makes it answer like a
// containerd that is restarting.
type fakeRuntime struct {
	mu     sync.Mutex
	tasks  map[string]runtime.TaskStatus
	specs  map[string]runtime.TaskSpec
	down   bool
	starts int
	stops  int
	pid    int
}

func (f *fakeRuntime) Start(_ context.Context, spec runtime.TaskSpec) (runtime.TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return runtime.TaskStatus{}, fmt.Errorf("start task %s: %w", spec.ID, runtime.ErrUnavailable)
	}
	f.starts++
	f.pid++
	st := runtime.TaskStatus{ID: spec.ID, Job: spec.Job, Replica: spec.Replica, State: runtime.StateRunning, PID: f.pid,
		SpecHash: spec.SpecHash, StartedAt: time.Now(), Driver: spec.Driver}
	f.tasks[spec.ID] = st
	f.specs[spec.ID] = spec
	return st, nil
}

func (f *fakeRuntime) Stop(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return fmt.Errorf("stop task %s: %w", id, runtime.ErrUnavailable)
	}
	f.stops++
	delete(f.tasks, id)
	return nil
}

func (f *fakeRuntime) List(context.Context) ([]runtime.TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, fmt.Errorf("list tasks: %w", runtime.ErrUnavailable)
	}
	var out []runtime.TaskStatus
	for _, t := range f.tasks {
		out = append(out, t)
	}
	return out, nil
}

func (f *fakeRuntime) counts() (starts, stops int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts, f.stops
}

type loopHarness struct {
	r       *reconciler
	cluster *fakeCluster
	rt      *fakeRuntime
	store   *state.Store
	runDir  string
}

func newLoopHarness(t *testing.T) *loopHarness {
	t.Helper()
	store, err := state.OpenMemory(state.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	alive := func(name string) gossip.Member {
		return gossip.Member{Name: name, Status: gossip.StatusAlive, Meta: gossip.Meta{Capacity: gossip.Capacity{CPUMillis: 4000, MemoryMB: 4096}}}
	}
	h := &loopHarness{
		cluster: &fakeCluster{members: []gossip.Member{alive("a"), alive("b")}, meta: gossip.Meta{Health: gossip.HealthOK}, changes: make(chan struct{})},
		rt:      &fakeRuntime{tasks: map[string]runtime.TaskStatus{}, specs: map[string]runtime.TaskSpec{}},
		store:   store,
		runDir:  t.TempDir(),
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	deps := reconcileDeps{
		self: "a", cluster: h.cluster, records: records{store: store}, runner: h.rt,
		files: &taskFiles{runDir: h.runDir, dataDir: t.TempDir(), log: log, open: func(kind, name string) (map[string]string, error) {
			return map[string]string{"password": "hunter2"}, nil
		}},
		events: newEventLog("a"), log: log,
		ready: func(context.Context) bool { return true }, synced: func() bool { return true },
		healthChanged: make(chan struct{}, 1),
	}
	h.r = newReconciler(deps, DefaultReconcileConfig())
	t.Cleanup(h.r.health.stopAll)
	return h
}

func (h *loopHarness) endpoints() map[string]Endpoint {
	out := map[string]Endpoint{}
	for _, ep := range (records{store: h.store}).endpoints() {
		out[taskID(ep.Job, ep.Replica)] = ep
	}
	return out
}

func TestReconcileLoopKeepsReplicasWhileTheRuntimeIsAway(t *testing.T) {
	h := newLoopHarness(t)
	ctx := context.Background()
	web := api.Job{ID: "web", Replicas: ptr(4), Task: api.Task{Driver: api.DriverContainerd, Image: "hello:1",
		Secrets: []api.DataMount{{Name: "db", Path: "/run/secrets/db"}}}}
	if _, err := (records{store: h.store}).write(change{kindJob, "web", web}); err != nil {
		t.Fatal(err)
	}
	h.r.pass(ctx)
	mine := h.endpoints()
	if len(mine) == 0 || len(mine) == 4 {
		t.Fatalf("node a published %d of 4 replicas; placement should split them with b", len(mine))
	}
	for id, ep := range mine {
		if ep.State != StateRunning || ep.Node != "a" {
			t.Fatalf("%s published %+v", id, ep)
		}
		secret := filepath.Join(h.runDir, id, api.KindSecret, "db", "password")
		if got, err := os.ReadFile(secret); err != nil || string(got) != "hunter2" {
			t.Fatalf("%s: secret file %q, %v", id, got, err)
		}
	}
	starts, _ := h.rt.counts()

	// containerd goes away: nothing is started, stopped, failed or removed.
	h.rt.mu.Lock()
	h.rt.down = true
	h.rt.mu.Unlock()
	for range 3 {
		h.r.pass(ctx)
	}
	if got := h.cluster.health(); got != gossip.HealthDegraded {
		t.Errorf("node health %q while the runtime is away, want degraded", got)
	}
	for id, ep := range h.endpoints() {
		if ep.State != StateRunning || ep.Restarts != 0 {
			t.Errorf("%s published %+v while the runtime is away, want its last known running record", id, ep)
		}
		if _, err := os.Stat(filepath.Join(h.runDir, id, api.KindSecret, "db", "password")); err != nil {
			t.Errorf("%s: secret file removed while the runtime is away: %v", id, err)
		}
	}

	// Back: the same tasks are adopted, none restarted.
	h.rt.mu.Lock()
	h.rt.down = false
	h.rt.mu.Unlock()
	h.r.pass(ctx)
	if got := h.cluster.health(); got != gossip.HealthOK {
		t.Errorf("node health %q once the runtime is back, want ok", got)
	}
	if again, stops := h.rt.counts(); again != starts || stops != 0 {
		t.Errorf("starts %d -> %d, stops %d: the runtime's return restarted replicas", starts, again, stops)
	}

	// A deleted job's replicas stop and their files go.
	if _, err := (records{store: h.store}).write(change{kind: kindJob, id: "web"}); err != nil {
		t.Fatal(err)
	}
	h.r.pass(ctx)
	if _, stops := h.rt.counts(); stops != len(mine) {
		t.Errorf("stops %d after the delete, want %d", stops, len(mine))
	}
	if eps := h.endpoints(); len(eps) != 0 {
		t.Errorf("endpoints still published after the delete: %v", eps)
	}
	if entries, _ := os.ReadDir(h.runDir); len(entries) != 0 {
		t.Errorf("secret files left after the delete: %v", entries)
	}
}
