package e2e

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

func webJob(id string, replicas int) api.Job {
	return api.Job{ID: id, Replicas: &replicas, Task: api.Task{
		Driver: "containerd", Image: "docker.io/library/hello:v1",
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
		Ports:     []api.Port{{Name: "http", Port: 8080}},
	}}
}

// jobVersion returns the job's version on n, or "" when n does not have it.
func jobVersion(n *Node, id string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.Client().Job(ctx, id)
	var se *api.StatusError
	if errors.As(err, &se) && se.Code == 404 {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return st.Version, nil
}

func waitJobEverywhere(t *testing.T, nodes []*Node, id, version string, timeout time.Duration) time.Duration {
	t.Helper()
	return Eventually(t, timeout, fmt.Sprintf("job %s at %q on all nodes", id, version), func() (bool, string) {
		for _, n := range nodes {
			v, err := jobVersion(n, id)
			if err != nil {
				return false, err.Error()
			}
			if v != version {
				return false, fmt.Sprintf("%s has %q", n.Name, v)
			}
		}
		return true, ""
	})
}

func startCluster(t *testing.T, size int, opts ...NodeOption) *Cluster {
	t.Helper()
	c := NewCluster(t)
	want := map[string]string{}
	for i := 0; i < size; i++ {
		c.AddNode(opts...)
		want[fmt.Sprintf("n%d", i+1)] = "alive"
	}
	waitStatuses(t, c.Nodes, want, 30*time.Second)
	return c
}

func TestJobWrittenAnywhereIsEverywhere(t *testing.T) {
	c := startCluster(t, 3)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	ctx := context.Background()

	var propagation []time.Duration
	for i := 0; i < 10; i++ {
		id := fmt.Sprintf("web-%d", i)
		st, err := n1.Client().PutJob(ctx, webJob(id, 3))
		if err != nil {
			t.Fatal(err)
		}
		propagation = append(propagation, waitJobEverywhere(t, c.Nodes, id, st.Version, 10*time.Second))
	}
	sort.Slice(propagation, func(i, j int) bool { return propagation[i] < propagation[j] })
	t.Logf("MEASURE job_propagation_3_nodes p50=%s max=%s (API answer on n1 to GET on all three)", propagation[len(propagation)/2], propagation[len(propagation)-1])

	// Deleted on n2, gone everywhere.
	if _, err := n2.Client().DeleteJob(ctx, "web-3"); err != nil {
		t.Fatal(err)
	}
	waitJobEverywhere(t, c.Nodes, "web-3", "", 10*time.Second)
	jobs, err := c.Nodes[2].Client().Jobs(ctx)
	if err != nil || len(jobs) != 9 {
		t.Fatalf("n3 lists %d jobs (%v), want 9", len(jobs), err)
	}
}

func TestStoppedNodeCatchesUpAndKeepsWhatItAcknowledged(t *testing.T) {
	c := startCluster(t, 3)
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	ctx := context.Background()

	// n3 acknowledges a write and is killed at once: nothing may be lost.
	acked, err := n3.Client().PutJob(ctx, webJob("acked", 2))
	if err != nil {
		t.Fatal(err)
	}
	n3.Kill()
	doomed, err := n1.Client().PutJob(ctx, webJob("doomed", 1))
	if err != nil {
		t.Fatal(err)
	}
	// n2 must have it before it can delete it.
	waitJobEverywhere(t, []*Node{n1, n2}, "doomed", doomed.Version, 10*time.Second)
	// While n3 is down: create some, delete one it had.
	created, err := n1.Client().PutJob(ctx, webJob("while-down", 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n2.Client().DeleteJob(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	n3.Start()
	waitJobEverywhere(t, c.Nodes, "acked", acked.Version, 15*time.Second)
	waitJobEverywhere(t, c.Nodes, "while-down", created.Version, 15*time.Second)
	waitJobEverywhere(t, c.Nodes, "doomed", "", 15*time.Second)

	// SIGTERM and restart: still there.
	if err := n2.Terminate(); err != nil {
		t.Fatal(err)
	}
	n2.Start()
	if v, err := jobVersion(n2, "acked"); err != nil || v != acked.Version {
		t.Fatalf("n2 after restart: acked at %q (%v), want %q", v, err, acked.Version)
	}
}

func TestConcurrentUpdatesConvergeToOneWinner(t *testing.T) {
	c := startCluster(t, 3)
	ctx := context.Background()
	if _, err := c.Nodes[0].Client().PutJob(ctx, webJob("race", 1)); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		for i, n := range c.Nodes[:2] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := n.Client().PutJob(ctx, webJob("race", 10+i+round*2)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	Eventually(t, 15*time.Second, "one winner everywhere", func() (bool, string) {
		var versions, replicas []string
		for _, n := range c.Nodes {
			st, err := n.Client().Job(ctx, "race")
			if err != nil {
				return false, err.Error()
			}
			versions = append(versions, st.Version)
			replicas = append(replicas, fmt.Sprint(*st.Replicas))
		}
		for i := range versions {
			if versions[i] != versions[0] || replicas[i] != replicas[0] {
				return false, fmt.Sprintf("versions %v replicas %v", versions, replicas)
			}
		}
		return true, ""
	})
}

func TestJobAPIRejectsBadInputAndKeepsStoredJob(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Nodes[0]
	ctx := context.Background()
	good, err := n.Client().PutJob(ctx, webJob("keep", 2))
	if err != nil {
		t.Fatal(err)
	}
	bad := webJob("keep", 2)
	bad.Task.Resources.MemoryMB = 0
	_, err = n.Client().PutJob(ctx, bad)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != 400 || se.Message != "task.resources.memory_mb: must be > 0" {
		t.Fatalf("want 400 task.resources.memory_mb, got %v", err)
	}
	stale := webJob("keep", 5)
	stale.Version = "1-0-nobody"
	if _, err := n.Client().PutJob(ctx, stale); !errors.As(err, &se) || se.Code != 409 {
		t.Fatalf("stale compare-and-set: want 409, got %v", err)
	}
	if _, err := n.Client().Job(ctx, "nope"); !errors.As(err, &se) || se.Code != 404 {
		t.Fatalf("unknown id: want 404, got %v", err)
	}
	if v, _ := jobVersion(n, "keep"); v != good.Version {
		t.Fatalf("stored job changed by rejected writes: %q -> %q", good.Version, v)
	}
	ok := webJob("keep", 4)
	ok.Version = good.Version
	if _, err := n.Client().PutJob(ctx, ok); err != nil {
		t.Fatalf("matching compare-and-set refused: %v", err)
	}
}
