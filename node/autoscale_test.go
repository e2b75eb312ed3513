package node

import (
	"math"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
)

func scaledJob(replicas int) api.Job {
	return api.Job{ID: "web", Replicas: &replicas, Task: api.Task{Resources: api.Resources{CPUMillis: 100, MemoryMB: 100}},
		Scaling: &api.ScalingPolicy{Min: 1, Max: 5, CPUPercent: 50, Cooldown: api.Duration(time.Minute)}}
}

func TestScaleDecision(t *testing.T) {
	never := time.Duration(math.MaxInt64)
	for _, tc := range []struct {
		name      string
		job       api.Job
		usage     []usageRecord
		sinceLast time.Duration
		want      int
		changed   bool
	}{
		{"busy doubles", scaledJob(2), []usageRecord{{Replicas: 1, CPUMillis: 100}, {Replicas: 1, CPUMillis: 100}}, never, 4, true},
		{"capped at max", scaledJob(4), []usageRecord{{Replicas: 4, CPUMillis: 400}}, never, 5, true},
		{"idle shrinks to min", scaledJob(3), []usageRecord{{Replicas: 3, CPUMillis: 0}}, never, 1, true},
		{"within tolerance stays", scaledJob(2), []usageRecord{{Replicas: 2, CPUMillis: 105}}, never, 0, false},
		{"cooldown holds", scaledJob(2), []usageRecord{{Replicas: 2, CPUMillis: 200}}, 10 * time.Second, 0, false},
		{"after cooldown acts", scaledJob(2), []usageRecord{{Replicas: 2, CPUMillis: 200}}, 2 * time.Minute, 4, true},
		{"not every replica reports", scaledJob(3), []usageRecord{{Replicas: 2, CPUMillis: 200}}, never, 0, false},
	} {
		got, reason, changed := scaleDecision(tc.job, tc.usage, tc.sinceLast)
		if changed != tc.changed || got != tc.want {
			t.Errorf("%s: got %d changed=%v (%s), want %d changed=%v", tc.name, got, changed, reason, tc.want, tc.changed)
		}
	}
}

func TestScalerIsOneAliveNodeForEveryone(t *testing.T) {
	members := []gossip.Member{{Name: "a", Status: gossip.StatusAlive}, {Name: "b", Status: gossip.StatusAlive}, {Name: "c", Status: gossip.StatusFailed}}
	first := ownerOf("web", aliveNames(members))
	if first == "" || first == "c" {
		t.Fatalf("scaler %q", first)
	}
	reversed := []gossip.Member{members[2], members[1], members[0]}
	if again := ownerOf("web", aliveNames(reversed)); again != first {
		t.Fatalf("order changed the scaler: %s vs %s", first, again)
	}
}
