package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	shoalrt "github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/runtime/containerdtest"
)

// A containerd that goes away and comes back, as a package upgrade makes
// it do, is an unknown, not an exit: the containers keep running under
// their shims, so the agents keep what they last knew of them, count no
// restart, remove none of their files, and say in gossip that their
// runtime is degraded until they reach it again and find the same
// containers.
func TestContainerdRestartKeepsReplicas(t *testing.T) {
	RequireRoot(t)
	const (
		jobID       = "steady"
		replicas    = 3
		secretName  = "db"
		secretKey   = "password"
		secretValue = "kept-across-containerd-restarts"
		outage      = 8 * time.Second
		afterwards  = 10 * time.Second
	)
	// Registered first, so it runs last: once the agents and the daemon
	// are gone, what runc leaves of the nodes' cgroups goes too.
	var nodes []*Node
	t.Cleanup(func() {
		for _, n := range nodes {
			if err := shoalrt.Cleanup(n.TaskNamespace()); err != nil {
				t.Errorf("clean up %s: %v", n.Name, err)
			}
		}
	})
	// A containerd of this test's own: killing the one every test shares
	// would hit the other tests' containers. Its Stop (at cleanup, after
	// the cluster's agents are dead) brings it back if it is down and
	// removes every container in it.
	ctd := containerdtest.StartPrivate(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- log of the test's containerd ----\n%s", tail(ctd.Log(), 60))
		}
	})
	c := startCluster(t, 3, WithArgs("--containerd", ctd.Address))
	nodes = c.Nodes
	// Runs before the cluster's teardown, while the logs are there: the
	// lines about the job and the runtime, which the last lines of a log
	// (gossip chatter) may not show.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.Nodes {
			var lines []string
			for _, l := range strings.Split(n.Log(), "\n") {
				if strings.Contains(l, jobID) || strings.Contains(l, "containerd") || strings.Contains(l, "runtime") {
					lines = append(lines, l)
				}
			}
			t.Logf("---- %s's log about %s and its runtime ----\n%s", n.Name, jobID, tail(strings.Join(lines, "\n"), 40))
		}
	})
	c.LoadHello(t)
	ctx := context.Background()
	if _, err := c.Nodes[0].Client().PutData(ctx, api.KindSecret, secretName, api.Data{Data: map[string]string{secretKey: secretValue}}); err != nil {
		t.Fatal(err)
	}
	job := helloContainerJob(jobID, replicas)
	job.Task.Secrets = []api.DataMount{{Name: secretName}}
	if _, err := c.Nodes[1].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}

	// Every node sees the same three healthy replicas, and every node's
	// runtime is ok, before the fault.
	var before map[int]api.Allocation
	Eventually(t, 90*time.Second, "3 replicas running and healthy, seen alike by every node", func() (bool, string) {
		var first map[int]api.Allocation
		for _, n := range c.Nodes {
			got, detail := healthyReplicas(n, jobID, replicas)
			if got == nil {
				return false, n.Name + ": " + detail
			}
			if first == nil {
				first = got
			} else if placedAt(first) != placedAt(got) {
				return false, fmt.Sprintf("%s sees %s, %s sees %s", c.Nodes[0].Name, placedAt(first), n.Name, placedAt(got))
			}
		}
		before = first
		return true, ""
	})
	Eventually(t, 30*time.Second, "every node's runtime reported ok", func() (bool, string) {
		return allHealth(c.Nodes, "ok")
	})
	pidsBefore := containerPIDs(t, ctd.Address, c.Nodes)
	if len(pidsBefore) != replicas {
		t.Fatalf("containers before the restart: %v, want %d", pidsBefore, replicas)
	}
	for id, pid := range pidsBefore {
		if got, err := readSecret(pid, secretName, secretKey); err != nil || got != secretValue {
			t.Fatalf("%s before the restart: secret file = %q, %v", id, got, err)
		}
	}
	t.Logf("before: %s, containers %v", placedAt(before), pidsBefore)

	// Every node's API is polled from just before the kill until well
	// after containerd is back.
	w := newRuntimeWatch(jobID, before)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.watch(n, stop)
		}()
	}
	stopWatching := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopWatching()

	if err := ctd.Kill(); err != nil {
		t.Fatal(err)
	}
	w.setPhase(phaseDown)
	// The length of the fault, not a measurement: long enough for several
	// reconcile passes and health publications to meet a dead daemon.
	time.Sleep(outage)
	w.setPhase(phaseRestarting)
	if err := ctd.Restart(); err != nil {
		t.Fatal(err)
	}
	w.setPhase(phaseUp)
	time.Sleep(afterwards)
	stopWatching()

	w.mu.Lock()
	t.Logf("seen while watching:\n%s", w.summary())
	problems := w.problemList()
	for i, p := range problems {
		if i == 40 {
			t.Errorf("... and %d findings more", len(problems)-i)
			break
		}
		t.Errorf("%s", p)
	}
	for _, n := range c.Nodes {
		if w.answered[phaseDown][n.Name] == 0 {
			t.Errorf("%s's API never answered while containerd was down: %s", n.Name, w.lastErr[n.Name])
		}
		// Every node runs a replica, so every node is affected.
		if !w.degradedSeen[n.Name] {
			t.Errorf("no node reported %s's health degraded while containerd was down (health seen then: %s)",
				n.Name, w.healthWords(phaseDown, n.Name))
		}
	}
	w.mu.Unlock()

	Eventually(t, 60*time.Second, "every node's runtime reported ok again", func() (bool, string) {
		return allHealth(c.Nodes, "ok")
	})
	// The same containers, adopted, not new ones; their secret files are
	// still there.
	pidsAfter := containerPIDs(t, ctd.Address, c.Nodes)
	if fmt.Sprint(pidsAfter) != fmt.Sprint(pidsBefore) {
		t.Errorf("containers changed across the containerd restart:\nbefore %v\nafter  %v", pidsBefore, pidsAfter)
	}
	for id, pid := range pidsBefore {
		if got, err := readSecret(pid, secretName, secretKey); err != nil || got != secretValue {
			t.Errorf("%s (pid %d) after the restart: secret file = %q, %v", id, pid, got, err)
		}
	}
	Eventually(t, 60*time.Second, "the same 3 replicas healthy on every node", func() (bool, string) {
		for _, n := range c.Nodes {
			got, detail := healthyReplicas(n, jobID, replicas)
			if got == nil {
				return false, n.Name + ": " + detail
			}
			if placedAt(got) != placedAt(before) {
				return false, fmt.Sprintf("%s sees %s, want %s", n.Name, placedAt(got), placedAt(before))
			}
		}
		return true, ""
	})
}

// healthyReplicas returns replica -> allocation as n reports job when
// each of the first want replicas runs and is healthy, else nil and what
// n reports.
func healthyReplicas(n *Node, job string, want int) (map[int]api.Allocation, string) {
	allocs, err := jobAllocations(n, job)
	if err != nil {
		return nil, err.Error()
	}
	out := map[int]api.Allocation{}
	for _, a := range allocs {
		if a.State == "running" && a.Healthy != nil && *a.Healthy {
			out[a.Replica] = a
		}
	}
	for r := 0; r < want; r++ {
		if _, ok := out[r]; !ok {
			return nil, fmt.Sprintf("%+v", allocs)
		}
	}
	return out, ""
}

func jobAllocations(n *Node, job string) ([]api.Allocation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := n.Client().Job(ctx, job)
	return st.Allocations, err
}

// placedAt describes where each replica runs and how often it restarted.
func placedAt(allocs map[int]api.Allocation) string {
	rs := make([]int, 0, len(allocs))
	for r := range allocs {
		rs = append(rs, r)
	}
	sort.Ints(rs)
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%d@%s(restarts %d)", r, allocs[r].Node, allocs[r].Restarts))
	}
	return strings.Join(parts, " ")
}

// allHealth reports whether every node sees every node of nodes with the
// given health word.
func allHealth(nodes []*Node, want string) (bool, string) {
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		view, err := n.Client().Nodes(ctx)
		cancel()
		if err != nil {
			return false, n.Name + ": " + err.Error()
		}
		health := map[string]string{}
		for _, m := range view {
			health[m.Name] = m.Health
		}
		for _, m := range nodes {
			if health[m.Name] != want {
				return false, fmt.Sprintf("%s sees %v", n.Name, health)
			}
		}
	}
	return true, ""
}

// containerPIDs lists "node/container" -> PID of the running containers
// of nodes, straight from the containerd at address.
func containerPIDs(t *testing.T, address string, nodes []*Node) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range nodes {
		drv, err := shoalrt.NewContainerd(shoalrt.ContainerdConfig{Address: address, Namespace: n.TaskNamespace(), StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tasks, err := drv.List(ctx)
		cancel()
		drv.Close()
		if err != nil {
			t.Fatalf("list containers of %s: %v", n.Name, err)
		}
		for _, task := range tasks {
			if task.State == shoalrt.StateRunning {
				out[n.Name+"/"+task.ID] = task.PID
			}
		}
	}
	return out
}

// readSecret reads a secret file as the container with init pid sees it.
func readSecret(pid int, name, key string) (string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/secrets/%s/%s", pid, name, key))
	return string(raw), err
}

// Phases of a runtimeWatch.
const (
	phaseBefore     = "before the kill"
	phaseDown       = "containerd down"
	phaseRestarting = "containerd restarting"
	phaseUp         = "containerd back"
)

var watchPhases = []string{phaseBefore, phaseDown, phaseRestarting, phaseUp}

// runtimeWatch collects what every node's API says of a job and of the
// nodes' health while containerd goes away and comes back.
type runtimeWatch struct {
	job    string
	before map[int]api.Allocation
	start  time.Time

	mu    sync.Mutex
	phase string
	// problems maps a finding to when it was first seen and how often.
	problems     map[string]*sighting
	answered     map[string]map[string]int // phase -> observer -> answers
	lastErr      map[string]string         // observer -> last API error
	degradedSeen map[string]bool           // node -> seen degraded while down
	health       map[string]map[string]int // phase -> "node=word" -> count
	states       map[string]map[string]int // phase -> allocation state -> count
}

type sighting struct {
	first     time.Duration
	phase     string
	count     int
	observers map[string]bool
}

func newRuntimeWatch(job string, before map[int]api.Allocation) *runtimeWatch {
	w := &runtimeWatch{
		job: job, before: before, start: time.Now(), phase: phaseBefore,
		problems: map[string]*sighting{}, lastErr: map[string]string{}, degradedSeen: map[string]bool{},
		answered: map[string]map[string]int{}, health: map[string]map[string]int{}, states: map[string]map[string]int{},
	}
	for _, p := range watchPhases {
		w.answered[p] = map[string]int{}
		w.health[p] = map[string]int{}
		w.states[p] = map[string]int{}
	}
	return w
}

func (w *runtimeWatch) setPhase(p string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.phase = p
}

func (w *runtimeWatch) currentPhase() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.phase
}

// watch polls n about every 250 ms until stop is closed.
func (w *runtimeWatch) watch(n *Node, stop <-chan struct{}) {
	for {
		phase := w.currentPhase()
		allocs, jobErr := jobAllocations(n, w.job)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		view, nodesErr := n.Client().Nodes(ctx)
		cancel()
		// A degraded report counts for the outage only if the whole poll
		// fell inside it.
		whole := phase
		if w.currentPhase() != phase {
			whole = ""
		}
		w.record(n.Name, phase, whole, allocs, jobErr, view, nodesErr)
		select {
		case <-stop:
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (w *runtimeWatch) record(observer, phase, whole string, allocs []api.Allocation, jobErr error, view []api.Node, nodesErr error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if jobErr != nil {
		w.lastErr[observer] = jobErr.Error()
	} else {
		w.answered[phase][observer]++
		seen := map[int]bool{}
		for _, a := range allocs {
			w.states[phase][stateWord(a)]++
			was, known := w.before[a.Replica]
			switch {
			case a.State == "failed":
				w.problem(phase, observer, fmt.Sprintf("replica %d on %s failed (%s)", a.Replica, a.Node, a.Message))
			case !known:
				w.problem(phase, observer, fmt.Sprintf("an extra allocation %+v", a))
			case a.Node != was.Node:
				w.problem(phase, observer, fmt.Sprintf("replica %d on %s (%s), not on %s", a.Replica, a.Node, a.State, was.Node))
			case a.State != "running":
				w.problem(phase, observer, fmt.Sprintf("replica %d on %s %s (%s), want its last known state, running", a.Replica, a.Node, a.State, a.Message))
			}
			if known && a.Restarts != was.Restarts {
				w.problem(phase, observer, fmt.Sprintf("replica %d on %s with %d restarts, had %d", a.Replica, a.Node, a.Restarts, was.Restarts))
			}
			if known && a.Node == was.Node {
				seen[a.Replica] = true
			}
		}
		for r, was := range w.before {
			if !seen[r] {
				w.problem(phase, observer, fmt.Sprintf("replica %d on %s missing", r, was.Node))
			}
		}
	}
	if nodesErr != nil {
		w.lastErr[observer] = nodesErr.Error()
		return
	}
	for _, m := range view {
		w.health[phase][m.Name+"="+m.Health]++
		if whole == phaseDown && m.Health == "degraded" {
			w.degradedSeen[m.Name] = true
		}
	}
}

// problem notes what observer reported wrongly; w.mu is held.
func (w *runtimeWatch) problem(phase, observer, what string) {
	key := phase + ": " + what
	s := w.problems[key]
	if s == nil {
		s = &sighting{first: time.Since(w.start).Round(time.Millisecond), phase: phase, observers: map[string]bool{}}
		w.problems[key] = s
	}
	s.count++
	s.observers[observer] = true
}

// stateWord is an allocation's state and health, as "running/healthy".
func stateWord(a api.Allocation) string {
	switch {
	case a.Healthy == nil:
		return a.State + "/unknown"
	case *a.Healthy:
		return a.State + "/healthy"
	default:
		return a.State + "/unhealthy"
	}
}

// problemList lists the findings in the order first seen; w.mu is held.
func (w *runtimeWatch) problemList() []string {
	keys := make([]string, 0, len(w.problems))
	for k := range w.problems {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return w.problems[keys[i]].first < w.problems[keys[j]].first })
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		s := w.problems[k]
		var by []string
		for o := range s.observers {
			by = append(by, o)
		}
		sort.Strings(by)
		out = append(out, fmt.Sprintf("%s (reported by %s; first at +%s, %d answers)", k, strings.Join(by, ","), s.first, s.count))
	}
	return out
}

// healthWords lists the health words seen for node in phase; w.mu is held.
func (w *runtimeWatch) healthWords(phase, node string) string {
	var out []string
	for k, n := range w.health[phase] {
		if strings.HasPrefix(k, node+"=") {
			out = append(out, fmt.Sprintf("%s x%d", k, n))
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// summary tells, per phase, how many answers came, which allocation
// states and which health words were seen; w.mu is held.
func (w *runtimeWatch) summary() string {
	var b strings.Builder
	for _, p := range watchPhases {
		fmt.Fprintf(&b, "  %s: answers %v, allocation states %v, health %v\n", p, w.answered[p], w.states[p], w.health[p])
	}
	return strings.TrimRight(b.String(), "\n")
}
