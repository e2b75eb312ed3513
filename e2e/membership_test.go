package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

// statuses returns name -> status as node n reports it.
func statuses(n *Node) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := n.Client().Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range nodes {
		out[m.Name] = m.Status
	}
	return out, nil
}

// waitStatuses waits until every observer reports want exactly and returns
// how long the slowest observer took.
func waitStatuses(t *testing.T, observers []*Node, want map[string]string, timeout time.Duration) time.Duration {
	t.Helper()
	return Eventually(t, timeout, fmt.Sprintf("members %v", want), func() (bool, string) {
		for _, o := range observers {
			got, err := statuses(o)
			if err != nil {
				return false, err.Error()
			}
			if len(got) != len(want) {
				return false, fmt.Sprintf("%s sees %v", o.Name, got)
			}
			for name, s := range want {
				if got[name] != s {
					return false, fmt.Sprintf("%s sees %v", o.Name, got)
				}
			}
		}
		return true, ""
	})
}

func TestThreeNodesConvergeAndSeeAKillAsFailure(t *testing.T) {
	c := NewCluster(t)
	start := time.Now()
	n1, n2, n3 := c.AddNode(), c.AddNode(), c.AddNode()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive", "n3": "alive"}, 30*time.Second)
	t.Logf("MEASURE join_convergence_3_nodes=%s (first agent start to all three list three alive)", time.Since(start).Round(time.Millisecond))

	// Capacity and load reach the other nodes through tags.
	ctx := context.Background()
	nodes, err := n1.Client().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Capacity.CPUMillis <= 0 || n.Capacity.MemoryMB <= 0 || n.PeerID == "" || n.Health != "ok" || n.Tags["id"] == "" {
			t.Errorf("node %s lacks capacity, peer id or health: %+v", n.Name, n)
		}
	}
	Eventually(t, 15*time.Second, "load reported", func() (bool, string) {
		nodes, err := n2.Client().Nodes(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, n := range nodes {
			if n.Load.MemoryUsedMB <= 0 {
				return false, fmt.Sprintf("%s load %+v", n.Name, n.Load)
			}
		}
		return true, ""
	})

	killedAt := time.Now()
	n3.Kill()
	took := waitStatuses(t, []*Node{n1, n2}, map[string]string{"n1": "alive", "n2": "alive", "n3": "failed"}, 60*time.Second)
	_ = killedAt
	t.Logf("MEASURE failure_detection_3_nodes=%s (kill -9 to both survivors report failed)", took.Round(time.Millisecond))
}

func TestWrongGossipKeyStaysOut(t *testing.T) {
	c := NewCluster(t)
	c.AddNode()
	c.AddNode()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive"}, 30*time.Second)

	// Same API token, different gossip key.
	intruder := c.AddNode(WithArgs("--gossip-key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="))
	Eventually(t, 20*time.Second, "intruder logs a failed join", func() (bool, string) {
		return strings.Contains(intruder.Log(), "join failed"), "no join failure logged yet"
	})
	time.Sleep(2 * time.Second)
	for _, n := range c.Nodes[:2] {
		got, err := statuses(n)
		if err != nil {
			t.Fatal(err)
		}
		if _, in := got["n3"]; in || len(got) != 2 {
			t.Fatalf("%s lets the intruder in: %v", n.Name, got)
		}
	}
	got, err := statuses(intruder)
	if err != nil || len(got) != 1 {
		t.Fatalf("intruder sees %v (%v), want only itself", got, err)
	}
}

func TestSIGTERMLeavesGracefully(t *testing.T) {
	c := NewCluster(t)
	n1, n2 := c.AddNode(), c.AddNode()
	c.AddNode()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive", "n3": "alive"}, 30*time.Second)
	if err := n2.Terminate(); err != nil {
		t.Fatalf("agent exited with %v after SIGTERM, want a clean exit\n%s", err, n2.Log())
	}
	took := waitStatuses(t, []*Node{n1, c.Nodes[2]}, map[string]string{"n1": "alive", "n2": "left", "n3": "alive"}, 20*time.Second)
	t.Logf("MEASURE graceful_leave_seen=%s", took.Round(time.Millisecond))
	if !strings.Contains(n2.Log(), "leaving cluster") {
		t.Error("agent did not log its leave")
	}
}

func TestRestartedAgentKeepsPeerIDAndRejoins(t *testing.T) {
	c := NewCluster(t)
	n1, n2 := c.AddNode(), c.AddNode()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive"}, 30*time.Second)
	peerID := func() string {
		nodes, err := n1.Client().Nodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == "n2" {
				return n.PeerID
			}
		}
		return ""
	}
	before := peerID()
	n2.Kill()
	waitStatuses(t, []*Node{n1}, map[string]string{"n1": "alive", "n2": "failed"}, 60*time.Second)
	// Restart without --join: the serf snapshot in the data dir rejoins.
	n2.Args = n2.Args[:len(n2.Args)-2]
	n2.Start()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive"}, 30*time.Second)
	if after := peerID(); before == "" || after != before {
		t.Fatalf("peer id changed across restart: %q -> %q", before, after)
	}
}

func TestCLIListsNodes(t *testing.T) {
	c := NewCluster(t)
	n1 := c.AddNode()
	c.AddNode()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive"}, 30*time.Second)

	out, err := n1.Shoal("nodes")
	if err != nil {
		t.Fatalf("shoal nodes: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[1], "alive") {
		t.Fatalf("unexpected table:\n%s", out)
	}
	out, err = n1.Shoal("nodes", "--json")
	if err != nil {
		t.Fatalf("shoal nodes --json: %v\n%s", err, out)
	}
	var nodes []api.Node
	if err := json.Unmarshal([]byte(out), &nodes); err != nil || len(nodes) != 2 {
		t.Fatalf("bad JSON (%v):\n%s", err, out)
	}
	names := []string{nodes[0].Name, nodes[1].Name}
	sort.Strings(names)
	if names[0] != "n1" || names[1] != "n2" {
		t.Fatalf("names %v", names)
	}

	// Wrong token and bad flags fail with a message and a non-zero exit.
	cmdOut, err := n1.Exec(c.Binary, "nodes", "--addr", "127.0.0.1:7700", "--token", "nope")
	if err == nil || !strings.Contains(cmdOut, "invalid bearer token") {
		t.Fatalf("wrong token: err=%v out=%s", err, cmdOut)
	}
	cmdOut, err = n1.Exec(c.Binary, "nodes", "--bogus")
	if err == nil || !strings.Contains(cmdOut, "unknown flag") {
		t.Fatalf("bad flag: err=%v out=%s", err, cmdOut)
	}
	cmdOut, err = n1.Exec(c.Binary, "join", "--addr", "127.0.0.1:7700", "--token", c.Token, "10.99.0.200")
	if err == nil || !strings.Contains(cmdOut, "10.99.0.200") {
		t.Fatalf("unreachable join: err=%v out=%s", err, cmdOut)
	}
}
