package devcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// readPIDFile returns the pid in path, 0 if the file does not exist.
func readPIDFile(path string) (int, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", path, strings.TrimSpace(string(raw)))
	}
	return pid, nil
}

func writePIDFile(path string, pid int) error {
	return writeFileAtomic(path, []byte(strconv.Itoa(pid)+"\n"), 0o644)
}

// cmdline returns a process's argv; nil if it is gone or a zombie (whose
// cmdline is empty).
func cmdline(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(raw) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
}

// isAgentOf reports whether argv is a shoal agent using dataDir, or the
// nsenter about to exec into one. A pid from a pid file is checked this
// way before it is signalled: after a reboot or a crash the number may
// belong to an unrelated process.
func isAgentOf(argv []string, dataDir string) bool {
	hasAgent, hasDir := false, false
	for i, a := range argv {
		if a == "agent" {
			hasAgent = true
		}
		if a == "--data-dir="+dataDir || a == "--data-dir" && i+1 < len(argv) && argv[i+1] == dataDir {
			hasDir = true
		}
	}
	return hasAgent && hasDir
}

// isContainerdOf reports whether argv is a containerd run with config.
func isContainerdOf(argv []string, config string) bool {
	if len(argv) == 0 || filepath.Base(argv[0]) != "containerd" {
		return false
	}
	for i, a := range argv {
		if a == "--config="+config || (a == "--config" || a == "-c") && i+1 < len(argv) && argv[i+1] == config {
			return true
		}
	}
	return false
}

// referencesDir reports whether argv is a process the cluster in dir
// started: an agent (or its nsenter) or a containerd or containerd shim,
// with an argument under dir. Other programs that merely mention the
// directory, such as a `tail -f DIR/n1.log`, are not the cluster's.
func referencesDir(argv []string, dir string) bool {
	if len(argv) == 0 {
		return false
	}
	under := false
	for _, a := range argv {
		if strings.Contains(a, dir+"/") {
			under = true
			break
		}
	}
	if !under {
		return false
	}
	if strings.HasPrefix(filepath.Base(argv[0]), "containerd") {
		return true
	}
	for _, a := range argv[1:] {
		if a == "agent" {
			return true
		}
	}
	return false
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	if pid <= 0 || unix.Kill(pid, 0) != nil {
		return false
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The command name may contain spaces: the state follows the last ')'.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 || i+2 >= len(raw) {
		return false
	}
	return raw[i+2] != 'Z' && raw[i+2] != 'X'
}

// terminate sends SIGTERM to pids, waits up to grace for them to exit,
// then SIGKILLs the rest and waits for them to go. It returns the pids
// that needed SIGKILL.
func terminate(pids []int, grace time.Duration) (killed []int) {
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && anyAlive(pids) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, pid := range pids {
		if alive(pid) {
			_ = unix.Kill(pid, unix.SIGKILL)
			killed = append(killed, pid)
		}
	}
	waitGone(pids, 5*time.Second)
	return killed
}

func anyAlive(pids []int) bool {
	for _, pid := range pids {
		if alive(pid) {
			return true
		}
	}
	return false
}

func waitGone(pids []int, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && anyAlive(pids) {
		time.Sleep(20 * time.Millisecond)
	}
}

// killReferencing SIGKILLs every process of the cluster in dir that is
// still running (see referencesDir), other than this one, and returns
// their pids. It is the last sweep of Down: it catches agents whose pid
// file was lost and shims of a containerd that died.
func killReferencing(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if referencesDir(cmdline(pid), dir) {
			_ = unix.Kill(pid, unix.SIGKILL)
			pids = append(pids, pid)
		}
	}
	waitGone(pids, 5*time.Second)
	return pids
}

// tailFile returns the last lines of a log file, for error messages.
func tailFile(path string, lines int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// startDetached starts argv in a session of its own (so it outlives this
// command and a Ctrl-C in its terminal), stdin from /dev/null and output
// appended to logPath. The returned channel closes when the process
// exits while this command still runs; it is reaped here, so a dead child
// never looks alive. No Pdeathsig: the process must outlive its parent.
func startDetached(argv, env []string, logPath string) (pid int, exited <-chan struct{}, err error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf // stdin stays nil: /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return cmd.Process.Pid, done, nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
