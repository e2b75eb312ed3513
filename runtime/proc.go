package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// procStat is the part of /proc/<pid>/stat the driver needs.
type procStat struct {
	State byte // R, S, D, Z, X, ...
	PPID  int
	PGRP  int
	// StartTicks is field 22, the process start time in clock ticks since
	// boot. Together with the pid it identifies a process across pid reuse.
	StartTicks uint64
}

// parseProcStat parses the content of /proc/<pid>/stat. The command name
// (field 2) is in parentheses and may itself contain spaces and
// parentheses, so fields are counted from the last ')'.
func parseProcStat(data []byte) (procStat, error) {
	end := bytes.LastIndexByte(data, ')')
	if end < 0 || bytes.IndexByte(data, '(') < 0 {
		return procStat{}, errors.New("parse /proc stat: no command name in parentheses")
	}
	// Fields 3 onwards.
	f := bytes.Fields(data[end+1:])
	const startField = 22
	if len(f) < startField-2 {
		return procStat{}, fmt.Errorf("parse /proc stat: %d fields after the command name, want at least %d", len(f), startField-2)
	}
	field := func(n int) []byte { return f[n-3] }
	if len(field(3)) != 1 {
		return procStat{}, fmt.Errorf("parse /proc stat: state %q is not one character", field(3))
	}
	var st procStat
	st.State = field(3)[0]
	var err error
	if st.PPID, err = strconv.Atoi(string(field(4))); err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat: ppid: %w", err)
	}
	if st.PGRP, err = strconv.Atoi(string(field(5))); err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat: pgrp: %w", err)
	}
	if st.StartTicks, err = strconv.ParseUint(string(field(startField)), 10, 64); err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat: start time: %w", err)
	}
	return st, nil
}

// readProcStat reads /proc/<pid>/stat. A missing process gives an error
// matching fs.ErrNotExist.
func readProcStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			err = fs.ErrNotExist
		}
		return procStat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	st, err := parseProcStat(data)
	if err != nil {
		return procStat{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st, nil
}

// processAlive reports whether pid is still the process that started at
// startTicks and has not exited. A zombie has exited.
func processAlive(pid int, startTicks uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := readProcStat(pid)
	if err != nil {
		return false
	}
	return st.StartTicks == startTicks && st.State != 'Z' && st.State != 'X'
}

// exitCodeOf converts a wait status to the exit code TaskStatus reports:
// the exit status, or 128+signal for a signalled process (the shell's
// convention), or -1.
func exitCodeOf(ws unix.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return -1
}

// openPidfd opens a pidfd for pid and checks, after it is open, that pid
// is still the process that started at startTicks: the pidfd then refers
// to that process for as long as it is open, whatever happens to the pid.
// It returns -1 and no error when the kernel has no pidfd_open (before
// 5.3); callers then poll /proc.
func openPidfd(pid int, startTicks uint64) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ENOSYS) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	st, err := readProcStat(pid)
	if err != nil || st.StartTicks != startTicks {
		unix.Close(fd)
		return -1, fmt.Errorf("pidfd_open %d: the process exited or the pid was reused", pid)
	}
	return fd, nil // pidfd_open sets close-on-exec

}
