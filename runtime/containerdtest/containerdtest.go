// Package containerdtest starts a private containerd daemon for tests, so
// root integration and e2e tests need no system daemon and leave no state
// in the machine's own containerd.
package containerdtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"

	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// EnvAddress names an existing containerd socket to use instead of
// starting one.
const EnvAddress = "SHOAL_CONTAINERD_ADDRESS"

// Daemon is a containerd started for tests.
type Daemon struct {
	Address string
	Dir     string
	bin     string
	config  string
	cmd     *exec.Cmd
	// exited is closed once the current process of cmd has been reaped.
	exited chan struct{}
	// killed is set by Kill and cleared by a successful Restart.
	killed bool
	log    *syncBuffer
}

// Start starts containerd with its own root, state and socket under a new
// directory (or returns the one named by EnvAddress) and stops it, and
// removes the directory, when the test ends. It fails the test if
// containerd is not installed or does not come up.
func Start(t testing.TB) *Daemon {
	t.Helper()
	if addr := os.Getenv(EnvAddress); addr != "" {
		return &Daemon{Address: addr}
	}
	return StartPrivate(t)
}

// StartPrivate is Start without the EnvAddress shortcut: the daemon is
// always the test's own, so the test may Kill and Restart it without
// disturbing anyone else's containers.
func StartPrivate(t testing.TB) *Daemon {
	t.Helper()
	d, err := StartDaemon()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	return d
}

// StartDaemon starts a private containerd; Stop ends it.
func StartDaemon() (*Daemon, error) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return nil, fmt.Errorf("containerd is not installed (apt-get install containerd runc): %w", err)
	}
	sweepStale()
	// Short path: the socket name must fit in sun_path (108 bytes).
	dir, err := os.MkdirTemp("/var/lib", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	sock := filepath.Join(dir, "c.sock")
	// The state directory is on disk, not on tmpfs as on a real machine,
	// which makes no difference to a daemon that is restarted: it finds
	// its shims again from there.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	d := &Daemon{Address: sock, Dir: dir, bin: bin, config: cfgPath, log: &syncBuffer{}}
	if err := d.spawn(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	if err := d.waitReady(); err != nil {
		d.Stop()
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	return d, nil
}

// spawn starts the daemon process with the daemon's config.
func (d *Daemon) spawn() error {
	cmd := exec.Command(d.bin, "--config", d.config, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = d.log, d.log
	// No Pdeathsig: it fires when the forking OS thread exits, and Go
	// retires threads that tests lock into other network namespaces.
	// A daemon orphaned by a crashed test run is swept by the next one.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	d.cmd, d.exited = cmd, exited
	_ = os.WriteFile(filepath.Join(d.Dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
	return nil
}

// waitReady waits until the daemon serves on its socket.
func (d *Daemon) waitReady() error {
	deadline := time.Now().Add(30 * time.Second)
	for !ready(d.Address) {
		if !d.Running() {
			return fmt.Errorf("containerd exited before serving at %s: %s", d.Address, d.Log())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not come up at %s: %s", d.Address, d.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// Running reports whether the daemon process started by this process is
// alive (false for a daemon named by EnvAddress).
func (d *Daemon) Running() bool {
	if d.cmd == nil || d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// Kill ends the daemon with SIGKILL, as a crash does, and waits until it
// is gone. Only the daemon dies: shims and their containers keep running,
// as they do when a package upgrade restarts containerd. Restart brings it
// back.
func (d *Daemon) Kill() error {
	if !d.Running() {
		return fmt.Errorf("kill containerd at %s: not running, or not started by this process", d.Address)
	}
	// The daemon only, not its process group: shims are in groups of
	// their own, but nothing else of the group should die either.
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill containerd at %s: %w", d.Address, err)
	}
	select {
	case <-d.exited:
		d.killed = true
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kill containerd at %s: pid %d still there after SIGKILL", d.Address, d.cmd.Process.Pid)
	}
}

// Restart starts a daemon that Kill ended again, with the same config,
// socket, root and state directories, and waits until it serves. The new
// daemon reconnects to the shims the old one left running.
func (d *Daemon) Restart() error {
	if d.cmd == nil {
		return fmt.Errorf("restart containerd at %s: not started by this process", d.Address)
	}
	if d.Running() {
		return fmt.Errorf("restart containerd at %s: still running", d.Address)
	}
	if err := d.spawn(); err != nil {
		return fmt.Errorf("restart containerd at %s: %w", d.Address, err)
	}
	if err := d.waitReady(); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	d.killed = false
	return nil
}

func ready(sock string) bool {
	if _, err := os.Stat(sock); err != nil {
		return false
	}
	cl, err := client.New(sock, client.WithTimeout(time.Second))
	if err != nil {
		return false
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ok, err := cl.IsServing(ctx)
	return err == nil && ok
}

// Stop ends the daemon and removes its directory. Shims of containers
// still running are killed with it. A daemon that Kill ended is started
// again first, so that its containers can be removed properly.
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	if d.killed && !d.Running() {
		if err := d.Restart(); err != nil && !d.Running() {
			// No daemon to remove them through: end the shims at least.
			d.killShims()
		}
	}
	if d.Running() {
		d.removeContainers()
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.exited
		}
	}
	d.cmd = nil
	// Mounts left by a crashed container would make RemoveAll fail; the
	// overlay snapshots live under root/.
	_ = shoalrt.UnmountUnder(d.Dir)
	if err := os.RemoveAll(d.Dir); err != nil {
		return fmt.Errorf("remove containerd dir: %w", err)
	}
	return nil
}

// killShims sends SIGKILL to every shim that talks to this daemon's
// socket; for when the daemon cannot be brought back to delete them.
func (d *Daemon) killShims() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(raw), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == d.Address {
				if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				break
			}
		}
	}
}

const dirPrefix = "shoal-ctd-"

// sweepStale stops daemons left by test processes that died without
// stopping them (their test binary is gone, so nothing else will) and
// removes their directories. A directory whose daemon's parent still
// runs belongs to a concurrent test run and is left alone.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join("/var/lib", dirPrefix+"*"))
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, "pid"))
		pid, _ := strconv.Atoi(string(raw))
		if err != nil || pid <= 0 {
			continue
		}
		if ppid := parentOf(pid); ppid > 1 {
			continue // its test process is alive
		}
		d := &Daemon{Address: filepath.Join(dir, "c.sock"), Dir: dir}
		if syscall.Kill(pid, 0) == nil {
			if p, err := os.FindProcess(pid); err == nil {
				d.cmd = &exec.Cmd{Process: p}
				d.stopOrphan()
				continue
			}
		}
		_ = shoalrt.UnmountUnder(dir)
		_ = os.RemoveAll(dir)
	}
}

// parentOf returns pid's parent, or 0 if pid is gone.
func parentOf(pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may contain spaces: fields start after ")".
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0
	}
	f := bytes.Fields(raw[i+1:])
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(string(f[1]))
	return ppid
}

// stopOrphan stops a daemon this process did not start.
func (d *Daemon) stopOrphan() {
	d.removeContainers()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(d.cmd.Process.Pid, 0) == nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL)
	_ = shoalrt.UnmountUnder(d.Dir)
	_ = os.RemoveAll(d.Dir)
}

// removeContainers removes every container of the daemon: shims outlive
// it, so they go first.
func (d *Daemon) removeContainers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = shoalrt.CleanupAllContainerd(ctx, d.Address)
}

// Log is what the daemon printed, over all its starts.
func (d *Daemon) Log() string {
	if d.log == nil {
		return ""
	}
	return d.log.String()
}

// syncBuffer is a bytes.Buffer that the daemon's output copier writes
// while a test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// BuildImage builds the Go main package at pkg (a path relative to the
// module root, e.g. "./examples/hello") as a static binary and writes an
// OCI image archive named ref whose entrypoint is that binary, running as
// nobody. It returns the archive's path, removed when the test ends.
func BuildImage(t testing.TB, pkg, ref string) string {
	t.Helper()
	dir := t.TempDir()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "app")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "image.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	name := "/" + filepath.Base(filepath.Clean(pkg))
	err = shoalrt.WriteImageArchive(f, ref, shoalrt.ImageConfig{Entrypoint: []string{name}, User: "65534:65534"},
		[]shoalrt.ImageFile{{Path: name, Mode: 0o755, Data: data}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return archive
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	return filepath.Dir(string(bytes.TrimSpace(out))), nil
}
