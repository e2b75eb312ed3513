package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

func sleepJob(id string, replicas int) api.Job {
	return api.Job{ID: id, Replicas: &replicas, Task: api.Task{
		Driver: "exec", Command: []string{"/bin/sleep", "100000"},
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 32},
	}}
}

// runningByNode returns node -> running replica count of job as n reports
// it, and how many replicas run in all.
func runningByNode(n *Node, job string) (map[string]int, int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.Client().Job(ctx, job)
	if err != nil {
		return nil, 0, err.Error()
	}
	per := map[string]int{}
	total := 0
	seen := map[int]bool{}
	for _, a := range st.Allocations {
		if a.State == "running" && !seen[a.Replica] {
			seen[a.Replica] = true
			per[a.Node]++
			total++
		}
	}
	return per, total, fmt.Sprintf("%+v", st.Allocations)
}

func TestReplicasSpreadAndMoveWhenANodeDies(t *testing.T) {
	c := startCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, sleepJob("spread", 6)); err != nil {
		t.Fatal(err)
	}
	took := Eventually(t, 30*time.Second, "6 replicas running", func() (bool, string) {
		per, total, detail := runningByNode(n2, "spread")
		if total != 6 {
			return false, detail
		}
		for node, k := range per {
			if k > 3 {
				return false, fmt.Sprintf("%s runs %d replicas", node, k)
			}
		}
		return true, ""
	})
	per, _, _ := runningByNode(n2, "spread")
	t.Logf("MEASURE submit_to_6_running=%s spread=%v", took.Round(time.Millisecond), per)
	if len(per) != 3 {
		t.Fatalf("replicas on %d nodes, want all 3: %v", len(per), per)
	}

	// A fourth node joins: some replicas move to it, make-before-break, so
	// the six replicas never stop running meanwhile.
	n4 := c.AddNode()
	minRunning := 6
	Eventually(t, 60*time.Second, "n4 takes its share", func() (bool, string) {
		per, total, detail := runningByNode(n1, "spread")
		minRunning = min(minRunning, total)
		if per["n4"] == 0 || total != 6 {
			return false, detail
		}
		// Old copies are gone: every node runs at most its bound.
		for _, k := range per {
			if k > 2 {
				return false, detail
			}
		}
		return true, ""
	})
	if minRunning < 6 {
		t.Errorf("running replicas dipped to %d while replicas moved to a new node", minRunning)
	}
	per, _, _ = runningByNode(n1, "spread")
	t.Logf("after n4 joined: %v", per)

	n4.KillMachine()
	Eventually(t, 60*time.Second, "back on 3 nodes", func() (bool, string) {
		per, total, detail := runningByNode(n1, "spread")
		return total == 6 && per["n4"] == 0, detail
	})
	n3.KillMachine()
	took = Eventually(t, 60*time.Second, "6 replicas running on the survivors", func() (bool, string) {
		per, total, detail := runningByNode(n1, "spread")
		if total != 6 || per["n3"] != 0 || per["n1"] != 3 || per["n2"] != 3 {
			return false, detail
		}
		return true, ""
	})
	t.Logf("MEASURE kill9_to_6_running=%s (failure detection + placement + start)", took.Round(time.Millisecond))

	// Deleting the job stops every replica.
	if _, err := n2.Client().DeleteJob(ctx, "spread"); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "no tasks left", func() (bool, string) {
		for _, n := range []*Node{n1, n2} {
			out, _ := n.Exec("sh", "-c", "ip netns list | grep -c '^shoal-"+n.TaskNamespace()+"-' || true")
			if out != "0\n" {
				return false, n.Name + " still has task namespaces: " + out
			}
		}
		return true, ""
	})
}

func TestUnplaceableReplicasAreReportedWithAReason(t *testing.T) {
	c := startCluster(t, 2)
	ctx := context.Background()
	huge := sleepJob("huge", 1)
	huge.Task.Resources.MemoryMB = 4 << 20
	if _, err := c.Nodes[0].Client().PutJob(ctx, huge); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, "unplaced allocation", func() (bool, string) {
		st, err := c.Nodes[1].Client().Job(ctx, "huge")
		if err != nil {
			return false, err.Error()
		}
		for _, a := range st.Allocations {
			if a.State == "unplaced" && a.Message != "" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", st.Allocations)
	})
}

func TestLogsOfAReplicaFromAnyNode(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	job := sleepJob("talk", 3)
	job.Task.Command = []string{"/bin/sh", "-c", `echo "hello from $SHOAL_JOB-$SHOAL_REPLICA on $SHOAL_NODE"; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done`}
	if _, err := c.Nodes[0].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "3 replicas running", func() (bool, string) {
		_, total, detail := runningByNode(c.Nodes[0], "talk")
		return total == 3, detail
	})
	st, err := c.Nodes[0].Client().Job(ctx, "talk")
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range st.Allocations {
		// Ask a node that does not run this replica, so the log crosses a
		// libp2p stream.
		var asker *Node
		for _, n := range c.Nodes {
			if n.Name != al.Node {
				asker = n
			}
		}
		want := fmt.Sprintf("hello from talk-%d on %s", al.Replica, al.Node)
		Eventually(t, 10*time.Second, "log of replica "+fmt.Sprint(al.Replica), func() (bool, string) {
			out, err := asker.Shoal("logs", "talk", "--replica", fmt.Sprint(al.Replica), "--tail", "100000")
			if err != nil {
				return false, out
			}
			return strings.Contains(out, want), out
		})
	}
	// Follow: new lines keep arriving over the stream.
	fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	rc, err := c.Nodes[2].Client().Logs(fctx, "talk", 1, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(rc)
	rc.Close()
	if n := strings.Count(string(raw), "tick "); n < 3 {
		t.Fatalf("followed log got %d new lines in 3s: %q", n, raw)
	}
	var se *api.StatusError
	if _, err := c.Nodes[1].Client().Logs(ctx, "talk", 7, 10, false); !errors.As(err, &se) || se.Code != 404 {
		t.Fatalf("missing replica: want 404, got %v", err)
	}
}

// taskPIDs returns, for each task network namespace of n, the pids in it,
// so a test can tell whether tasks were restarted.
func taskPIDs(t *testing.T, n *Node) map[string]string {
	t.Helper()
	out, err := exec.Command("sh", "-c", "for ns in $(ip netns list | awk '{print $1}' | grep '^shoal-"+n.TaskNamespace()+"-'); do echo \"$ns $(ip netns pids $ns | tr '\\n' ' ')\"; done").CombinedOutput()
	if err != nil {
		t.Fatalf("list task pids: %v %s", err, out)
	}
	pids := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			pids[f[0]] = strings.Join(f[1:], " ")
		}
	}
	return pids
}

func TestRestartedAgentAdoptsItsReplicas(t *testing.T) {
	c := startCluster(t, 2)
	n1 := c.Nodes[0]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, sleepJob("keep", 4)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "4 running", func() (bool, string) {
		_, total, detail := runningByNode(n1, "keep")
		return total == 4, detail
	})
	before := taskPIDs(t, n1)
	if len(before) == 0 {
		t.Fatal("n1 runs no tasks")
	}
	for _, stop := range []func(){func() { n1.Kill() }, func() { _ = n1.Terminate() }} {
		stop()
		n1.Start()
		// Give the agent a few reconcile rounds to (wrongly) restart things.
		time.Sleep(5 * time.Second)
		Eventually(t, 30*time.Second, "4 running after restart", func() (bool, string) {
			_, total, detail := runningByNode(c.Nodes[1], "keep")
			return total == 4, detail
		})
		after := taskPIDs(t, n1)
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("tasks changed across an agent restart:\nbefore %v\nafter  %v", before, after)
		}
	}
}

func TestDrainHandsReplicasOverBeforeLeaving(t *testing.T) {
	c := startCluster(t, 3, WithArgs("--drain"))
	n1, n3 := c.Nodes[0], c.Nodes[2]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, sleepJob("moving", 6)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "6 running on 3 nodes", func() (bool, string) {
		per, total, detail := runningByNode(n1, "moving")
		return total == 6 && per["n3"] > 0, detail
	})
	done := make(chan error, 1)
	go func() { done <- n3.Terminate() }()
	minRunning := 6
	start := time.Now()
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("draining agent exited with %v", err)
			}
			finished = true
		case <-time.After(50 * time.Millisecond):
			if _, total, _ := runningByNode(n1, "moving"); total < minRunning {
				minRunning = total
			}
		}
	}
	t.Logf("MEASURE drain_of_2_replicas=%s", time.Since(start).Round(time.Millisecond))
	if minRunning < 6 {
		t.Errorf("running replicas dipped to %d during the drain", minRunning)
	}
	if pids := taskPIDs(t, n3); len(pids) != 0 {
		t.Fatalf("drained node still has tasks: %v", pids)
	}
	per, total, detail := runningByNode(n1, "moving")
	if total != 6 || per["n3"] != 0 {
		t.Fatalf("after drain: %v (%s)", per, detail)
	}
	if !strings.Contains(n3.Log(), "drained") {
		t.Error("agent did not log the end of its drain")
	}
}

func TestCrashLoopBacksOffAndGivesUp(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	ctx := context.Background()
	job := sleepJob("crashy", 1)
	job.Task.Command = []string{"/bin/sh", "-c", "echo starting; exit 3"}
	job.Restart = &api.RestartPolicy{Policy: "always", MaxAttempts: 3, Backoff: api.Duration(200 * time.Millisecond), MaxBackoff: api.Duration(time.Second)}
	if _, err := n.Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "crash loop gives up", func() (bool, string) {
		st, err := n.Client().Job(ctx, "crashy")
		if err != nil || len(st.Allocations) != 1 {
			return false, fmt.Sprintf("%+v %v", st.Allocations, err)
		}
		a := st.Allocations[0]
		ok := a.State == "failed" && a.Restarts == 3 && a.ExitCode != nil && *a.ExitCode == 3 && strings.Contains(a.Message, "gave up after 3 restarts")
		return ok, fmt.Sprintf("%+v", a)
	})
	// It started exactly 1 + 3 times.
	out, err := n.Shoal("logs", "crashy", "--tail", "100")
	if err != nil {
		t.Fatal(out)
	}
	if got := strings.Count(out, "starting"); got != 4 {
		t.Fatalf("task started %d times, want 4 (1 + 3 restarts):\n%s", got, out)
	}
}
