package node

import (
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
)

func scaledJob(replicas int, autoscaledAgo time.Duration) api.Job {
	j := api.Job{ID: "web", Replicas: &replicas, Task: api.Task{Resources: api.Resources{CPUMillis: 100, MemoryMB: 100}},
		Scaling: &api.ScalingPolicy{Min: 1, Max: 5, CPUPercent: 50, Cooldown: api.Duration(time.Minute)}}
	if autoscaledAgo > 0 {
		j.Autoscaled = &api.Autoscaled{At: time.Now().Add(-autoscaledAgo)}
	}
	return j
}

func TestScaleDecision(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		job     api.Job
		usage   []usageRecord
		want    int
		changed bool
	}{
		{"busy doubles", scaledJob(2, 0), []usageRecord{{Replicas: 1, CPUMillis: 100}, {Replicas: 1, CPUMillis: 100}}, 4, true},
		{"capped at max", scaledJob(4, 0), []usageRecord{{Replicas: 4, CPUMillis: 400}}, 5, true},
		{"idle shrinks to min", scaledJob(3, 0), []usageRecord{{Replicas: 3, CPUMillis: 0}}, 1, true},
		{"within tolerance stays", scaledJob(2, 0), []usageRecord{{Replicas: 2, CPUMillis: 105}}, 0, false},
		{"cooldown holds", scaledJob(2, 10*time.Second), []usageRecord{{Replicas: 2, CPUMillis: 200}}, 0, false},
		{"after cooldown acts", scaledJob(2, 2*time.Minute), []usageRecord{{Replicas: 2, CPUMillis: 200}}, 4, true},
		{"not every replica reports", scaledJob(3, 0), []usageRecord{{Replicas: 2, CPUMillis: 200}}, 0, false},
	} {
		got, reason, changed := scaleDecision(tc.job, tc.usage, now)
		if changed != tc.changed || got != tc.want {
			t.Errorf("%s: got %d changed=%v (%s), want %d changed=%v", tc.name, got, changed, reason, tc.want, tc.changed)
		}
	}
}

func TestScalerIsOneAliveNodeForEveryone(t *testing.T) {
	members := []gossip.Member{{Name: "a", Status: gossip.StatusAlive}, {Name: "b", Status: gossip.StatusAlive}, {Name: "c", Status: gossip.StatusFailed}}
	first := scalerOf("web", members)
	if first == "" || first == "c" {
		t.Fatalf("scaler %q", first)
	}
	reversed := []gossip.Member{members[2], members[1], members[0]}
	if again := scalerOf("web", reversed); again != first {
		t.Fatalf("order changed the scaler: %s vs %s", first, again)
	}
}
