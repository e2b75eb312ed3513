package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted (iproute2's
// and vishvananda/netns's convention).
const netnsDir = "/run/netns"

// netnsName is the name of a task's network namespace. The namespace may
// contain '-' too, so a name alone does not tell which namespace owns it;
// Cleanup resolves that with the cgroup directories (see ownedNetns).
func netnsName(ns, id string) string { return "shoal-" + ns + "-" + id }

// netnsPath is the bind mount of a task's network namespace.
func netnsPath(ns, id string) string { return filepath.Join(netnsDir, netnsName(ns, id)) }

// createNetns creates the named network namespace with lo up.
// netns.NewNamed moves the calling thread into the new namespace, so it
// runs on a goroutine that locks its OS thread and never unlocks it: the
// runtime discards the thread when the goroutine ends. The thread is moved
// back first anyway, in case it is the main thread, which is parked rather
// than discarded.
func createNetns(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread may be left in the new namespace.
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed can leave the mount point file behind.
			if !errors.Is(err, fs.ErrExist) {
				_ = os.Remove(filepath.Join(netnsDir, name))
			}
			_ = netns.Set(orig)
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		defer ns.Close()
		err = setLoopbackUp(ns)
		if serr := netns.Set(orig); serr != nil && err == nil {
			err = fmt.Errorf("return to the original netns: %w", serr)
		}
		errc <- err
	}()
	return <-errc
}

// setLoopbackUp brings lo up in ns.
func setLoopbackUp(ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open netlink in netns: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// deleteNetns removes a named network namespace; a missing one is not an
// error. The kernel frees the namespace, and the links in it, when its
// last process exits.
func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		// EINVAL: not a mount point (a stale file); removed below.
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// listNetns lists the named network namespaces whose names start with
// prefix.
func listNetns(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
