package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
)

// Driver is one way of running tasks. Exec and Containerd implement it.
type Driver interface {
	Start(ctx context.Context, spec TaskSpec) (TaskStatus, error)
	// Stop is idempotent: stopping an unknown task returns nil.
	Stop(ctx context.Context, id string) error
	List(ctx context.Context) ([]TaskStatus, error)
	// Status reports one task, ErrNotFound for one the driver lacks.
	Status(ctx context.Context, id string) (TaskStatus, error)
	Stats(ctx context.Context, id string) (cpuUsageNanos, memoryBytes uint64, err error)
	// ExecIn runs a command inside a running task (health checks).
	ExecIn(ctx context.Context, id string, argv []string) ([]byte, error)
	LogPath(id string) string
	Close() error
}

// Router presents several drivers as one: Start goes to the driver the
// spec names, List merges every driver's tasks, and calls by task ID go
// to the driver that runs the task. Task IDs are unique across drivers
// (the agent names them job-replica).
type Router struct {
	drivers map[string]Driver
	// order fixes the iteration order so List and lookups are stable.
	order []string
	// disabled says why a driver is missing (Disable).
	disabled map[string]string
}

// NewRouter routes to the given drivers by name (DriverExec,
// DriverContainerd). A nil driver (also a nil *Exec or *Containerd) is
// left out: specs naming it fail.
func NewRouter(drivers map[string]Driver) *Router {
	r := &Router{drivers: map[string]Driver{}, disabled: map[string]string{}}
	for _, name := range []string{DriverExec, DriverContainerd} {
		if d := drivers[name]; !isNilDriver(d) {
			r.drivers[name] = d
			r.order = append(r.order, name)
		}
	}
	return r
}

func isNilDriver(d Driver) bool {
	switch d := d.(type) {
	case nil:
		return true
	case *Exec:
		return d == nil
	case *Containerd:
		return d == nil
	}
	return false
}

// Disable records why driver name is not available on this node (e.g. an
// error wrapping ErrCgroupsUnavailable from NewExec), so replicas that
// need it fail with the reason. It must be called before the router is
// used.
func (r *Router) Disable(name, reason string) {
	r.disabled[name] = reason
}

// Disabled returns the drivers that are not available, with the reasons
// given to Disable.
func (r *Router) Disabled() map[string]string {
	return maps.Clone(r.disabled)
}

// Start starts spec on the driver it names; an empty driver means exec.
func (r *Router) Start(ctx context.Context, spec TaskSpec) (TaskStatus, error) {
	name := spec.Driver
	if name == "" {
		name = DriverExec
	}
	d := r.drivers[name]
	if d == nil {
		why := "it is not available on this node"
		if reason := r.disabled[name]; reason != "" {
			why = "it is disabled on this node: " + reason
		}
		return TaskStatus{}, fmt.Errorf("start task %s: %w: driver %q: %s", spec.ID, ErrInvalidSpec, name, why)
	}
	st, err := d.Start(ctx, spec)
	st.Driver = name
	return st, err
}

// Stop stops id on the driver that runs it. A task no driver knows is
// stopped on all of them, which removes whatever is left of it.
func (r *Router) Stop(ctx context.Context, id string) error {
	var errs []error
	for _, name := range r.order {
		_, err := r.drivers[name].Status(ctx, id)
		if err == nil {
			return r.drivers[name].Stop(ctx, id)
		}
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrUnavailable) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stop task %s: find its driver: %w", id, errors.Join(errs...))
	}
	for _, name := range r.order {
		if err := r.drivers[name].Stop(ctx, id); err != nil && !errors.Is(err, ErrUnavailable) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// List merges the tasks of every driver. A driver that cannot be reached
// (containerd down) contributes nothing and its error is returned along
// with the other drivers' tasks, so callers can go on with what is known.
func (r *Router) List(ctx context.Context) ([]TaskStatus, error) {
	var all []TaskStatus
	var errs []error
	for _, name := range r.order {
		tasks, err := r.drivers[name].List(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range tasks {
			tasks[i].Driver = name
		}
		all = append(all, tasks...)
	}
	return all, errors.Join(errs...)
}

// Stats reads id's usage from the driver running it.
func (r *Router) Stats(ctx context.Context, id string) (uint64, uint64, error) {
	var errs []error
	for _, name := range r.order {
		cpu, mem, err := r.drivers[name].Stats(ctx, id)
		if err == nil {
			return cpu, mem, nil
		}
		errs = append(errs, err)
	}
	return 0, 0, errors.Join(errs...)
}

// ExecIn runs argv inside task id, on the driver that runs it.
func (r *Router) ExecIn(ctx context.Context, id string, argv []string) ([]byte, error) {
	var errs []error
	for _, name := range r.order {
		_, err := r.drivers[name].Status(ctx, id)
		if err == nil {
			return r.drivers[name].ExecIn(ctx, id, argv)
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("exec in task %s: find its driver: %w", id, errors.Join(errs...))
}

// LogPath is the log file of id: the first driver's that exists, else the
// exec driver's.
func (r *Router) LogPath(id string) string {
	for _, name := range r.order {
		if p := r.drivers[name].LogPath(id); fileExists(p) {
			return p
		}
	}
	if len(r.order) == 0 {
		return ""
	}
	return r.drivers[r.order[0]].LogPath(id)
}

// Close closes every driver; tasks keep running.
func (r *Router) Close() error {
	var errs []error
	for _, name := range r.order {
		errs = append(errs, r.drivers[name].Close())
	}
	return errors.Join(errs...)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
