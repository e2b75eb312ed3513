package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Job types.
const (
	// JobTypeService runs replicas that should always be up.
	JobTypeService = "service"
	// JobTypeBatch runs replicas to completion.
	JobTypeBatch = "batch"
)

// Task drivers.
const (
	// DriverContainerd runs an OCI image through containerd.
	DriverContainerd = "containerd"
	// DriverExec runs a plain process in its own network namespace and cgroup.
	DriverExec = "exec"
)

// Port protocols.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// Load-balancing strategies of a service.
const (
	// StrategyRoundRobin cycles through the healthy endpoints.
	StrategyRoundRobin = "round_robin"
	// StrategyRandom picks an endpoint at random per connection.
	StrategyRandom = "random"
	// StrategySourceHash keeps a client address on one endpoint (sticky).
	StrategySourceHash = "source_hash"
	// StrategyMaglev is consistent hashing: few clients move when endpoints change.
	StrategyMaglev = "maglev"
)

// Restart policies.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on_failure"
	RestartNever     = "never"
)

// Constraint operators.
const (
	OpEqual    = "="
	OpNotEqual = "!="
	// OpIn matches when the label's value is one of a comma-separated list.
	OpIn = "in"
)

// Volume types.
const (
	// VolumeEphemeral lives and dies with the replica.
	VolumeEphemeral = "ephemeral"
	// VolumePersistent survives restarts of the replica on the same node.
	VolumePersistent = "persistent"
)

// Limits of a job spec. They keep records small enough to gossip and
// reject specs no runtime could honour.
const (
	// MaxJobSize is the largest spec ParseJob accepts, in bytes. Servers
	// should cap request bodies at the same size.
	MaxJobSize = 1 << 20
	// MaxReplicas is the most replicas one job may ask for.
	MaxReplicas = 10000
	// MaxCPUMillis is the largest CPU reservation of one replica (1000 cores).
	MaxCPUMillis = 1_000_000
	// MaxMemoryMB is the largest memory reservation of one replica (4 TiB).
	MaxMemoryMB = 4_194_304
	// MaxVolumeMB is the largest volume (16 TiB).
	MaxVolumeMB = 16_777_216
	// MaxArgvBytes bounds command plus args, and separately the
	// environment, well below the kernel's ARG_MAX.
	MaxArgvBytes = 64 << 10
	// maxListLen bounds ports, mounts, volumes and constraints.
	maxListLen = 100
	// maxImageLen is generous: reference names are at most 255 bytes plus
	// a tag or digest.
	maxImageLen = 1024
	// maxPathLen is the Linux PATH_MAX.
	maxPathLen = 4096
	// MaxPids is the largest process limit of one replica: the kernel's
	// PID_MAX_LIMIT, more than any machine can run.
	MaxPids = 4_194_304
)

// Duration is a time.Duration that travels as a Go duration string such as
// "1.5s" or "2m", which people can read and write, rather than as
// nanoseconds.
type Duration time.Duration

// String formats d like time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts only a duration string: a bare number would be
// ambiguous (seconds? nanoseconds?), so it is refused with an example.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf(`duration must be a string such as "1.5s", not %s`, b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`invalid duration %q: write it like "1.5s" or "2m"`, s)
	}
	*d = Duration(v)
	return nil
}

// Job is a job spec as users submit it to POST /v1/jobs and as the API
// reports it back.
type Job struct {
	// ID names the job: a DNS label, unique in the cluster.
	ID string `json:"id"`
	// Type is "service" (the default) or "batch".
	Type string `json:"type,omitempty"`
	// Replicas is how many copies to run; absent means 1, and 0 is a
	// valid request to stop them all, hence the pointer.
	Replicas *int `json:"replicas,omitempty"`
	// Task is what each replica runs.
	Task Task `json:"task"`
	// Service exposes the replicas behind a virtual IP and optionally a
	// node port on every node.
	Service *Service `json:"service,omitempty"`
	// Health decides whether a replica receives traffic and counts as up.
	Health *HealthCheck `json:"health,omitempty"`
	// Restart says what to do when a replica's task exits.
	Restart *RestartPolicy `json:"restart,omitempty"`
	// Constraints limit the nodes a replica may be placed on.
	Constraints []Constraint `json:"constraints,omitempty"`
	// Update paces the replacement of replicas when the spec changes.
	Update *UpdatePolicy `json:"update,omitempty"`
	// Scaling lets the cluster change Replicas from observed load.
	Scaling *ScalingPolicy `json:"scaling,omitempty"`
	// Volumes are storage the task can mount.
	Volumes []Volume `json:"volumes,omitempty"`
	// Rollout is kept by Shoal, not written by clients: what a rolling
	// update would return to, and whether the last one was rolled back.
	Rollout *Rollout `json:"rollout,omitempty"`
	// Autoscaled is kept by Shoal: the last change the autoscaler made to
	// Replicas.
	Autoscaled *Autoscaled `json:"autoscaled,omitempty"`
	// Version, in a request, is the version the writer last read, for
	// compare-and-set (empty: write unconditionally); in an answer it is
	// the stored version.
	Version string `json:"version,omitempty"`
}

// Autoscaled records the autoscaler's last decision.
type Autoscaled struct {
	At     time.Time `json:"at"`
	From   int       `json:"from"`
	To     int       `json:"to"`
	Reason string    `json:"reason"`
}

// Rollout is the state of a job's last spec change.
type Rollout struct {
	// PreviousTask is the task before the last change: what an automatic
	// rollback restores.
	PreviousTask *Task `json:"previous_task,omitempty"`
	// RolledBack, when set, says why the last update was undone.
	RolledBack string `json:"rolled_back,omitempty"`
	// Since is when the task last changed; Done is set once every replica
	// ran the new task healthy, which ends the watch for a rollback.
	Since time.Time `json:"since,omitzero"`
	Done  bool      `json:"done,omitempty"`
}

// Task is the process or container each replica runs.
type Task struct {
	// Driver is "containerd" or "exec".
	Driver string `json:"driver"`
	// Image is the OCI image reference; required for containerd, not
	// allowed for exec.
	Image string `json:"image,omitempty"`
	// Command is the argv to run; required for exec, and for containerd
	// it replaces the image's entrypoint.
	Command []string `json:"command,omitempty"`
	// Args are appended to the command (or the image's entrypoint).
	Args []string `json:"args,omitempty"`
	// Env is added to the task's environment.
	Env map[string]string `json:"env,omitempty"`
	// Resources are reserved for each replica and used by placement.
	Resources Resources `json:"resources"`
	// Ports the task listens on, named so services and health checks can
	// refer to them.
	Ports []Port `json:"ports,omitempty"`
	// Mounts place job volumes in the task's filesystem.
	Mounts []Mount `json:"mounts,omitempty"`
	// Secrets and Configs are mounted read-only, a file per key
	// (containerd only). Their content is read when a replica starts.
	Secrets []DataMount `json:"secrets,omitempty"`
	Configs []DataMount `json:"configs,omitempty"`
	// ReadOnlyRootfs mounts the image's root filesystem read-only.
	ReadOnlyRootfs bool `json:"read_only_rootfs,omitempty"`
	// Privileged drops the default hardening; use only when needed.
	Privileged bool `json:"privileged,omitempty"`
	// CapAdd adds Linux capabilities to the container's default set, by
	// name ("NET_RAW" or "CAP_NET_RAW"), containerd only. The default set
	// is containerd's without NET_RAW: a container cannot forge packets
	// or sniff its interface unless the job asks for it.
	CapAdd []string `json:"cap_add,omitempty"`
}

// Resources are what one replica reserves on its node.
type Resources struct {
	CPUMillis int64 `json:"cpu_millis"`
	MemoryMB  int64 `json:"memory_mb"`
	// Pids caps the processes and threads the replica may have at once
	// (its cgroup's pids.max), so a fork bomb stays inside it; default
	// DefaultPids. Placement does not count it.
	Pids int64 `json:"pids,omitempty"`
}

// Port is a port the task listens on inside its own network namespace.
type Port struct {
	// Name is a DNS label, unique in the task; it names SRV records.
	Name string `json:"name"`
	Port int    `json:"port"`
	// Protocol is "tcp" (the default) or "udp".
	Protocol string `json:"protocol,omitempty"`
}

// Mount places a job volume at a path inside the task.
type Mount struct {
	// Volume names one of the job's volumes.
	Volume string `json:"volume"`
	// Path is absolute and clean.
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Service load-balances a virtual IP (and optionally a node port on every
// node) over the job's healthy replicas.
type Service struct {
	// Name is a DNS label; it defaults to the job id and gives the DNS
	// name NAME.shoal.
	Name string `json:"name,omitempty"`
	// Port is the port on the virtual IP.
	Port int `json:"port"`
	// TargetPort names the task port traffic goes to; it defaults to the
	// task's first port.
	TargetPort string `json:"target_port,omitempty"`
	// NodePort, when not 0, is opened on every node (30000-32767).
	NodePort int `json:"node_port,omitempty"`
	// Strategy is round_robin (the default), random, source_hash or maglev.
	Strategy string `json:"strategy,omitempty"`
	// VIP is the service's virtual IP. Shoal assigns one from the service
	// range when the job is first stored and keeps it for the job's life;
	// a client may ask for a free address of the range instead.
	VIP string `json:"vip,omitempty"`
	// ClaimedAt is kept by Shoal, not written by clients: when this job
	// first claimed this service name and node port. When two jobs claim
	// the same name, node port or VIP (accepted on two sides of a network
	// partition), the older claim keeps it.
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
}

// HealthCheck probes a replica; exactly one of HTTP, TCP and Exec is set.
type HealthCheck struct {
	HTTP *HTTPCheck `json:"http,omitempty"`
	TCP  *TCPCheck  `json:"tcp,omitempty"`
	// Exec is an argv run inside the task; exit status 0 is healthy.
	Exec []string `json:"exec,omitempty"`
	// Interval between probes; default 5s.
	Interval Duration `json:"interval,omitempty"`
	// Timeout of one probe; default 2s (or Interval if shorter), at most
	// Interval.
	Timeout Duration `json:"timeout,omitempty"`
	// FailuresBeforeUnhealthy consecutive failures mark the replica
	// unhealthy; default 3.
	FailuresBeforeUnhealthy int `json:"failures_before_unhealthy,omitempty"`
	// GracePeriod after start during which failures do not count.
	GracePeriod Duration `json:"grace_period,omitempty"`
}

// HTTPCheck is healthy on a 2xx or 3xx answer to GET Path.
type HTTPCheck struct {
	Port int `json:"port"`
	// Path defaults to "/".
	Path string `json:"path,omitempty"`
}

// TCPCheck is healthy when a connection to Port succeeds.
type TCPCheck struct {
	Port int `json:"port"`
}

// RestartPolicy says what happens when a task exits.
type RestartPolicy struct {
	// Policy is always, on_failure or never; the default is always for
	// services and on_failure for batch jobs.
	Policy string `json:"policy,omitempty"`
	// MaxAttempts is the most restarts before giving up; 0 is unlimited.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// Backoff is the first delay before a restart (default 1s); it
	// doubles up to MaxBackoff (default 1m, or Backoff if longer).
	Backoff    Duration `json:"backoff,omitempty"`
	MaxBackoff Duration `json:"max_backoff,omitempty"`
}

// Constraint limits placement to nodes whose label satisfies it.
type Constraint struct {
	Label string `json:"label"`
	// Op is "=", "!=" or "in".
	Op string `json:"op"`
	// Value is compared with the label; for "in" it is a comma-separated
	// list.
	Value string `json:"value"`
}

// Values returns the values the constraint compares with: the trimmed
// items of the list for "in", else the single value.
func (c Constraint) Values() []string {
	if c.Op != OpIn {
		return []string{c.Value}
	}
	items := strings.Split(c.Value, ",")
	for i := range items {
		items[i] = strings.TrimSpace(items[i])
	}
	return items
}

// UpdatePolicy paces a rolling update.
type UpdatePolicy struct {
	// MaxParallel replicas are replaced at a time; default 1.
	MaxParallel int `json:"max_parallel,omitempty"`
	// MinHealthyTime a new replica must stay healthy to count; default 10s.
	MinHealthyTime Duration `json:"min_healthy_time,omitempty"`
	// HealthyDeadline is how long a new replica has to become healthy;
	// default 5m.
	HealthyDeadline Duration `json:"healthy_deadline,omitempty"`
	// AutoRollback returns to the previous spec when an update fails;
	// default true, hence the pointer.
	AutoRollback *bool `json:"auto_rollback,omitempty"`
}

// ScalingPolicy lets the cluster set Replicas between Min and Max to keep
// utilisation near the targets.
type ScalingPolicy struct {
	Min int `json:"min"`
	Max int `json:"max"`
	// CPUPercent and MemoryPercent are target utilisations (1-100) of the
	// reserved resources; 0 means not used, and at least one is set.
	CPUPercent    int `json:"cpu_percent,omitempty"`
	MemoryPercent int `json:"memory_percent,omitempty"`
	// Cooldown between two scaling decisions; default 1m.
	Cooldown Duration `json:"cooldown,omitempty"`
}

// Volume is storage a task can mount.
type Volume struct {
	// Name is a DNS label, unique in the job.
	Name string `json:"name"`
	// Type is ephemeral (the default) or persistent.
	Type string `json:"type,omitempty"`
	// SizeMB is required for persistent volumes; for ephemeral ones 0
	// means no limit.
	SizeMB int64 `json:"size_mb,omitempty"`
}

// Allocation is one replica of a job as the API reports it.
type Allocation struct {
	Replica int    `json:"replica"`
	Node    string `json:"node"`
	State   string `json:"state"`
	IP      string `json:"ip,omitempty"`
	// Healthy is absent while no health result is known yet.
	Healthy *bool `json:"healthy,omitempty"`
	// Ports maps task port names to port numbers.
	Ports map[string]int `json:"ports,omitempty"`
	// SpecHash identifies the task spec the replica runs.
	SpecHash string `json:"spec_hash,omitempty"`
	// ExitCode is set once the replica's task has exited.
	ExitCode *int `json:"exit_code,omitempty"`
	// Restarts counts restarts by the restart policy.
	Restarts int `json:"restarts,omitempty"`
	// Message explains a state: why a replica is unplaced, failed or
	// waiting to restart.
	Message string `json:"message,omitempty"`
}

// JobStatus is a job with its replicas, as GET /v1/jobs/{id} answers. The
// job's fields are flattened into the same object.
type JobStatus struct {
	Job
	// SpecHash identifies the job's current task; an allocation with
	// another one runs an older spec (a rolling update is under way).
	SpecHash    string       `json:"spec_hash"`
	Allocations []Allocation `json:"allocations"`
	// Problems are conditions that keep the job from working as
	// specified, such as a service name another job holds.
	Problems []string `json:"problems,omitempty"`
}

// FieldError is a problem with one field of a job spec. Field is the JSON
// path of the field, such as "task.ports[1].port".
type FieldError struct {
	Field string
	Msg   string
}

// Error reads "field: problem", the form the API sends back to users.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}
