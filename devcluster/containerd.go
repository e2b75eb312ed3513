package devcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/v2/client"

	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// maxSocketPath is the longest unix socket path (sun_path is 108 bytes
// with its terminating NUL).
const maxSocketPath = 107

// containerdServing reports whether a containerd answers at sock.
func containerdServing(ctx context.Context, sock string) bool {
	if _, err := os.Stat(sock); err != nil {
		return false
	}
	cl, err := client.New(sock, client.WithTimeout(2*time.Second))
	if err != nil {
		return false
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ok, err := cl.IsServing(ctx)
	return err == nil && ok
}

// privateContainerd names the files of the containerd Up starts for a
// cluster in dir: everything under dir/containerd but its log.
type privateContainerd struct {
	Dir, Socket, Config, PIDFile, Log string
}

func privateContainerdIn(dir string) privateContainerd {
	cd := filepath.Join(dir, "containerd")
	return privateContainerd{
		Dir:     cd,
		Socket:  filepath.Join(cd, "c.sock"),
		Config:  filepath.Join(cd, "config.toml"),
		PIDFile: filepath.Join(cd, "pid"),
		Log:     filepath.Join(dir, "containerd.log"),
	}
}

// config is containerd's configuration: its own root, state and sockets,
// so it shares nothing with a system containerd, and no CRI plugin, which
// Shoal does not use and which would otherwise want CNI set up.
func (pc privateContainerd) config() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(pc.Dir, "root"), filepath.Join(pc.Dir, "state"), pc.Socket, pc.Socket+".ttrpc")
}

// start runs containerd detached and waits until it serves. The pid file
// is written before the wait, so Down stops a daemon that never came up.
func (pc privateContainerd) start(ctx context.Context) error {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return fmt.Errorf("no containerd answers at %s and none is installed to start (make deps, or apt-get install containerd runc): %w",
			shoalrt.DefaultContainerdAddress, err)
	}
	if len(pc.Socket)+len(".ttrpc") > maxSocketPath {
		return fmt.Errorf("containerd socket path %s is too long for a unix socket; use a shorter --dir", pc.Socket)
	}
	if err := os.MkdirAll(pc.Dir, 0o700); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	if err := os.WriteFile(pc.Config, []byte(pc.config()), 0o600); err != nil {
		return fmt.Errorf("start containerd: write config: %w", err)
	}
	pid, exited, err := startDetached([]string{bin, "--config", pc.Config, "--log-level", "warn"}, os.Environ(), pc.Log)
	if err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	if err := writePIDFile(pc.PIDFile, pid); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !containerdServing(ctx, pc.Socket) {
		select {
		case <-exited:
			return fmt.Errorf("containerd exited at start; its log %s ends:\n%s", pc.Log, tailFile(pc.Log, 20))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not serve at %s within 30s; its log %s ends:\n%s", pc.Socket, pc.Log, tailFile(pc.Log, 20))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("wait for containerd: %w", err)
		}
	}
	return nil
}

// stop removes every container of the daemon (its shims would outlive
// it), stops it, gracefully first, and removes its directory. It only
// signals the pid in the pid file if that process is this daemon.
func (pc privateContainerd) stop(ctx context.Context) error {
	var errs []error
	pid, err := readPIDFile(pc.PIDFile)
	if err != nil {
		errs = append(errs, err)
	}
	if containerdServing(ctx, pc.Socket) {
		if err := shoalrt.CleanupAllContainerd(ctx, pc.Socket); err != nil {
			errs = append(errs, err)
		}
	}
	if pid > 0 && isContainerdOf(cmdline(pid), pc.Config) {
		terminate([]int{pid}, 10*time.Second)
		if alive(pid) {
			errs = append(errs, fmt.Errorf("containerd (pid %d) survived SIGKILL", pid))
		}
	}
	// Shims of containers the cleanup could not remove.
	killReferencing(pc.Dir)
	if err := shoalrt.UnmountUnder(pc.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(pc.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove containerd directory: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop containerd of %s: %w", pc.Dir, err)
	}
	return nil
}
