package devcluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupMountPoints returns the mount points of every cgroup (v1) and
// cgroup2 file system in a mountinfo table.
func cgroupMountPoints(mountinfo string) []string {
	var points []string
	for _, line := range strings.Split(mountinfo, "\n") {
		// Fields: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 1 {
			continue
		}
		if g[0] == "cgroup" || g[0] == "cgroup2" {
			points = append(points, unescapeMount(f[4]))
		}
	}
	return points
}

// removeCgroupLeftovers removes the empty shoal/<namespace> cgroup
// directories that runc creates for containers in every v1 hierarchy
// (blkio, pids, freezer, ...) and leaves behind; runtime.Cleanup removes
// only those of the hierarchies the agent itself uses.
func removeCgroupLeftovers(namespace string) error {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	var errs []error
	for _, mp := range cgroupMountPoints(string(raw)) {
		dir := filepath.Join(mp, "shoal", namespace)
		var dirs []string
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		// Children before parents: a cgroup with sub-cgroups cannot go.
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			}
		}
		// The shared shoal/ directory goes once no namespace uses it.
		_ = unix.Rmdir(filepath.Join(mp, "shoal"))
	}
	return errors.Join(errs...)
}
