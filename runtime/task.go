package runtime

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// TaskSpec is what a driver needs to start one replica.
type TaskSpec struct {
	// ID names the task, unique per agent, e.g. "web-2" (job-replica).
	// Lowercase letters, digits and '-', see ValidateTaskID.
	ID      string `json:"id"`
	Job     string `json:"job"`
	Replica int    `json:"replica"`
	// Command is the argv; Command[0] is an absolute path or a name looked
	// up in the task's PATH (Env["PATH"], or a standard PATH without one).
	Command []string `json:"command"`
	// Args are appended to Command.
	Args []string          `json:"args,omitempty"`
	Env  map[string]string `json:"env,omitempty"`
	// CPUMillis caps CPU time: millis/1000 of one CPU per 100 ms period;
	// 0 means no cap.
	CPUMillis int64 `json:"cpuMillis"`
	// MemoryMB is the hard memory limit in MiB; 0 means no limit.
	MemoryMB int64 `json:"memoryMB"`
	// Pids caps the task's processes and threads (pids.max of its
	// cgroup); 0 means DefaultPids. There is no "unlimited": a fork bomb
	// must stay inside its task.
	Pids int64 `json:"pids,omitempty"`
	// Hostname is informational for the exec driver (it shares the host's
	// UTS namespace).
	Hostname string `json:"hostname,omitempty"`
	// SpecHash is opaque to the driver. It is stored with the task so a
	// restarted agent can tell whether a running task matches the current
	// spec.
	SpecHash string `json:"specHash,omitempty"`

	// Driver is DriverExec (the default) or DriverContainerd; Router
	// sends the spec to that driver.
	Driver string `json:"driver,omitempty"`
	// Image is the OCI image reference (containerd only).
	Image string `json:"image,omitempty"`
	// ReadOnlyRootfs mounts the image's root filesystem read-only
	// (containerd only).
	ReadOnlyRootfs bool `json:"readOnlyRootfs,omitempty"`
	// Privileged drops the default hardening (seccomp, no new
	// privileges) and grants all capabilities (containerd only).
	Privileged bool `json:"privileged,omitempty"`
	// Mounts are host directories bound into the container (containerd
	// only).
	Mounts []Mount `json:"mounts,omitempty"`
	// CapAdd names capabilities ("NET_RAW" or "CAP_NET_RAW") added to the
	// container's default set, which lacks CAP_NET_RAW (containerd only).
	CapAdd []string `json:"capAdd,omitempty"`
}

// Mount binds a host directory into a container.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Driver names.
const (
	DriverExec       = "exec"
	DriverContainerd = "containerd"
)

// State is the lifecycle state of a task.
type State string

// Task states.
const (
	StateRunning State = "running"
	StateExited  State = "exited"
)

// TaskStatus is what a driver reports about one task.
type TaskStatus struct {
	ID      string `json:"id"`
	Job     string `json:"job"`
	Replica int    `json:"replica"`
	State   State  `json:"state"`
	PID     int    `json:"pid"`
	// ExitCode is the exit status of an exited task, 128+signal when a
	// signal killed it, and -1 when unknown (the task died while no agent
	// was watching it).
	ExitCode   int       `json:"exitCode"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	// NetNS is the path of the task's network namespace, e.g.
	// /run/netns/shoal-<namespace>-<id>; the overlay plugs a veth into it.
	NetNS    string `json:"netns"`
	SpecHash string `json:"specHash,omitempty"`
	// LogPath is the file receiving the task's stdout and stderr.
	LogPath string `json:"logPath"`
	// Driver is the driver running the task.
	Driver string `json:"driver"`
}

// Errors callers branch on.
var (
	// ErrInvalidSpec wraps every validation failure of a TaskSpec or of a
	// driver configuration.
	ErrInvalidSpec = errors.New("invalid task spec")
	// ErrNotFound is returned for a task the driver does not know.
	ErrNotFound = errors.New("task not found")
	// ErrExists is returned by Start for an ID the driver already tracks,
	// running or exited; Stop it first.
	ErrExists = errors.New("task already exists")
	// ErrClosed is returned by a driver after Close.
	ErrClosed = errors.New("driver closed")
)

const (
	maxTaskIDLen    = 128
	maxNamespaceLen = 64
	// maxMemoryMB keeps MemoryMB<<20 inside an int64.
	maxMemoryMB = math.MaxInt64 >> 20
	// maxCPUMillis keeps the CFS quota (millis*100 µs) sane: 1,000,000
	// millis is 1000 CPUs.
	maxCPUMillis = 1_000_000
	// maxPids is the kernel's PID_MAX_LIMIT.
	maxPids = 4_194_304
)

// DefaultPids is the pids limit of a task whose spec sets none (the API's
// default too): room for a busy server's threads, small enough that a fork
// bomb fills its own cgroup long before the node's pid space.
const DefaultPids = 1024

// ValidateTaskID reports whether id can name a task: 1 to 128 lowercase
// letters, digits and '-', starting and ending with a letter or digit. Task
// IDs become file, cgroup and network namespace names.
func ValidateTaskID(id string) error {
	if msg := labelProblem(id, maxTaskIDLen, false); msg != "" {
		return fmt.Errorf("%w: id %q: %s", ErrInvalidSpec, id, msg)
	}
	return nil
}

// ValidateNamespace reports whether ns can be a driver namespace: 1 to 64
// letters, digits, '-', '_' and '.', starting and ending with a letter or
// digit.
func ValidateNamespace(ns string) error {
	if msg := labelProblem(ns, maxNamespaceLen, true); msg != "" {
		return fmt.Errorf("%w: namespace %q: %s", ErrInvalidSpec, ns, msg)
	}
	return nil
}

func labelProblem(s string, maxLen int, loose bool) string {
	switch {
	case s == "":
		return "required"
	case len(s) > maxLen:
		return fmt.Sprintf("must be at most %d characters", maxLen)
	}
	alnum := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || loose && c >= 'A' && c <= 'Z'
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if alnum(c) || c == '-' || loose && (c == '_' || c == '.') {
			continue
		}
		if loose {
			return "may contain only letters, digits, '-', '_' and '.'"
		}
		return "may contain only lowercase letters, digits and '-'"
	}
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return "must start and end with a letter or digit"
	}
	return ""
}

// Validate reports the first problem of the spec, wrapping ErrInvalidSpec.
func (s TaskSpec) Validate() error {
	if err := ValidateTaskID(s.ID); err != nil {
		return err
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: task %s: %s: %s", ErrInvalidSpec, s.ID, field, fmt.Sprintf(format, args...))
	}
	switch {
	case len(s.Command) == 0:
		return bad("command", "required")
	case s.Command[0] == "":
		return bad("command", "first element (the program) must not be empty")
	case strings.Contains(s.Command[0], "/") && !strings.HasPrefix(s.Command[0], "/"):
		return bad("command", "program %q must be an absolute path or a bare name looked up in PATH", s.Command[0])
	case s.Replica < 0:
		return bad("replica", "must be >= 0")
	case s.CPUMillis < 0 || s.CPUMillis > maxCPUMillis:
		return bad("cpu millis", "must be between 0 and %d", maxCPUMillis)
	case s.MemoryMB < 0 || s.MemoryMB > maxMemoryMB:
		return bad("memory MB", "must be between 0 and %d", int64(maxMemoryMB))
	case s.Pids < 0 || s.Pids > maxPids:
		return bad("pids", "must be between 0 (the default, %d) and %d", DefaultPids, maxPids)
	}
	for i, a := range append(append([]string(nil), s.Command...), s.Args...) {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("command", "argument %d contains a NUL byte", i)
		}
	}
	for k, v := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return bad("env", "variable %q: names must be non-empty without '=' or NUL, values without NUL", k)
		}
	}
	return nil
}

// validateContainer checks a spec for the containerd driver: the command
// is optional (the image's entrypoint runs without one) and an image and
// absolute mount paths are required.
func (s TaskSpec) validateContainer() error {
	if err := ValidateTaskID(s.ID); err != nil {
		return err
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: task %s: %s: %s", ErrInvalidSpec, s.ID, field, fmt.Sprintf(format, args...))
	}
	if s.Image == "" {
		return bad("image", "required")
	}
	if _, err := normalizeRef(s.Image); err != nil {
		return fmt.Errorf("%w: task %s: %w", ErrInvalidSpec, s.ID, err)
	}
	probe := s
	if len(probe.Command) == 0 {
		probe.Command = []string{"/entrypoint"}
	}
	probe.Command = slices.Clone(probe.Command)
	if len(s.Command) > 0 && !strings.HasPrefix(s.Command[0], "/") && !strings.Contains(s.Command[0], "/") {
		// A bare name is looked up in the image's PATH by the runtime.
		probe.Command[0] = "/" + probe.Command[0]
	}
	if err := probe.Validate(); err != nil {
		return err
	}
	for _, m := range s.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
			return bad("mounts", "source %q and target %q must be absolute paths", m.Source, m.Target)
		}
	}
	for _, c := range s.CapAdd {
		if c == "" || strings.ContainsFunc(c, func(r rune) bool { return !(r >= 'A' && r <= 'Z' || r == '_') }) {
			return bad("cap add", "%q is not a capability name such as NET_RAW", c)
		}
	}
	return nil
}

// capabilityName is the kernel's name of a capability given as "NET_RAW"
// or "CAP_NET_RAW".
func capabilityName(s string) string {
	return "CAP_" + strings.TrimPrefix(s, "CAP_")
}

// pidsLimit is the pids.max a spec asks for.
func (s TaskSpec) pidsLimit() int64 {
	if s.Pids > 0 {
		return s.Pids
	}
	return DefaultPids
}

// normalizeRef turns a short image reference (hello:1) into the full name
// containerd stores (docker.io/library/hello:1).
func normalizeRef(ref string) (string, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", ref, err)
	}
	return named.String(), nil
}

// argv is the full argument vector: Command followed by Args.
func (s TaskSpec) argv() []string {
	argv := make([]string, 0, len(s.Command)+len(s.Args))
	return append(append(argv, s.Command...), s.Args...)
}
