package e2e

import (
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
