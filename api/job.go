package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
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
}

// Resources are what one replica reserves on its node.
type Resources struct {
	CPUMillis int64 `json:"cpu_millis"`
	MemoryMB  int64 `json:"memory_mb"`
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

// ParseJob decodes a job spec. The body is JSON unless contentType names
// YAML (application/yaml, application/x-yaml, text/yaml), which is
// converted to JSON first. Decoding is strict: unknown fields (matched
// case-sensitively), values of the wrong type and data after the job are
// errors naming the field. Empty lists and maps are returned as nil, so
// that a parsed job marshals and parses back to itself. ParseJob neither
// applies defaults nor validates; see ApplyDefaults and Validate.
func ParseJob(body []byte, contentType string) (Job, error) {
	if len(body) > MaxJobSize {
		return Job{}, fmt.Errorf("job spec is %d bytes; the limit is %d", len(body), MaxJobSize)
	}
	isYAML := isYAMLType(contentType)
	data := body
	if isYAML {
		var err error
		if data, err = yamlToJSON(body); err != nil {
			return Job{}, err
		}
	}

	// First decode into a generic tree: it gives exact syntax errors,
	// catches trailing data, and lets shapeChecker name the exact path
	// (with list indexes) of an unknown field or a mistyped value, which
	// encoding/json's own errors do not.
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return Job{}, syntaxError(data, err, isYAML)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Job{}, errors.New("invalid JSON: unexpected data after the job object")
	}
	if _, ok := tree.(map[string]any); !ok {
		return Job{}, errors.New("job spec must be an object")
	}
	if err := (shapeChecker{yaml: isYAML}).check(jobType, tree, ""); err != nil {
		return Job{}, err
	}

	// The tree is known to fit Job, so this decode should not fail; the
	// strict options stay as a second line of defence.
	var j Job
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return Job{}, fmt.Errorf("decode job: %w", err)
	}
	j.dropEmpty()
	return j, nil
}

func isYAMLType(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml":
		return true
	}
	return false
}

func yamlToJSON(body []byte) (data []byte, err error) {
	// The YAML parser is third-party code fed with user input; a panic in
	// it must become a 400, not take the agent down.
	defer func() {
		if r := recover(); r != nil {
			data, err = nil, fmt.Errorf("invalid YAML: %v", r)
		}
	}()
	// Strict: YAML forbids duplicate keys, and silently keeping one of
	// them would hide a mistake.
	data, err = yaml.YAMLToJSONStrict(body)
	if err != nil {
		// go-yaml spreads a list of errors over several lines; one line
		// reads better in a JSON error answer.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		return nil, fmt.Errorf("invalid YAML: %s", clip(strings.TrimPrefix(msg, "yaml: "), 300))
	}
	// Aliases can make a small document expand a lot.
	if len(data) > 4*MaxJobSize {
		return nil, fmt.Errorf("invalid YAML: expands to %d bytes of JSON", len(data))
	}
	return data, nil
}

// syntaxError turns a decoding error of the generic tree into a message
// with a line and column.
func syntaxError(data []byte, err error, isYAML bool) error {
	if err == io.EOF {
		return errors.New("job spec is empty")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) && !isYAML {
		off := min(max(int(se.Offset), 0), len(data))
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		col := off - bytes.LastIndexByte(data[:off], '\n')
		return fmt.Errorf("invalid JSON at line %d, column %d: %s", line, col, strings.TrimPrefix(se.Error(), "json: "))
	}
	return fmt.Errorf("invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

var (
	jobType      = reflect.TypeFor[Job]()
	durationType = reflect.TypeFor[Duration]()
)

// shapeChecker walks a generic JSON tree alongside the Go type it will be
// decoded into, and reports the first key the type does not have or value
// of the wrong kind, with its full path.
type shapeChecker struct {
	yaml bool // add hints that only make sense to YAML writers
}

func (c shapeChecker) check(t reflect.Type, v any, at string) error {
	if v == nil {
		return nil // null leaves the zero value, as encoding/json does
	}
	if t == durationType {
		s, ok := v.(string)
		if !ok {
			return fieldErr(at, `must be a duration string such as "1.5s" or "2m"`)
		}
		if _, err := time.ParseDuration(s); err != nil {
			return fieldErr(at, `invalid duration %q: write it like "1.5s" or "2m"`, clip(s, 64))
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return c.check(t.Elem(), v, at)
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return fieldErr(at, "must be an object")
		}
		names := make([]string, 0, t.NumField())
		for i := range t.NumField() {
			names = append(names, jsonName(t.Field(i)))
		}
		keys := sortedKeys(obj)
		for _, k := range keys {
			if slices.Contains(names, k) {
				continue
			}
			// encoding/json would accept a different case; we do not, so
			// say what was probably meant.
			for _, n := range names {
				if strings.EqualFold(n, k) {
					return fieldErr(join(at, k), "unknown field (did you mean %q?)", n)
				}
			}
			if !isFieldName(k) {
				return fieldErr(key(at, k), "unknown field")
			}
			return fieldErr(join(at, k), "unknown field")
		}
		for i, n := range names {
			if sub, ok := obj[n]; ok {
				if err := c.check(t.Field(i).Type, sub, join(at, n)); err != nil {
					return err
				}
			}
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return fieldErr(at, "must be a list")
		}
		for i, e := range list {
			if err := c.check(t.Elem(), e, index(at, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			return fieldErr(at, "must be an object")
		}
		for _, k := range sortedKeys(obj) {
			if err := c.check(t.Elem(), obj[k], key(at, k)); err != nil {
				return err
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			if c.yaml {
				return fieldErr(at, "must be a string (quote it in YAML)")
			}
			return fieldErr(at, "must be a string")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return fieldErr(at, "must be true or false")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			return fieldErr(at, "must be an integer")
		}
		// The same parse encoding/json does, so the two agree.
		if _, err := strconv.ParseInt(n.String(), 10, t.Bits()); err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return fieldErr(at, "integer %s is out of range", clip(n.String(), 32))
			}
			return fieldErr(at, "must be an integer, not %s", clip(n.String(), 32))
		}
	}
	return nil
}

// jsonName is the name encoding/json uses for a field of our types (all
// have a tag; none is embedded or skipped).
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// join, index and key build field paths such as task.ports[1].port and
// task.env["HOME"].
func join(at, name string) string {
	if at == "" {
		return name
	}
	return at + "." + name
}

func index(at string, i int) string { return at + "[" + strconv.Itoa(i) + "]" }

func key(at, k string) string { return at + "[" + strconv.Quote(clip(k, 64)) + "]" }

// isFieldName reports whether k can stand in a dotted path as it is.
func isFieldName(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// clip shortens user input quoted in an error message: an error answer
// should not echo back a megabyte of request.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

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

// ValidateID checks a job id: a DNS label of lowercase letters, digits and
// '-', 1 to 63 characters, starting with a letter and not ending with '-'.
// The error is a *FieldError for the field "id".
func ValidateID(id string) error {
	if msg := dnsLabelProblem(id); msg != "" {
		return &FieldError{Field: "id", Msg: msg}
	}
	return nil
}

func dnsLabelProblem(s string) string {
	switch {
	case s == "":
		return "required"
	case len(s) > 63:
		return "must be at most 63 characters"
	case s[0] < 'a' || s[0] > 'z':
		return "must start with a lowercase letter"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return "may contain only lowercase letters, digits and '-'"
		}
	}
	if s[len(s)-1] == '-' {
		return "must not end with '-'"
	}
	return ""
}

// Validate reports the first problem of the job as a *FieldError, or nil.
// It checks the job as ApplyDefaults would complete it, so it may be called
// before or after ApplyDefaults; it does not change j.
func (j Job) Validate() error {
	c := j.Clone()
	c.ApplyDefaults()
	if err := c.validate(); err != nil {
		return err
	}
	return nil
}

// validate checks a job whose defaults are applied, in field order, so
// the first problem reported is stable.
func (j *Job) validate() *FieldError {
	// The job is stored and gossiped as JSON, which would silently turn
	// invalid UTF-8 (possible only from Go callers) into U+FFFD.
	if at, bad := invalidUTF8(reflect.ValueOf(j).Elem(), ""); bad {
		return fieldErr(at, "must be valid UTF-8")
	}
	if msg := dnsLabelProblem(j.ID); msg != "" {
		return fieldErr("id", "%s", msg)
	}
	if msg := oneOf(j.Type, JobTypeService, JobTypeBatch); msg != "" {
		return fieldErr("type", "%s", msg)
	}
	if r := *j.Replicas; r < 0 || r > MaxReplicas {
		return fieldErr("replicas", "must be between 0 and %d", MaxReplicas)
	}
	if err := j.validateTask(); err != nil {
		return err
	}
	if err := j.validateService(); err != nil {
		return err
	}
	if err := validateHealth(j.Health); err != nil {
		return err
	}
	if err := validateRestart(j.Restart); err != nil {
		return err
	}
	if err := validateConstraints(j.Constraints); err != nil {
		return err
	}
	if err := validateUpdate(j.Update); err != nil {
		return err
	}
	if err := j.validateScaling(); err != nil {
		return err
	}
	return validateVolumes(j.Volumes)
}

func (j *Job) validateTask() *FieldError {
	t := &j.Task
	switch t.Driver {
	case "":
		return fieldErr("task.driver", "required (containerd or exec)")
	case DriverContainerd:
		if t.Image == "" {
			return fieldErr("task.image", "required for the containerd driver")
		}
	case DriverExec:
		if t.Image != "" {
			return fieldErr("task.image", "not allowed with the exec driver")
		}
		if len(t.Command) == 0 {
			return fieldErr("task.command", "required for the exec driver")
		}
	default:
		return fieldErr("task.driver", "%s", oneOf(t.Driver, DriverContainerd, DriverExec))
	}
	if t.Image != "" {
		if len(t.Image) > maxImageLen {
			return fieldErr("task.image", "must be at most %d characters", maxImageLen)
		}
		if strings.ContainsFunc(t.Image, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
			return fieldErr("task.image", "must not contain spaces or control characters")
		}
	}
	if len(t.Command) > 0 && t.Command[0] == "" {
		return fieldErr("task.command[0]", "must not be empty")
	}
	if err := validateArgv("task.command", t.Command); err != nil {
		return err
	}
	if err := validateArgv("task.args", t.Args); err != nil {
		return err
	}
	if n := argvSize(t.Command) + argvSize(t.Args); n > MaxArgvBytes {
		return fieldErr("task.args", "command and args take %d bytes; the limit is %d", n, MaxArgvBytes)
	}
	envSize := 0
	for _, k := range sortedKeys(t.Env) {
		if !isEnvName(k) {
			return fieldErr(key("task.env", k), "not a valid variable name: use letters, digits and '_', not starting with a digit")
		}
		if strings.IndexByte(t.Env[k], 0) >= 0 {
			return fieldErr(key("task.env", k), "must not contain NUL bytes")
		}
		envSize += len(k) + len(t.Env[k]) + 2 // "K=V\x00"
	}
	if envSize > MaxArgvBytes {
		return fieldErr("task.env", "takes %d bytes; the limit is %d", envSize, MaxArgvBytes)
	}
	res := t.Resources
	switch {
	case res.CPUMillis <= 0:
		return fieldErr("task.resources.cpu_millis", "must be > 0")
	case res.CPUMillis > MaxCPUMillis:
		return fieldErr("task.resources.cpu_millis", "must be <= %d", MaxCPUMillis)
	case res.MemoryMB <= 0:
		return fieldErr("task.resources.memory_mb", "must be > 0")
	case res.MemoryMB > MaxMemoryMB:
		return fieldErr("task.resources.memory_mb", "must be <= %d", MaxMemoryMB)
	}
	if len(t.Ports) > maxListLen {
		return fieldErr("task.ports", "at most %d ports", maxListLen)
	}
	for i, p := range t.Ports {
		at := index("task.ports", i)
		if msg := dnsLabelProblem(p.Name); msg != "" {
			return fieldErr(at+".name", "%s", msg)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fieldErr(at+".port", "must be between 1 and 65535")
		}
		if msg := oneOf(p.Protocol, ProtocolTCP, ProtocolUDP); msg != "" {
			return fieldErr(at+".protocol", "%s", msg)
		}
		for k, q := range t.Ports[:i] {
			if q.Name == p.Name {
				return fieldErr(at+".name", "%q is already used by %s", p.Name, index("task.ports", k))
			}
			if q.Port == p.Port && q.Protocol == p.Protocol {
				return fieldErr(at+".port", "%d/%s is already used by %s", p.Port, p.Protocol, index("task.ports", k))
			}
		}
	}
	if len(t.Secrets) > maxListLen || len(t.Configs) > maxListLen {
		return fieldErr("task.secrets", "at most %d secrets and %d configs", maxListLen, maxListLen)
	}
	if err := validateDataMounts("task.secrets", t.Secrets, t.Driver); err != nil {
		return err
	}
	if err := validateDataMounts("task.configs", t.Configs, t.Driver); err != nil {
		return err
	}
	used := map[string]bool{}
	for _, m := range t.Secrets {
		used[m.Path] = true
	}
	for i, m := range t.Configs {
		if used[m.Path] {
			return fieldErr(index("task.configs", i)+".path", "%s is also a secret's path", clip(m.Path, 256))
		}
		used[m.Path] = true
	}
	for i, m := range t.Mounts {
		if used[m.Path] {
			return fieldErr(index("task.mounts", i)+".path", "%s is also a secret's or config's path", clip(m.Path, 256))
		}
	}
	if len(t.Mounts) > maxListLen {
		return fieldErr("task.mounts", "at most %d mounts", maxListLen)
	}
	for i, m := range t.Mounts {
		at := index("task.mounts", i)
		if m.Volume == "" {
			return fieldErr(at+".volume", "required")
		}
		if !slices.ContainsFunc(j.Volumes, func(v Volume) bool { return v.Name == m.Volume }) {
			return fieldErr(at+".volume", "no volume named %q in volumes", clip(m.Volume, 64))
		}
		switch {
		case m.Path == "":
			return fieldErr(at+".path", "required")
		case len(m.Path) > maxPathLen:
			return fieldErr(at+".path", "must be at most %d characters", maxPathLen)
		case !path.IsAbs(m.Path):
			return fieldErr(at+".path", "must be absolute")
		case path.Clean(m.Path) != m.Path:
			return fieldErr(at+".path", "must be clean (%q)", clip(path.Clean(m.Path), 256))
		case m.Path == "/":
			return fieldErr(at+".path", "cannot be /")
		case strings.IndexByte(m.Path, 0) >= 0:
			return fieldErr(at+".path", "must not contain NUL bytes")
		}
		for k, o := range t.Mounts[:i] {
			if o.Path == m.Path {
				return fieldErr(at+".path", "%s is already used by %s", clip(m.Path, 256), index("task.mounts", k))
			}
		}
	}
	return nil
}

// invalidUTF8 finds the first string in v, in field order, that is not
// valid UTF-8, and returns its path.
func invalidUTF8(v reflect.Value, at string) (string, bool) {
	switch v.Kind() {
	case reflect.String:
		return at, !utf8.ValidString(v.String())
	case reflect.Pointer:
		if !v.IsNil() {
			return invalidUTF8(v.Elem(), at)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if p, bad := invalidUTF8(v.Field(i), join(at, jsonName(v.Type().Field(i)))); bad {
				return p, true
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if p, bad := invalidUTF8(v.Index(i), index(at, i)); bad {
				return p, true
			}
		}
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, k := range keys {
			if !utf8.ValidString(k.String()) {
				return key(at, k.String()), true
			}
			if p, bad := invalidUTF8(v.MapIndex(k), key(at, k.String())); bad {
				return p, true
			}
		}
	}
	return "", false
}

func validateArgv(at string, argv []string) *FieldError {
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return fieldErr(index(at, i), "must not contain NUL bytes")
		}
	}
	return nil
}

func argvSize(argv []string) int {
	n := 0
	for _, a := range argv {
		n += len(a) + 1 // the NUL terminator execve adds
	}
	return n
}

func isEnvName(s string) bool {
	if s == "" || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func (j *Job) validateService() *FieldError {
	s := j.Service
	if s == nil {
		return nil
	}
	if j.Type == JobTypeBatch {
		return fieldErr("service", "not allowed for batch jobs")
	}
	if msg := dnsLabelProblem(s.Name); msg != "" {
		return fieldErr("service.name", "%s", msg)
	}
	if s.Port < 1 || s.Port > 65535 {
		return fieldErr("service.port", "must be between 1 and 65535")
	}
	if s.TargetPort == "" {
		return fieldErr("service.target_port", "required: the task declares no ports")
	}
	if !slices.ContainsFunc(j.Task.Ports, func(p Port) bool { return p.Name == s.TargetPort }) {
		return fieldErr("service.target_port", "no task port named %q", clip(s.TargetPort, 64))
	}
	if s.NodePort != 0 && (s.NodePort < 30000 || s.NodePort > 32767) {
		return fieldErr("service.node_port", "must be 0 or between 30000 and 32767")
	}
	if s.VIP != "" {
		if ip, err := netip.ParseAddr(s.VIP); err != nil || !ip.Is4() {
			return fieldErr("service.vip", "not an IPv4 address: %q", clip(s.VIP, 64))
		}
	}
	if msg := oneOf(s.Strategy, StrategyRoundRobin, StrategyRandom, StrategySourceHash, StrategyMaglev); msg != "" {
		return fieldErr("service.strategy", "%s", msg)
	}
	return nil
}

func validateHealth(h *HealthCheck) *FieldError {
	if h == nil {
		return nil
	}
	set := 0
	for _, b := range []bool{h.HTTP != nil, h.TCP != nil, len(h.Exec) > 0} {
		if b {
			set++
		}
	}
	if set != 1 {
		return fieldErr("health", "set exactly one of http, tcp or exec")
	}
	switch {
	case h.HTTP != nil:
		if h.HTTP.Port < 1 || h.HTTP.Port > 65535 {
			return fieldErr("health.http.port", "must be between 1 and 65535")
		}
		p := h.HTTP.Path
		if !strings.HasPrefix(p, "/") {
			return fieldErr("health.http.path", "must start with /")
		}
		if len(p) > maxPathLen {
			return fieldErr("health.http.path", "must be at most %d characters", maxPathLen)
		}
		if strings.ContainsFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
			return fieldErr("health.http.path", "must not contain spaces or control characters")
		}
	case h.TCP != nil:
		if h.TCP.Port < 1 || h.TCP.Port > 65535 {
			return fieldErr("health.tcp.port", "must be between 1 and 65535")
		}
	default:
		if h.Exec[0] == "" {
			return fieldErr("health.exec[0]", "must not be empty")
		}
		if err := validateArgv("health.exec", h.Exec); err != nil {
			return err
		}
		if n := argvSize(h.Exec); n > MaxArgvBytes {
			return fieldErr("health.exec", "takes %d bytes; the limit is %d", n, MaxArgvBytes)
		}
	}
	switch {
	case h.Interval <= 0:
		return fieldErr("health.interval", "must be > 0")
	case h.Timeout <= 0:
		return fieldErr("health.timeout", "must be > 0")
	case h.Timeout > h.Interval:
		return fieldErr("health.timeout", "must be <= interval (%s)", h.Interval)
	case h.FailuresBeforeUnhealthy < 1 || h.FailuresBeforeUnhealthy > 100:
		return fieldErr("health.failures_before_unhealthy", "must be between 1 and 100")
	case h.GracePeriod < 0:
		return fieldErr("health.grace_period", "must not be negative")
	}
	return nil
}

func validateRestart(r *RestartPolicy) *FieldError {
	if r == nil {
		return nil
	}
	switch {
	case oneOf(r.Policy, RestartAlways, RestartOnFailure, RestartNever) != "":
		return fieldErr("restart.policy", "%s", oneOf(r.Policy, RestartAlways, RestartOnFailure, RestartNever))
	case r.MaxAttempts < 0:
		return fieldErr("restart.max_attempts", "must be >= 0 (0 is unlimited)")
	case r.Backoff <= 0:
		return fieldErr("restart.backoff", "must be > 0")
	case r.MaxBackoff < r.Backoff:
		return fieldErr("restart.max_backoff", "must be >= backoff (%s)", r.Backoff)
	}
	return nil
}

func validateConstraints(cs []Constraint) *FieldError {
	if len(cs) > maxListLen {
		return fieldErr("constraints", "at most %d constraints", maxListLen)
	}
	for i, c := range cs {
		at := index("constraints", i)
		switch {
		case c.Label == "":
			return fieldErr(at+".label", "required")
		case len(c.Label) > 253:
			return fieldErr(at+".label", "must be at most 253 characters")
		case strings.ContainsFunc(c.Label, func(r rune) bool {
			return unicode.IsSpace(r) || unicode.IsControl(r) || r == '=' || r == ','
		}):
			return fieldErr(at+".label", "must not contain spaces, control characters, '=' or ','")
		}
		if msg := oneOf(c.Op, OpEqual, OpNotEqual, OpIn); msg != "" {
			return fieldErr(at+".op", "%s", msg)
		}
		if len(c.Value) > 4096 {
			return fieldErr(at+".value", "must be at most 4096 characters")
		}
		if strings.ContainsFunc(c.Value, unicode.IsControl) {
			return fieldErr(at+".value", "must not contain control characters")
		}
		if c.Op == OpIn {
			if strings.TrimSpace(c.Value) == "" {
				return fieldErr(at+".value", "must list at least one value")
			}
			if slices.Contains(c.Values(), "") {
				return fieldErr(at+".value", "has an empty item in its list")
			}
		}
	}
	return nil
}

func validateUpdate(u *UpdatePolicy) *FieldError {
	if u == nil {
		return nil
	}
	switch {
	case u.MaxParallel < 1:
		return fieldErr("update.max_parallel", "must be >= 1")
	case u.MinHealthyTime < 0:
		return fieldErr("update.min_healthy_time", "must not be negative")
	case u.HealthyDeadline <= u.MinHealthyTime:
		return fieldErr("update.healthy_deadline", "must be longer than min_healthy_time (%s)", u.MinHealthyTime)
	}
	return nil
}

func (j *Job) validateScaling() *FieldError {
	s := j.Scaling
	if s == nil {
		return nil
	}
	switch {
	case s.Min < 0:
		return fieldErr("scaling.min", "must be >= 0")
	case s.Max > MaxReplicas:
		return fieldErr("scaling.max", "must be <= %d", MaxReplicas)
	case s.Max < s.Min:
		return fieldErr("scaling.max", "must be >= min (%d)", s.Min)
	case s.CPUPercent < 0 || s.CPUPercent > 100:
		return fieldErr("scaling.cpu_percent", "must be between 1 and 100 (or 0 for none)")
	case s.MemoryPercent < 0 || s.MemoryPercent > 100:
		return fieldErr("scaling.memory_percent", "must be between 1 and 100 (or 0 for none)")
	case s.CPUPercent == 0 && s.MemoryPercent == 0:
		return fieldErr("scaling", "set cpu_percent, memory_percent or both")
	case s.Cooldown <= 0:
		return fieldErr("scaling.cooldown", "must be > 0")
	case *j.Replicas < s.Min || *j.Replicas > s.Max:
		return fieldErr("replicas", "must be between scaling.min (%d) and scaling.max (%d)", s.Min, s.Max)
	}
	return nil
}

func validateVolumes(vs []Volume) *FieldError {
	if len(vs) > maxListLen {
		return fieldErr("volumes", "at most %d volumes", maxListLen)
	}
	for i, v := range vs {
		at := index("volumes", i)
		if msg := dnsLabelProblem(v.Name); msg != "" {
			return fieldErr(at+".name", "%s", msg)
		}
		for k, o := range vs[:i] {
			if o.Name == v.Name {
				return fieldErr(at+".name", "%q is already used by %s", v.Name, index("volumes", k))
			}
		}
		if msg := oneOf(v.Type, VolumeEphemeral, VolumePersistent); msg != "" {
			return fieldErr(at+".type", "%s", msg)
		}
		switch {
		case v.SizeMB < 0:
			return fieldErr(at+".size_mb", "must not be negative")
		case v.SizeMB == 0 && v.Type == VolumePersistent:
			return fieldErr(at+".size_mb", "must be > 0 for a persistent volume")
		case v.SizeMB > MaxVolumeMB:
			return fieldErr(at+".size_mb", "must be <= %d", MaxVolumeMB)
		}
	}
	return nil
}

// oneOf returns "" when v is one of the options, else a message listing
// them.
func oneOf(v string, options ...string) string {
	if slices.Contains(options, v) {
		return ""
	}
	if v == "" {
		return "required: one of " + strings.Join(options, ", ")
	}
	return fmt.Sprintf("must be one of %s, not %q", strings.Join(options, ", "), clip(v, 64))
}
