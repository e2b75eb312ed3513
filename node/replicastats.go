package node

import (
	"context"
	"time"

	"github.com/shoalmesh/shoal/runtime"
)

// replicaSampler turns the replicas' cumulative cgroup CPU time into a
// rate between two samples. Owned by the load loop.
type replicaSampler struct {
	prev   map[string]uint64
	prevAt time.Time
}

// statsSource is what the sampler needs of the runtime.
type statsSource interface {
	List(ctx context.Context) ([]runtime.TaskStatus, error)
	Stats(ctx context.Context, id string) (cpuUsageNanos, memoryBytes uint64, err error)
}

// taskUsage is one running replica's usage between two samples.
type taskUsage struct {
	Job       string
	CPUMillis int64
	MemoryMB  int64
}

// sample returns the CPU (millis of a CPU, averaged since the previous
// sample) and memory (MiB) the running replicas use, in all and per task.
func (s *replicaSampler) sample(ctx context.Context, src statsSource) (cpuMillis, memoryMB int64, perTask map[string]taskUsage) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tasks, _ := src.List(ctx) // a driver that is down contributes nothing
	now := time.Now()
	elapsed := now.Sub(s.prevAt)
	cur := map[string]uint64{}
	perTask = map[string]taskUsage{}
	var cpuNanos, memBytes uint64
	for _, t := range tasks {
		if t.State != runtime.StateRunning {
			continue
		}
		cpu, mem, err := src.Stats(ctx, t.ID)
		if err != nil {
			continue
		}
		cur[t.ID] = cpu
		memBytes += mem
		if p, ok := s.prev[t.ID]; ok && cpu >= p {
			cpuNanos += cpu - p
			// A task seen for the first time has no rate yet: left out, so
			// the autoscaler waits rather than read it as idle.
			if !s.prevAt.IsZero() && elapsed > 0 {
				perTask[t.ID] = taskUsage{Job: t.Job, MemoryMB: int64(mem >> 20),
					CPUMillis: int64(float64(cpu-p) / float64(elapsed.Nanoseconds()) * 1000)}
			}
		}
	}
	if !s.prevAt.IsZero() && elapsed > 0 {
		cpuMillis = int64(float64(cpuNanos) / float64(elapsed.Nanoseconds()) * 1000)
	}
	s.prev, s.prevAt = cur, now
	return cpuMillis, int64(memBytes >> 20), perTask
}

// rotateLogs rotates every task's log file that outgrew LogMaxBytes.
func (a *Agent) rotateLogs(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tasks, _ := a.tasks.List(ctx)
	for _, t := range tasks {
		if t.LogPath == "" {
			continue
		}
		rotated, err := runtime.RotateLog(t.LogPath, a.cfg.LogMaxBytes, a.cfg.LogKeep)
		if err != nil {
			a.log.Warn("rotate replica log", "task", t.ID, "err", err)
		} else if rotated {
			a.log.Debug("rotated replica log", "task", t.ID)
		}
	}
}
