package runtime

import (
	"bufio"
	"bytes"
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

	"golang.org/x/sys/unix"
)

const (
	// cgroupRoot is the directory under each hierarchy's root that holds
	// every agent's namespace directory: <hierarchy>/shoal/<ns>/<id>.
	cgroupRoot = "shoal"
	// cgroupMount is where cgroups are mounted; with a cgroup.controllers
	// file in it the host runs the unified (v2) hierarchy.
	cgroupMount = "/sys/fs/cgroup"
	// cfsPeriodMicros is the CFS period; the quota is CPUMillis/1000 of it.
	cfsPeriodMicros = 100_000
	// minCFSQuotaMicros is the smallest quota the kernel accepts.
	minCFSQuotaMicros = 1000
)

// v1Controllers are the cgroup v1 controllers the exec driver uses: cpu for
// the quota, cpuacct for usage, memory for the limit and usage.
var v1Controllers = []string{"cpu", "cpuacct", "memory"}

// cgroupHierarchy is one mounted hierarchy the driver uses.
type cgroupHierarchy struct {
	// Dir is the mount point.
	Dir string
	// Root is the mount's root inside the hierarchy (mountinfo field 4),
	// "/" unless a sub-tree is bind-mounted, as in some containers.
	Root string
	// Controllers are the v1 controllers mounted here that the driver
	// uses; empty for the v2 hierarchy.
	Controllers []string
}

// cgroupFS finds and edits the driver's cgroups on either cgroup version.
// It holds no mutable state.
type cgroupFS struct {
	v2 bool
	// hierarchies: for v1 one per distinct mount of cpu, cpuacct and
	// memory (co-mounted controllers share one); for v2 the single
	// unified mount.
	hierarchies []cgroupHierarchy
}

// mountinfoEntry is one line of /proc/self/mountinfo.
type mountinfoEntry struct {
	Root, MountPoint, FSType string
	SuperOptions             []string
}

// parseMountinfo parses /proc/<pid>/mountinfo.
func parseMountinfo(data []byte) ([]mountinfoEntry, error) {
	var out []mountinfoEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 3 {
			return nil, fmt.Errorf("parse mountinfo: malformed line %q", line)
		}
		out = append(out, mountinfoEntry{
			Root:         unescapeMountPath(f[3]),
			MountPoint:   unescapeMountPath(f[4]),
			FSType:       g[0],
			SuperOptions: strings.Split(g[2], ","),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse mountinfo: %w", err)
	}
	return out, nil
}

// UnmountUnder detaches every mount below dir, deepest first, so that
// removing dir (a private containerd's root, say) neither fails on nor
// descends into a container's rootfs.
func UnmountUnder(dir string) error {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	mounts, err := parseMountinfo(raw)
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, dir+"/") {
			points = append(points, m.MountPoint)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountPath undoes the octal escapes (\040 for a space, ...) the
// kernel writes in mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// newCgroupFS picks the hierarchies to use from the mount table. unified
// says whether the host runs cgroup v2 only (cgroup.controllers exists at
// /sys/fs/cgroup); a hybrid host with an empty v2 mount beside the v1
// controllers is treated as v1.
func newCgroupFS(mounts []mountinfoEntry, unified bool) (*cgroupFS, error) {
	if unified {
		for _, m := range mounts {
			if m.FSType == "cgroup2" && m.MountPoint == cgroupMount {
				return &cgroupFS{v2: true, hierarchies: []cgroupHierarchy{{Dir: m.MountPoint, Root: m.Root}}}, nil
			}
		}
		return nil, fmt.Errorf("find cgroup v2 mount: no cgroup2 file system mounted at %s", cgroupMount)
	}
	cg := &cgroupFS{}
	for _, want := range v1Controllers {
		found := false
		for _, m := range mounts {
			if m.FSType != "cgroup" || !slices.Contains(m.SuperOptions, want) {
				continue
			}
			found = true
			i := slices.IndexFunc(cg.hierarchies, func(h cgroupHierarchy) bool { return h.Dir == m.MountPoint })
			if i < 0 {
				cg.hierarchies = append(cg.hierarchies, cgroupHierarchy{Dir: m.MountPoint, Root: m.Root})
				i = len(cg.hierarchies) - 1
			}
			if !slices.Contains(cg.hierarchies[i].Controllers, want) {
				cg.hierarchies[i].Controllers = append(cg.hierarchies[i].Controllers, want)
			}
			break // the first mount of a controller is enough
		}
		if !found {
			return nil, fmt.Errorf("find cgroup v1 mounts: controller %q is not mounted", want)
		}
	}
	return cg, nil
}

// detectCgroups reads the mount table of this process.
func detectCgroups() (*cgroupFS, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w", err)
	}
	mounts, err := parseMountinfo(data)
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w", err)
	}
	_, err = os.Stat(filepath.Join(cgroupMount, "cgroup.controllers"))
	unified := err == nil
	cg, err := newCgroupFS(mounts, unified)
	if err != nil {
		return nil, fmt.Errorf("detect cgroups: %w", err)
	}
	return cg, nil
}

// hierarchyFor returns the hierarchy holding controller (v1), or the
// unified one (v2).
func (c *cgroupFS) hierarchyFor(controller string) cgroupHierarchy {
	if c.v2 {
		return c.hierarchies[0]
	}
	for _, h := range c.hierarchies {
		if slices.Contains(h.Controllers, controller) {
			return h
		}
	}
	panic("runtime: cgroup controller " + controller + " not tracked") // newCgroupFS guarantees all three
}

// rootDirs are the <hierarchy>/shoal directories.
func (c *cgroupFS) rootDirs() []string {
	dirs := make([]string, len(c.hierarchies))
	for i, h := range c.hierarchies {
		dirs[i] = filepath.Join(h.Dir, cgroupRoot)
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
func (c *cgroupFS) taskDir(controller, ns, id string) string {
	return filepath.Join(c.hierarchyFor(controller).Dir, cgroupRoot, ns, id)
}

// cgroupLimits are the values written for a task, computed by
// limitsFor.
type cgroupLimits struct {
	// CFSQuotaMicros per cfsPeriodMicros; -1 for no limit.
	CFSQuotaMicros int64
	// MemoryBytes is the hard limit; -1 for no limit.
	MemoryBytes int64
}

// limitsFor converts a spec's resources: CPUMillis/1000 of a CPU per
// 100 ms period (at least the kernel's 1 ms minimum), MemoryMB MiB.
func limitsFor(spec TaskSpec) cgroupLimits {
	l := cgroupLimits{CFSQuotaMicros: -1, MemoryBytes: -1}
	if spec.CPUMillis > 0 {
		l.CFSQuotaMicros = max(spec.CPUMillis*cfsPeriodMicros/1000, minCFSQuotaMicros)
	}
	if spec.MemoryMB > 0 {
		l.MemoryBytes = spec.MemoryMB << 20
	}
	return l
}

// create makes the task's cgroup directories and writes the limits. An
// existing directory is reused and its limits rewritten.
func (c *cgroupFS) create(ns, id string, l cgroupLimits) error {
	if c.v2 {
		return c.createV2(ns, id, l)
	}
	for _, d := range c.taskDirs(ns, id) {
		if err := mkdirCgroup(d); err != nil {
			return err
		}
	}
	cpu := c.taskDir("cpu", ns, id)
	if err := writeCgroupFile(filepath.Join(cpu, "cpu.cfs_period_us"), strconv.Itoa(cfsPeriodMicros)); err != nil {
		return err
	}
	if err := writeCgroupFile(filepath.Join(cpu, "cpu.cfs_quota_us"), strconv.FormatInt(l.CFSQuotaMicros, 10)); err != nil {
		return err
	}
	mem := c.taskDir("memory", ns, id)
	return writeCgroupFile(filepath.Join(mem, "memory.limit_in_bytes"), strconv.FormatInt(l.MemoryBytes, 10))
}

func (c *cgroupFS) createV2(ns, id string, l cgroupLimits) error {
	root := c.hierarchies[0].Dir
	dir := c.taskDirs(ns, id)[0]
	if err := mkdirCgroup(dir); err != nil {
		return err
	}
	// Delegate cpu and memory down to the task's directory.
	for _, d := range []string{root, filepath.Join(root, cgroupRoot), filepath.Join(root, cgroupRoot, ns)} {
		if err := enableControllers(d, "cpu", "memory"); err != nil {
			return err
		}
	}
	cpuMax := "max " + strconv.Itoa(cfsPeriodMicros)
	if l.CFSQuotaMicros > 0 {
		cpuMax = strconv.FormatInt(l.CFSQuotaMicros, 10) + " " + strconv.Itoa(cfsPeriodMicros)
	}
	if err := writeCgroupFile(filepath.Join(dir, "cpu.max"), cpuMax); err != nil {
		return err
	}
	memMax := "max"
	if l.MemoryBytes > 0 {
		memMax = strconv.FormatInt(l.MemoryBytes, 10)
	}
	return writeCgroupFile(filepath.Join(dir, "memory.max"), memMax)
}

// mkdirCgroup creates a cgroup directory and its parents. It retries when
// a parent vanishes midway: Cleanup of another namespace removes the
// shared shoal/ directory once it looks unused.
func mkdirCgroup(dir string) error {
	var err error
	for range 3 {
		if err = os.MkdirAll(dir, 0o755); !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	return nil
}

// enableControllers turns controllers on in dir's cgroup.subtree_control
// unless they already are.
func enableControllers(dir string, controllers ...string) error {
	path := filepath.Join(dir, "cgroup.subtree_control")
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("enable cgroup controllers: %w", err)
	}
	var add []string
	for _, ctl := range controllers {
		if !slices.Contains(strings.Fields(string(cur)), ctl) {
			add = append(add, "+"+ctl)
		}
	}
	if len(add) == 0 {
		return nil
	}
	return writeCgroupFile(path, strings.Join(add, " "))
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
		fd, err := unix.Open(c.taskDirs(ns, id)[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open cgroup %s: %w", c.taskDirs(ns, id)[0], err)
		}
		attr.UseCgroupFD, attr.CgroupFD = true, fd
		return func() error { return unix.Close(fd) }, nil
	}
	orig, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read cgroups of this thread: %w", err)
	}
	tid := strconv.Itoa(unix.Gettid())
	var joined []string
	leave = func() error {
		var errs []error
		for _, dir := range joined {
			h := c.hierarchyOf(dir)
			back, err := threadCgroupDir(orig, h)
			if err == nil {
				err = writeCgroupFile(filepath.Join(back, "tasks"), tid)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("move thread %s back to its cgroup: %w", tid, err))
			}
		}
		return errors.Join(errs...)
	}
	for _, dir := range c.taskDirs(ns, id) {
		if err := writeCgroupFile(filepath.Join(dir, "tasks"), tid); err != nil {
			return nil, errors.Join(err, leave())
		}
		joined = append(joined, dir)
	}
	return leave, nil
}

// hierarchyOf returns the hierarchy containing dir.
func (c *cgroupFS) hierarchyOf(dir string) cgroupHierarchy {
	for _, h := range c.hierarchies {
		if strings.HasPrefix(dir, h.Dir+"/") {
			return h
		}
	}
	return cgroupHierarchy{}
}

// threadCgroupDir finds, in the content of /proc/<pid>/cgroup, the
// directory of hierarchy h that the process was in.
func threadCgroupDir(procCgroup []byte, h cgroupHierarchy) (string, error) {
	for line := range strings.Lines(string(procCgroup)) {
		// hierarchy-id:controller,list:/path
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 || len(h.Controllers) == 0 || !slices.Contains(strings.Split(parts[1], ","), h.Controllers[0]) {
			continue
		}
		rel := parts[2]
		if h.Root != "/" {
			if rel != h.Root && !strings.HasPrefix(rel, h.Root+"/") {
				return "", fmt.Errorf("cgroup %s is outside the mount of %s (root %s)", rel, h.Dir, h.Root)
			}
			rel = strings.TrimPrefix(rel, h.Root)
		}
		return filepath.Join(h.Dir, rel), nil
	}
	return "", fmt.Errorf("no %v entry in /proc cgroup file", h.Controllers)
}

// stats reads CPU time used (ns) and memory in use (bytes).
func (c *cgroupFS) stats(ns, id string) (cpuNanos, memBytes uint64, err error) {
	if c.v2 {
		dir := c.taskDirs(ns, id)[0]
		raw, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
		if err != nil {
			return 0, 0, fmt.Errorf("read cgroup cpu usage: %w", err)
		}
		usec, err := parseFlatKeyed(raw, "usage_usec")
		if err != nil {
			return 0, 0, fmt.Errorf("read cgroup cpu usage: %w", err)
		}
		mem, err := readUint(filepath.Join(dir, "memory.current"))
		return usec * 1000, mem, err
	}
	cpu, err := readUint(filepath.Join(c.taskDir("cpuacct", ns, id), "cpuacct.usage"))
	if err != nil {
		return 0, 0, err
	}
	mem, err := readUint(filepath.Join(c.taskDir("memory", ns, id), "memory.usage_in_bytes"))
	return cpu, mem, err
}

// parseFlatKeyed finds key in a cgroup "key value" per line file.
func parseFlatKeyed(data []byte, key string) (uint64, error) {
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && k == key {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %q in cgroup file", key)
}

func readUint(path string) (uint64, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read cgroup file: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse cgroup file %s: %w", path, err)
	}
	return v, nil
}

// writeCgroupFile writes one value to an existing cgroup control file.
func writeCgroupFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write cgroup file: %w", err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
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
// and removes them. A missing directory is not an error.
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
