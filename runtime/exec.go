package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStopGrace is how long Stop waits after SIGTERM before SIGKILL.
const DefaultStopGrace = 5 * time.Second

// nobody is the uid and gid tasks run as by default.
const nobody = 65534

// killTimeout bounds the wait for processes to disappear after SIGKILL.
const killTimeout = 10 * time.Second

// ExecConfig configures the exec driver.
type ExecConfig struct {
	// StateDir is the driver's own directory: task status files, logs
	// (logs/<id>.log) and working directories. One per agent; a second
	// driver on the same directory is refused while the first is open.
	StateDir string
	// Namespace is the agent-unique prefix of every network namespace
	// and cgroup the driver creates, so several agents on one machine
	// never touch each other's tasks. See ValidateNamespace.
	Namespace string
	// Log receives the driver's events; nil discards them.
	Log *slog.Logger
	// StopGrace is the time between SIGTERM and SIGKILL in Stop; 0 means
	// DefaultStopGrace.
	StopGrace time.Duration
	// TaskUIDs is where each task's own user (and group) id comes from;
	// the zero value means DefaultTaskUIDs. Ids are claimed machine-wide
	// (see uidClaimsDir), so agents sharing a machine may share a range.
	// Supplementary groups are always dropped.
	TaskUIDs UIDRange
}

// Credential is a numeric user and group.
type Credential struct {
	UID, GID uint32
}

// Exec is the exec driver: each task is a plain host process in its own
// network namespace, mount namespace and cgroup, running as a user of its
// own with its own working directory and log file. Its mount namespace
// has a /proc that shows only the task's own processes. Tasks survive the
// driver: Close leaves them running, and a driver opened later on the
// same StateDir adopts them. Exec is safe for concurrent use; operations on one task ID
// are serialised.
type Exec struct {
	cfg  ExecConfig
	log  *slog.Logger
	cg   *cgroupFS
	lock *os.File // flock'ed StateDir/lock

	// wakeR is polled by every watcher; closing wakeW stops them.
	wakeR, wakeW int
	// watchers counts watcher goroutines; ops counts public calls in
	// flight so Close can wait for them before stopping the watchers.
	watchers, ops sync.WaitGroup

	// warnedProc is set once the log says tasks share the host's /proc.
	warnedProc atomic.Bool

	mu     sync.Mutex
	closed bool
	tasks  map[string]*task
	// busy holds one channel per task ID with an operation in progress;
	// it is closed when the operation ends.
	busy map[string]chan struct{}
}

// task is the driver's view of one task. rec is guarded by Exec.mu.
type task struct {
	rec taskRecord
	// exited is closed once the process's exit has been recorded (at
	// once for a task adopted dead).
	exited chan struct{}
}

// NewExec opens the exec driver on cfg.StateDir, creating it if needed,
// and adopts the tasks recorded there: a task whose process still runs
// (same pid and start time) is watched again; a dead one is reported as
// exited (exit code -1 if its end went unseen) until Stop cleans it up.
func NewExec(cfg ExecConfig) (*Exec, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("open exec driver: %w: state dir: required", ErrInvalidSpec)
	}
	if err := ValidateNamespace(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("open exec driver: %w", err)
	}
	if cfg.StopGrace < 0 {
		return nil, fmt.Errorf("open exec driver: %w: stop grace: must be >= 0", ErrInvalidSpec)
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.TaskUIDs == (UIDRange{}) {
		cfg.TaskUIDs = DefaultTaskUIDs
	}
	if err := cfg.TaskUIDs.Validate(); err != nil {
		return nil, fmt.Errorf("open exec driver: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("open exec driver: state dir: %w", err)
	}
	cfg.StateDir = dir

	cg, err := detectCgroups()
	if err != nil {
		return nil, fmt.Errorf("open exec driver: %w", err)
	}
	// StateDir and work/ are searchable so a task that resolves its
	// working directory by path can, where the parents allow it.
	for sub, mode := range map[string]os.FileMode{"": 0o711, tasksSubdir: 0o700, logsSubdir: 0o700, workSubdir: 0o711} {
		if err := os.MkdirAll(filepath.Join(dir, sub), mode); err != nil {
			return nil, fmt.Errorf("open exec driver: %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open exec driver: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open exec driver: state dir %s is in use by another exec driver: %w", dir, err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		lock.Close()
		return nil, fmt.Errorf("open exec driver: create wake pipe: %w", err)
	}
	e := &Exec{
		cfg: cfg, log: cfg.Log, cg: cg, lock: lock,
		wakeR: p[0], wakeW: p[1],
		tasks: map[string]*task{}, busy: map[string]chan struct{}{},
	}
	if err := e.adopt(); err != nil {
		e.Close()
		return nil, fmt.Errorf("open exec driver: %w", err)
	}
	return e, nil
}

// adopt loads the status files and resumes watching live tasks.
func (e *Exec) adopt() error {
	recs, bad, err := e.loadRecords()
	if err != nil {
		return err
	}
	keepUIDs := map[string]bool{}
	for id, err := range bad {
		e.log.Warn("unreadable task status file; reporting the task as exited so it is cleaned up", "task", id, "err", err)
		e.tasks[id] = &task{rec: e.deadRecord(id), exited: closedChan()}
		keepUIDs[id] = true // its uid is unknown: released when Stop finds it
	}
	for _, rec := range recs {
		id := rec.Spec.ID
		t := &task{rec: rec, exited: make(chan struct{})}
		e.tasks[id] = t
		keepUIDs[id] = true
		if rec.UID != 0 {
			reclaimUID(rec.UID, claimOwner(e.cfg.Namespace, id), e.log)
		}
		if rec.State == StateExited {
			close(t.exited)
			continue
		}
		if rec.State == StateRunning && processAlive(rec.PID, rec.StartTicks) {
			pidfd, err := openPidfd(rec.PID, rec.StartTicks)
			if err == nil {
				e.log.Info("adopted running task", "task", id, "pid", rec.PID)
				e.watchers.Add(1)
				go e.watch(t, pidfd)
				continue
			}
		}
		// Died (or the agent died mid-start) while nobody watched. A
		// zombie child of this very process can still tell its code.
		code := reapIfChild(rec.PID, rec.StartTicks)
		t.rec.State, t.rec.ExitCode, t.rec.FinishedAt = StateExited, code, time.Now()
		close(t.exited)
		e.log.Info("adopted exited task", "task", id, "pid", rec.PID, "exit_code", code)
		if err := e.saveRecord(t.rec); err != nil {
			e.log.Warn("record exit of adopted task", "task", id, "err", err)
		}
	}
	// Uids of starts that an agent crash cut short before they were
	// recorded.
	if err := releaseClaimsOf(e.cfg.Namespace, keepUIDs); err != nil {
		e.log.Warn("release uids of unrecorded tasks", "err", err)
	}
	return nil
}

// deadRecord stands in for a task whose status file cannot be read.
func (e *Exec) deadRecord(id string) taskRecord {
	return taskRecord{
		Version: recordVersion, Namespace: e.cfg.Namespace,
		Spec:  TaskSpec{ID: id},
		State: StateExited, ExitCode: -1, FinishedAt: time.Now(),
		NetNS:   netnsPath(e.cfg.Namespace, id),
		LogPath: e.logPath(id), WorkDir: e.workDir(id),
	}
}

func (e *Exec) logPath(id string) string {
	return filepath.Join(e.cfg.StateDir, logsSubdir, id+".log")
}

func (e *Exec) workDir(id string) string {
	return filepath.Join(e.cfg.StateDir, workSubdir, id)
}

// List reports every task the driver owns, started or adopted, sorted by
// ID.
func (e *Exec) List(ctx context.Context) ([]TaskStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, fmt.Errorf("list tasks: %w", ErrClosed)
	}
	out := make([]TaskStatus, 0, len(e.tasks))
	for _, t := range e.tasks {
		out = append(out, t.rec.status())
	}
	slices.SortFunc(out, func(a, b TaskStatus) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out, nil
}

// Status reports one task, or ErrNotFound.
func (e *Exec) Status(ctx context.Context, id string) (TaskStatus, error) {
	if err := ctx.Err(); err != nil {
		return TaskStatus{}, fmt.Errorf("status of task %s: %w", id, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return TaskStatus{}, fmt.Errorf("status of task %s: %w", id, ErrClosed)
	}
	t, ok := e.tasks[id]
	if !ok {
		return TaskStatus{}, fmt.Errorf("status of task %s: %w", id, ErrNotFound)
	}
	return t.rec.status(), nil
}

// Stats reads the task's CPU time used so far (nanoseconds) and its
// current memory use (bytes, page cache included) from its cgroup.
func (e *Exec) Stats(ctx context.Context, id string) (cpuUsageNanos uint64, memoryBytes uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, fmt.Errorf("stats of task %s: %w", id, err)
	}
	e.mu.Lock()
	_, ok := e.tasks[id]
	closed := e.closed
	e.mu.Unlock()
	switch {
	case closed:
		return 0, 0, fmt.Errorf("stats of task %s: %w", id, ErrClosed)
	case !ok:
		return 0, 0, fmt.Errorf("stats of task %s: %w", id, ErrNotFound)
	}
	cpu, mem, err := e.cg.stats(e.cfg.Namespace, id)
	if err != nil {
		return 0, 0, fmt.Errorf("stats of task %s: %w", id, err)
	}
	return cpu, mem, nil
}

// Close stops the driver's goroutines and releases its state directory.
// It waits for calls in progress and never stops tasks: a driver opened
// later on the same StateDir adopts them.
func (e *Exec) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.ops.Wait()
	unix.Close(e.wakeW) // every watcher's poll sees the hang-up
	e.watchers.Wait()
	unix.Close(e.wakeR)
	return e.lock.Close() // releases the flock
}

// begin registers a public call that changes tasks and takes the per-ID
// lock of id; end must be called when done.
func (e *Exec) begin(ctx context.Context, id string) (end func(), err error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	e.ops.Add(1)
	for {
		ch, held := e.busy[id]
		if !held {
			ch = make(chan struct{})
			e.busy[id] = ch
			e.mu.Unlock()
			return func() {
				e.mu.Lock()
				delete(e.busy, id)
				e.mu.Unlock()
				close(ch)
				e.ops.Done()
			}, nil
		}
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			e.ops.Done()
			return nil, ctx.Err()
		}
		e.mu.Lock()
	}
}

// watch waits for the task's process to exit and records how it ended.
// It returns early, without recording anything, when the driver closes.
// pidfd is -1 on kernels without pidfd_open; /proc is polled instead.
func (e *Exec) watch(t *task, pidfd int) {
	defer e.watchers.Done()
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	e.mu.Lock()
	pid, ticks, id := t.rec.PID, t.rec.StartTicks, t.rec.Spec.ID
	e.mu.Unlock()
	for {
		fds := []unix.PollFd{{Fd: int32(e.wakeR), Events: unix.POLLIN}}
		timeout := 1000 // ms, for the /proc fallback
		if pidfd >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(pidfd), Events: unix.POLLIN})
			timeout = -1
		}
		_, err := unix.Poll(fds, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			e.log.Error("watch task: poll", "task", id, "err", err)
			time.Sleep(time.Second)
			continue
		}
		if fds[0].Revents != 0 {
			return // closing
		}
		if pidfd >= 0 && fds[1].Revents != 0 || pidfd < 0 && !processAlive(pid, ticks) {
			break
		}
	}
	code := reapIfChild(pid, ticks)
	e.mu.Lock()
	t.rec.State, t.rec.ExitCode, t.rec.FinishedAt = StateExited, code, time.Now()
	rec := t.rec
	e.mu.Unlock()
	if err := e.saveRecord(rec); err != nil {
		e.log.Warn("record task exit", "task", id, "err", err)
	}
	close(t.exited)
	e.log.Info("task exited", "task", id, "pid", pid, "exit_code", code)
}

// reapIfChild collects the exit status of pid if it is an exited child of
// this process that started at startTicks, and returns -1 otherwise (an
// adopted task's parent is init, which reaps it). Only the exact process
// is waited for: an unreaped child keeps its pid, so it cannot have been
// reused.
func reapIfChild(pid int, startTicks uint64) int {
	if pid <= 0 {
		return -1
	}
	st, err := readProcStat(pid)
	if err != nil || st.StartTicks != startTicks || st.PPID != os.Getpid() {
		return -1
	}
	for {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || wpid != pid {
			return -1
		}
		return exitCodeOf(ws)
	}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// LogPath is where task id's output goes; it stays after the task is
// stopped, until the driver's state directory is removed.
func (e *Exec) LogPath(id string) string { return e.logPath(id) }
