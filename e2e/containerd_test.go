package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// HelloRef names the image built from examples/hello.
const HelloRef = "shoal.test/hello:1"

var (
	helloImageOnce sync.Once
	helloImagePath string
)

// HelloImage packages the hello binary (Hello) as an OCI image archive
// once per test binary and returns its path; it lies next to the binary,
// in the directory TestMain removes.
func HelloImage(t *testing.T) string {
	t.Helper()
	bin := Hello(t)
	helloImageOnce.Do(func() {
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(filepath.Dir(bin), "hello.tar")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		err = shoalrt.WriteImageArchive(f, HelloRef, shoalrt.ImageConfig{Entrypoint: []string{"/hello"}, User: "65534:65534"},
			[]shoalrt.ImageFile{{Path: "/hello", Mode: 0o755, Data: data}})
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		helloImagePath = path
	})
	if helloImagePath == "" {
		t.Fatal("packaging the hello image failed earlier")
	}
	return helloImagePath
}

// LoadHello imports the hello image on every node through the API.
func (c *Cluster) LoadHello(t *testing.T) {
	t.Helper()
	for _, n := range c.Nodes {
		n.LoadHello(t)
	}
}

// LoadHello imports the hello image on n through its API.
func (n *Node) LoadHello(t *testing.T) {
	t.Helper()
	f, err := os.Open(HelloImage(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := n.Client().LoadImage(context.Background(), f)
	if err != nil {
		t.Fatalf("load image on %s: %v", n.Name, err)
	}
	if len(imgs) != 1 || imgs[0].Name != HelloRef {
		t.Fatalf("load image on %s: got %+v", n.Name, imgs)
	}
}

func helloContainerJob(id string, replicas int) api.Job {
	return api.Job{ID: id, Replicas: &replicas, Task: api.Task{
		Driver: "containerd", Image: HelloRef,
		Env:       map[string]string{"PORT": "8080"},
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
		Ports:     []api.Port{{Name: "http", Port: 8080}},
	}, Health: &api.HealthCheck{
		HTTP:                    &api.HTTPCheck{Port: 8080, Path: "/healthz"},
		Interval:                api.Duration(500 * time.Millisecond),
		Timeout:                 api.Duration(400 * time.Millisecond),
		FailuresBeforeUnhealthy: 2,
	}}
}

// containers lists the node's containers straight from containerd.
func (n *Node) containers(t *testing.T) map[string]shoalrt.TaskStatus {
	t.Helper()
	drv, err := shoalrt.NewContainerd(shoalrt.ContainerdConfig{Address: ContainerdAddress, Namespace: n.TaskNamespace(), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	tasks, err := drv.List(context.Background())
	if err != nil {
		t.Fatalf("list containers of %s: %v", n.Name, err)
	}
	out := map[string]shoalrt.TaskStatus{}
	for _, task := range tasks {
		out[task.ID] = task
	}
	return out
}

func (c *Cluster) node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// allocation returns replica's running allocation as n reports it.
func allocation(n *Node, job string, replica int) (api.Allocation, bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.Client().Job(ctx, job)
	if err != nil {
		return api.Allocation{}, false, err.Error()
	}
	for _, a := range st.Allocations {
		if a.Replica == replica && a.State == "running" {
			return a, true, fmt.Sprintf("%+v", a)
		}
	}
	return api.Allocation{}, false, fmt.Sprintf("%+v", st.Allocations)
}

func TestContainerJobRunsRestartsAndReportsHealth(t *testing.T) {
	c := startCluster(t, 3)
	c.LoadHello(t)
	ctx := context.Background()
	if _, err := c.Nodes[0].Client().PutJob(ctx, helloContainerJob("web", 2)); err != nil {
		t.Fatal(err)
	}
	owners := map[int]*Node{}
	for r := 0; r < 2; r++ {
		Eventually(t, 60*time.Second, fmt.Sprintf("replica %d running and healthy", r), func() (bool, string) {
			a, ok, detail := allocation(c.Nodes[1], "web", r)
			if ok && a.Healthy != nil && *a.Healthy {
				owners[r] = c.node(a.Node)
			}
			return owners[r] != nil, detail
		})
	}
	// They are containerd tasks, each answering in its own network
	// namespace with its own hostname.
	for r, n := range owners {
		id := fmt.Sprintf("web-%d", r)
		if task, ok := n.containers(t)[id]; !ok || task.State != shoalrt.StateRunning {
			t.Fatalf("%s: no running container %s: %+v", n.Name, id, n.containers(t))
		}
		out, err := n.TaskGet(id, 8080, "/")
		if err != nil || !strings.Contains(out, "hello from web-"+fmt.Sprint(r)) {
			t.Fatalf("replica %d answers %q, %v", r, out, err)
		}
	}

	// Logs, read through a node that does not run the replica.
	for r, owner := range owners {
		var asker *Node
		for _, n := range c.Nodes {
			if n != owner {
				asker = n
			}
		}
		want := fmt.Sprintf("web-%d listening on :8080", r)
		Eventually(t, 10*time.Second, "log of replica "+fmt.Sprint(r), func() (bool, string) {
			out, err := asker.Shoal("logs", "web", "--replica", fmt.Sprint(r))
			return err == nil && strings.Contains(out, want), out
		})
	}

	// Killed behind the agent's back: restarted, the restart counted.
	owner := owners[0]
	before := owner.containers(t)["web-0"]
	if err := syscall.Kill(before.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	took := Eventually(t, 30*time.Second, "replica 0 restarted", func() (bool, string) {
		a, ok, detail := allocation(c.Nodes[2], "web", 0)
		now, has := owner.containers(t)["web-0"]
		return ok && a.Restarts >= 1 && has && now.State == shoalrt.StateRunning && now.PID != before.PID, detail
	})
	t.Logf("MEASURE container_killed_to_running_again=%s", took.Round(time.Millisecond))

	// A failing health check shows within interval x failures (+ one
	// publish), as seen from another node.
	Eventually(t, 20*time.Second, "replica 0 healthy after restart", func() (bool, string) {
		a, ok, detail := allocation(c.Nodes[2], "web", 0)
		return ok && a.Healthy != nil && *a.Healthy, detail
	})
	if _, err := owner.TaskGet("web-0", 8080, "/sick"); err != nil {
		t.Fatal(err)
	}
	took = Eventually(t, 20*time.Second, "replica 0 unhealthy", func() (bool, string) {
		a, ok, detail := allocation(c.Nodes[2], "web", 0)
		return ok && a.Healthy != nil && !*a.Healthy, detail
	})
	t.Logf("MEASURE container_sick_to_reported_unhealthy=%s (interval 500ms x 2 failures)", took.Round(time.Millisecond))

	// What happened is in the owner's events.
	evs, err := owner.Client().Events(ctx, 0, "web")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, ev := range evs {
		if ev.Replica == 0 {
			kinds[ev.Kind]++
		}
	}
	if kinds["started"] < 2 || kinds["exited"] < 1 || kinds["unhealthy"] < 1 {
		t.Errorf("events of web-0 = %v, want 2 starts, an exit and a health flip", kinds)
	}

	// The replicas' usage feeds their nodes' load tags.
	Eventually(t, 10*time.Second, "replica memory in load tags", func() (bool, string) {
		nodes, err := c.Nodes[0].Client().Nodes(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, n := range nodes {
			if n.Name == owner.Name {
				return n.Load.ReplicaMemoryMB > 0 || n.Tags["rm"] != "0", fmt.Sprintf("%+v", n.Load)
			}
		}
		return false, "owner missing"
	})
}

func TestRestartedAgentKeepsItsContainers(t *testing.T) {
	c := startCluster(t, 2)
	c.LoadHello(t)
	n1 := c.Nodes[0]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, helloContainerJob("keep", 4)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, "4 running", func() (bool, string) {
		_, total, detail := runningByNode(n1, "keep")
		return total == 4, detail
	})
	pids := func() map[string]int {
		out := map[string]int{}
		for id, task := range n1.containers(t) {
			out[id] = task.PID
		}
		return out
	}
	before := pids()
	if len(before) == 0 {
		t.Fatal("n1 runs no containers")
	}
	n1.Kill()
	n1.Start()
	time.Sleep(5 * time.Second) // a few reconcile rounds to (wrongly) restart things
	Eventually(t, 30*time.Second, "4 running after restart", func() (bool, string) {
		_, total, detail := runningByNode(c.Nodes[1], "keep")
		return total == 4, detail
	})
	if after := pids(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("containers changed across SIGKILL and restart of the agent:\nbefore %v\nafter  %v", before, after)
	}
	// Containers of a job that is gone are removed.
	if _, err := n1.Client().DeleteJob(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "containers removed", func() (bool, string) {
		left := n1.containers(t)
		return len(left) == 0, fmt.Sprint(left)
	})
}

func TestMissingImageFailsTheReplicaNotTheAgent(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	ctx := context.Background()
	job := helloContainerJob("ghost", 1)
	job.Task.Image = "registry.shoal.test/ghost:1"
	job.Health = nil
	if _, err := n.Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, "replica failed with the reason", func() (bool, string) {
		st, err := n.Client().Job(ctx, "ghost")
		if err != nil {
			return false, err.Error()
		}
		for _, a := range st.Allocations {
			if a.State == "failed" && strings.Contains(a.Message, "registry.shoal.test/ghost:1 is not present on this node and pulling it failed") {
				return true, a.Message
			}
		}
		return false, fmt.Sprintf("%+v", st.Allocations)
	})
	// The failed pull is an event of the node.
	evs, err := n.Client().Events(ctx, 0, "ghost")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, ev := range evs {
		kinds[ev.Kind] = true
	}
	if !kinds["image-pull"] || !kinds["image-pull-failed"] || !kinds["start-failed"] {
		t.Errorf("events of ghost = %+v, want image-pull, image-pull-failed and start-failed", evs)
	}
	// The agent keeps serving: another job runs.
	if _, err := n.Client().PutJob(ctx, sleepJob("alive", 1)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "other job running", func() (bool, string) {
		_, total, detail := runningByNode(n, "alive")
		return total == 1, detail
	})
	// A bad archive is refused with a 400 naming the problem.
	_, err = n.Client().LoadImage(ctx, strings.NewReader("not a tar"))
	if se, ok := err.(*api.StatusError); !ok || se.Code != 400 {
		t.Fatalf("bad archive: want HTTP 400, got %v", err)
	}
	imgs, err := n.Client().Images(ctx)
	if err != nil || len(imgs) != 0 {
		t.Fatalf("images after a bad upload: %+v, %v", imgs, err)
	}
}

func TestExecJobRunsWithItsLimits(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	ctx := context.Background()
	job := sleepJob("limited", 1)
	job.Task.Resources = api.Resources{CPUMillis: 250, MemoryMB: 48}
	if _, err := n.Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "running", func() (bool, string) {
		_, total, detail := runningByNode(n, "limited")
		return total == 1, detail
	})
	nsPID := taskPIDs(t, n)["shoal-"+n.TaskNamespace()+"-limited-0"]
	if nsPID == "" {
		t.Fatalf("no process in the task's network namespace: %v", taskPIDs(t, n))
	}
	pid := strings.Fields(nsPID)[0]
	cg, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	memDir, cpuDir := "", ""
	for _, line := range strings.Split(string(cg), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, ctl := range strings.Split(parts[1], ",") {
			switch ctl {
			case "memory":
				memDir = "/sys/fs/cgroup/" + parts[1] + parts[2]
			case "cpu":
				cpuDir = "/sys/fs/cgroup/" + parts[1] + parts[2]
			}
		}
	}
	if memDir == "" || cpuDir == "" {
		t.Skipf("not a cgroup v1 host: %s", cg)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := read(memDir + "/memory.limit_in_bytes"); got != fmt.Sprint(48<<20) {
		t.Errorf("memory limit = %s, want %d", got, 48<<20)
	}
	if got := read(cpuDir + "/cpu.cfs_quota_us"); got != "25000" {
		t.Errorf("cpu quota = %s, want 25000 (250 millis of a 100 ms period)", got)
	}
	// A user of its own from the default task range, not root or nobody.
	status := read("/proc/" + pid + "/status")
	if !strings.Contains(status, "Uid:\t20000") {
		t.Errorf("exec task does not run as a user of the task range (%s):\n%s", shoalrt.DefaultTaskUIDs, status)
	}
}
