package runtime

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// ExecOutputLimit is the most output ExecIn keeps of a command (stdout and
// stderr together); the rest is read and dropped, so a chatty health
// check neither blocks nor fills the agent's memory.
const ExecOutputLimit = 4 << 10

// ExitError is returned by ExecIn for a command that ran and exited with
// a status other than 0 (128+signal if a signal killed it).
type ExitError struct {
	Code int
}

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// ExecIn runs argv inside the running task id the way the task itself
// runs: as its user, in its network and mount namespaces and its cgroup
// (so it counts against the task's limits), in its working directory,
// with its environment. It returns at most ExecOutputLimit bytes of
// output. When ctx ends first, the command's whole process group is
// killed and the error wraps ctx.Err(); a command that exits leaves
// nothing behind either.
func (e *Exec) ExecIn(ctx context.Context, id string, argv []string) ([]byte, error) {
	if err := checkArgv(id, argv); err != nil {
		return nil, err
	}
	e.mu.Lock()
	t, ok := e.tasks[id]
	closed := e.closed
	var rec taskRecord
	if ok {
		rec = t.rec
	}
	if !closed {
		e.ops.Add(1)
		defer e.ops.Done()
	}
	e.mu.Unlock()
	switch {
	case closed:
		return nil, fmt.Errorf("exec in task %s: %w", id, ErrClosed)
	case !ok:
		return nil, fmt.Errorf("exec in task %s: %w", id, ErrNotFound)
	case rec.State != StateRunning:
		return nil, fmt.Errorf("exec in task %s: not running", id)
	}
	pathEnv, ok := rec.Spec.Env["PATH"]
	if !ok {
		pathEnv = defaultPath
	}
	prog, err := lookPath(argv[0], pathEnv)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: %w", id, err)
	}
	// The task's mount namespace, through a pidfd so a recycled pid
	// cannot hand us another process's.
	pidfd, err := openPidfd(rec.PID, rec.StartTicks)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: %w", id, err)
	}
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	mntns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", rec.PID), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: open its mount namespace: %w", id, err)
	}
	defer unix.Close(mntns)
	if pidfd >= 0 && unix.PidfdSendSignal(pidfd, 0, nil, 0) != nil || !processAlive(rec.PID, rec.StartTicks) {
		return nil, fmt.Errorf("exec in task %s: the task exited", id)
	}
	uid := rec.UID
	if uid == 0 {
		uid = nobody // a task of an older agent
	}
	cmd := &exec.Cmd{
		Path: prog,
		Args: slices.Clone(argv),
		Env:  taskEnv(rec.Spec.Env),
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:    true,
			Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}},
		},
	}
	start := func() error {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			// No UnlockOSThread: the thread is left in the task's
			// namespaces and cgroup, and discarded.
			errc <- e.startInTask(cmd, rec, mntns)
		}()
		return <-errc
	}
	out, err := runCapped(ctx, cmd, start, e.cg.taskDirs(e.cfg.Namespace, id))
	if err != nil {
		return out, fmt.Errorf("exec in task %s: %w", id, err)
	}
	return out, nil
}

// startInTask starts cmd on the calling locked thread after moving the
// thread into the task's namespaces, working directory and cgroup.
func (e *Exec) startInTask(cmd *exec.Cmd, rec taskRecord, mntns int) error {
	id := rec.Spec.ID
	leaveThread, err := e.enterTaskThread(id, rec.NetNS)
	if err != nil {
		return err
	}
	defer leaveThread()
	if err := unix.Setns(mntns, unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("enter the task's mount namespace: %w", err)
	}
	// As root, before the fork: the task's user needs no search
	// permission on the state directory's parents.
	if err := unix.Chdir(rec.WorkDir); err != nil {
		return fmt.Errorf("enter working dir: %w", err)
	}
	leave, err := e.cg.enter(e.cfg.Namespace, id, cmd.SysProcAttr)
	if err != nil {
		return fmt.Errorf("enter cgroup: %w", err)
	}
	startErr := cmd.Start()
	if err := leave(); err != nil {
		e.log.Warn("leave task cgroup on discarded thread", "task", id, "err", err)
	}
	if startErr != nil {
		return fmt.Errorf("start process: %w", startErr)
	}
	return nil
}

// runCapped starts cmd with start (which calls cmd.Start, in whatever
// namespaces), collects at most ExecOutputLimit bytes of its output and
// waits for it. cmd must run in its own process group (Setpgid). When
// ctx ends, or once the command exits, every process of its group still
// in cgroupDirs is killed.
func runCapped(ctx context.Context, cmd *exec.Cmd, start func() error, cgroupDirs []string) ([]byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create output pipe: %w", err)
	}
	defer r.Close()
	cmd.Stdout, cmd.Stderr = w, w
	err = start()
	w.Close() // the child has its own copy
	if err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	out := &cappedBuffer{limit: ExecOutputLimit}
	copied := make(chan struct{})
	go func() {
		_, _ = out.ReadFrom(r)
		close(copied)
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var waitErr error
	select {
	case waitErr = <-waited:
	case <-ctx.Done():
		// The leader is not reaped yet, so its pid is still its group's.
		_ = unix.Kill(-pid, unix.SIGKILL)
		waitErr = <-waited
	}
	// Whatever the command left running in its group goes too.
	killProbeGroup(cgroupDirs, pid, 0)
	// A process that left the group may still hold the pipe open.
	_ = r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	<-copied
	if ctx.Err() != nil {
		return out.Bytes(), fmt.Errorf("%v: %w", strings.Join(cmd.Args, " "), ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		ws, _ := ee.Sys().(syscall.WaitStatus)
		return out.Bytes(), &ExitError{Code: exitCodeOf(unix.WaitStatus(ws))}
	}
	return out.Bytes(), waitErr
}

// killProbeGroup kills the processes in cgroupDirs that belong to process
// group pgid or descend from pid pgid, sparing keep (a container's init),
// until none is left or a second has passed. A probe's processes may fork
// while they are being killed, hence the rounds.
func killProbeGroup(cgroupDirs []string, pgid, keep int) {
	deadline := time.Now().Add(time.Second)
	for {
		pids, err := cgroupProcs(cgroupDirs)
		if err != nil {
			return
		}
		parent := map[int]int{}
		group := map[int]int{}
		for _, p := range pids {
			if st, err := readProcStat(p); err == nil {
				parent[p], group[p] = st.PPID, st.PGRP
			}
		}
		var doomed []int
		for _, p := range pids {
			if p == keep {
				continue
			}
			if group[p] == pgid || descends(p, pgid, parent) {
				doomed = append(doomed, p)
			}
		}
		if len(doomed) == 0 || time.Now().After(deadline) {
			return
		}
		for _, p := range doomed {
			_ = unix.Kill(p, unix.SIGKILL)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// descends reports whether p is root or one of its descendants, by the
// parent links of processes in one cgroup.
func descends(p, root int, parent map[int]int) bool {
	for range len(parent) + 1 {
		if p == root {
			return true
		}
		next, ok := parent[p]
		if !ok || next == p {
			return false
		}
		p = next
	}
	return false
}

// cappedBuffer keeps the first limit bytes written to it and counts the
// rest, which it drops. Safe for concurrent use.
type cappedBuffer struct {
	limit int

	mu      sync.Mutex
	buf     bytes.Buffer
	dropped int64
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := min(len(p), b.limit-b.buf.Len())
	b.buf.Write(p[:keep])
	b.dropped += int64(len(p) - keep)
	return len(p), nil
}

// ReadFrom copies r into b until r ends or fails.
func (b *cappedBuffer) ReadFrom(r interface{ Read([]byte) (int, error) }) (int64, error) {
	chunk := make([]byte, 32<<10)
	var n int64
	for {
		k, err := r.Read(chunk)
		_, _ = b.Write(chunk[:k])
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
}

// Bytes returns what was kept, with a note of what was dropped.
func (b *cappedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := slices.Clone(b.buf.Bytes())
	if b.dropped > 0 {
		out = fmt.Appendf(out, "\n[%d more bytes dropped]", b.dropped)
	}
	return out
}

func checkArgv(id string, argv []string) error {
	if err := ValidateTaskID(id); err != nil {
		return fmt.Errorf("exec in task: %w", err)
	}
	if len(argv) == 0 || argv[0] == "" {
		return fmt.Errorf("exec in task %s: %w: command: required", id, ErrInvalidSpec)
	}
	for _, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("exec in task %s: %w: command: contains a NUL byte", id, ErrInvalidSpec)
		}
	}
	return nil
}

// ExecIn runs argv inside the task's container, as a second process of the
// container (containerd exec) with the container's user, capabilities,
// environment, working directory and limits. It returns at most
// ExecOutputLimit bytes of output. When ctx ends first, the command and
// every process it started are killed, and the error wraps ctx.Err(); a
// command that exits leaves nothing behind either.
func (c *Containerd) ExecIn(ctx context.Context, id string, argv []string) ([]byte, error) {
	if err := checkArgv(id, argv); err != nil {
		return nil, err
	}
	cl, nctx, err := c.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: %w", id, err)
	}
	ctr, err := cl.LoadContainer(nctx, id)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("exec in task %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: %w", id, c.unavailable(err))
	}
	spec, err := ctr.Spec(nctx)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: read its spec: %w", id, err)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("exec in task %s: its spec has no process", id)
	}
	task, err := ctr.Task(nctx, nil)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: %w", id, err)
	}
	proc := *spec.Process
	proc.Args = slices.Clone(argv)
	proc.Terminal, proc.ConsoleSize = false, nil
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	execID := "exec-" + hex.EncodeToString(suffix[:])
	out := &cappedBuffer{limit: ExecOutputLimit}
	// Removal must happen even when ctx has ended.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(nctx), killTimeout)
	defer cancel()
	p, err := task.Exec(nctx, execID, &proc, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: %w", id, err)
	}
	defer func() {
		if _, err := p.Delete(cctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			c.log.Warn("remove exec'd process", "task", id, "exec", execID, "err", err)
		}
	}()
	exited, err := p.Wait(cctx)
	if err != nil {
		return nil, fmt.Errorf("exec in task %s: wait: %w", id, err)
	}
	if err := p.Start(nctx); err != nil {
		return nil, fmt.Errorf("exec in task %s: start: %w", id, err)
	}
	pid, initPid := int(p.Pid()), int(task.Pid())
	dirs := c.cg.taskDirs(c.cfg.Namespace, id)
	var status client.ExitStatus
	select {
	case status = <-exited:
	case <-ctx.Done():
		killProbeGroup(dirs, pid, initPid)
		select {
		case <-exited:
		case <-cctx.Done():
		}
		return out.Bytes(), fmt.Errorf("exec in task %s: %v: %w", id, strings.Join(argv, " "), ctx.Err())
	}
	killProbeGroup(dirs, pid, initPid)
	code, _, err := status.Result()
	if err != nil {
		return out.Bytes(), fmt.Errorf("exec in task %s: %w", id, err)
	}
	if code != 0 {
		return out.Bytes(), &ExitError{Code: int(code)}
	}
	return out.Bytes(), nil
}
