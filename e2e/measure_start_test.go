package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"
)

// TestMeasureContainerStartLatency measures, in one run on one node,
// submit-to-running for a one-replica containerd job (POST /v1/jobs until
// the API reports the replica running) against `ctr run -d` of the same
// image in the same containerd (command start until it returns with the
// task started). The ratio is the figure: what Shoal adds on top of
// containerd (API write, placement, network namespace, publishing the
// endpoint). Run with SHOAL_MEASURE=1.
func TestMeasureContainerStartLatency(t *testing.T) {
	if os.Getenv("SHOAL_MEASURE") == "" {
		t.Skip("measurement; set SHOAL_MEASURE=1 to run")
	}
	const runs = 20
	c := startCluster(t, 1)
	c.LoadHello(t)
	n := c.Nodes[0]
	ctx := context.Background()

	var shoal, ctr []time.Duration
	for i := 0; i < runs; i++ {
		id := fmt.Sprintf("lat%d", i)
		job := helloContainerJob(id, 1)
		job.Health = nil
		began := time.Now()
		if _, err := n.Client().PutJob(ctx, job); err != nil {
			t.Fatal(err)
		}
		for {
			if _, ok, _ := allocation(n, id, 0); ok {
				break
			}
			if time.Since(began) > time.Minute {
				t.Fatalf("%s not running after a minute", id)
			}
			time.Sleep(2 * time.Millisecond)
		}
		shoal = append(shoal, time.Since(began))
		if _, err := n.Client().DeleteJob(ctx, id); err != nil {
			t.Fatal(err)
		}
		Eventually(t, 30*time.Second, id+" removed", func() (bool, string) {
			_, has := n.containers(t)[id+"-0"]
			return !has, ""
		})
	}
	ctrNS := n.TaskNamespace() // the image is already there
	for i := 0; i < runs; i++ {
		id := fmt.Sprintf("ctr%d", i)
		began := time.Now()
		out, err := exec.Command("ctr", "-a", ContainerdAddress, "-n", ctrNS, "run", "-d",
			"--snapshotter", "overlayfs", "--env", "PORT=8080", HelloRef, id).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr run: %v %s", err, out)
		}
		ctr = append(ctr, time.Since(began))
		for _, args := range [][]string{{"task", "kill", "-s", "SIGKILL", id}, {"task", "delete", "-f", id}, {"container", "delete", id}} {
			_ = exec.Command("ctr", append([]string{"-a", ContainerdAddress, "-n", ctrNS}, args...)...).Run()
		}
	}
	p := func(d []time.Duration, q float64) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[int(q*float64(len(s)-1)+0.5)].Round(100 * time.Microsecond)
	}
	t.Logf("MEASURE start_latency runs=%d shoal p50=%s p99=%s | ctr run p50=%s p99=%s | ratio p50=%.2f p99=%.2f",
		runs, p(shoal, 0.5), p(shoal, 0.99), p(ctr, 0.5), p(ctr, 0.99),
		float64(p(shoal, 0.5))/float64(p(ctr, 0.5)), float64(p(shoal, 0.99))/float64(p(ctr, 0.99)))
}
