package node

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/runtime"
)

// taskFiles are the host files behind replicas' mounts: secrets and
// configs under the run directory, volumes under the data directory.
// Only the reconcile loop uses it.
type taskFiles struct {
	// runDir holds secrets and configs per task (tmpfs on most hosts).
	runDir string
	// dataDir holds volumes: persistent per job, ephemeral per task.
	dataDir string
	// open returns the data of a stored secret or config.
	open func(kind, name string) (map[string]string, error)
	log  *slog.Logger
}

// materialize writes a replica's secret or config as read-only files and
// returns the directory to mount. The directory is updated in place, never
// replaced: a running container has it bind-mounted, and a new directory
// would leave the container looking at a deleted one.
func (f *taskFiles) materialize(task, kind string, m api.DataMount) (string, error) {
	data, err := f.open(kind, m.Name)
	if err != nil {
		return "", err
	}
	// Keys become file names: whatever a peer wrote is checked again here.
	if ferr := api.ValidateData(m.Name, api.Data{Data: data}); ferr != nil {
		return "", fmt.Errorf("%s %s: %v", kind, m.Name, ferr)
	}
	dir := filepath.Join(f.runDir, task, kind, m.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("prepare %s %s: %w", kind, m.Name, err)
	}
	// The task's user (whatever the image says) must read them; only
	// root reaches them on the host (the run directory is root's, 0700).
	if err := os.Chmod(runtime.RunDir, 0o700); err != nil {
		return "", fmt.Errorf("prepare %s %s: %w", kind, m.Name, err)
	}
	for k, v := range data {
		// Written aside and renamed, so a reader sees the old or the new
		// value, never a part.
		tmp := filepath.Join(dir, "."+k+".tmp")
		if err := os.WriteFile(tmp, []byte(v), 0o444); err != nil {
			return "", fmt.Errorf("write %s %s: %w", kind, m.Name, err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, k)); err != nil {
			return "", fmt.Errorf("write %s %s: %w", kind, m.Name, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("prepare %s %s: %w", kind, m.Name, err)
	}
	for _, e := range entries {
		if _, keep := data[e.Name()]; !keep {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return "", fmt.Errorf("prepare %s %s: %w", kind, m.Name, err)
			}
		}
	}
	return dir, nil
}

// sweepData removes the secret and config files of tasks not in keep.
func (f *taskFiles) sweepData(keep map[string]bool) {
	f.sweep(f.runDir, keep, "remove replica secrets")
}

// volumeDir creates the host directory behind one of the job's volumes:
// persistent volumes live per job under the data dir and survive the
// replica; ephemeral ones live per task and go when it stops for good.
func (f *taskFiles) volumeDir(job api.Job, task, name string) (string, error) {
	// Both become path elements: whatever a record says, they must be
	// names (the API refuses others; a record stored before that check,
	// or a bug, must not reach outside the volumes directory).
	if err := api.ValidateID(job.ID); err != nil {
		return "", fmt.Errorf("volume of job %q: %w", job.ID, err)
	}
	if err := api.ValidateID(name); err != nil {
		return "", fmt.Errorf("volume %q: %w", name, err)
	}
	var dir string
	for _, v := range job.Volumes {
		if v.Name != name {
			continue
		}
		if v.Type == api.VolumePersistent {
			dir = filepath.Join(f.dataDir, "volumes", "persistent", job.ID, name)
		} else {
			dir = filepath.Join(f.ephemeralRoot(), task, name)
		}
	}
	if dir == "" {
		return "", fmt.Errorf("mount of unknown volume %q", name)
	}
	// World-writable like /tmp: the image decides the user the task runs
	// as, and the directory is reachable only through the task's mounts
	// and the root-only data dir.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		return "", fmt.Errorf("create volume %s: %w", name, err)
	}
	return dir, nil
}

func (f *taskFiles) ephemeralRoot() string {
	return filepath.Join(f.dataDir, "volumes", "ephemeral")
}

// sweepEphemeral removes the ephemeral volumes of tasks not in keep.
func (f *taskFiles) sweepEphemeral(keep map[string]bool) {
	f.sweep(f.ephemeralRoot(), keep, "remove ephemeral volumes")
}

func (f *taskFiles) sweep(root string, keep map[string]bool, what string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			f.log.Warn(what, "task", e.Name(), "err", err)
		}
	}
}
