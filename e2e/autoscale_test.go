package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

func TestAutoscaleOnCPU(t *testing.T) {
	c := startCluster(t, 2)
	c.LoadHello(t)
	ctx := context.Background()
	one := 1
	job := helloContainerJob("busy", 1)
	job.Replicas = &one
	job.Scaling = &api.ScalingPolicy{Min: 1, Max: 3, CPUPercent: 50, Cooldown: api.Duration(2 * time.Second)}
	if _, err := c.Nodes[0].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	var owner *Node
	Eventually(t, 60*time.Second, "1 replica healthy", func() (bool, string) {
		a, ok, detail := allocation(c.Nodes[0], "busy", 0)
		if ok && a.Healthy != nil && *a.Healthy {
			owner = c.node(a.Node)
		}
		return owner != nil, detail
	})
	replicas := func() (int, string) {
		st, err := c.Nodes[1].Client().Job(ctx, "busy")
		if err != nil {
			return -1, err.Error()
		}
		return *st.Replicas, fmt.Sprintf("replicas %d autoscaled %+v", *st.Replicas, st.Autoscaled)
	}
	// The replica burns one CPU against a 100-millicore reservation (so
	// 100% of it, capped by its CFS quota) with a 50% target: scale out.
	if out, err := owner.TaskGet("busy-0", 8080, "/burn?seconds=8"); err != nil {
		t.Fatalf("burn: %q %v", out, err)
	}
	took := Eventually(t, 60*time.Second, "scaled out", func() (bool, string) {
		n, detail := replicas()
		return n >= 2, detail
	})
	t.Logf("MEASURE autoscale_out after=%s", took.Round(100*time.Millisecond))
	Eventually(t, 60*time.Second, "the new replicas run", func() (bool, string) {
		n, _ := replicas()
		_, total, detail := runningByNode(c.Nodes[0], "busy")
		return total == n, detail
	})
	// When the burn ends, usage drops to nothing: back to the minimum.
	Eventually(t, 90*time.Second, "scaled back to 1", func() (bool, string) {
		n, detail := replicas()
		return n == 1, detail
	})
	var scaled int
	for _, n := range c.Nodes {
		evs, _ := n.Client().Events(ctx, 0, "busy")
		for _, ev := range evs {
			if ev.Kind == "scaled" {
				scaled++
			}
		}
	}
	if scaled < 2 {
		t.Errorf("want a scaled event out and one back in, got %d", scaled)
	}
}
