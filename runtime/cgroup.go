package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Cgroups are created, limited, joined and read through
// github.com/containerd/cgroups/v3, the library containerd and runc's
// users rely on: cgroup1 where the host mounts v1 controllers (legacy or
// hybrid hosts), cgroup2 on unified hosts, the default of current
// distributions. What stays here is naming (shoal/<ns>/<id> in every
// hierarchy) and killing what is left in a cgroup before removing it.

const (
	// cgroupRoot is the directory under each hierarchy's root that holds
	// every agent's namespace directory: <hierarchy>/shoal/<ns>/<id>.
	cgroupRoot = "shoal"
	// cgroupMount is where cgroups are mounted.
	cgroupMount = "/sys/fs/cgroup"
	// cfsPeriodMicros is the CFS period; the quota is CPUMillis/1000 of it.
	cfsPeriodMicros = 100_000
	// minCFSQuotaMicros is the smallest quota the kernel accepts.
	minCFSQuotaMicros = 1000
)

// ErrCgroupsUnavailable means the host lacks a cgroup controller the
// drivers need to limit tasks (cpu, memory or pids; cpuacct on v1). The
// error names it; an agent should run without the affected driver and say
// why rather than refuse to start.
var ErrCgroupsUnavailable = errors.New("cgroup controllers unavailable")

// taskControllers are the controllers every task is limited and measured
// with: cpu for the quota, cpuacct (v1; part of cpu on v2) for usage,
// memory for the limit and usage, pids for the process limit.
var taskControllers = []cgroup1.Name{cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Memory, cgroup1.Pids}

// cgroupFS finds and edits the drivers' cgroups on either cgroup version.
// It holds no mutable state.
type cgroupFS struct {
	v2 bool
	// mount is the v2 mount point.
	mount string
	// subsystems are the v1 controllers of taskControllers, in that order.
	subsystems []cgroup1.Subsystem
	// hierarchies are the distinct v1 directories behind subsystems
	// (co-mounted controllers, e.g. cpu,cpuacct, share one), or the v2
	// mount.
	hierarchies []string
}

// pather is what cgroup1's subsystems implement to place a cgroup in
// their hierarchy.
type pather interface {
	Path(path string) string
}

// detectCgroups finds the cgroup version and controllers of this host.
func detectCgroups() (*cgroupFS, error) {
	switch mode := cgroups.Mode(); mode {
	case cgroups.Unified:
		return newCgroupFSv2(cgroupMount)
	case cgroups.Legacy, cgroups.Hybrid:
		// A hybrid host's v2 mount holds no controllers: limits are v1's.
		return newCgroupFSv1(cgroupMount)
	default:
		return nil, fmt.Errorf("detect cgroups: %w: no cgroup file system at %s", ErrCgroupsUnavailable, cgroupMount)
	}
}

// newCgroupFSv1 uses the v1 controllers mounted as root/<controller>
// (systemd, Docker and runc link co-mounted ones there too).
func newCgroupFSv1(root string) (*cgroupFS, error) {
	c := &cgroupFS{}
	for _, name := range taskControllers {
		var s cgroup1.Subsystem
		switch name {
		case cgroup1.Cpu:
			s = cgroup1.NewCpu(root)
		case cgroup1.Cpuacct:
			s = cgroup1.NewCpuacct(root)
		case cgroup1.Memory:
			s = cgroup1.NewMemory(root)
		case cgroup1.Pids:
			s = cgroup1.NewPids(root)
		}
		dir, err := filepath.EvalSymlinks(s.(pather).Path("/"))
		if err != nil {
			return nil, fmt.Errorf("detect cgroups: %w: the v1 %s controller is not mounted at %s: tasks cannot be limited without it",
				ErrCgroupsUnavailable, name, filepath.Join(root, string(name)))
		}
		c.subsystems = append(c.subsystems, s)
		if !slices.Contains(c.hierarchies, dir) {
			c.hierarchies = append(c.hierarchies, dir)
		}
	}
	return c, nil
}

// newCgroupFSv2 uses the unified hierarchy at mount, which must offer the
// cpu, memory and pids controllers.
func newCgroupFSv2(mount string) (*cgroupFS, error) {
	raw, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w: %v", ErrCgroupsUnavailable, err)
	}
	have := strings.Fields(string(raw))
	for _, want := range []string{"cpu", "memory", "pids"} {
		if !slices.Contains(have, want) {
			return nil, fmt.Errorf("detect cgroups: %w: the v2 %s controller is not available at %s (it offers %q): tasks cannot be limited without it",
				ErrCgroupsUnavailable, want, mount, strings.Join(have, " "))
		}
	}
	return &cgroupFS{v2: true, mount: mount, hierarchies: []string{mount}}, nil
}

// hierarchy hands cgroup1 exactly the driver's controllers.
func (c *cgroupFS) hierarchy() ([]cgroup1.Subsystem, error) { return c.subsystems, nil }

// taskPath is the task's cgroup relative to each hierarchy's root.
func taskPath(ns, id string) string { return "/" + filepath.Join(cgroupRoot, ns, id) }

// rootDirs are the <hierarchy>/shoal directories.
func (c *cgroupFS) rootDirs() []string {
	dirs := make([]string, len(c.hierarchies))
	for i, h := range c.hierarchies {
		dirs[i] = filepath.Join(h, cgroupRoot)
	}
	return dirs
}

// namespaceDirs are the <hierarchy>/shoal/<ns> directories.
func (c *cgroupFS) namespaceDirs(ns string) []string {
	dirs := c.rootDirs()
	for i := range dirs {
		dirs[i] = filepath.Join(dirs[i], ns)
	}
	return dirs
}

// taskDirs are the <hierarchy>/shoal/<ns>/<id> directories of one task.
func (c *cgroupFS) taskDirs(ns, id string) []string {
	dirs := c.namespaceDirs(ns)
	for i := range dirs {
		dirs[i] = filepath.Join(dirs[i], id)
	}
	return dirs
}

// taskDir is the task's directory in the hierarchy of controller.
func (c *cgroupFS) taskDir(controller cgroup1.Name, ns, id string) string {
	if c.v2 {
		return filepath.Join(c.mount, taskPath(ns, id))
	}
	for _, s := range c.subsystems {
		if s.Name() == controller {
			return s.(pather).Path(taskPath(ns, id))
		}
	}
	return ""
}

// cgroupLimits are the values written for a task, computed by
// limitsFor.
type cgroupLimits struct {
	// CFSQuotaMicros per cfsPeriodMicros; -1 for no limit.
	CFSQuotaMicros int64
	// MemoryBytes is the hard limit; -1 for no limit.
	MemoryBytes int64
	// Pids is pids.max; always set.
	Pids int64
}

// limitsFor converts a spec's resources: CPUMillis/1000 of a CPU per
// 100 ms period (at least the kernel's 1 ms minimum), MemoryMB MiB, Pids
// or DefaultPids.
func limitsFor(spec TaskSpec) cgroupLimits {
	l := cgroupLimits{CFSQuotaMicros: -1, MemoryBytes: -1, Pids: spec.pidsLimit()}
	if spec.CPUMillis > 0 {
		l.CFSQuotaMicros = max(spec.CPUMillis*cfsPeriodMicros/1000, minCFSQuotaMicros)
	}
	if spec.MemoryMB > 0 {
		l.MemoryBytes = spec.MemoryMB << 20
	}
	return l
}

// resources is l in the OCI form both cgroup packages take. "No limit"
// is written out on v1 (-1) and left to the default ("max") on v2.
func (l cgroupLimits) resources(v2 bool) *specs.LinuxResources {
	period := uint64(cfsPeriodMicros)
	r := &specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Period: &period},
		Memory: &specs.LinuxMemory{},
		Pids:   &specs.LinuxPids{Limit: &l.Pids},
	}
	if l.CFSQuotaMicros > 0 || !v2 {
		r.CPU.Quota = &l.CFSQuotaMicros
	}
	if l.MemoryBytes > 0 || !v2 {
		r.Memory.Limit = &l.MemoryBytes
	}
	return r
}

// create makes the task's cgroup and writes the limits. An existing
// cgroup is reused and its limits rewritten.
func (c *cgroupFS) create(ns, id string, l cgroupLimits) error {
	var err error
	// Cleanup of another namespace removes the shared shoal/ directory
	// once it looks unused; a creation racing it is tried again.
	for range 3 {
		if c.v2 {
			_, err = cgroup2.NewManager(c.mount, taskPath(ns, id), cgroup2.ToResources(l.resources(true)))
		} else {
			_, err = cgroup1.New(cgroup1.StaticPath(taskPath(ns, id)), l.resources(false), cgroup1.WithHierarchy(c.hierarchy))
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("create cgroup %s: %w", taskPath(ns, id), err)
	}
	return nil
}

// enter arranges, on the calling goroutine's locked OS thread, for the
// next process forked from that thread to be born inside the task's
// cgroup, so it cannot fork children that escape before it is moved. On
// v1 the thread itself joins the task's cgroups (the child inherits them);
// on v2, where threads of a process cannot be split, attr gets a cgroup fd
// for clone3(CLONE_INTO_CGROUP). leave undoes it on the same thread and
// must be called after the fork.
func (c *cgroupFS) enter(ns, id string, attr *syscall.SysProcAttr) (leave func() error, err error) {
	if c.v2 {
		dir := filepath.Join(c.mount, taskPath(ns, id))
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup %s: %w", dir, err)
		}
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		return func() error { return unix.Close(fd) }, nil
	}
	tid := unix.Gettid()
	// Where the thread is now, read before it moves.
	backPath, err := c.threadCgroupPath()
	if err != nil {
		return nil, fmt.Errorf("find the cgroups of thread %d: %w", tid, err)
	}
	back, err := cgroup1.Load(backPath, cgroup1.WithHierarchy(c.hierarchy))
	if err != nil {
		return nil, fmt.Errorf("find the cgroups of thread %d: %w", tid, err)
	}
	task, err := cgroup1.Load(cgroup1.StaticPath(taskPath(ns, id)), cgroup1.WithHierarchy(c.hierarchy))
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", taskPath(ns, id), err)
	}
	leave = func() error {
		if err := back.AddTask(cgroup1.Process{Pid: tid}); err != nil {
			return fmt.Errorf("move thread %d back to its cgroups: %w", tid, err)
		}
		return nil
	}
	if err := task.AddTask(cgroup1.Process{Pid: tid}); err != nil {
		return nil, errors.Join(fmt.Errorf("move thread %d into cgroup %s: %w", tid, taskPath(ns, id), err), leave())
	}
	return leave, nil
}

// threadCgroupPath is a cgroup1.Path to the cgroups the calling thread is
// in, for the driver's controllers. (cgroup1.PidPath resolves every
// hierarchy /proc lists, and fails on a host that lists one it does not
// mount.)
func (c *cgroupFS) threadCgroupPath() (cgroup1.Path, error) {
	procCgroup, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, err
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	mounts, err := parseMountinfo(mountinfo)
	if err != nil {
		return nil, err
	}
	names := make([]cgroup1.Name, len(c.subsystems))
	for i, s := range c.subsystems {
		names[i] = s.Name()
	}
	paths, err := threadCgroupPaths(procCgroup, mounts, names)
	if err != nil {
		return nil, err
	}
	return func(n cgroup1.Name) (string, error) {
		if p, ok := paths[n]; ok {
			return p, nil
		}
		return "", cgroup1.ErrControllerNotActive
	}, nil
}

// threadCgroupPaths maps each v1 controller of names to the thread's
// cgroup in it, relative to the controller's mount: /proc shows paths from
// the hierarchy's root, and a container may have only a sub-tree mounted
// (mountinfo's root field).
func threadCgroupPaths(procCgroup []byte, mounts []mountinfoEntry, names []cgroup1.Name) (map[cgroup1.Name]string, error) {
	inProc := map[string]string{}
	for line := range strings.Lines(string(procCgroup)) {
		// hierarchy-id:controller,list:/path
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, ctl := range strings.Split(parts[1], ",") {
			inProc[ctl] = parts[2]
		}
	}
	out := map[cgroup1.Name]string{}
	for _, n := range names {
		p, ok := inProc[string(n)]
		if !ok {
			return nil, fmt.Errorf("no %s entry in /proc cgroup file", n)
		}
		i := slices.IndexFunc(mounts, func(m mountinfoEntry) bool {
			return m.FSType == "cgroup" && slices.Contains(m.SuperOptions, string(n))
		})
		if i < 0 {
			return nil, fmt.Errorf("the %s controller is not mounted", n)
		}
		if root := mounts[i].Root; root != "/" {
			if p != root && !strings.HasPrefix(p, root+"/") {
				return nil, fmt.Errorf("%s cgroup %s is outside the mounted sub-tree %s", n, p, root)
			}
			p = "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		}
		out[n] = p
	}
	return out, nil
}

// stats reads CPU time used (ns) and memory in use (bytes).
func (c *cgroupFS) stats(ns, id string) (cpuNanos, memBytes uint64, err error) {
	if c.v2 {
		m, err := cgroup2.Load(taskPath(ns, id), cgroup2.WithMountpoint(c.mount))
		if err != nil {
			return 0, 0, fmt.Errorf("read cgroup %s: %w", taskPath(ns, id), err)
		}
		st, err := m.StatFiltered(cgroup2.StatCPU | cgroup2.StatMemory)
		if err != nil {
			return 0, 0, fmt.Errorf("read cgroup %s: %w", taskPath(ns, id), err)
		}
		if st.CPU == nil || st.Memory == nil {
			return 0, 0, fmt.Errorf("read cgroup %s: no cpu or memory statistics", taskPath(ns, id))
		}
		return st.CPU.UsageUsec * 1000, st.Memory.Usage, nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(taskPath(ns, id)), cgroup1.WithHierarchy(c.hierarchy))
	if err != nil {
		return 0, 0, fmt.Errorf("read cgroup %s: %w", taskPath(ns, id), err)
	}
	st, err := cg.Stat(cgroup1.IgnoreNotExist)
	if err != nil {
		return 0, 0, fmt.Errorf("read cgroup %s: %w", taskPath(ns, id), err)
	}
	if st.CPU == nil || st.CPU.Usage == nil || st.Memory == nil || st.Memory.Usage == nil {
		return 0, 0, fmt.Errorf("read cgroup %s: no cpu or memory statistics", taskPath(ns, id))
	}
	return st.CPU.Usage.Total, st.Memory.Usage.Usage, nil
}

// cgroupProcs lists the pids in any of dirs (missing dirs are empty).
func cgroupProcs(dirs []string) ([]int, error) {
	var pids []int
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list cgroup processes: %w", err)
		}
		for _, f := range strings.Fields(string(raw)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("parse %s: %w", filepath.Join(d, "cgroup.procs"), err)
			}
			if !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// signalCgroup sends sig to every process in dirs and reports how many
// it found.
func signalCgroup(dirs []string, sig syscall.Signal) (int, error) {
	pids, err := cgroupProcs(dirs)
	for _, pid := range pids {
		_ = unix.Kill(pid, sig) // ESRCH: exited meanwhile
	}
	return len(pids), err
}

// removeCgroupDirs kills whatever is left in the task's cgroup directories
// and removes them. A missing directory is not an error. Killing is
// repeated until the cgroup is empty: a fork bomb forks while it is being
// killed, though never past its pids limit.
func removeCgroupDirs(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := signalCgroup(dirs, unix.SIGKILL)
		if err != nil {
			return err
		}
		var busy []string
		var errs []error
		for _, d := range dirs {
			err := unix.Rmdir(d)
			switch {
			case err == nil, errors.Is(err, unix.ENOENT):
			case errors.Is(err, unix.EBUSY):
				busy = append(busy, d)
			default:
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: still busy after %s (%d processes left)", strings.Join(busy, ", "), timeout, n)
		}
		dirs = busy
		time.Sleep(20 * time.Millisecond)
	}
}
