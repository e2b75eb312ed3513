package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

func TestUnhealthyReplicaIsReportedWithinOneInterval(t *testing.T) {
	hello := Hello(t)
	c := startCluster(t, 2)
	ctx := context.Background()
	replicas := 2
	job := api.Job{ID: "hello", Replicas: &replicas, Task: api.Task{
		Driver: "exec", Command: []string{hello},
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
		Ports:     []api.Port{{Name: "http", Port: 8080}},
	}, Health: &api.HealthCheck{
		HTTP:                    &api.HTTPCheck{Port: 8080, Path: "/healthz"},
		Interval:                api.Duration(500 * time.Millisecond),
		Timeout:                 api.Duration(400 * time.Millisecond),
		FailuresBeforeUnhealthy: 2,
	}}
	if _, err := c.Nodes[0].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	healthOf := func(replica int) (string, string) {
		st, err := c.Nodes[1].Client().Job(ctx, "hello")
		if err != nil {
			return "error", err.Error()
		}
		for _, a := range st.Allocations {
			if a.Replica == replica && a.State == "running" {
				switch {
				case a.Healthy == nil:
					return "unknown", a.Node
				case *a.Healthy:
					return "healthy", a.Node
				default:
					return "unhealthy", a.Node
				}
			}
		}
		return "absent", fmt.Sprintf("%+v", st.Allocations)
	}
	var owner string
	for r := 0; r < replicas; r++ {
		Eventually(t, 30*time.Second, fmt.Sprintf("replica %d healthy", r), func() (bool, string) {
			h, detail := healthOf(r)
			if r == 0 {
				owner = detail
			}
			return h == "healthy", h + " " + detail
		})
	}
	var ownerNode *Node
	for _, n := range c.Nodes {
		if n.Name == owner {
			ownerNode = n
		}
	}
	out, err := ownerNode.TaskGet("hello-0", 8080, "/")
	if err != nil || !strings.Contains(out, "hello from hello-0") {
		t.Fatalf("replica 0 answers %q, %v", out, err)
	}
	// The replica's cgroup usage is in its node's metrics.
	if mem := metricSum(t, ownerNode, `shoal_replica_memory_bytes{job="hello",replica="0"}`); mem <= 0 {
		t.Errorf("replica memory in metrics = %v, want > 0", mem)
	}
	if _, err := ownerNode.TaskGet("hello-0", 8080, "/sick"); err != nil {
		t.Fatal(err)
	}
	took := Eventually(t, 20*time.Second, "replica 0 unhealthy", func() (bool, string) {
		h, detail := healthOf(0)
		return h == "unhealthy", h + " " + detail
	})
	t.Logf("MEASURE sick_to_reported_unhealthy=%s (interval 500ms, 2 failures, seen from the other node)", took.Round(time.Millisecond))
	if h, _ := healthOf(1); h != "healthy" {
		t.Fatalf("replica 1 is %s, want healthy", h)
	}
	if _, err := ownerNode.TaskGet("hello-0", 8080, "/well"); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 20*time.Second, "replica 0 healthy again", func() (bool, string) {
		h, detail := healthOf(0)
		return h == "healthy", h + " " + detail
	})
}
