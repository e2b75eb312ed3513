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
	cmd     *exec.Cmd
	log     *bytes.Buffer
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
	d := &Daemon{Address: sock, Dir: dir, log: &bytes.Buffer{}}
	d.cmd = exec.Command(bin, "--config", cfgPath, "--log-level", "warn")
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	// No Pdeathsig: it fires when the forking OS thread exits, and Go
	// retires threads that tests lock into other network namespaces.
	// A daemon orphaned by a crashed test run is swept by the next one.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	_ = os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(d.cmd.Process.Pid)), 0o600)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ready(sock) {
			return d, nil
		}
		if time.Now().After(deadline) || d.cmd.ProcessState != nil {
			d.Stop()
			return nil, fmt.Errorf("containerd did not come up at %s: %s", sock, d.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
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
// still running are killed with it.
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	d.removeContainers()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-done
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

// Log is what the daemon printed.
func (d *Daemon) Log() string {
	if d.log == nil {
		return ""
	}
	return d.log.String()
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
