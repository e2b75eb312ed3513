package runtime

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// privateUIDs is a small uid range no other test or agent uses, so a
// test can count on which uids it gets.
func privateUIDs(t *testing.T, count uint32) UIDRange {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	// 2.1e9 + a multiple of 1000 below 45e6: clear of the default range.
	first := 2_100_000_000 + binary.BigEndian.Uint32(b[:])%45_000*1000
	return UIDRange{First: first, Count: count}
}

func openDriverWithUIDs(t *testing.T, ns, dir string, uids UIDRange) *testDriver {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e, err := NewExec(ExecConfig{
		StateDir: dir, Namespace: ns, StopGrace: time.Second, TaskUIDs: uids,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("NewExec: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return &testDriver{Exec: e, t: t, ns: ns, dir: dir}
}

// waitLog waits until the task's log contains want and returns the log.
func (d *testDriver) waitLog(id, want string) string {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		raw, _ := os.ReadFile(d.logPath(id))
		if strings.Contains(string(raw), want) {
			return string(raw)
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("log of %s lacks %q: %q", id, want, raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTasksCannotSeeEachOtherOrTheAgent(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	secret := sleepSpec("secret-0")
	secret.Env = map[string]string{"SECRET": "hunter2"}
	victim := d.start(secret)
	me := os.Getpid() // stands for the agent: root, and holding secrets

	spy := shSpec("spy-0", fmt.Sprintf(`
		for p in %d %d; do
			if cat /proc/$p/environ >/dev/null 2>&1; then echo "read $p"; else echo "denied $p"; fi
			if [ -e /proc/$p ]; then echo "sees $p"; fi
		done
		n=0
		for p in /proc/[0-9]*; do
			case "$(cat $p/stat 2>/dev/null)" in *") Z "*|"") ;; *) n=$((n+1));; esac
		done
		echo "visible $n"
		grep -q SHOAL_SPY /proc/self/environ && echo "own environ ok"
		echo done`, victim.PID, me))
	spy.Env = map[string]string{"SHOAL_SPY": "1"}
	d.start(spy)
	out := d.waitLog("spy-0", "done")
	t.Logf("spy printed:\n%s", out)
	for _, pid := range []int{victim.PID, me} {
		if !strings.Contains(out, fmt.Sprintf("denied %d", pid)) || strings.Contains(out, fmt.Sprintf("sees %d", pid)) {
			t.Errorf("the spy task could see or read pid %d", pid)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Error("the secret leaked")
	}
	if !strings.Contains(out, "own environ ok") {
		t.Error("a task cannot read its own environment")
	}
	// sh and a cat or two: a handful of its own processes, not the
	// host's. (Zombies are not counted: tasks that earlier tests killed
	// while no driver watched may be left unreaped, under a uid since
	// given to this task.)
	f := strings.Fields(out[strings.Index(out, "visible"):])
	if n, err := strconv.Atoi(f[1]); err != nil || n > 5 {
		t.Errorf("the spy task sees %s processes in /proc, want only its own", f[1])
	}
	if a, b := d.uidOf("secret-0"), d.uidOf("spy-0"); a == b {
		t.Fatalf("both tasks run as uid %d", a)
	}
}

func TestTaskUIDsAreClaimedPerTaskAndGivenBack(t *testing.T) {
	ns := testNamespace(t)
	uids := privateUIDs(t, 2)
	d := openDriverWithUIDs(t, ns, "", uids)
	d.start(sleepSpec("a-0"))
	d.start(sleepSpec("b-0"))
	if a, b := d.uidOf("a-0"), d.uidOf("b-0"); a != uids.First || b != uids.First+1 {
		t.Fatalf("uids %d and %d, want %d and %d", a, b, uids.First, uids.First+1)
	}
	_, err := d.Start(context.Background(), sleepSpec("c-0"))
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a third task in a range of two: %v, want an error saying the uids are in use", err)
	}
	if exists(netnsPath(ns, "c-0")) {
		t.Fatal("the refused start left its netns")
	}

	// A second agent on the machine, with the same range, gets none of
	// them while they are in use.
	other := openDriverWithUIDs(t, testNamespace(t), "", uids)
	if _, err := other.Start(context.Background(), sleepSpec("a-0")); err == nil {
		t.Fatal("another driver got a uid a task of the first holds")
	}

	if err := d.Stop(context.Background(), "a-0"); err != nil {
		t.Fatal(err)
	}
	d.start(sleepSpec("c-0"))
	if got := d.uidOf("c-0"); got != uids.First {
		t.Fatalf("c-0 got uid %d, want %d, given back by a-0", got, uids.First)
	}

	// A restarted driver keeps the uids of the tasks it adopts.
	d.Close()
	d2 := openDriverWithUIDs(t, ns, d.dir, uids)
	if got := d2.uidOf("b-0"); got != uids.First+1 {
		t.Fatalf("adopted b-0 has uid %d", got)
	}
	claims, err := uidClaimsOf(ns)
	if err != nil || len(claims) != 2 || claims["b-0"] != uids.First+1 || claims["c-0"] != uids.First {
		t.Fatalf("claims after adoption: %v, %v", claims, err)
	}
}

func TestNewExecReleasesUIDsOfUnrecordedTasks(t *testing.T) {
	ns := testNamespace(t)
	uids := privateUIDs(t, 4)
	// A start that an agent crash cut short after the claim.
	if _, err := claimUID(uids, claimOwner(ns, "lost-0")); err != nil {
		t.Fatal(err)
	}
	d := openDriverWithUIDs(t, ns, "", uids)
	if claims, _ := uidClaimsOf(ns); len(claims) != 0 {
		t.Fatalf("claims of unrecorded tasks survived NewExec: %v", claims)
	}
	d.start(sleepSpec("a-0"))
	if got := d.uidOf("a-0"); got != uids.First {
		t.Fatalf("a-0 got uid %d, want the released %d", got, uids.First)
	}
}

func TestUIDRangeParsing(t *testing.T) {
	r, err := ParseUIDRange("2000000000-2000065535")
	if err != nil || r != DefaultTaskUIDs || r.String() != "2000000000-2000065535" {
		t.Fatalf("ParseUIDRange = %+v, %v", r, err)
	}
	for _, bad := range []string{"", "5", "10-5", "0-100", "60000-70000", "a-b", "4294967290-4294967295"} {
		if _, err := ParseUIDRange(bad); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("ParseUIDRange(%q) = %v, want ErrInvalidSpec", bad, err)
		}
	}
	if _, err := NewExec(ExecConfig{StateDir: t.TempDir(), Namespace: "x", TaskUIDs: UIDRange{First: 0, Count: 10}}); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("NewExec with a range holding root: %v", err)
	}
}

func TestTaskMountNamespaceKeepsNoOtherTasksNetns(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	before := d.start(sleepSpec("before-0"))
	watcher := d.start(sleepSpec("watcher-0"))
	after := d.start(sleepSpec("after-0"))
	mounts := func() string {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", watcher.PID))
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	if m := mounts(); strings.Contains(m, before.NetNS) {
		t.Fatalf("the task holds an older task's netns mount:\n%s", m)
	}
	for _, id := range []string{"before-0", "after-0"} {
		if err := d.Stop(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	if m := mounts(); strings.Contains(m, before.NetNS) || strings.Contains(m, after.NetNS) {
		t.Fatalf("the task keeps a stopped task's netns mounted:\n%s", m)
	}
}

func TestForkBombStaysInsideItsTask(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", 200*time.Millisecond)
	const limit = 64
	bomb := shSpec("bomb-0", `b() { b | b & }; b; sleep 1000`)
	bomb.Pids, bomb.CPUMillis, bomb.MemoryMB = limit, 200, 256
	d.start(bomb)
	d.start(sleepSpec("bystander-0"))
	pidsDir := d.cg.taskDir("pids", d.ns, "bomb-0")
	var peak int
	deadline := time.Now().Add(15 * time.Second)
	for {
		cur, err := strconv.Atoi(readTrim(t, filepath.Join(pidsDir, "pids.current")))
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, cur)
		if cur > limit {
			t.Fatalf("the bomb has %d processes, over its limit of %d", cur, limit)
		}
		if events := readTrim(t, filepath.Join(pidsDir, "pids.events")); events != "max 0" && peak >= limit-2 {
			t.Logf("bomb at %d processes (limit %d); %s", cur, limit, events)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bomb never reached its limit: peak %d", peak)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The node goes on: other tasks start and run.
	d.start(shSpec("after-0", "echo fine"))
	d.waitLog("after-0", "fine")
	if st, err := d.Status(context.Background(), "bystander-0"); err != nil || st.State != StateRunning {
		t.Fatalf("bystander: %+v, %v", st, err)
	}
	began := time.Now()
	if err := d.Stop(context.Background(), "bomb-0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopping the bomb took %s", time.Since(began).Round(time.Millisecond))
	if exists(pidsDir) {
		t.Fatal("the bomb's cgroup survived Stop")
	}
}

func TestExecInRunsInsideTheTask(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	st := d.start(sleepSpec("web-0"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := d.ExecIn(ctx, "web-0", []string{"sh", "-c", `id -u; pwd; readlink /proc/self/ns/net /proc/self/ns/mnt; cat /proc/self/cgroup; ls -d /proc/[0-9]*`})
	if err != nil {
		t.Fatalf("ExecIn: %v: %s", err, out)
	}
	text := string(out)
	t.Logf("ExecIn printed:\n%s", text)
	taskNet, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", st.PID))
	taskMnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", st.PID))
	for _, want := range []string{
		fmt.Sprint(d.uidOf("web-0")) + "\n",
		filepath.Join(d.dir, "work", "web-0") + "\n",
		taskNet, taskMnt,
		"/shoal/" + d.ns + "/web-0",
		fmt.Sprintf("/proc/%d\n", st.PID), // the task's own process, same user
	} {
		if !strings.Contains(text, want) {
			t.Errorf("ExecIn output lacks %q", want)
		}
	}
	if strings.Contains(text, fmt.Sprintf("/proc/%d\n", os.Getpid())) {
		t.Error("the command saw the agent's process")
	}

	_, err = d.ExecIn(ctx, "web-0", []string{"sh", "-c", "exit 3"})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("ExecIn of exit 3 = %v, want an ExitError with code 3", err)
	}
	if _, err := d.ExecIn(ctx, "nope-0", []string{"true"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ExecIn in an unknown task = %v, want ErrNotFound", err)
	}
}

func TestExecInTimeoutKillsTheWholeGroupAndOutputIsCapped(t *testing.T) {
	d := openDriver(t, testNamespace(t), "", time.Second)
	d.start(sleepSpec("web-0"))
	dirs := d.cg.taskDirs(d.ns, "web-0")
	before, err := cgroupProcs(dirs)
	if err != nil || len(before) != 1 {
		t.Fatalf("the task's cgroup holds %v, %v; want its one process", before, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	out, err := d.ExecIn(ctx, "web-0", []string{"sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ExecIn of a hanging command = %v (%s), want DeadlineExceeded", err, out)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("ExecIn returned %s after its deadline", took)
	}
	if !strings.Contains(string(out), "started") {
		t.Errorf("output before the timeout is lost: %q", out)
	}
	if after, _ := cgroupProcs(dirs); len(after) != 1 {
		t.Fatalf("processes left in the task's cgroup after the timeout: %v (task: %v)", after, before)
	}

	// A command that exits leaves no background process either.
	if _, err := d.ExecIn(context.Background(), "web-0", []string{"sh", "-c", "sleep 1000 & echo bye"}); err != nil {
		t.Fatal(err)
	}
	if after, _ := cgroupProcs(dirs); len(after) != 1 {
		t.Fatalf("a background process of the command survived it: %v", after)
	}

	out, err = d.ExecIn(context.Background(), "web-0", []string{"sh", "-c", "yes | head -c 1000000"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), strings.Repeat("y\n", ExecOutputLimit/2)) || len(out) > ExecOutputLimit+64 ||
		!strings.Contains(string(out), fmt.Sprintf("[%d more bytes dropped]", 1000000-ExecOutputLimit)) {
		t.Fatalf("output of %d bytes not capped at %d: %d bytes, ending %q", 1000000, ExecOutputLimit, len(out), out[max(0, len(out)-60):])
	}
}

func TestCappedBufferKeepsTheStart(t *testing.T) {
	b := &cappedBuffer{limit: 5}
	for _, s := range []string{"ab", "cdef", "gh"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := string(b.Bytes()); got != "abcde\n[3 more bytes dropped]" {
		t.Fatalf("Bytes = %q", got)
	}
}
