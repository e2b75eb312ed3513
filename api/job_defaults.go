package api

import (
	"maps"
	"slices"
	"time"
)

// dropEmpty turns empty lists and maps into nil: omitempty drops both, so
// keeping them apart would make a parse-marshal-parse round trip unstable.
func (j *Job) dropEmpty() {
	nilIfEmpty(&j.Constraints)
	nilIfEmpty(&j.Volumes)
	nilIfEmpty(&j.Task.Command)
	nilIfEmpty(&j.Task.Args)
	nilIfEmpty(&j.Task.Ports)
	nilIfEmpty(&j.Task.Mounts)
	nilIfEmpty(&j.Task.Secrets)
	nilIfEmpty(&j.Task.Configs)
	nilIfEmpty(&j.Task.CapAdd)
	if len(j.Task.Env) == 0 {
		j.Task.Env = nil
	}
	if j.Health != nil {
		nilIfEmpty(&j.Health.Exec)
	}
}

func nilIfEmpty[T any](s *[]T) {
	if len(*s) == 0 {
		*s = nil
	}
}

// Clone returns a deep copy of j, so the copy can be changed (for example
// by ApplyDefaults) without touching j.
func (j Job) Clone() Job {
	c := j
	if j.Replicas != nil {
		r := *j.Replicas
		c.Replicas = &r
	}
	c.Task.Command = slices.Clone(j.Task.Command)
	c.Task.Args = slices.Clone(j.Task.Args)
	c.Task.Env = maps.Clone(j.Task.Env)
	c.Task.Ports = slices.Clone(j.Task.Ports)
	c.Task.Mounts = slices.Clone(j.Task.Mounts)
	c.Task.Secrets = slices.Clone(j.Task.Secrets)
	c.Task.Configs = slices.Clone(j.Task.Configs)
	c.Task.CapAdd = slices.Clone(j.Task.CapAdd)
	c.Service = clonePtr(j.Service)
	if j.Health != nil {
		h := *j.Health
		h.HTTP = clonePtr(j.Health.HTTP)
		h.TCP = clonePtr(j.Health.TCP)
		h.Exec = slices.Clone(j.Health.Exec)
		c.Health = &h
	}
	c.Restart = clonePtr(j.Restart)
	c.Constraints = slices.Clone(j.Constraints)
	if j.Update != nil {
		u := *j.Update
		u.AutoRollback = clonePtr(j.Update.AutoRollback)
		c.Update = &u
	}
	c.Scaling = clonePtr(j.Scaling)
	c.Volumes = slices.Clone(j.Volumes)
	c.Autoscaled = clonePtr(j.Autoscaled)
	if j.Rollout != nil {
		r := *j.Rollout
		if j.Rollout.PreviousTask != nil {
			t := (Job{Task: *j.Rollout.PreviousTask}).Clone().Task
			r.PreviousTask = &t
		}
		c.Rollout = &r
	}
	return c
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// Defaults of optional fields.
const (
	DefaultHealthInterval          = 5 * time.Second
	DefaultHealthTimeout           = 2 * time.Second
	DefaultFailuresBeforeUnhealthy = 3
	DefaultRestartBackoff          = time.Second
	DefaultRestartMaxBackoff       = time.Minute
	DefaultMinHealthyTime          = 10 * time.Second
	DefaultHealthyDeadline         = 5 * time.Minute
	DefaultScalingCooldown         = time.Minute
	// DefaultPids is the process (and thread) limit of a replica that
	// sets none: room for a busy server or a JVM's threads, small enough
	// that a fork bomb fills its own cgroup long before the node's pid
	// space (32768 by default).
	DefaultPids = 1024
)

// ApplyDefaults fills every field left out with its default, so that the
// stored job says exactly what runs. It is idempotent. A default never
// contradicts a value the user gave: a timeout defaults to at most the
// interval, a max backoff to at least the backoff, and absent replicas to
// 1 moved into the scaling range.
func (j *Job) ApplyDefaults() {
	if j.Type == "" {
		j.Type = JobTypeService
	}
	if j.Task.Resources.Pids == 0 {
		j.Task.Resources.Pids = DefaultPids
	}
	for i, m := range j.Task.Secrets {
		if m.Path == "" {
			j.Task.Secrets[i].Path = "/run/secrets/" + m.Name
		}
	}
	for i, m := range j.Task.Configs {
		if m.Path == "" {
			j.Task.Configs[i].Path = "/etc/config/" + m.Name
		}
	}
	if j.Replicas == nil {
		r := 1
		if s := j.Scaling; s != nil && 0 <= s.Min && s.Min <= s.Max && s.Max <= MaxReplicas {
			r = min(max(r, s.Min), s.Max)
		}
		j.Replicas = &r
	}
	for i := range j.Task.Ports {
		if j.Task.Ports[i].Protocol == "" {
			j.Task.Ports[i].Protocol = ProtocolTCP
		}
	}
	if s := j.Service; s != nil {
		if s.Name == "" {
			s.Name = j.ID
		}
		if s.TargetPort == "" && len(j.Task.Ports) > 0 {
			s.TargetPort = j.Task.Ports[0].Name
		}
		if s.Strategy == "" {
			s.Strategy = StrategyRoundRobin
		}
	}
	if h := j.Health; h != nil {
		if h.HTTP != nil && h.HTTP.Path == "" {
			h.HTTP.Path = "/"
		}
		if h.Interval == 0 {
			h.Interval = Duration(DefaultHealthInterval)
		}
		if h.Timeout == 0 {
			h.Timeout = Duration(DefaultHealthTimeout)
			if h.Interval > 0 && h.Interval < h.Timeout {
				h.Timeout = h.Interval
			}
		}
		if h.FailuresBeforeUnhealthy == 0 {
			h.FailuresBeforeUnhealthy = DefaultFailuresBeforeUnhealthy
		}
	}
	// A restart policy always applies, so the stored job states it.
	if j.Restart == nil {
		j.Restart = &RestartPolicy{}
	}
	if r := j.Restart; r.Policy == "" {
		r.Policy = RestartAlways
		if j.Type == JobTypeBatch {
			r.Policy = RestartOnFailure
		}
	}
	if r := j.Restart; r.Backoff == 0 {
		r.Backoff = Duration(DefaultRestartBackoff)
	}
	if r := j.Restart; r.MaxBackoff == 0 {
		r.MaxBackoff = max(Duration(DefaultRestartMaxBackoff), r.Backoff)
	}
	// Rolling updates are for services; batch jobs only get one if asked.
	if j.Update == nil && j.Type == JobTypeService {
		j.Update = &UpdatePolicy{}
	}
	if u := j.Update; u != nil {
		if u.MaxParallel == 0 {
			u.MaxParallel = 1
		}
		if u.MinHealthyTime == 0 {
			u.MinHealthyTime = Duration(DefaultMinHealthyTime)
		}
		if u.HealthyDeadline == 0 {
			u.HealthyDeadline = Duration(DefaultHealthyDeadline)
		}
		if u.AutoRollback == nil {
			t := true
			u.AutoRollback = &t
		}
	}
	if s := j.Scaling; s != nil && s.Cooldown == 0 {
		s.Cooldown = Duration(DefaultScalingCooldown)
	}
	for i := range j.Volumes {
		if j.Volumes[i].Type == "" {
			j.Volumes[i].Type = VolumeEphemeral
		}
	}
}
