package api

import (
	"fmt"
	"net/netip"
	"path"
	"reflect"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

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
	case res.Pids < 1 || res.Pids > MaxPids:
		return fieldErr("task.resources.pids", "must be between 1 and %d (processes and threads)", MaxPids)
	}
	if err := validateCapAdd(t); err != nil {
		return err
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

// validateCapAdd checks task.cap_add: known capability names, each once,
// and only where they mean something (an exec task runs as an
// unprivileged user, without capabilities).
func validateCapAdd(t *Task) *FieldError {
	if len(t.CapAdd) == 0 {
		return nil
	}
	if t.Driver != DriverContainerd {
		return fieldErr("task.cap_add", "needs the containerd driver (exec tasks run without capabilities)")
	}
	if len(t.CapAdd) > len(capabilities) {
		return fieldErr("task.cap_add", "at most %d capabilities", len(capabilities))
	}
	seen := map[string]int{}
	for i, c := range t.CapAdd {
		at := index("task.cap_add", i)
		name := CapabilityName(c)
		if !slices.Contains(capabilities, name) {
			return fieldErr(at, "unknown capability %q: use a name such as NET_RAW or NET_ADMIN", clip(c, 64))
		}
		if k, dup := seen[name]; dup {
			return fieldErr(at, "%s is already listed at %s", name, index("task.cap_add", k))
		}
		seen[name] = i
	}
	return nil
}

// CapabilityName is the kernel's name of a capability given as "NET_RAW"
// or "CAP_NET_RAW": "CAP_NET_RAW". It does not check that it exists.
func CapabilityName(s string) string {
	return "CAP_" + strings.TrimPrefix(s, "CAP_")
}

// capabilities are the Linux capabilities, as of Linux 6.x.
var capabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
	"CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
	"CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
	"CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
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
