package runtime_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	shoalrt "github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/runtime/containerdtest"
)

const helloRef = "shoal.test/hello:1"

// newContainerd starts a private containerd, imports the hello image and
// opens a driver on a fresh namespace; everything goes when the test ends.
func newContainerd(t *testing.T) (*shoalrt.Containerd, shoalrt.ContainerdConfig) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: containerd, network namespaces and cgroups")
	}
	d := containerdtest.Start(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", d.Log())
		}
	})
	ns := fmt.Sprintf("shoalrt-ctd-%d", os.Getpid())
	cfg := shoalrt.ContainerdConfig{
		Address: d.Address, Namespace: ns, StateDir: t.TempDir(),
		StopGrace: 2 * time.Second, PullTimeout: 20 * time.Second,
	}
	drv, err := shoalrt.NewContainerd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		drv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := shoalrt.CleanupContainerd(ctx, d.Address, ns); err != nil {
			t.Errorf("clean up containerd: %v", err)
		}
		if err := shoalrt.Cleanup(ns); err != nil {
			t.Errorf("clean up: %v", err)
		}
	})
	archive := containerdtest.BuildImage(t, "./examples/hello", helloRef)
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := drv.ImportImage(context.Background(), f)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	if len(imgs) != 1 || imgs[0].Name != helloRef {
		t.Fatalf("imported %+v, want one image %s", imgs, helloRef)
	}
	return drv, cfg
}

func helloSpec(id string) shoalrt.TaskSpec {
	return shoalrt.TaskSpec{
		ID: id, Job: "hello", Replica: 0, Driver: shoalrt.DriverContainerd, Image: helloRef,
		Env: map[string]string{"PORT": "8080", "SHOAL_JOB": "hello", "SHOAL_REPLICA": "0"}, Hostname: id,
		CPUMillis: 250, MemoryMB: 64, SpecHash: "abc",
	}
}

// get fetches url from inside the task's network namespace.
func get(t *testing.T, nsPath, url string) string {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return shoalrt.DialInNetNS(ctx, nsPath, network, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var lastErr error
	for i := 0; i < 50; i++ {
		resp, err := c.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(body)
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s in %s: %v", url, nsPath, lastErr)
	return ""
}

func TestContainerdRunsHardenedLimitedContainer(t *testing.T) {
	drv, cfg := newContainerd(t)
	ctx := context.Background()

	images, err := drv.ListImages(ctx)
	if err != nil || len(images) != 1 || images[0].Name != helloRef || images[0].Size == 0 {
		t.Fatalf("ListImages = %+v, %v", images, err)
	}

	st, err := drv.Start(ctx, helloSpec("hello-0"))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if st.State != shoalrt.StateRunning || st.PID <= 0 {
		t.Fatalf("status after start = %+v", st)
	}
	if body := get(t, st.NetNS, "http://127.0.0.1:8080/"); !strings.Contains(body, "hello from hello-0") {
		t.Fatalf("body = %q", body)
	}
	if _, err := drv.Start(ctx, helloSpec("hello-0")); !errors.Is(err, shoalrt.ErrExists) {
		t.Fatalf("second start: %v, want ErrExists", err)
	}

	// Hardening and limits, read from the kernel.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "Uid:\t65534"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("/proc/%d/status lacks %q", st.PID, want)
		}
	}
	if h := hostnameOf(t, st.PID); h != "hello-0" {
		t.Errorf("hostname = %q, want hello-0", h)
	}
	if limit := cgroupValue(t, st.PID, "memory", "memory.limit_in_bytes", "memory.max"); limit != fmt.Sprint(64<<20) {
		t.Errorf("memory limit = %s, want %d", limit, 64<<20)
	}
	if quota := cgroupValue(t, st.PID, "cpu", "cpu.cfs_quota_us", "cpu.max"); !strings.HasPrefix(quota, "25000") {
		t.Errorf("cpu quota = %s, want 25000 per 100000", quota)
	}
	if _, mem, err := drv.Stats(ctx, "hello-0"); err != nil || mem == 0 {
		t.Errorf("Stats = %d bytes, %v", mem, err)
	}
	waitForLog(t, drv.LogPath("hello-0"), "listening on :8080")

	// A second driver on the same namespace, as after an agent restart,
	// adopts the container as it is.
	drv2, err := shoalrt.NewContainerd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer drv2.Close()
	tasks, err := drv2.List(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].PID != st.PID || tasks[0].State != shoalrt.StateRunning ||
		tasks[0].SpecHash != "abc" || tasks[0].Job != "hello" {
		t.Fatalf("adopted = %+v, %v; want pid %d running", tasks, err, st.PID)
	}

	// Killed behind the driver's back: reported exited with the signal.
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := drv.Status(ctx, "hello-0")
		if err == nil && got.State == shoalrt.StateExited {
			if got.ExitCode != 128+9 {
				t.Errorf("exit code = %d, want 137", got.ExitCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task not reported exited: %+v, %v", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := drv.Stop(ctx, "hello-0"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(st.NetNS); !os.IsNotExist(err) {
		t.Errorf("netns %s left after stop: %v", st.NetNS, err)
	}
	if tasks, _ := drv.List(ctx); len(tasks) != 0 {
		t.Errorf("tasks after stop: %+v", tasks)
	}
	if err := drv.Stop(ctx, "hello-0"); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

func TestContainerdReadOnlyRootfsAndMounts(t *testing.T) {
	drv, _ := newContainerd(t)
	ctx := context.Background()
	spec := helloSpec("hello-1")
	spec.ReadOnlyRootfs = true
	spec.Mounts = []shoalrt.Mount{{Source: t.TempDir(), Target: "/data", ReadOnly: true}}
	st, err := drv.Start(ctx, spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	get(t, st.NetNS, "http://127.0.0.1:8080/")
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mounts", st.PID))
	if err != nil {
		t.Fatal(err)
	}
	if !hasMount(string(mounts), "/", "ro") || !hasMount(string(mounts), "/data", "ro") {
		t.Errorf("want / and /data read-only:\n%s", mounts)
	}
	began := time.Now()
	if err := drv.Stop(ctx, "hello-1"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	t.Logf("stop took %v", time.Since(began))
	if err := syscall.Kill(st.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pid %d still exists after stop: %v", st.PID, err)
	}
}

func TestContainerdMissingImageFailsFast(t *testing.T) {
	drv, _ := newContainerd(t)
	spec := helloSpec("nope-0")
	spec.Image = "registry.shoal.test/nope:1"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := drv.Start(ctx, spec)
	if err == nil || !strings.Contains(err.Error(), "registry.shoal.test/nope:1 is not present on this node and pulling it failed") {
		t.Fatalf("start with a missing image: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("start hung until the deadline")
	}
	if tasks, err := drv.List(ctx); err != nil || len(tasks) != 0 {
		t.Fatalf("tasks after failed start: %+v, %v", tasks, err)
	}
	if _, err := os.Stat("/run/netns/shoal-" + fmt.Sprintf("shoalrt-ctd-%d", os.Getpid()) + "-nope-0"); !os.IsNotExist(err) {
		t.Errorf("netns left after failed start: %v", err)
	}
}

func TestImageArchiveRejectsBadInput(t *testing.T) {
	if err := shoalrt.WriteImageArchive(io.Discard, "Not A Ref", shoalrt.ImageConfig{}, nil); err == nil {
		t.Error("bad reference accepted")
	}
	if err := shoalrt.WriteImageArchive(io.Discard, "x/y:1", shoalrt.ImageConfig{}, []shoalrt.ImageFile{{Path: "rel"}}); err == nil {
		t.Error("relative path accepted")
	}
}

func hasMount(mounts, target, opt string) bool {
	for _, line := range strings.Split(mounts, "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[1] == target && strings.Contains(","+f[3]+",", ","+opt+",") {
			return true
		}
	}
	return false
}

func hostnameOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := exec.Command("nsenter", "--uts", "--target", fmt.Sprint(pid), "hostname").Output()
	if err != nil {
		t.Logf("read hostname: %v", err)
		return ""
	}
	return strings.TrimSpace(string(data))
}

// cgroupValue reads a file of the process's cgroup in the v1 controller
// hierarchy, or the v2 file on a unified host.
func cgroupValue(t *testing.T, pid int, controller, v1File, v2File string) string {
	t.Helper()
	dir := cgroupDir(t, pid, controller)
	if _, err := os.Stat(filepath.Join(dir, v1File)); err == nil {
		return readTrim(t, filepath.Join(dir, v1File))
	}
	return readTrim(t, filepath.Join(dir, v2File))
}

// cgroupDir is the directory of the process's cgroup in the v1
// controller's hierarchy, or its v2 cgroup on a unified host.
func cgroupDir(t *testing.T, pid int, controller string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	unified := ""
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				return filepath.Join("/sys/fs/cgroup", parts[1], parts[2])
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = filepath.Join("/sys/fs/cgroup", parts[2])
		}
	}
	if unified == "" {
		t.Fatalf("no %s cgroup for pid %d", controller, pid)
	}
	return unified
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func waitForLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if strings.Contains(string(data), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s lacks %q: %q", path, want, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
