package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

// rollState counts a job's replicas that run the current spec and are
// healthy, and those that serve at all (healthy, any spec).
func rollState(n *Node, job string) (current, serving int, st api.JobStatus, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err = n.Client().Job(ctx, job)
	if err != nil {
		return 0, 0, st, err
	}
	cur, srv := map[int]bool{}, map[int]bool{}
	for _, a := range st.Allocations {
		if a.State != "running" || a.Healthy == nil || !*a.Healthy {
			continue
		}
		srv[a.Replica] = true
		if a.SpecHash == st.SpecHash {
			cur[a.Replica] = true
		}
	}
	return len(cur), len(srv), st, nil
}

// watchServing samples how many replicas serve until stop is closed and
// returns the lowest count seen.
func watchServing(n *Node, job string, stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		low := 1 << 30
		for {
			if _, serving, _, err := rollState(n, job); err == nil && serving < low {
				low = serving
			}
			select {
			case <-stop:
				out <- low
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return out
}

func TestRollingUpdateAndAutomaticRollback(t *testing.T) {
	c := startCluster(t, 3)
	c.LoadHello(t)
	ctx := context.Background()
	job := helloContainerJob("roll", 3)
	job.Task.Env["VERSION"] = "1"
	job.Update = &api.UpdatePolicy{MaxParallel: 1, MinHealthyTime: api.Duration(time.Second), HealthyDeadline: api.Duration(4 * time.Second)}
	if _, err := c.Nodes[0].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, "3 replicas of v1 healthy", func() (bool, string) {
		cur, _, st, err := rollState(c.Nodes[0], "roll")
		return err == nil && cur == 3, fmt.Sprintf("%+v %v", st.Allocations, err)
	})

	// A good update replaces one replica at a time: two always serve.
	update := func(env map[string]string) (lowest int, took time.Duration) {
		j := job
		j.Task.Env = env
		stop := make(chan struct{})
		low := watchServing(c.Nodes[1], "roll", stop)
		began := time.Now()
		if _, err := c.Nodes[0].Client().PutJob(ctx, j); err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		defer once.Do(func() { close(stop) })
		Eventually(t, 90*time.Second, "3 replicas of the stored spec healthy", func() (bool, string) {
			cur, _, st, err := rollState(c.Nodes[0], "roll")
			return err == nil && cur == 3 && st.Task.Env["VERSION"] != "" && time.Since(began) > time.Second, fmt.Sprintf("env %v %+v %v", st.Task.Env, st.Allocations, err)
		})
		took = time.Since(began)
		once.Do(func() { close(stop) })
		return <-low, took
	}
	lowest, took := update(map[string]string{"PORT": "8080", "VERSION": "2"})
	t.Logf("MEASURE rolling_update replicas=3 max_parallel=1 min_healthy=1s took=%s lowest_serving=%d", took.Round(100*time.Millisecond), lowest)
	if lowest < 2 {
		t.Errorf("during the rolling update only %d replicas served; max_parallel 1 allows one down", lowest)
	}
	st, _ := c.Nodes[2].Client().Job(ctx, "roll")
	if st.Task.Env["VERSION"] != "2" || st.Rollout == nil || st.Rollout.PreviousTask == nil || st.Rollout.PreviousTask.Env["VERSION"] != "1" {
		t.Fatalf("after the update the job is %+v, rollout %+v", st.Task.Env, st.Rollout)
	}

	// A bad update (the new version listens elsewhere, so its health
	// check fails) is rolled back on its own, with one replica down at most.
	lowest, took = update(map[string]string{"PORT": "9999", "VERSION": "3"})
	st, _ = c.Nodes[2].Client().Job(ctx, "roll")
	t.Logf("MEASURE rollback took=%s lowest_serving=%d rollout=%+v", took.Round(100*time.Millisecond), lowest, st.Rollout)
	if st.Task.Env["VERSION"] != "2" || st.Rollout == nil || st.Rollout.RolledBack == "" {
		t.Fatalf("the failed update was not rolled back: env %v rollout %+v", st.Task.Env, st.Rollout)
	}
	if lowest < 2 {
		t.Errorf("during the failed update only %d replicas served", lowest)
	}
	var rolledBack bool
	for _, n := range c.Nodes {
		evs, err := n.Client().Events(ctx, 0, "roll")
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			rolledBack = rolledBack || ev.Kind == "rolled-back"
		}
	}
	if !rolledBack {
		t.Error("no node recorded a rolled-back event")
	}
}
