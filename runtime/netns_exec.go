package runtime

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	goruntime "runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn on a fresh goroutine whose OS thread is switched into the
// network namespace at nsPath. The thread is never switched back or
// unlocked: the Go runtime discards it when the goroutine ends, so no other
// goroutine ever runs in that namespace.
func inNetNS(nsPath string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			done <- fmt.Errorf("open network namespace %s: %w", nsPath, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// DialInNetNS opens a connection from inside the network namespace at
// nsPath (a task's NetNS), e.g. to probe a port the task listens on only
// there.
func DialInNetNS(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetNS(nsPath, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		conn = c
		return err
	})
	return conn, err
}

// RunInNetNS runs argv to completion inside the network namespace at
// nsPath as the given user, and returns at most ExecOutputLimit bytes of
// its combined output. The child is forked from the namespace-switched
// thread, so it starts inside. When ctx ends, its whole process group is
// killed.
func RunInNetNS(ctx context.Context, nsPath string, argv []string, cred Credential) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("run in %s: empty command: %w", nsPath, ErrInvalidSpec)
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, fmt.Errorf("run in %s: %w", nsPath, err)
	}
	cmd := &exec.Cmd{
		Path: prog,
		Args: argv,
		Dir:  "/",
		SysProcAttr: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: cred.UID, Gid: cred.GID, Groups: []uint32{}},
			Setpgid:    true,
		},
	}
	start := func() error {
		return inNetNS(nsPath, cmd.Start)
	}
	out, err := runCapped(ctx, cmd, start, nil)
	if err != nil {
		return out, fmt.Errorf("run in %s: %w", nsPath, err)
	}
	return out, nil
}
