package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// Defaults of the containerd driver.
const (
	DefaultContainerdAddress = "/run/containerd/containerd.sock"
	DefaultSnapshotter       = "overlayfs"
	DefaultRuntime           = "io.containerd.runc.v2"
	DefaultPullTimeout       = 2 * time.Minute
	// connectTimeout bounds one attempt to reach the daemon, so a missing
	// containerd fails a replica quickly instead of stalling reconcile.
	connectTimeout = 3 * time.Second
)

// Container labels: the containerd driver keeps its whole task record in
// containerd itself, so a restarted agent adopts containers from there.
const (
	labelJob      = "shoal.job"
	labelReplica  = "shoal.replica"
	labelSpecHash = "shoal.spec-hash"
	labelStarted  = "shoal.started"
)

// ContainerdConfig configures the containerd driver.
type ContainerdConfig struct {
	// Address is containerd's gRPC socket; empty means
	// DefaultContainerdAddress.
	Address string
	// Namespace is the containerd namespace holding this agent's
	// containers and images, and the prefix of its network namespaces and
	// cgroups (shared with the exec driver). See ValidateNamespace.
	Namespace string
	// StateDir holds the driver's log files (logs/<id>.log).
	StateDir string
	// Snapshotter and Runtime name containerd plugins; empty means
	// DefaultSnapshotter and DefaultRuntime.
	Snapshotter string
	Runtime     string
	// StopGrace is the time between SIGTERM and SIGKILL in Stop; 0 means
	// DefaultStopGrace.
	StopGrace time.Duration
	// PullTimeout bounds pulling a missing image; 0 means
	// DefaultPullTimeout.
	PullTimeout time.Duration
	// Log receives the driver's events; nil discards them.
	Log *slog.Logger
	// Notify, if set, is told of image pulls for a task: kinds
	// "image-pull", "image-pulled" and "image-pull-failed".
	Notify func(kind, task, message string)
}

// Containerd is the containerd driver: each task is an OCI container
// created from an image in the agent's containerd namespace, in a network
// namespace the driver creates, with its cgroup at shoal/<ns>/<id> like
// exec tasks. Containers and their shims outlive the agent; everything the
// driver needs to adopt them is in their labels. The daemon is dialled on
// first use and again after a failure, so the agent starts, and serves
// exec jobs, without containerd. Safe for concurrent use; operations on
// one task ID are serialised.
type Containerd struct {
	cfg ContainerdConfig
	log *slog.Logger
	cg  *cgroupFS

	connMu sync.Mutex
	client *client.Client

	// locks serialises operations per task ID.
	locksMu sync.Mutex
	locks   map[string]*sync.Mutex

	// pulls deduplicates concurrent pulls of one reference.
	pullMu sync.Mutex
	pulls  map[string]*pullCall
}

type pullCall struct {
	done chan struct{}
	err  error
}

// NewContainerd prepares the containerd driver. It does not require the
// daemon to be up; see Containerd.
func NewContainerd(cfg ContainerdConfig) (*Containerd, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("open containerd driver: %w: state dir: required", ErrInvalidSpec)
	}
	if err := ValidateNamespace(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("open containerd driver: %w", err)
	}
	if cfg.StopGrace < 0 || cfg.PullTimeout < 0 {
		return nil, fmt.Errorf("open containerd driver: %w: stop grace and pull timeout must be >= 0", ErrInvalidSpec)
	}
	if cfg.Address == "" {
		cfg.Address = DefaultContainerdAddress
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = DefaultSnapshotter
	}
	if cfg.Runtime == "" {
		cfg.Runtime = DefaultRuntime
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.PullTimeout == 0 {
		cfg.PullTimeout = DefaultPullTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("open containerd driver: state dir: %w", err)
	}
	cfg.StateDir = dir
	if err := os.MkdirAll(filepath.Join(dir, logsSubdir), 0o700); err != nil {
		return nil, fmt.Errorf("open containerd driver: %w", err)
	}
	cg, err := detectCgroups()
	if err != nil {
		return nil, fmt.Errorf("open containerd driver: %w", err)
	}
	return &Containerd{cfg: cfg, log: cfg.Log, cg: cg, locks: map[string]*sync.Mutex{}, pulls: map[string]*pullCall{}}, nil
}

// ErrUnavailable is returned when the containerd daemon cannot be reached.
var ErrUnavailable = errors.New("containerd not reachable")

// conn returns a client, dialling the daemon when there is none yet.
func (c *Containerd) conn(ctx context.Context) (*client.Client, context.Context, error) {
	ctx = namespaces.WithNamespace(ctx, c.cfg.Namespace)
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.client != nil {
		return c.client, ctx, nil
	}
	if _, err := os.Stat(c.cfg.Address); err != nil {
		return nil, ctx, fmt.Errorf("%w at %s: %v", ErrUnavailable, c.cfg.Address, err)
	}
	cl, err := client.New(c.cfg.Address,
		client.WithDefaultNamespace(c.cfg.Namespace),
		client.WithTimeout(connectTimeout),
		client.WithDefaultRuntime(c.cfg.Runtime))
	if err != nil {
		return nil, ctx, fmt.Errorf("%w at %s: %v", ErrUnavailable, c.cfg.Address, err)
	}
	c.client = cl
	return cl, ctx, nil
}

// unavailable marks an error of a daemon that went away after the first
// connection as ErrUnavailable, so callers treat it like a daemon that
// was never there (the exec driver's tasks go on being managed).
func (c *Containerd) unavailable(err error) error {
	if errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) && !c.serving() {
		return fmt.Errorf("%w at %s: %v", ErrUnavailable, c.cfg.Address, err)
	}
	return err
}

// serving asks the daemon whether it is up, briefly.
func (c *Containerd) serving() bool {
	c.connMu.Lock()
	cl := c.client
	c.connMu.Unlock()
	if cl == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ok, err := cl.IsServing(ctx)
	return err == nil && ok
}

// lock serialises operations on one task ID.
func (c *Containerd) lock(id string) func() {
	c.locksMu.Lock()
	m := c.locks[id]
	if m == nil {
		m = &sync.Mutex{}
		c.locks[id] = m
	}
	c.locksMu.Unlock()
	m.Lock()
	return m.Unlock
}

// LogPath is the file receiving the task's stdout and stderr.
func (c *Containerd) LogPath(id string) string {
	return filepath.Join(c.cfg.StateDir, logsSubdir, id+".log")
}

func (c *Containerd) cgroupPath(id string) string {
	return "/" + filepath.Join(cgroupRoot, c.cfg.Namespace, id)
}

// Start creates and starts a container for spec, pulling its image first
// if the namespace does not hold it. Start on an ID that has a container,
// running or not, returns ErrExists.
func (c *Containerd) Start(ctx context.Context, spec TaskSpec) (TaskStatus, error) {
	if err := spec.validateContainer(); err != nil {
		return TaskStatus{}, fmt.Errorf("start task: %w", err)
	}
	id := spec.ID
	defer c.lock(id)()
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	if _, err := cl.LoadContainer(ctx, id); err == nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, ErrExists)
	} else if !errdefs.IsNotFound(err) {
		return TaskStatus{}, fmt.Errorf("start task %s: look up container: %w", id, c.unavailable(err))
	}
	began := time.Now()
	img, err := c.ensureImage(ctx, cl, spec.Image, id)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	imageDone := time.Now()

	// Leftovers of a start that an agent crash cut short (no container
	// was recorded, so nothing else would ever remove them) are ours.
	if err := c.cg.deleteTaskNetns(c.cfg.Namespace, id, c.log); err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: clear leftovers: %w", id, err)
	}
	if err := cl.SnapshotService(c.cfg.Snapshotter).Remove(ctx, id+"-rootfs"); err != nil && !errdefs.IsNotFound(err) {
		c.log.Warn("remove leftover snapshot", "task", id, "err", err)
	}
	nsName := netnsName(c.cfg.Namespace, id)
	if err := createNetns(nsName); err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	started := time.Now().UTC()
	cleanup := func(ctr client.Container) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if ctr != nil {
			if t, err := ctr.Task(cctx, nil); err == nil {
				_, _ = t.Delete(cctx, client.WithProcessKill)
			}
			if err := ctr.Delete(cctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
				c.log.Warn("remove container after failed start", "task", id, "err", err)
			}
		}
		if err := c.cg.deleteTaskNetns(c.cfg.Namespace, id, c.log); err != nil {
			c.log.Warn("remove netns after failed start", "task", id, "err", err)
		}
		if err := deleteNetns(nsName); err != nil {
			c.log.Warn("remove netns after failed start", "task", id, "err", err)
		}
	}

	netnsDone := time.Now()
	specOpts := c.specOpts(spec, img, netnsPath(c.cfg.Namespace, id))
	labels := map[string]string{
		labelJob:      spec.Job,
		labelReplica:  strconv.Itoa(spec.Replica),
		labelSpecHash: spec.SpecHash,
		labelStarted:  started.Format(time.RFC3339Nano),
	}
	ctr, err := cl.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithSnapshotter(c.cfg.Snapshotter),
		client.WithNewSnapshot(id+"-rootfs", img),
		client.WithRuntime(c.cfg.Runtime, nil),
		client.WithContainerLabels(labels),
		client.WithNewSpec(specOpts...))
	if err != nil {
		cleanup(nil)
		return TaskStatus{}, fmt.Errorf("start task %s: create container: %w", id, err)
	}
	createDone := time.Now()
	task, err := ctr.NewTask(ctx, cio.LogFile(c.LogPath(id)))
	if err != nil {
		cleanup(ctr)
		return TaskStatus{}, fmt.Errorf("start task %s: create task: %w", id, err)
	}
	// Wait before Start, or a task that exits at once could be missed.
	waitCtx, cancelWait := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWait()
	if _, err := task.Wait(waitCtx); err != nil {
		cleanup(ctr)
		return TaskStatus{}, fmt.Errorf("start task %s: wait task: %w", id, err)
	}
	if err := task.Start(ctx); err != nil {
		cleanup(ctr)
		return TaskStatus{}, fmt.Errorf("start task %s: start task: %w", id, err)
	}
	c.log.Info("started container", "task", id, "image", spec.Image, "pid", task.Pid(),
		"image_lookup", imageDone.Sub(began).Round(time.Millisecond), "netns", netnsDone.Sub(imageDone).Round(time.Millisecond),
		"create", createDone.Sub(netnsDone).Round(time.Millisecond), "task_start", time.Since(createDone).Round(time.Millisecond))
	return TaskStatus{
		ID: id, Job: spec.Job, Replica: spec.Replica, State: StateRunning, PID: int(task.Pid()),
		StartedAt: started, NetNS: netnsPath(c.cfg.Namespace, id), SpecHash: spec.SpecHash,
		LogPath: c.LogPath(id), Driver: DriverContainerd,
	}, nil
}

// specOpts builds the OCI spec: the image's config, the job's command,
// env, limits and mounts, and the default hardening (containerd's
// seccomp profile, no new privileges, no CAP_NET_RAW unless asked for)
// unless the job asks for privileges.
func (c *Containerd) specOpts(spec TaskSpec, img client.Image, nsPath string) []oci.SpecOpts {
	opts := []oci.SpecOpts{oci.WithImageConfig(img)}
	switch {
	case len(spec.Command) > 0:
		opts = append(opts, oci.WithProcessArgs(spec.argv()...))
	case len(spec.Args) > 0:
		opts = append(opts, oci.WithImageConfigArgs(img, spec.Args))
	}
	opts = append(opts,
		oci.WithEnv(taskEnv(spec.Env)),
		oci.WithHostname(spec.Hostname),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath}),
		oci.WithCgroup(c.cgroupPath(spec.ID)),
	)
	if spec.Privileged {
		opts = append(opts, oci.WithPrivileged)
	} else {
		// NET_RAW lets a container forge packets (ARP and IP spoofing on
		// the node bridge) and sniff; few workloads need it, so they ask.
		opts = append(opts, seccomp.WithDefaultProfile(), oci.WithNoNewPrivileges,
			oci.WithDroppedCapabilities([]string{"CAP_NET_RAW"}))
		if len(spec.CapAdd) > 0 {
			caps := make([]string, len(spec.CapAdd))
			for i, c := range spec.CapAdd {
				caps[i] = capabilityName(c)
			}
			opts = append(opts, oci.WithAddedCapabilities(caps))
		}
	}
	// Every container gets a pids limit, so a fork bomb stays inside it.
	opts = append(opts, oci.WithPidsLimit(spec.pidsLimit()))
	if spec.ReadOnlyRootfs {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	l := limitsFor(spec)
	if l.MemoryBytes > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(l.MemoryBytes)))
	}
	if l.CFSQuotaMicros > 0 {
		opts = append(opts, oci.WithCPUCFS(l.CFSQuotaMicros, cfsPeriodMicros))
	}
	var mounts []specs.Mount
	for _, m := range spec.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: []string{"rbind", mode}})
	}
	if len(mounts) > 0 {
		opts = append(opts, oci.WithMounts(mounts))
	}
	return opts
}

// ensureImage returns the image named ref, pulling and unpacking it when
// the namespace lacks it.
func (c *Containerd) ensureImage(ctx context.Context, cl *client.Client, ref, task string) (client.Image, error) {
	name, err := normalizeRef(ref)
	if err != nil {
		return nil, err
	}
	img, err := cl.GetImage(ctx, name)
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("look up image %s: %w", name, err)
	}
	if err != nil {
		if err := c.pull(ctx, cl, name, task); err != nil {
			return nil, err
		}
		if img, err = cl.GetImage(ctx, name); err != nil {
			return nil, fmt.Errorf("look up image %s after pulling it: %w", name, err)
		}
	}
	unpacked, err := img.IsUnpacked(ctx, c.cfg.Snapshotter)
	if err != nil {
		return nil, fmt.Errorf("check image %s: %w", name, err)
	}
	if !unpacked {
		if err := img.Unpack(ctx, c.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", name, err)
		}
	}
	return img, nil
}

// pull fetches ref from its registry, once at a time per reference, within
// PullTimeout.
func (c *Containerd) pull(ctx context.Context, cl *client.Client, ref, task string) error {
	c.pullMu.Lock()
	call, busy := c.pulls[ref]
	if !busy {
		call = &pullCall{done: make(chan struct{})}
		c.pulls[ref] = call
	}
	c.pullMu.Unlock()
	if busy {
		select {
		case <-call.done:
			return call.err
		case <-ctx.Done():
			return fmt.Errorf("wait for pull of %s: %w", ref, ctx.Err())
		}
	}
	defer func() {
		c.pullMu.Lock()
		delete(c.pulls, ref)
		c.pullMu.Unlock()
		close(call.done)
	}()
	pctx, cancel := context.WithTimeout(ctx, c.cfg.PullTimeout)
	defer cancel()
	began := time.Now()
	c.log.Info("pulling image", "image", ref)
	c.notify("image-pull", task, "pulling "+ref)
	stopProgress := c.logPullProgress(pctx, cl, ref, began)
	img, err := cl.Pull(pctx, ref, client.WithPullUnpack, client.WithPullSnapshotter(c.cfg.Snapshotter))
	stopProgress()
	if err != nil {
		call.err = fmt.Errorf("image %s is not present on this node and pulling it failed: %w", ref, err)
		c.log.Warn("pull image failed", "image", ref, "err", err, "after", time.Since(began).Round(time.Millisecond))
		c.notify("image-pull-failed", task, call.err.Error())
		return call.err
	}
	size, _ := img.Size(pctx)
	c.log.Info("pulled image", "image", ref, "bytes", size, "took", time.Since(began).Round(time.Millisecond))
	c.notify("image-pulled", task, fmt.Sprintf("pulled %s (%d bytes) in %s", ref, size, time.Since(began).Round(time.Millisecond)))
	return nil
}

func (c *Containerd) notify(kind, task, msg string) {
	if c.cfg.Notify != nil {
		c.cfg.Notify(kind, task, msg)
	}
}

// pullProgressEvery is how often a running pull logs its progress.
const pullProgressEvery = 5 * time.Second

// logPullProgress logs the bytes fetched so far (from containerd's
// in-flight ingests) every pullProgressEvery until the returned func is
// called.
func (c *Containerd) logPullProgress(ctx context.Context, cl *client.Client, ref string, began time.Time) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(pullProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			statuses, err := cl.ContentStore().ListStatuses(ctx)
			if err != nil {
				continue
			}
			var offset, total int64
			for _, st := range statuses {
				offset += st.Offset
				total += st.Total
			}
			c.log.Info("pulling image", "image", ref, "layers_in_flight", len(statuses),
				"bytes", offset, "of", total, "elapsed", time.Since(began).Round(time.Second))
		}
	}()
	return func() { cancel(); <-done }
}

// Stop stops the task's container and removes it with its snapshot and
// network namespace, keeping the log file: SIGTERM to every process in
// it, SIGKILL after StopGrace (at once if ctx ends first). Stopping an
// unknown task is not an error.
func (c *Containerd) Stop(ctx context.Context, id string) error {
	if err := ValidateTaskID(id); err != nil {
		return fmt.Errorf("stop task: %w", err)
	}
	defer c.lock(id)()
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return c.removeNetns(id)
	}
	if err != nil {
		return fmt.Errorf("stop task %s: load container: %w", id, c.unavailable(err))
	}
	// Removal must finish even when the caller's deadline cut the grace
	// period short.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout+10*time.Second)
	defer cancel()
	task, err := ctr.Task(rctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("stop task %s: load task: %w", id, err)
	default:
		if err := c.terminate(ctx, rctx, task); err != nil {
			return fmt.Errorf("stop task %s: %w", id, err)
		}
		if _, err := task.Delete(rctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stop task %s: delete task: %w", id, err)
		}
	}
	if err := ctr.Delete(rctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("stop task %s: delete container: %w", id, err)
	}
	if err := c.removeNetns(id); err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	c.log.Info("stopped container", "task", id)
	return nil
}

// terminate sends SIGTERM to every process of a running task and SIGKILL
// after StopGrace or when graceCtx ends, then waits for the exit.
func (c *Containerd) terminate(graceCtx, ctx context.Context, task client.Task) error {
	st, err := task.Status(ctx)
	if err != nil {
		return fmt.Errorf("task status: %w", err)
	}
	if st.Status == client.Stopped {
		return nil
	}
	exited, err := task.Wait(ctx)
	if err != nil {
		return fmt.Errorf("wait task: %w", err)
	}
	if st.Status == client.Running || st.Status == client.Paused {
		if err := task.Kill(ctx, syscall.SIGTERM, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("send SIGTERM: %w", err)
		}
		grace := time.NewTimer(c.cfg.StopGrace)
		defer grace.Stop()
		select {
		case <-exited:
			return nil
		case <-grace.C:
		case <-graceCtx.Done():
		}
	}
	if err := task.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("send SIGKILL: %w", err)
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for exit after SIGKILL: %w", ctx.Err())
	}
}

func (c *Containerd) removeNetns(id string) error {
	if err := deleteNetns(netnsName(c.cfg.Namespace, id)); err != nil {
		return fmt.Errorf("remove network namespace: %w", err)
	}
	return nil
}

// List reports every container of the namespace that the driver created.
// A container whose task is gone (its shim died, or the machine rebooted)
// or never started is reported exited with code -1.
func (c *Containerd) List(ctx context.Context) ([]TaskStatus, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	ctrs, err := cl.Containers(ctx, `labels."`+labelJob+`"`)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", c.unavailable(err))
	}
	out := make([]TaskStatus, 0, len(ctrs))
	for _, ctr := range ctrs {
		st, err := c.status(ctx, ctr)
		if errdefs.IsNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list tasks: %w", c.unavailable(err))
		}
		out = append(out, st)
	}
	return out, nil
}

// Status reports one task; ErrNotFound if it has no container.
func (c *Containerd) Status(ctx context.Context, id string) (TaskStatus, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("task status %s: %w", id, err)
	}
	ctr, err := cl.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		return TaskStatus{}, fmt.Errorf("task status %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return TaskStatus{}, fmt.Errorf("task status %s: %w", id, c.unavailable(err))
	}
	return c.status(ctx, ctr)
}

func (c *Containerd) status(ctx context.Context, ctr client.Container) (TaskStatus, error) {
	info, err := ctr.Info(ctx, client.WithoutRefreshedMetadata)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("container %s: %w", ctr.ID(), err)
	}
	id := ctr.ID()
	replica, _ := strconv.Atoi(info.Labels[labelReplica])
	started, _ := time.Parse(time.RFC3339Nano, info.Labels[labelStarted])
	st := TaskStatus{
		ID: id, Job: info.Labels[labelJob], Replica: replica, State: StateExited, ExitCode: -1,
		StartedAt: started, NetNS: netnsPath(c.cfg.Namespace, id), SpecHash: info.Labels[labelSpecHash],
		LogPath: c.LogPath(id), Driver: DriverContainerd,
	}
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return st, nil
	}
	if err != nil {
		return TaskStatus{}, fmt.Errorf("task of container %s: %w", id, err)
	}
	ts, err := task.Status(ctx)
	if errdefs.IsNotFound(err) {
		return st, nil
	}
	if err != nil {
		return TaskStatus{}, fmt.Errorf("status of task %s: %w", id, err)
	}
	switch ts.Status {
	case client.Running, client.Paused, client.Pausing:
		st.State = StateRunning
		st.PID = int(task.Pid())
		st.ExitCode = 0
	case client.Stopped:
		st.ExitCode = int(ts.ExitStatus)
		st.FinishedAt = ts.ExitTime
	}
	return st, nil
}

// Stats reads the task's cgroup: CPU time used and memory in use.
func (c *Containerd) Stats(_ context.Context, id string) (cpuUsageNanos uint64, memoryBytes uint64, err error) {
	if err := ValidateTaskID(id); err != nil {
		return 0, 0, err
	}
	return c.cg.stats(c.cfg.Namespace, id)
}

// Close drops the connection to the daemon; containers keep running.
func (c *Containerd) Close() error {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.client == nil {
		return nil
	}
	err := c.client.Close()
	c.client = nil
	return err
}

// CleanupAllContainerd runs CleanupContainerd on every namespace of the
// daemon at address: for a private daemon about to be stopped (its shims
// would outlive it).
func CleanupAllContainerd(ctx context.Context, address string) error {
	cl, err := client.New(address, client.WithTimeout(2*time.Second))
	if err != nil {
		return fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer cl.Close()
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list containerd namespaces: %w", err)
	}
	var errs []error
	for _, ns := range nss {
		errs = append(errs, CleanupContainerd(ctx, address, ns))
	}
	return errors.Join(errs...)
}

// CleanupContainerd removes every container and image of a containerd
// namespace and then the namespace itself: what `shoal cleanup` and test
// teardown use after an agent is gone.
func CleanupContainerd(ctx context.Context, address, namespace string) error {
	if err := ValidateNamespace(namespace); err != nil {
		return fmt.Errorf("clean up containerd: %w", err)
	}
	if address == "" {
		address = DefaultContainerdAddress
	}
	if _, err := os.Stat(address); errors.Is(err, os.ErrNotExist) {
		return nil // no daemon, nothing of ours in it
	}
	cl, err := client.New(address, client.WithTimeout(connectTimeout))
	if err != nil {
		return fmt.Errorf("clean up containerd namespace %s: %w: %v", namespace, ErrUnavailable, err)
	}
	defer cl.Close()
	ctx = namespaces.WithNamespace(ctx, namespace)
	ctrs, err := cl.Containers(ctx)
	if err != nil {
		return fmt.Errorf("clean up containerd namespace %s: list containers: %w", namespace, err)
	}
	var errs []error
	for _, ctr := range ctrs {
		if task, err := ctr.Task(ctx, nil); err == nil {
			_ = task.Kill(ctx, syscall.SIGKILL, client.WithKillAll)
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", ctr.ID(), err))
			}
		}
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete container %s: %w", ctr.ID(), err))
		}
	}
	imgs, err := cl.ImageService().List(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list images: %w", err))
	}
	for i, img := range imgs {
		var opts []images.DeleteOpt
		if i == len(imgs)-1 {
			// Collect garbage now, so the namespace is empty below.
			opts = append(opts, images.SynchronousDelete())
		}
		if err := cl.ImageService().Delete(ctx, img.Name, opts...); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete image %s: %w", img.Name, err))
		}
	}
	if len(errs) == 0 {
		for i := 0; i < 50; i++ {
			err = cl.NamespaceService().Delete(ctx, namespace)
			if err == nil || errdefs.IsNotFound(err) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete namespace: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up containerd namespace %s: %w", namespace, err)
	}
	return nil
}
