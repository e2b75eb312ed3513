package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Stop stops a task and removes all it had but its log file: SIGTERM to
// its process group and to every process in its cgroup, SIGKILL to them
// after StopGrace (at once if ctx ends first), then its network
// namespace, cgroup, working directory and status file. It is idempotent:
// stopping an unknown or exited task removes whatever is left of it and
// returns nil.
func (e *Exec) Stop(ctx context.Context, id string) error {
	if err := ValidateTaskID(id); err != nil {
		return fmt.Errorf("stop task: %w", err)
	}
	end, err := e.begin(ctx, id)
	if err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	defer end()
	e.mu.Lock()
	t := e.tasks[id]
	var uid uint32
	if t != nil {
		uid = t.rec.UID
	}
	e.mu.Unlock()
	if err := e.terminate(ctx, t, id); err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	if err := e.removeResources(id); err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	owner := claimOwner(e.cfg.Namespace, id)
	if uid == 0 {
		// Unknown or unreadable record: whatever uid the task had.
		claims, err := uidClaimsOf(e.cfg.Namespace)
		if err != nil {
			return fmt.Errorf("stop task %s: %w", id, err)
		}
		uid = claims[id]
	}
	if uid != 0 {
		// Only now: the task's processes are gone, so no other task can
		// get its uid while they run.
		if err := releaseUID(uid, owner); err != nil {
			return fmt.Errorf("stop task %s: %w", id, err)
		}
	}
	if err := e.removeRecord(id); err != nil {
		return fmt.Errorf("stop task %s: %w", id, err)
	}
	e.mu.Lock()
	delete(e.tasks, id)
	e.mu.Unlock()
	if t != nil {
		e.log.Info("stopped task", "task", id)
	}
	return nil
}

// terminate ends the task's processes, t's and any other in its cgroup
// (t is nil for a task the driver does not track), gracefully first.
func (e *Exec) terminate(ctx context.Context, t *task, id string) error {
	dirs := e.cg.taskDirs(e.cfg.Namespace, id)
	exited := closedChan()
	var pid int
	var ticks uint64
	if t != nil {
		e.mu.Lock()
		pid, ticks = t.rec.PID, t.rec.StartTicks
		e.mu.Unlock()
		exited = t.exited
	}
	gone := func() bool {
		select {
		case <-exited:
		default:
			return false
		}
		pids, err := cgroupProcs(dirs)
		return err == nil && len(pids) == 0
	}
	signal := func(sig unix.Signal) {
		select {
		case <-exited:
		default:
			// While the leader is alive its pid is its group's id; after
			// that the group is reached through the cgroup.
			if processAlive(pid, ticks) {
				_ = unix.Kill(-pid, sig)
			}
		}
		_, _ = signalCgroup(dirs, sig)
	}
	if gone() {
		return nil
	}
	signal(unix.SIGTERM)
	if waitFor(ctx, e.cfg.StopGrace, gone) {
		return nil
	}
	e.log.Info("task still running after SIGTERM; killing it", "task", id, "grace", e.cfg.StopGrace)
	signal(unix.SIGKILL)
	// Not bounded by ctx: a killed task dies at once, and giving up here
	// would leave the cgroup behind.
	if waitFor(context.Background(), killTimeout, gone) {
		return nil
	}
	return fmt.Errorf("processes still running %s after SIGKILL", killTimeout)
}

// waitFor polls cond until it holds (true), d passes or ctx ends (false).
func waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// removeResources removes the task's network namespace, cgroup (killing
// what is left in it) and working directory, whichever exist.
func (e *Exec) removeResources(id string) error {
	ns := e.cfg.Namespace
	// The netns before the cgroup: see launch.
	if err := e.cg.deleteTaskNetns(ns, id, e.log); err != nil {
		return err
	}
	var errs []error
	if err := removeCgroupDirs(e.cg.taskDirs(ns, id), killTimeout); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(e.workDir(id)); err != nil {
		errs = append(errs, fmt.Errorf("remove working dir: %w", err))
	}
	return errors.Join(errs...)
}

// deleteTaskNetns deletes the task's network namespace unless another
// namespace's task claims the same name. Both namespaces and task IDs may
// contain '-', so shoal-a-b-c is task b-c of namespace a or task c of
// namespace a-b; the owner is the one with a cgroup for it, because a
// task's netns never outlives its cgroup.
func (c *cgroupFS) deleteTaskNetns(ns, id string, log *slog.Logger) error {
	name := netnsName(ns, id)
	if other, otherID, ok := c.netnsClaimant(ns, id); ok {
		if _, err := os.Stat(filepath.Join(netnsDir, name)); err == nil {
			log.Warn("leaving a network namespace whose name another namespace's task claims",
				"netns", name, "namespace", other, "task", otherID)
		}
		return nil
	}
	return deleteNetns(name)
}

// netnsClaimant reports another namespace whose task has the netns name
// of (ns, id), by its cgroup directory.
func (c *cgroupFS) netnsClaimant(ns, id string) (otherNS, otherID string, ok bool) {
	name := netnsName(ns, id)
	for _, root := range c.rootDirs() {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, ent := range entries {
			other := ent.Name()
			if other == ns || !ent.IsDir() {
				continue
			}
			rest, found := strings.CutPrefix(name, netnsName(other, ""))
			if !found || rest == "" {
				continue
			}
			if _, err := os.Stat(filepath.Join(root, other, rest)); err == nil {
				return other, rest, true
			}
		}
	}
	return "", "", false
}

// Cleanup removes every network namespace and cgroup of namespace, killing
// the processes in them, whether or not a driver is open on it. It is for
// `shoal agent --cleanup` and for tests. The driver's state directory is
// left alone: a driver opened on it later reports its tasks as exited,
// and Stop removes what is left of them.
func Cleanup(namespace string) error {
	if err := ValidateNamespace(namespace); err != nil {
		return fmt.Errorf("clean up: %w", err)
	}
	cg, err := detectCgroups()
	if err != nil {
		return fmt.Errorf("clean up namespace %s: %w", namespace, err)
	}
	// Network namespaces are listed before the cgroups are looked at: a
	// netns listed here that belongs to another namespace has its cgroup
	// in place when netnsClaimant looks (see deleteTaskNetns).
	prefix := netnsName(namespace, "")
	names, err := listNetns(prefix)
	if err != nil {
		return fmt.Errorf("clean up namespace %s: %w", namespace, err)
	}
	var errs []error
	log := slog.New(slog.DiscardHandler)
	for _, name := range names {
		if err := cg.deleteTaskNetns(namespace, strings.TrimPrefix(name, prefix), log); err != nil {
			errs = append(errs, err)
		}
	}
	ids := map[string]bool{}
	for _, d := range cg.namespaceDirs(namespace) {
		entries, err := os.ReadDir(d)
		if err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("list cgroups: %w", err))
		}
		for _, ent := range entries {
			if ent.IsDir() {
				ids[ent.Name()] = true
			}
		}
	}
	for id := range ids {
		if err := removeCgroupDirs(cg.taskDirs(namespace, id), killTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range cg.namespaceDirs(namespace) {
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	// The uids of its exec tasks, which are gone now.
	if err := releaseClaimsOf(namespace, nil); err != nil {
		errs = append(errs, err)
	}
	// Files the agent wrote for its replicas (secrets, configs).
	if err := os.RemoveAll(filepath.Join(RunDir, namespace)); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", filepath.Join(RunDir, namespace), err))
	}
	// runc makes shoal/<ns> in every hierarchy for a container (blkio,
	// pids, freezer, ...), not only in those the exec driver uses.
	errs = append(errs, removeNamespaceCgroupsEverywhere(namespace))
	// The shared shoal/ directories go once no namespace uses them.
	for _, d := range cg.rootDirs() {
		_ = unix.Rmdir(d)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up namespace %s: %w", namespace, err)
	}
	return nil
}

// RunDir holds, per namespace, files an agent writes for its replicas
// (secrets and configs), on tmpfs on most hosts.
const RunDir = "/run/shoal"

// removeNamespaceCgroupsEverywhere removes the shoal/<namespace> tree,
// deepest first, from every mounted cgroup hierarchy, and shoal/ itself
// where it is left empty. The tasks are gone by now, so the directories
// are empty of processes.
func removeNamespaceCgroupsEverywhere(namespace string) error {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	mounts, err := parseMountinfo(raw)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if m.FSType != "cgroup" && m.FSType != "cgroup2" {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(m.MountPoint, cgroupRoot, namespace), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- { // WalkDir lists parents first
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
		_ = unix.Rmdir(filepath.Join(m.MountPoint, cgroupRoot))
	}
	return errors.Join(errs...)
}
