package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	shoalrt "github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/runtime/containerdtest"
)

const probeRef = "shoal.test/taskprobe:1"

// importProbe imports the taskprobe image (runtime/testdata/taskprobe)
// into drv's namespace.
func importProbe(t *testing.T, drv *shoalrt.Containerd) {
	t.Helper()
	archive := containerdtest.BuildImage(t, "./runtime/testdata/taskprobe", probeRef)
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := drv.ImportImage(context.Background(), f); err != nil {
		t.Fatalf("import taskprobe: %v", err)
	}
}

func probeSpec(id string, args ...string) shoalrt.TaskSpec {
	return shoalrt.TaskSpec{
		ID: id, Job: "probe", Driver: shoalrt.DriverContainerd, Image: probeRef, Args: args,
		Hostname: id, CPUMillis: 250, MemoryMB: 64,
	}
}

// capBit reports whether capability bit n is set in a /proc/PID/status
// capability line (CapEff, CapBnd, ...).
func capBit(t *testing.T, pid int, line string, n uint) bool {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(l, line+":"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<n) != 0
		}
	}
	t.Fatalf("no %s in /proc/%d/status", line, pid)
	return false
}

const capNetRaw = 13

func TestContainerdDropsNetRawUnlessAskedAndLimitsPids(t *testing.T) {
	drv, _ := newContainerd(t)
	ctx := context.Background()
	st, err := drv.Start(ctx, helloSpec("plain-0"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"CapBnd", "CapPrm", "CapEff"} {
		if capBit(t, st.PID, line, capNetRaw) {
			t.Errorf("a default container has CAP_NET_RAW in %s", line)
		}
	}
	if got := cgroupValue(t, st.PID, "pids", "pids.max", "pids.max"); got != strconv.Itoa(shoalrt.DefaultPids) {
		t.Errorf("pids.max = %s, want the default %d", got, shoalrt.DefaultPids)
	}

	spec := helloSpec("raw-0")
	spec.Env["PORT"] = "8081"
	spec.CapAdd, spec.Pids = []string{"NET_RAW"}, 77
	st, err = drv.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !capBit(t, st.PID, "CapBnd", capNetRaw) {
		t.Error("a container that asks for NET_RAW lacks it in its bounding set")
	}
	if got := cgroupValue(t, st.PID, "pids", "pids.max", "pids.max"); got != "77" {
		t.Errorf("pids.max = %s, want 77", got)
	}
}

func TestContainerdExecInRunsInsideTheContainer(t *testing.T) {
	drv, _ := newContainerd(t)
	importProbe(t, drv)
	ctx := context.Background()
	st, err := drv.Start(ctx, probeSpec("probe-0", "serve"))
	if err != nil {
		t.Fatal(err)
	}
	waitForLog(t, drv.LogPath("probe-0"), "listening")

	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := drv.ExecIn(cctx, "probe-0", []string{"/taskprobe", "inside"})
	if err != nil || strings.TrimSpace(string(out)) != "inside" {
		t.Fatalf("ExecIn inside = %q, %v", out, err)
	}
	// The host has no /taskprobe: it cannot have run there.
	if _, err := os.Stat("/taskprobe"); err == nil {
		t.Fatal("this host has a /taskprobe; the test proves nothing")
	}
	_, err = drv.ExecIn(cctx, "probe-0", []string{"/no/such/program"})
	if err == nil {
		t.Fatal("ExecIn of a missing program succeeded")
	}
	if _, err := drv.ExecIn(cctx, "nope-0", []string{"/taskprobe", "inside"}); !errors.Is(err, shoalrt.ErrNotFound) {
		t.Fatalf("ExecIn in an unknown container = %v, want ErrNotFound", err)
	}

	out, err = drv.ExecIn(cctx, "probe-0", []string{"/taskprobe", "spew", "100000"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), strings.Repeat("x", shoalrt.ExecOutputLimit)) || len(out) > shoalrt.ExecOutputLimit+64 {
		t.Fatalf("output of 100000 bytes not capped at %d: got %d bytes", shoalrt.ExecOutputLimit, len(out))
	}

	// On timeout the command and its child both go; the container stays.
	tctx, tcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer tcancel()
	began := time.Now()
	out, err = drv.ExecIn(tctx, "probe-0", []string{"/taskprobe", "spawn-and-hang"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ExecIn of a hanging command = %v (%q), want DeadlineExceeded", err, out)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("ExecIn returned %s after its deadline", took)
	}
	procs := cgroupProcsOf(t, st.PID)
	if len(procs) != 1 || procs[0] != st.PID {
		t.Fatalf("processes in the container after the timeout: %v, want only its init %d", procs, st.PID)
	}
	if body := get(t, st.NetNS, "http://127.0.0.1:8080/"); !strings.Contains(body, "ok probe-0") {
		t.Fatalf("the container stopped answering: %q", body)
	}
}

func TestContainerdForkBombStaysInsideItsContainer(t *testing.T) {
	drv, _ := newContainerd(t)
	importProbe(t, drv)
	ctx := context.Background()
	bystander, err := drv.Start(ctx, helloSpec("hello-0"))
	if err != nil {
		t.Fatal(err)
	}
	spec := probeSpec("bomb-0", "forkbomb")
	spec.Pids, spec.MemoryMB = 64, 256
	bomb, err := drv.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		n := len(cgroupProcsOf(t, bomb.PID))
		if n > 64 {
			t.Fatalf("the bomb has %d processes, over its limit of 64", n)
		}
		if n >= 60 {
			t.Logf("bomb at %d processes (limit 64)", n)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bomb never reached its limit: %d processes", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if body := get(t, bystander.NetNS, "http://127.0.0.1:8080/"); !strings.Contains(body, "hello from") {
		t.Fatalf("the bystander stopped answering: %q", body)
	}
	began := time.Now()
	if err := drv.Stop(ctx, "bomb-0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopping the bomb took %s", time.Since(began).Round(time.Millisecond))
	if err := syscall.Kill(bomb.PID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatal("the bomb's first process survived Stop")
	}
}

// cgroupProcsOf lists the processes in pid's pids cgroup (v1) or its
// cgroup (v2).
func cgroupProcsOf(t *testing.T, pid int) []int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cgroupDir(t, pid, "pids"), "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(raw)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}
