package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// What a task can and cannot see or do to its node and its neighbours:
// exec tasks run as users of their own with a private /proc, every task
// has a pids limit, containers lack CAP_NET_RAW unless their job asks,
// and exec health checks of containers run inside them.

// ProbeRef names the image of runtime/testdata/taskprobe, which runs as
// root (so its capabilities show in CapEff) and can serve, fork-bomb and
// check that it runs inside its container.
const ProbeRef = "shoal.test/taskprobe:1"

var (
	probeImageOnce sync.Once
	probeImagePath string
	probeImageErr  error
)

// ProbeImage builds the taskprobe image archive once per test binary.
func ProbeImage(t *testing.T) string {
	t.Helper()
	probeImageOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-e2e-probe-")
		if err != nil {
			probeImageErr = err
			return
		}
		atExit = append(atExit, func() { os.RemoveAll(dir) })
		bin := filepath.Join(dir, "taskprobe")
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./runtime/testdata/taskprobe")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeImageErr = fmt.Errorf("build taskprobe: %v\n%s", err, out)
			return
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			probeImageErr = err
			return
		}
		path := filepath.Join(dir, "taskprobe.tar")
		f, err := os.Create(path)
		if err != nil {
			probeImageErr = err
			return
		}
		defer f.Close()
		err = shoalrt.WriteImageArchive(f, ProbeRef, shoalrt.ImageConfig{Entrypoint: []string{"/taskprobe"}, User: "0:0"},
			[]shoalrt.ImageFile{{Path: "/taskprobe", Mode: 0o755, Data: data}})
		if err == nil {
			err = f.Close()
		}
		probeImageErr = err
		probeImagePath = path
	})
	if probeImageErr != nil {
		t.Fatal(probeImageErr)
	}
	return probeImagePath
}

// LoadProbe imports the taskprobe image on n through its API.
func (n *Node) LoadProbe(t *testing.T) {
	t.Helper()
	f, err := os.Open(ProbeImage(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := n.Client().LoadImage(context.Background(), f); err != nil {
		t.Fatalf("load taskprobe on %s: %v", n.Name, err)
	}
}

func probeJob(id string, args ...string) api.Job {
	one := 1
	return api.Job{ID: id, Replicas: &one, Task: api.Task{
		Driver: "containerd", Image: ProbeRef, Args: args,
		Env:       map[string]string{"PORT": "8080"},
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
		Ports:     []api.Port{{Name: "http", Port: 8080}},
	}}
}

func shJob(id, script string) api.Job {
	one := 1
	return api.Job{ID: id, Replicas: &one, Task: api.Task{
		Driver: "exec", Command: []string{"/bin/sh", "-c", script},
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
	}}
}

func putJob(t *testing.T, n *Node, job api.Job) {
	t.Helper()
	if _, err := n.Client().PutJob(context.Background(), job); err != nil {
		t.Fatalf("put job %s: %v", job.ID, err)
	}
}

func deleteJob(t *testing.T, n *Node, id string) {
	t.Helper()
	if _, err := n.Client().DeleteJob(context.Background(), id); err != nil {
		t.Fatalf("delete job %s: %v", id, err)
	}
}

// waitRunning waits until replica 0 of job runs and returns it.
func waitRunning(t *testing.T, n *Node, job string) api.Allocation {
	t.Helper()
	var alloc api.Allocation
	Eventually(t, 60*time.Second, job+" running", func() (bool, string) {
		a, ok, detail := allocation(n, job, 0)
		alloc = a
		return ok, detail
	})
	return alloc
}

// execTask reads the exec driver's status file of a task on n.
func execTask(t *testing.T, n *Node, id string) (pid int, uid uint32) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(n.DataDir, "tasks", "tasks", id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		PID int    `json:"pid"`
		UID uint32 `json:"uid"`
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	return rec.PID, rec.UID
}

// execLog waits until the log of an exec task on n contains want.
func execLog(t *testing.T, n *Node, id, want string) string {
	t.Helper()
	path := filepath.Join(n.DataDir, "tasks", "logs", id+".log")
	var text string
	Eventually(t, 30*time.Second, "log of "+id+" with "+want, func() (bool, string) {
		raw, _ := os.ReadFile(path)
		text = string(raw)
		return strings.Contains(text, want), text
	})
	return text
}

func TestExecTaskCannotReadOtherTasksOrTheAgentsEnviron(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	vault := shJob("vault", "exec sleep 100000")
	vault.Task.Env = map[string]string{"VAULT_SECRET": "hunter2-in-env"}
	putJob(t, n, vault)
	waitRunning(t, n, "vault")
	vaultPID, vaultUID := execTask(t, n, "vault-0")
	agentPID := n.cmd.Process.Pid

	spy := shJob("spy", fmt.Sprintf(`
		for p in %d %d; do
			for f in environ cmdline; do
				if cat /proc/$p/$f >/dev/null 2>&1; then echo "read $p $f"; else echo "denied $p $f"; fi
			done
			[ -e /proc/$p ] && echo "sees $p"
		done
		cat /proc/%d/environ /proc/%d/environ 2>&1
		n=0
		for p in /proc/[0-9]*; do
			case "$(cat $p/stat 2>/dev/null)" in *") Z "*|"") ;; *) n=$((n+1));; esac
		done
		echo "visible $n"
		echo "done"; exec sleep 100000`, vaultPID, agentPID, vaultPID, agentPID))
	putJob(t, n, spy)
	waitRunning(t, n, "spy")
	out := execLog(t, n, "spy-0", "done")
	t.Logf("the spy task printed:\n%s", out)
	_, spyUID := execTask(t, n, "spy-0")
	if spyUID == vaultUID || spyUID == 0 || vaultUID == 0 {
		t.Fatalf("tasks run as uids %d and %d, want two distinct non-root users", vaultUID, spyUID)
	}
	for _, pid := range []int{vaultPID, agentPID} {
		for _, f := range []string{"environ", "cmdline"} {
			if !strings.Contains(out, fmt.Sprintf("denied %d %s", pid, f)) {
				t.Errorf("the spy task read /proc/%d/%s", pid, f)
			}
		}
		if strings.Contains(out, fmt.Sprintf("sees %d", pid)) {
			t.Errorf("the spy task sees pid %d in its /proc", pid)
		}
	}
	for _, secret := range []string{"hunter2-in-env", c.Token, c.Key} {
		if secret != "" && strings.Contains(out, secret) {
			t.Errorf("a secret reached the spy task's log: %q", secret)
		}
	}
	f := strings.Fields(out[strings.Index(out, "visible"):])
	if v, err := strconv.Atoi(f[1]); err != nil || v > 6 {
		t.Errorf("the spy task sees %s processes, want only its own few", f[1])
	}
}

// pidsFile reads a file of the pids cgroup of task id of n's agent.
func pidsFile(t *testing.T, n *Node, id, file string) string {
	t.Helper()
	for _, dir := range []string{
		filepath.Join("/sys/fs/cgroup/pids/shoal", n.TaskNamespace(), id), // v1
		filepath.Join("/sys/fs/cgroup/shoal", n.TaskNamespace(), id),      // v2
	} {
		if raw, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
			return strings.TrimSpace(string(raw))
		}
	}
	return ""
}

func TestForkBombInATaskLeavesTheNodeAndOtherTasksWorking(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	n.LoadHello(t)
	n.LoadProbe(t)
	hello := Hello(t)
	ctx := context.Background()

	one := 1
	putJob(t, n, api.Job{ID: "calm", Replicas: &one, Task: api.Task{
		Driver: "exec", Command: []string{hello},
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
		Ports:     []api.Port{{Name: "http", Port: 8080}},
	}})
	putJob(t, n, helloContainerJob("boxed", 1))
	waitRunning(t, n, "calm")
	waitRunning(t, n, "boxed")

	// Two bombs with the default pids limit: a shell one as an exec task,
	// a raw fork(2) loop in a container.
	bombs := []api.Job{
		shJob("shbomb", "b() { b | b & }; b; exec sleep 100000"),
		probeJob("ctrbomb", "forkbomb"),
	}
	for _, b := range bombs {
		b.Task.Resources = api.Resources{CPUMillis: 200, MemoryMB: 512}
		putJob(t, n, b)
	}
	for _, id := range []string{"shbomb-0", "ctrbomb-0"} {
		took := Eventually(t, 90*time.Second, id+" at its pids limit", func() (bool, string) {
			limit, cur, events := pidsFile(t, n, id, "pids.max"), pidsFile(t, n, id, "pids.current"), pidsFile(t, n, id, "pids.events")
			l, _ := strconv.Atoi(limit)
			k, _ := strconv.Atoi(cur)
			if k > l && l > 0 {
				t.Fatalf("%s has %d processes, over its limit %d", id, k, l)
			}
			return limit == strconv.Itoa(api.DefaultPids) && events != "" && events != "max 0",
				fmt.Sprintf("pids.max %q current %q events %q", limit, cur, events)
		})
		t.Logf("%s hit its limit of %d processes after %s", id, api.DefaultPids, took.Round(time.Millisecond))
	}

	// While both bombs push at their limits, the node and the others work.
	for range 5 {
		if out, err := n.TaskGet("calm-0", 8080, "/"); err != nil || !strings.Contains(out, "hello from calm-0") {
			t.Fatalf("the exec neighbour answers %q, %v", out, err)
		}
		if out, err := n.TaskGet("boxed-0", 8080, "/"); err != nil || !strings.Contains(out, "hello from boxed-0") {
			t.Fatalf("the container neighbour answers %q, %v", out, err)
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := n.Client().Health(hctx)
		cancel()
		if err != nil {
			t.Fatalf("the agent's API: %v", err)
		}
		if out, err := exec.Command("/bin/true").CombinedOutput(); err != nil {
			t.Fatalf("the host cannot start a process: %v %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	putJob(t, n, shJob("late", "echo started late; exec sleep 100000"))
	waitRunning(t, n, "late")
	execLog(t, n, "late-0", "started late")

	// Deleting the bombs removes every process of theirs.
	for _, b := range bombs {
		deleteJob(t, n, b.ID)
	}
	for _, id := range []string{"shbomb-0", "ctrbomb-0"} {
		Eventually(t, 60*time.Second, id+" gone", func() (bool, string) {
			cur := pidsFile(t, n, id, "pids.current")
			return cur == "", "pids.current " + cur
		})
	}
}

// capBits reads a capability mask line (CapEff, CapBnd) of a process.
func capBits(t *testing.T, pid int, line string) uint64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(l, line+":"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask
		}
	}
	t.Fatalf("no %s in /proc/%d/status", line, pid)
	return 0
}

func TestContainerLacksNetRawUnlessItsJobAsks(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	n.LoadProbe(t)
	putJob(t, n, probeJob("plain", "serve"))
	raw := probeJob("pinger", "serve")
	raw.Task.CapAdd = []string{"NET_RAW"}
	putJob(t, n, raw)
	waitRunning(t, n, "plain")
	waitRunning(t, n, "pinger")
	const netRaw = 1 << 13
	ctrs := n.containers(t)
	plain, pinger := ctrs["plain-0"], ctrs["pinger-0"]
	if plain.PID == 0 || pinger.PID == 0 {
		t.Fatalf("containers: %+v", ctrs)
	}
	eff, bnd := capBits(t, plain.PID, "CapEff"), capBits(t, plain.PID, "CapBnd")
	t.Logf("default container (root inside): CapEff %016x CapBnd %016x", eff, bnd)
	if eff&netRaw != 0 || bnd&netRaw != 0 {
		t.Errorf("a default container has CAP_NET_RAW (CapEff %x, CapBnd %x)", eff, bnd)
	}
	if eff == 0 {
		t.Error("the container's root has no capabilities at all; the check proves nothing")
	}
	if eff := capBits(t, pinger.PID, "CapEff"); eff&netRaw == 0 {
		t.Errorf("a container whose job asks for NET_RAW lacks it (CapEff %x)", eff)
	}
	// The API names the field of a capability that does not exist.
	bad := probeJob("bad", "serve")
	bad.Task.CapAdd = []string{"NET_RAWR"}
	if _, err := n.Client().PutJob(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "task.cap_add[0]") {
		t.Errorf("a job with an unknown capability: %v, want an error naming task.cap_add[0]", err)
	}
}

func TestExecHealthCheckOfAContainerRunsInsideIt(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	n.LoadProbe(t)
	// /taskprobe exists only in the image: the check passes only inside.
	inside := probeJob("inside", "serve")
	inside.Health = &api.HealthCheck{
		Exec:     []string{"/taskprobe", "inside"},
		Interval: api.Duration(500 * time.Millisecond), Timeout: api.Duration(400 * time.Millisecond),
		FailuresBeforeUnhealthy: 2,
	}
	// A check that never ends: each run is killed at its timeout with the
	// child it started.
	hangs := probeJob("hangs", "serve")
	hangs.Health = &api.HealthCheck{
		Exec:     []string{"/taskprobe", "spawn-and-hang"},
		Interval: api.Duration(500 * time.Millisecond), Timeout: api.Duration(300 * time.Millisecond),
		FailuresBeforeUnhealthy: 2,
	}
	putJob(t, n, inside)
	putJob(t, n, hangs)
	health := func(job string) string {
		a, ok, detail := allocation(n, job, 0)
		switch {
		case !ok:
			return "absent " + detail
		case a.Healthy == nil:
			return "unknown"
		case *a.Healthy:
			return "healthy"
		}
		return "unhealthy " + a.Message
	}
	Eventually(t, 60*time.Second, "inside healthy", func() (bool, string) {
		h := health("inside")
		return h == "healthy", h
	})
	Eventually(t, 60*time.Second, "hangs unhealthy", func() (bool, string) {
		h := health("hangs")
		return strings.HasPrefix(h, "unhealthy"), h
	})
	// Several timed-out checks later, nothing of them is left in the
	// container: its init is its only process.
	time.Sleep(2 * time.Second)
	ctr := n.containers(t)["hangs-0"]
	procs := filepath.Join("/sys/fs/cgroup/pids/shoal", n.TaskNamespace(), "hangs-0", "cgroup.procs")
	if _, err := os.Stat(procs); err != nil {
		procs = filepath.Join("/sys/fs/cgroup/shoal", n.TaskNamespace(), "hangs-0", "cgroup.procs")
	}
	raw, err := os.ReadFile(procs)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(raw)); len(got) > 2 || !strings.Contains(string(raw), strconv.Itoa(ctr.PID)) {
		// At most the init and a check in flight.
		t.Errorf("processes in the container: %v, want its init %d (and at most one check running)", got, ctr.PID)
	}
	if a, _, _ := allocation(n, "hangs", 0); !strings.Contains(a.Message, "deadline exceeded") {
		t.Logf("unhealthy message: %q", a.Message)
	}
}
