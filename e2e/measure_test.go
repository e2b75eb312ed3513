package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestMeasureFailureDetection repeats kill -9 of one node in a 5-node
// cluster, with Shoal's defaults and with memberlist's LAN defaults, and
// logs the detection times. It is a measurement for docs/BENCHMARKS.md,
// not a pass/fail check: run it with SHOAL_MEASURE=1.
func TestMeasureFailureDetection(t *testing.T) {
	if os.Getenv("SHOAL_MEASURE") == "" {
		t.Skip("measurement; set SHOAL_MEASURE=1 to run")
	}
	configs := []struct {
		name string
		args []string
	}{
		{"shoal-defaults", nil},
		{"memberlist-lan-defaults", []string{"--probe-interval", "1s", "--probe-timeout", "500ms", "--suspicion-mult", "4", "--gossip-interval", "200ms"}},
	}
	const trials, size = 5, 5
	for _, cfg := range configs {
		var joins, detections []time.Duration
		for trial := 0; trial < trials; trial++ {
			func() {
				c := NewCluster(t)
				defer c.Close()
				start := time.Now()
				want := map[string]string{}
				for i := 0; i < size; i++ {
					c.AddNode(WithArgs(cfg.args...))
					want[fmt.Sprintf("n%d", i+1)] = "alive"
				}
				waitStatuses(t, c.Nodes, want, 60*time.Second)
				joins = append(joins, time.Since(start))
				victim := c.Nodes[size-1]
				victim.Kill()
				want[victim.Name] = "failed"
				detections = append(detections, waitStatuses(t, c.Nodes[:size-1], want, 120*time.Second))
			}()
		}
		t.Logf("MEASURE %s nodes=%d trials=%d join_all_alive=%s detect_failed_by_all=%s", cfg.name, size, trials, summary(joins), summary(detections))
	}
}

func summary(ds []time.Duration) string {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = d.Round(10 * time.Millisecond).String()
	}
	return fmt.Sprintf("min %s median %s max %s [%s]", s[0].Round(10*time.Millisecond), s[len(s)/2].Round(10*time.Millisecond), s[len(s)-1].Round(10*time.Millisecond), strings.Join(parts, " "))
}

// metricSum adds up every sample of the named metrics in n's /metrics.
func metricSum(t *testing.T, n *Node, names ...string) float64 {
	t.Helper()
	var text strings.Builder
	raw, err := n.Exec("curl", "-sf", "--cacert", n.c.CAFile, "-H", "Authorization: Bearer "+n.c.Token, "https://127.0.0.1:7700/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", n.Name, err)
	}
	text.WriteString(raw)
	var sum float64
	for _, line := range strings.Split(text.String(), "\n") {
		for _, name := range names {
			if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
				var v float64
				fields := strings.Fields(line)
				fmt.Sscan(fields[len(fields)-1], &v)
				sum += v
			}
		}
	}
	return sum
}

// TestMeasureStateTraffic measures, on three real agents, job propagation
// time and the bytes each node sends per second at rest and under writes.
func TestMeasureStateTraffic(t *testing.T) {
	if os.Getenv("SHOAL_MEASURE") == "" {
		t.Skip("measurement; set SHOAL_MEASURE=1 to run")
	}
	c := startCluster(t, 3)
	ctx := context.Background()
	sent := func() (state, gossip float64) {
		for _, n := range c.Nodes {
			state += metricSum(t, n, `shoal_state_sync_bytes_total{direction="sent"}`)
			gossip += metricSum(t, n, "shoal_memberlist_udp_sent", "shoal_memberlist_tcp_sent")
		}
		return
	}
	time.Sleep(5 * time.Second)
	s0, g0 := sent()
	const window = 20 * time.Second
	time.Sleep(window)
	s1, g1 := sent()
	t.Logf("MEASURE 3 nodes at rest: state sync %.0f B/node/s, gossip %.0f B/node/s", (s1-s0)/3/window.Seconds(), (g1-g0)/3/window.Seconds())

	var lat []time.Duration
	for i := 0; i < 100; i++ {
		st, err := c.Nodes[i%3].Client().PutJob(ctx, webJob(fmt.Sprintf("m-%d", i), 3))
		if err != nil {
			t.Fatal(err)
		}
		lat = append(lat, waitJobEverywhere(t, c.Nodes, st.Job.ID, st.Version, 10*time.Second))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("MEASURE 3 nodes propagation over 100 writes: p50 %s p99 %s", lat[50].Round(100*time.Microsecond), lat[98].Round(100*time.Microsecond))

	s2, g2 := sent()
	start := time.Now()
	for i := 0; time.Since(start) < window; i++ {
		if _, err := c.Nodes[i%3].Client().PutJob(ctx, webJob(fmt.Sprintf("load-%d", i%50), 3)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	el := time.Since(start).Seconds()
	s3, g3 := sent()
	t.Logf("MEASURE 3 nodes under ~10 writes/s: state sync %.0f B/node/s, gossip %.0f B/node/s", (s3-s2)/3/el, (g3-g2)/3/el)
}
