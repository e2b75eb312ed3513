package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

// partitionTable is the nftables table that cuts a node off from others.
const partitionTable = "shoal_e2e_partition"

// cutOff drops every packet between n and the given peers, in n's own
// namespace, until heal; the rules go with the namespace at teardown.
func cutOff(t *testing.T, n *Node, peers ...*Node) {
	t.Helper()
	var ips []string
	for _, p := range peers {
		ips = append(ips, p.IP)
	}
	set := "{ " + strings.Join(ips, ", ") + " }"
	rules := fmt.Sprintf(`table inet %[1]s {
	chain in { type filter hook input priority -300; ip saddr %[2]s drop; }
	chain out { type filter hook output priority -300; ip daddr %[2]s drop; }
}
`, partitionTable, set)
	cmd := exec.Command("ip", "netns", "exec", n.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cut %s off from %v: %v: %s", n.Name, ips, err, out)
	}
}

func heal(t *testing.T, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		if out, err := exec.Command("ip", "netns", "exec", n.NS, "nft", "delete", "table", "inet", partitionTable).CombinedOutput(); err != nil {
			t.Errorf("heal %s: %v: %s", n.Name, err, out)
		}
	}
}

// copies counts, per replica of job, the nodes whose runtime runs a task
// for it, from every node's own report of its replicas.
func copies(n *Node, job string) (map[int][]string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.Client().Job(ctx, job)
	if err != nil {
		return nil, err.Error()
	}
	out := map[int][]string{}
	for _, a := range st.Allocations {
		if a.State == "running" {
			out[a.Replica] = append(out[a.Replica], a.Node)
		}
	}
	return out, fmt.Sprintf("%+v", st.Allocations)
}

func TestPartitionWithWritesOnBothSidesHeals(t *testing.T) {
	c := startCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, sleepJob("base", 3)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "base runs 3 replicas", func() (bool, string) {
		_, total, detail := runningByNode(n3, "base")
		return total == 3, detail
	})

	// {n1, n2} | {n3}
	cutOff(t, n1, n3)
	cutOff(t, n2, n3)
	cutOff(t, n3, n1, n2)
	waitStatuses(t, []*Node{n1, n2}, map[string]string{"n1": "alive", "n2": "alive", "n3": "failed"}, 30*time.Second)
	waitStatuses(t, []*Node{n3}, map[string]string{"n1": "failed", "n2": "failed", "n3": "alive"}, 30*time.Second)

	// Both sides accept writes and run what they placed.
	if _, err := n1.Client().PutJob(ctx, sleepJob("left", 2)); err != nil {
		t.Fatalf("write on the majority side: %v", err)
	}
	if _, err := n3.Client().PutJob(ctx, sleepJob("right", 2)); err != nil {
		t.Fatalf("write on the minority side: %v", err)
	}
	// The later write of base wins everywhere: n3's, written after n1's.
	if _, err := n1.Client().PutJob(ctx, sleepJob("base", 2)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if _, err := n3.Client().PutJob(ctx, sleepJob("base", 4)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "each side runs its jobs", func() (bool, string) {
		_, left, d1 := runningByNode(n1, "left")
		_, right, d2 := runningByNode(n3, "right")
		_, base, d3 := runningByNode(n3, "base")
		return left == 2 && right == 2 && base == 4, d1 + " | " + d2 + " | " + d3
	})

	healed := time.Now()
	heal(t, n1, n2, n3)
	all := map[string]string{"n1": "alive", "n2": "alive", "n3": "alive"}
	waitStatuses(t, c.Nodes, all, 60*time.Second)
	want := map[string]int{"base": 4, "left": 2, "right": 2}
	Eventually(t, 60*time.Second, "one state and exact replicas, without duplicates, on every node", func() (bool, string) {
		var versions []string
		for _, n := range c.Nodes {
			jobs, err := n.Client().Jobs(ctx)
			if err != nil {
				return false, err.Error()
			}
			var have []string
			for _, j := range jobs {
				have = append(have, j.ID+"@"+j.Version)
			}
			sort.Strings(have)
			versions = append(versions, strings.Join(have, ","))
		}
		for _, v := range versions[1:] {
			if v != versions[0] {
				return false, "nodes disagree: " + strings.Join(versions, " / ")
			}
		}
		for job, n := range want {
			for _, node := range c.Nodes {
				byReplica, detail := copies(node, job)
				if len(byReplica) != n {
					return false, fmt.Sprintf("%s sees %s with %d running replicas, want %d: %s", node.Name, job, len(byReplica), n, detail)
				}
				for r, nodes := range byReplica {
					if len(nodes) != 1 || r >= n {
						return false, fmt.Sprintf("%s sees %s-%d on %v", node.Name, job, r, nodes)
					}
				}
			}
		}
		return true, ""
	})
	t.Logf("MEASURE partition_heal_converged=%s", time.Since(healed).Round(10*time.Millisecond))

	// The runtimes agree with the records: one task per replica in all,
	// once the last handovers have stopped their old copies.
	Eventually(t, 60*time.Second, "one task per replica, 8 in all", func() (bool, string) {
		tasks := map[string]int{}
		for _, n := range c.Nodes {
			for ns := range taskPIDs(t, n) {
				// shoal-<namespace>-<job>-<replica>
				tasks[strings.TrimPrefix(ns, "shoal-"+n.TaskNamespace()+"-")]++
			}
		}
		for id, k := range tasks {
			if k != 1 {
				return false, fmt.Sprintf("task %s runs %d times", id, k)
			}
		}
		return len(tasks) == 8, fmt.Sprintf("%d tasks: %v", len(tasks), tasks)
	})
	var st api.JobStatus
	st, err := n2.Client().Job(ctx, "base")
	if err != nil || st.Replicas == nil || *st.Replicas != 4 {
		t.Errorf("base after the heal: %+v, %v (the later write, 4 replicas, should win)", st.Replicas, err)
	}
}

func TestBlipShorterThanFailureDetectionMovesNothing(t *testing.T) {
	c := startCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, sleepJob("steady", 3)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "steady runs 3 replicas", func() (bool, string) {
		_, total, detail := runningByNode(n2, "steady")
		return total == 3, detail
	})
	before := map[string]map[string]string{}
	for _, n := range c.Nodes {
		before[n.Name] = taskPIDs(t, n)
	}
	placed, _, _ := runningByNode(n1, "steady")

	// n3's link drops for well under the failure detection time (about
	// 2.5 s with the default probe settings).
	cutOff(t, n3, n1, n2)
	cutOff(t, n1, n3)
	cutOff(t, n2, n3)
	time.Sleep(700 * time.Millisecond)
	heal(t, n1, n2, n3)

	// A few reconcile rounds for anything to (wrongly) move.
	time.Sleep(5 * time.Second)
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive", "n3": "alive"}, 30*time.Second)
	for _, n := range c.Nodes {
		if after := taskPIDs(t, n); fmt.Sprint(after) != fmt.Sprint(before[n.Name]) {
			t.Errorf("%s: tasks changed across a blip:\nbefore %v\nafter  %v", n.Name, before[n.Name], after)
		}
	}
	if now, total, detail := runningByNode(n1, "steady"); fmt.Sprint(now) != fmt.Sprint(placed) || total != 3 {
		t.Errorf("placement changed across a blip: %v -> %v (%s)", placed, now, detail)
	}
}
