package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// These are root integration tests: they create real network namespaces
// and cgroups, all named with a namespace of the test's own, and remove
// them when the test ends, also when it fails.

var nsCounter atomic.Int64

// testNamespace returns a driver namespace no other test or process uses,
// and removes whatever is left of it when the test ends.
func testNamespace(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and cgroups")
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	ns := fmt.Sprintf("rtt%d-%s-%d", os.Getpid(), hex.EncodeToString(b[:]), nsCounter.Add(1))
	t.Cleanup(func() {
		if err := Cleanup(ns); err != nil {
			t.Errorf("Cleanup(%s): %v", ns, err)
		}
		assertNothingLeft(t, ns)
	})
	return ns
}

// assertNothingLeft checks that no netns or cgroup of ns exists.
func assertNothingLeft(t *testing.T, ns string) {
	t.Helper()
	names, err := listNetns(netnsName(ns, ""))
	if err != nil {
		t.Fatal(err)
	}
	if len(names) > 0 {
		t.Errorf("network namespaces left behind: %v", names)
	}
	cg, err := detectCgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range cg.namespaceDirs(ns) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup left behind: %s", d)
		}
	}
	claims, err := uidClaimsOf(ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) > 0 {
		t.Errorf("task uids left claimed: %v", claims)
	}
}

type testDriver struct {
	*Exec
	t   *testing.T
	ns  string
	dir string
}

// openDriver opens an exec driver on dir (a new temp dir if empty) and
// closes it when the test ends.
func openDriver(t *testing.T, ns, dir string, grace time.Duration) *testDriver {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e, err := NewExec(ExecConfig{
		StateDir:  dir,
		Namespace: ns,
		StopGrace: grace,
		Log:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("NewExec: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return &testDriver{Exec: e, t: t, ns: ns, dir: dir}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (d *testDriver) start(spec TaskSpec) TaskStatus {
	d.t.Helper()
	st, err := d.Start(context.Background(), spec)
	if err != nil {
		d.t.Fatalf("Start(%s): %v", spec.ID, err)
	}
	return st
}

// waitState polls the task's status until it reaches state.
func (d *testDriver) waitState(id string, state State) TaskStatus {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := d.Status(context.Background(), id)
		if err != nil {
			d.t.Fatalf("Status(%s): %v", id, err)
		}
		if st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("task %s: state %s after 10s, want %s", id, st.State, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// uidOf is the user id the driver gave task id.
func (d *testDriver) uidOf(id string) uint32 {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.tasks[id]
	if !ok {
		d.t.Fatalf("no task %s", id)
	}
	return t.rec.UID
}

func sleepSpec(id string) TaskSpec {
	return TaskSpec{ID: id, Job: "sleeper", Command: []string{"/bin/sleep", "1000"}, SpecHash: "hash-" + id}
}

func shSpec(id, script string) TaskSpec {
	return TaskSpec{ID: id, Job: "sh", Command: []string{"sh", "-c", script}}
}

// procField returns the first value of a "Key:" line of /proc/<pid>/status.
func procField(t *testing.T, pid int, key string) string {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				return f[0]
			}
			return ""
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// pidGone reports whether pid no longer runs (gone or a zombie).
func pidGone(pid int) bool {
	st, err := readProcStat(pid)
	return err != nil || st.State == 'Z'
}

func TestStartRunsTaskInItsOwnNamespacesAndCgroupAsAUserOfItsOwn(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	spec := sleepSpec("web-0")
	spec.CPUMillis, spec.MemoryMB = 250, 64
	st := d.start(spec)
	if st.State != StateRunning || st.PID <= 0 || st.SpecHash != "hash-web-0" || st.Job != "sleeper" {
		t.Fatalf("Start returned %+v", st)
	}
	pid := st.PID

	// Network namespace: not ours, the named one, with lo up.
	taskNet, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	ourNet, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if taskNet == ourNet {
		t.Fatalf("task shares the test's network namespace %s", ourNet)
	}
	if want := "/run/netns/" + netnsName(d.ns, "web-0"); st.NetNS != want {
		t.Fatalf("NetNS = %s, want %s", st.NetNS, want)
	}
	var named, task unix.Stat_t
	if err := unix.Stat(st.NetNS, &named); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &task); err != nil {
		t.Fatal(err)
	}
	if named.Ino != task.Ino || named.Dev != task.Dev {
		t.Fatalf("task's netns is not %s", st.NetNS)
	}
	nsh, err := netns.GetFromPath(st.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("lo is down in the task's netns")
	}

	// Identity and process group.
	uid := d.uidOf("web-0")
	if r := DefaultTaskUIDs; uid < r.First || uid-r.First >= r.Count {
		t.Fatalf("task got uid %d, outside the default range %s", uid, r)
	}
	if got, gid := procField(t, pid, "Uid"), procField(t, pid, "Gid"); got != fmt.Sprint(uid) || gid != fmt.Sprint(uid) {
		t.Fatalf("task runs as uid %s gid %s, want %d for both", got, gid, uid)
	}
	if holder, err := claimHolder(uid); err != nil || holder != d.ns+"/web-0" {
		t.Fatalf("uid %d is claimed by %q (%v), want %s/web-0", uid, holder, err, d.ns)
	}
	if groups := procField(t, pid, "Groups"); groups != "" {
		t.Fatalf("task kept supplementary groups %q", groups)
	}
	pst, err := readProcStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if pst.PGRP != pid {
		t.Fatalf("task's process group is %d, want its own (%d)", pst.PGRP, pid)
	}

	// Working directory.
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var cwdStat unix.Stat_t
	if err := unix.Stat(cwd, &cwdStat); err != nil {
		t.Fatal(err)
	}
	if cwd != filepath.Join(d.dir, "work", "web-0") || cwdStat.Uid != uid {
		t.Fatalf("cwd %s owned by %d, want %s owned by %d", cwd, cwdStat.Uid, filepath.Join(d.dir, "work", "web-0"), uid)
	}

	// Mount namespace: its own, with a /proc that hides other users'
	// processes.
	taskMnt, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		t.Fatal(err)
	}
	if ourMnt, _ := os.Readlink("/proc/self/ns/mnt"); taskMnt == ourMnt {
		t.Fatalf("task shares the test's mount namespace %s", ourMnt)
	}
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mounts), " /proc ") || !strings.Contains(string(mounts), "hidepid=invisible") {
		t.Fatalf("the task's /proc is not mounted hidepid=invisible:\n%s", mounts)
	}

	// Cgroups: the process is in them and the limits are set.
	cg := d.cg
	procCgroup, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := "/shoal/" + d.ns + "/web-0"
	controllers := []string{"cpu", "cpuacct", "memory", "pids"}
	if cg.v2 {
		controllers = []string{""}
	}
	for _, ctl := range controllers {
		found := false
		for line := range strings.Lines(string(procCgroup)) {
			// hierarchy-id:controller,list:/path
			parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
			if len(parts) == 3 && (ctl == "" && parts[1] == "" || ctl != "" && slices.Contains(strings.Split(parts[1], ","), ctl)) {
				found = true
				if parts[2] != want {
					t.Fatalf("task is in %s cgroup %s, want %s", ctl, parts[2], want)
				}
			}
		}
		if !found {
			t.Fatalf("task has no %q cgroup:\n%s", ctl, procCgroup)
		}
	}
	if cg.v2 {
		dir := cg.taskDirs(d.ns, "web-0")[0]
		if got := readTrim(t, filepath.Join(dir, "memory.max")); got != strconv.Itoa(64<<20) {
			t.Fatalf("memory.max = %s", got)
		}
		if got := readTrim(t, filepath.Join(dir, "cpu.max")); got != "25000 100000" {
			t.Fatalf("cpu.max = %s", got)
		}
		if got := readTrim(t, filepath.Join(dir, "pids.max")); got != strconv.Itoa(DefaultPids) {
			t.Fatalf("pids.max = %s, want %d", got, DefaultPids)
		}
	} else {
		if got := readTrim(t, filepath.Join(cg.taskDir("memory", d.ns, "web-0"), "memory.limit_in_bytes")); got != strconv.Itoa(64<<20) {
			t.Fatalf("memory.limit_in_bytes = %s, want %d", got, 64<<20)
		}
		cpu := cg.taskDir("cpu", d.ns, "web-0")
		if q, p := readTrim(t, filepath.Join(cpu, "cpu.cfs_quota_us")), readTrim(t, filepath.Join(cpu, "cpu.cfs_period_us")); q != "25000" || p != "100000" {
			t.Fatalf("cfs quota/period = %s/%s, want 25000/100000", q, p)
		}
		if got := readTrim(t, filepath.Join(cg.taskDir("pids", d.ns, "web-0"), "pids.max")); got != strconv.Itoa(DefaultPids) {
			t.Fatalf("pids.max = %s, want %d", got, DefaultPids)
		}
	}
	cpuNanos, memBytes, err := d.Stats(context.Background(), "web-0")
	if err != nil {
		t.Fatal(err)
	}
	if cpuNanos == 0 || memBytes == 0 {
		t.Fatalf("Stats = cpu %d ns, memory %d bytes; want both > 0", cpuNanos, memBytes)
	}

	list, err := d.List(context.Background())
	if err != nil || len(list) != 1 || list[0].ID != "web-0" || list[0].State != StateRunning {
		t.Fatalf("List = %+v, %v", list, err)
	}

	// Stop removes everything but the log.
	if err := d.Stop(context.Background(), "web-0"); err != nil {
		t.Fatal(err)
	}
	if !pidGone(pid) {
		t.Fatal("process survived Stop")
	}
	if exists(st.NetNS) {
		t.Fatal("netns survived Stop")
	}
	for _, dir := range cg.taskDirs(d.ns, "web-0") {
		if exists(dir) {
			t.Fatalf("cgroup %s survived Stop", dir)
		}
	}
	if exists(filepath.Join(d.dir, "tasks", "web-0.json")) || exists(filepath.Join(d.dir, "work", "web-0")) {
		t.Fatal("status file or working dir survived Stop")
	}
	if !exists(st.LogPath) {
		t.Fatal("Stop removed the log")
	}
	if holder, _ := claimHolder(uid); holder != "" {
		t.Fatalf("uid %d still claimed by %q after Stop", uid, holder)
	}
	if list, _ := d.List(context.Background()); len(list) != 0 {
		t.Fatalf("List after Stop = %+v", list)
	}
}

func TestLogFileReceivesStdoutAndStderr(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	d.start(shSpec("echo-0", "echo hello; echo oops >&2"))
	st := d.waitState("echo-0", StateExited)
	if st.ExitCode != 0 {
		t.Fatalf("exit code %d", st.ExitCode)
	}
	if want := filepath.Join(d.dir, "logs", "echo-0.log"); st.LogPath != want {
		t.Fatalf("LogPath = %s, want %s", st.LogPath, want)
	}
	if got := readTrim(t, st.LogPath); got != "hello\noops" {
		t.Fatalf("log holds %q", got)
	}
	// A restarted task appends to the same log.
	if err := d.Stop(context.Background(), "echo-0"); err != nil {
		t.Fatal(err)
	}
	d.start(shSpec("echo-0", "echo again"))
	d.waitState("echo-0", StateExited)
	if got := readTrim(t, st.LogPath); got != "hello\noops\nagain" {
		t.Fatalf("log after restart holds %q", got)
	}
}

func TestExitCodeIsRecordedAndSurvivesReopen(t *testing.T) {
	ns := testNamespace(t)
	d := openDriver(t, ns, "", time.Second)
	before := time.Now()
	d.start(shSpec("fail-0", "exit 3"))
	st := d.waitState("fail-0", StateExited)
	if st.ExitCode != 3 || st.FinishedAt.Before(before) {
		t.Fatalf("got %+v, want exited with code 3 and a finish time", st)
	}
	if _, err := d.Start(context.Background(), shSpec("fail-0", "true")); !errors.Is(err, ErrExists) {
		t.Fatalf("Start over an exited task = %v, want ErrExists", err)
	}
	d.start(shSpec("killed-0", "kill -9 $$"))
	if st := d.waitState("killed-0", StateExited); st.ExitCode != 128+9 {
		t.Fatalf("killed task: exit code %d, want 137", st.ExitCode)
	}

	d.Close()
	d2 := openDriver(t, ns, d.dir, time.Second)
	st2, err := d2.Status(context.Background(), "fail-0")
	if err != nil || st2.State != StateExited || st2.ExitCode != 3 {
		t.Fatalf("after reopen: %+v, %v; want exited with code 3", st2, err)
	}
	for _, id := range []string{"fail-0", "killed-0"} {
		if err := d2.Stop(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStopKillsTaskIgnoringSIGTERMAfterGrace(t *testing.T) {
	const grace = 400 * time.Millisecond
	d := openDriver(t, testNamespace(t), "", grace)
	st := d.start(shSpec("stubborn-0", `trap "" TERM; sleep 1000`))
	dirs := d.cg.taskDirs(d.ns, "stubborn-0")
	var pids []int
	deadline := time.Now().Add(5 * time.Second)
	for len(pids) < 2 { // sh and its sleep
		if time.Now().After(deadline) {
			t.Fatalf("want 2 processes in the task's cgroup, have %v", pids)
		}
		time.Sleep(10 * time.Millisecond)
		var err error
		if pids, err = cgroupProcs(dirs); err != nil {
			t.Fatal(err)
		}
	}
	// sh set its trap before forking sleep, which inherits it.

	began := time.Now()
	if err := d.Stop(context.Background(), "stubborn-0"); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < grace {
		t.Fatalf("Stop took %s, less than the %s grace: the task did not ignore SIGTERM?", took, grace)
	}
	for _, pid := range pids {
		if !pidGone(pid) {
			t.Fatalf("pid %d survived Stop", pid)
		}
	}
	if exists(st.NetNS) {
		t.Fatal("netns survived Stop")
	}
	for _, dir := range dirs {
		if exists(dir) {
			t.Fatalf("cgroup %s survived Stop", dir)
		}
	}
}

func TestStopIsIdempotent(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	ctx := context.Background()
	if err := d.Stop(ctx, "never-started"); err != nil {
		t.Fatalf("Stop of an unknown task: %v", err)
	}
	if _, _, err := d.Stats(ctx, "never-started"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stats of an unknown task = %v, want ErrNotFound", err)
	}
	d.start(sleepSpec("twice-0"))
	for i := range 2 {
		if err := d.Stop(ctx, "twice-0"); err != nil {
			t.Fatalf("Stop #%d: %v", i+1, err)
		}
	}
	if err := d.Stop(ctx, "Bad ID"); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Stop with a bad id = %v, want ErrInvalidSpec", err)
	}
}

func TestNewExecAdoptsRunningTask(t *testing.T) {
	ns := testNamespace(t)
	d := openDriver(t, ns, "", time.Second)
	st := d.start(sleepSpec("keep-0"))
	if _, err := NewExec(ExecConfig{StateDir: d.dir, Namespace: ns}); err == nil {
		t.Fatal("a second driver opened the state dir while the first has it")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if pidGone(st.PID) {
		t.Fatal("Close killed the task")
	}
	if _, err := d.List(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("List after Close = %v, want ErrClosed", err)
	}

	d2 := openDriver(t, ns, d.dir, time.Second)
	list, err := d2.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("adopted %+v, want one task", list)
	}
	got := list[0]
	if got.ID != "keep-0" || got.State != StateRunning || got.PID != st.PID || got.SpecHash != st.SpecHash ||
		got.NetNS != st.NetNS || !got.StartedAt.Equal(st.StartedAt) {
		t.Fatalf("adopted %+v, want %+v", got, st)
	}
	if err := d2.Stop(context.Background(), "keep-0"); err != nil {
		t.Fatal(err)
	}
	if !pidGone(st.PID) || exists(st.NetNS) {
		t.Fatal("Stop through the adopting driver left the process or netns")
	}
}

func TestNewExecReportsTaskThatDiedUnwatchedAsExited(t *testing.T) {
	ns := testNamespace(t)
	d := openDriver(t, ns, "", time.Second)
	st := d.start(sleepSpec("lost-0"))
	d.Close()
	// The task dies while no driver watches; its parent (this process)
	// reaps it, as init would after an agent restart.
	if err := unix.Kill(st.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(st.PID, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}

	d2 := openDriver(t, ns, d.dir, time.Second)
	got, err := d2.Status(context.Background(), "lost-0")
	if err != nil || got.State != StateExited || got.ExitCode != -1 {
		t.Fatalf("got %+v, %v; want exited with unknown code -1", got, err)
	}
	if !exists(got.NetNS) {
		t.Fatal("the dead task's netns should remain until Stop")
	}
	if err := d2.Stop(context.Background(), "lost-0"); err != nil {
		t.Fatal(err)
	}
	if exists(got.NetNS) {
		t.Fatal("Stop left the dead task's netns")
	}
}

func TestAdoptedTaskExitIsDetected(t *testing.T) {
	ns := testNamespace(t)
	d := openDriver(t, ns, "", time.Second)
	st := d.start(sleepSpec("short-0"))
	d.Close()
	d2 := openDriver(t, ns, d.dir, time.Second)
	if err := unix.Kill(st.PID, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	got := d2.waitState("short-0", StateExited)
	// This process is still the parent, so the code is known here; after
	// a real agent restart it is -1.
	if got.ExitCode != 128+int(syscall.SIGTERM) && got.ExitCode != -1 {
		t.Fatalf("exit code %d", got.ExitCode)
	}
}

func TestDriversWithDifferentNamespacesAreIsolated(t *testing.T) {
	a := openDriver(t, testNamespace(t), "", time.Second)
	b := openDriver(t, testNamespace(t), "", time.Second)
	stA := a.start(sleepSpec("web-0"))
	stB := b.start(sleepSpec("web-0")) // same task id, other namespace
	if stA.NetNS == stB.NetNS {
		t.Fatalf("both tasks got netns %s", stA.NetNS)
	}
	for _, d := range []*testDriver{a, b} {
		list, err := d.List(context.Background())
		if err != nil || len(list) != 1 {
			t.Fatalf("driver %s lists %+v, %v; want only its own task", d.ns, list, err)
		}
	}
	if err := a.Stop(context.Background(), "web-0"); err != nil {
		t.Fatal(err)
	}
	if pidGone(stB.PID) || !exists(stB.NetNS) {
		t.Fatal("stopping a task of one namespace hurt the other's")
	}
	if err := Cleanup(a.ns); err != nil {
		t.Fatal(err)
	}
	if pidGone(stB.PID) || !exists(stB.NetNS) {
		t.Fatal("Cleanup of one namespace hurt the other's task")
	}
}

// Namespaces may contain '-', so a namespace and a longer one sharing its
// prefix produce netns names that share a prefix too.
func TestCleanupSparesNamespaceWithSamePrefix(t *testing.T) {
	base := testNamespace(t)
	longer := base + "-x"
	t.Cleanup(func() {
		if err := Cleanup(longer); err != nil {
			t.Errorf("Cleanup(%s): %v", longer, err)
		}
		assertNothingLeft(t, longer)
	})
	short := openDriver(t, base, "", time.Second)
	long := openDriver(t, longer, "", time.Second)
	stShort := short.start(sleepSpec("web-0"))
	stLong := long.start(sleepSpec("web-0")) // netns shoal-<base>-x-web-0
	if err := Cleanup(base); err != nil {
		t.Fatal(err)
	}
	if !pidGone(stShort.PID) || exists(stShort.NetNS) {
		t.Fatal("Cleanup left its own namespace's task")
	}
	if pidGone(stLong.PID) || !exists(stLong.NetNS) {
		t.Fatalf("Cleanup(%s) removed %s of namespace %s", base, stLong.NetNS, longer)
	}
	// A task whose netns name collides with the other namespace's is
	// refused without touching the other's netns.
	if _, err := short.Start(context.Background(), sleepSpec("x-web-0")); err == nil {
		t.Fatal("Start of a colliding netns name succeeded")
	}
	if err := short.Stop(context.Background(), "x-web-0"); err != nil {
		t.Fatal(err)
	}
	if pidGone(stLong.PID) || !exists(stLong.NetNS) {
		t.Fatal("a colliding Start or Stop removed the other namespace's netns")
	}
}

func TestStartRejectsInvalidSpecs(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	for _, tc := range []struct {
		name string
		spec TaskSpec
		want string
	}{
		{"empty command", TaskSpec{ID: "a-0"}, "command: required"},
		{"bad id", TaskSpec{ID: "A_0", Command: []string{"/bin/true"}}, `id "A_0"`},
		{"relative path", TaskSpec{ID: "a-0", Command: []string{"bin/true"}}, "absolute path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.Start(context.Background(), tc.spec)
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want ErrInvalidSpec mentioning %q", err, tc.want)
			}
		})
	}
	_, err := d.Start(context.Background(), TaskSpec{ID: "a-0", Command: []string{"no-such-program-here"}})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("Start of a missing program = %v, want a not-found error", err)
	}
	if list, _ := d.List(context.Background()); len(list) != 0 {
		t.Fatalf("rejected specs left tasks: %+v", list)
	}
}

func TestFailedStartLeavesNothingBehind(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "script")
	if err := os.WriteFile(notExec, []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := d.Start(context.Background(), TaskSpec{ID: "broken-0", Command: []string{notExec}})
	if err == nil {
		t.Fatal("Start of an unrunnable program succeeded")
	}
	if exists(netnsPath(d.ns, "broken-0")) || exists(filepath.Join(d.dir, "tasks", "broken-0.json")) {
		t.Fatal("failed Start left its netns or status file")
	}
	for _, dir := range d.cg.taskDirs(d.ns, "broken-0") {
		if exists(dir) {
			t.Fatalf("failed Start left cgroup %s", dir)
		}
	}
}

func TestStartedTaskSeesItsEnvironment(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	spec := shSpec("env-0", `echo "$GREETING"; pwd; id -u`)
	spec.Env = map[string]string{"GREETING": "hi there"}
	d.start(spec)
	st := d.waitState("env-0", StateExited)
	raw, err := os.ReadFile(st.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	want := "hi there\n" + filepath.Join(d.dir, "work", "env-0") + "\n" + fmt.Sprint(d.uidOf("env-0")) + "\n"
	if string(raw) != want {
		t.Fatalf("task printed %q, want %q", raw, want)
	}
}

func TestClosedDriverRefusesCalls(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	d.Close()
	ctx := context.Background()
	if _, err := d.Start(ctx, sleepSpec("x-0")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start = %v", err)
	}
	if err := d.Stop(ctx, "x-0"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Stop = %v", err)
	}
	if _, _, err := d.Stats(ctx, "x-0"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Stats = %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}
