package runtime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// defaultPath is the PATH of a task whose Env has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Start starts a task: it creates the task's cgroup (with the CPU,
// memory and pids limits) and network namespace (lo up), then the process
// inside both and in a mount namespace of its own (see isolateMounts), as
// a user of its own from the driver's range, in its own process group, in
// a fresh working directory, with stdout and stderr appended to the
// task's log file. The task is recorded in the state directory before
// Start returns. An ID the driver already tracks gives ErrExists; an
// invalid spec gives an error wrapping ErrInvalidSpec. On error nothing is
// left behind but the log file.
func (e *Exec) Start(ctx context.Context, spec TaskSpec) (TaskStatus, error) {
	if err := spec.Validate(); err != nil {
		return TaskStatus{}, fmt.Errorf("start task: %w", err)
	}
	if len(spec.CapAdd) > 0 {
		return TaskStatus{}, fmt.Errorf("start task %s: %w: cap add: exec tasks run without capabilities", spec.ID, ErrInvalidSpec)
	}
	id := spec.ID
	end, err := e.begin(ctx, id)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	defer end()
	e.mu.Lock()
	t, exists := e.tasks[id]
	var state State
	if exists {
		state = t.rec.status().State
	}
	e.mu.Unlock()
	if exists {
		return TaskStatus{}, fmt.Errorf("start task %s: %w (%s); stop it first", id, ErrExists, state)
	}
	if err := ctx.Err(); err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	pathEnv, ok := spec.Env["PATH"]
	if !ok {
		pathEnv = defaultPath
	}
	prog, err := lookPath(spec.Command[0], pathEnv)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	// Leftovers of an attempt that was never recorded (the agent died
	// mid-start) would make creation fail; they are ours to remove.
	if err := e.removeResources(id); err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: clear leftovers: %w", id, err)
	}

	owner := claimOwner(e.cfg.Namespace, id)
	uid, err := claimUID(e.cfg.TaskUIDs, owner)
	if err != nil {
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	rec := taskRecord{
		Version: recordVersion, Namespace: e.cfg.Namespace, Spec: spec, State: stateStarting, UID: uid,
		NetNS: netnsPath(e.cfg.Namespace, id), LogPath: e.logPath(id), WorkDir: e.workDir(id),
	}
	// Recorded first, so that an agent dying from here on leaves a record
	// the next one reports (as exited) and cleans up with Stop.
	if err := e.saveRecord(rec); err != nil {
		if cerr := releaseUID(uid, owner); cerr != nil {
			e.log.Warn("clean up after failed start", "task", id, "err", cerr)
		}
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	pidfd, err := e.launch(&rec, prog)
	if err != nil {
		if cerr := e.removeResources(id); cerr != nil {
			e.log.Warn("clean up after failed start", "task", id, "err", cerr)
		}
		if cerr := e.removeRecord(id); cerr != nil {
			e.log.Warn("clean up after failed start", "task", id, "err", cerr)
		}
		if cerr := releaseUID(uid, owner); cerr != nil {
			e.log.Warn("clean up after failed start", "task", id, "err", cerr)
		}
		return TaskStatus{}, fmt.Errorf("start task %s: %w", id, err)
	}
	t = &task{rec: rec, exited: make(chan struct{})}
	e.mu.Lock()
	e.tasks[id] = t
	e.mu.Unlock()
	// Close waits for this call (begin/end) before it waits for watchers.
	e.watchers.Add(1)
	go e.watch(t, pidfd)
	e.log.Info("started task", "task", id, "pid", rec.PID, "uid", rec.UID, "netns", rec.NetNS)
	return rec.status(), nil
}

// launch creates the task's cgroup, network namespace, working directory
// and log file, starts the process and records it as running. It returns
// a pidfd for the process (-1 without kernel support). The caller removes
// the resources if it fails.
func (e *Exec) launch(rec *taskRecord, prog string) (pidfd int, err error) {
	spec, ns := rec.Spec, e.cfg.Namespace
	// The cgroup first and the netns second (and the reverse on removal):
	// Cleanup relies on a task's netns never outliving its cgroup.
	if err := e.cg.create(ns, spec.ID, limitsFor(spec)); err != nil {
		return -1, err
	}
	if err := createNetns(netnsName(ns, spec.ID)); err != nil {
		return -1, err
	}
	work, err := e.makeWorkDir(spec.ID, rec.UID)
	if err != nil {
		return -1, err
	}
	defer work.Close()
	logf, err := os.OpenFile(rec.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return -1, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child has its own copy

	cmd := &exec.Cmd{
		Path:   prog,
		Args:   spec.argv(),
		Env:    taskEnv(spec.Env),
		Stdout: logf,
		Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{
			// Own process group: terminal signals aimed at the agent do
			// not reach it. No Pdeathsig: tasks outlive the agent.
			Setpgid:    true,
			Credential: &syscall.Credential{Uid: rec.UID, Gid: rec.UID, Groups: []uint32{}},
		},
	}
	if err := e.spawn(cmd, spec.ID, rec.NetNS, work); err != nil {
		return -1, err
	}
	pid := cmd.Process.Pid
	_ = cmd.Process.Release() // reaped by the watcher instead of cmd.Wait
	kill := func() {
		_ = unix.Kill(-pid, unix.SIGKILL)
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
	}
	// The child is not reaped yet, so its pid cannot have been reused,
	// even if it has already exited.
	st, err := readProcStat(pid)
	if err != nil {
		kill()
		return -1, err
	}
	pidfd, err = openPidfd(pid, st.StartTicks)
	if err != nil {
		kill()
		return -1, err
	}
	rec.PID, rec.StartTicks, rec.State, rec.StartedAt = pid, st.StartTicks, StateRunning, time.Now()
	if err := e.saveRecord(*rec); err != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		kill()
		return -1, err
	}
	return pidfd, nil
}

// makeWorkDir creates the task's empty working directory, owned by the
// task's user, and opens it.
func (e *Exec) makeWorkDir(id string, uid uint32) (*os.File, error) {
	dir := e.workDir(id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create working dir: %w", err)
	}
	if err := os.Lchown(dir, int(uid), int(uid)); err != nil {
		return nil, fmt.Errorf("create working dir: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open working dir: %w", err)
	}
	return f, nil
}

// spawn starts cmd so that the child is born in the task's network
// namespace, mount namespace, cgroup and working directory. All are set
// on one locked OS thread just before the fork, since a child inherits
// them from the thread that forks it:
//   - the working directory by fchdir after unsharing the thread's
//     filesystem context, so the task's user needs no search permission on
//     the state directory's parents (the agent's data dir is 0700);
//   - the network namespace by setns;
//   - a new mount namespace with a private /proc (isolateMounts);
//   - the cgroup by moving the thread into it (v1) or clone3 with
//     CLONE_INTO_CGROUP (v2), so no child of the task escapes before it is
//     moved.
//
// The goroutine ends without unlocking its thread, so the runtime
// discards the tainted thread instead of reusing it.
func (e *Exec) spawn(cmd *exec.Cmd, id, nsPath string, work *os.File) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread, see above.
		errc <- e.spawnOnLockedThread(cmd, id, nsPath, work)
	}()
	return <-errc
}

func (e *Exec) spawnOnLockedThread(cmd *exec.Cmd, id, nsPath string, work *os.File) error {
	leaveThread, err := e.enterTaskThread(id, nsPath)
	if err != nil {
		return err
	}
	defer leaveThread()
	if err := unix.Fchdir(int(work.Fd())); err != nil {
		return fmt.Errorf("enter working dir: %w", err)
	}
	procShared, detachErr, err := isolateMounts()
	if err != nil {
		return err
	}
	if detachErr != nil {
		e.log.Warn("task keeps some of the host's mounts", "task", id, "err", detachErr)
	}
	if procShared && !e.warnedProc.Swap(true) {
		e.log.Warn("this kernel (before 5.8) cannot give tasks a private /proc: exec tasks can list other processes, though not read their environments")
	}
	leave, err := e.cg.enter(e.cfg.Namespace, id, cmd.SysProcAttr)
	if err != nil {
		return fmt.Errorf("enter cgroup: %w", err)
	}
	startErr := cmd.Start()
	if err := leave(); err != nil {
		// Same reasoning: only a parked main thread would keep the
		// cgroup busy.
		e.log.Warn("leave task cgroup on discarded thread", "task", id, "err", err)
	}
	if startErr != nil {
		return fmt.Errorf("start process: %w", startErr)
	}
	return nil
}

// enterNetns switches the calling thread, locked and about to be
// discarded, into the network namespace at nsPath. leave moves it back,
// which matters only if this is the main thread, which the runtime parks
// instead of discarding: it would pin the namespace.
func enterNetns(nsPath string, warn func(error)) (leave func(), err error) {
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		orig.Close()
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		orig.Close()
		return nil, fmt.Errorf("enter netns %s: %w", nsPath, err)
	}
	return func() {
		if err := netns.Set(orig); err != nil {
			warn(err)
		}
		orig.Close()
	}, nil
}

// rememberMountNS remembers the calling thread's mount namespace, for
// leave to return to it (see enterNetns on why), before the caller
// unshares or enters another one.
func rememberMountNS(warn func(error)) (leave func(), err error) {
	orig, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open this thread's mount namespace: %w", err)
	}
	return func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNS); err != nil {
			warn(err)
		}
		unix.Close(orig)
	}, nil
}

// lookPath resolves a task's program: an absolute path as is, a bare name
// in the absolute directories of pathEnv.
func lookPath(prog, pathEnv string) (string, error) {
	if filepath.IsAbs(prog) {
		if err := checkExecutable(prog); err != nil {
			return "", err
		}
		return prog, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(dir) {
			continue // relative entries mean nothing to a task
		}
		p := filepath.Join(dir, prog)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("find program: %q not found in PATH %s", prog, pathEnv)
}

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return fmt.Errorf("find program: %w", err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("find program: %s is not a regular file", path)
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("find program: %s is not executable", path)
	}
	return nil
}

// taskEnv builds a task's environment: exactly its Env, plus a standard
// PATH if it has none, sorted for a stable order.
func taskEnv(vars map[string]string) []string {
	env := make([]string, 0, len(vars)+1)
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	if _, ok := vars["PATH"]; !ok {
		env = append(env, "PATH="+defaultPath)
	}
	sort.Strings(env)
	return env
}

// enterTaskThread gives the calling (locked) thread a filesystem context
// of its own and moves it into the task's network namespace, remembering
// its mount namespace; leave undoes both, in reverse order.
func (e *Exec) enterTaskThread(id, nsPath string) (leave func(), err error) {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return nil, fmt.Errorf("unshare filesystem context: %w", err)
	}
	leaveNetns, err := enterNetns(nsPath, func(err error) {
		e.log.Warn("leave task netns on discarded thread", "task", id, "err", err)
	})
	if err != nil {
		return nil, err
	}
	leaveMounts, err := rememberMountNS(func(err error) {
		e.log.Warn("leave task mount namespace on discarded thread", "task", id, "err", err)
	})
	if err != nil {
		leaveNetns()
		return nil, err
	}
	return func() { leaveMounts(); leaveNetns() }, nil
}
