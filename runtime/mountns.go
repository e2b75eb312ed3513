package runtime

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// isolateMounts moves the calling thread into a new mount namespace made
// for one exec task. The thread must have its own filesystem context
// (unshare CLONE_FS) and be locked to its goroutine; a process it forks
// starts in the new namespace.
//
//   - Every mount becomes a slave: mounts and unmounts on the host still
//     reach the task's copy (a network namespace deleted on the host is not
//     pinned by it), and nothing done inside reaches the host.
//   - /proc is a fresh procfs with hidepid=invisible: the task's user sees
//     its own processes only, not other tasks' or the agent's (command
//     lines, environments, open files). Kernels before 5.8 share one procfs
//     per pid namespace, so the option would change the host's /proc too;
//     they reject "invisible", and the task then keeps the host's /proc
//     (procShared is set): other processes are listed, but their
//     environments stay unreadable to a task with a user of its own.
//   - Bind mounts of network namespaces and containers' root file systems
//     are detached from the copy, so the task does not keep them alive.
//
// detachErr reports mounts that could not be detached; the task can run
// anyway.
func isolateMounts() (procShared bool, detachErr error, err error) {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return false, nil, fmt.Errorf("create mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return false, nil, fmt.Errorf("make mounts slaves: %w", err)
	}
	err = unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "hidepid=invisible")
	switch {
	case errors.Is(err, unix.EINVAL):
		procShared = true
	case err != nil:
		return false, nil, fmt.Errorf("mount a private /proc: %w", err)
	}
	return procShared, detachForeignMounts(), nil
}

// detachForeignMounts detaches, in the calling thread's mount namespace,
// the mounts that belong to other tasks: network namespace handles and
// container root file systems (overlays other than /).
func detachForeignMounts() error {
	raw, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	mounts, err := parseMountinfo(raw)
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if m.FSType == "nsfs" || m.FSType == "overlay" && m.MountPoint != "/" {
			points = append(points, m.MountPoint)
		}
	}
	// Deepest first: a container's mounts sit on its root file system.
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range points { // twice for a path with two mounts stacked

		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("detach %s: %w", p, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("detach other tasks' mounts: %w", errors.Join(errs...))
	}
	return nil
}
