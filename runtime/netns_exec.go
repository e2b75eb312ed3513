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

// DialInNetNS opens a connection from inside the network namespace at
// nsPath (a task's NetNS), e.g. to probe a port the task listens on only
// there. The dialling goroutine locks its thread, switches it and never
// switches back: the runtime discards the thread when the goroutine ends.
func DialInNetNS(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			ch <- result{nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{nil, fmt.Errorf("enter network namespace %s: %w", nsPath, err)}
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}

// RunInNetNS runs argv to completion inside the network namespace at
// nsPath as the given user, and returns its combined output. The child is
// forked from a thread switched into the namespace, which is then
// discarded.
func RunInNetNS(ctx context.Context, nsPath string, argv []string, cred Credential) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("run in %s: empty command: %w", nsPath, ErrInvalidSpec)
	}
	type result struct {
		out []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			ch <- result{nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)}
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			ch <- result{nil, fmt.Errorf("enter network namespace %s: %w", nsPath, err)}
			return
		}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: cred.UID, Gid: cred.GID},
			Setpgid:    true,
		}
		cmd.Dir = "/"
		// Start forks on this (namespace-switched) thread; waiting may
		// happen anywhere.
		out, err := cmd.CombinedOutput()
		ch <- result{out, err}
	}()
	r := <-ch
	return r.out, r.err
}
