package runtime

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/cgroups/v3/cgroup1"
	"golang.org/x/sys/unix"
)

// statLine is a /proc/<pid>/stat line with the given command name and
// start time (field 22).
func statLine(comm, start string) string {
	//      3 4  5    6    7 8  9       10  11-17         18 19 20 21 22
	return "4242 (" + comm + ") S 77 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 " + start + " 5500000 200 18446744073709551615"
}

func TestParseProcStatCountsFieldsFromTheLastParenthesis(t *testing.T) {
	for _, tc := range []struct {
		name, comm string
	}{
		{"plain", "sleep"},
		{"spaces and parentheses", "a) (b c) d"},
		{"empty", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := statLine(tc.comm, "5555")
			st, err := parseProcStat([]byte(raw))
			if err != nil {
				t.Fatal(err)
			}
			want := procStat{State: 'S', PPID: 77, PGRP: 4242, StartTicks: 5555}
			if st != want {
				t.Fatalf("got %+v, want %+v (input %q)", st, want, raw)
			}
		})
	}
}

func TestParseProcStatRejectsMalformedInput(t *testing.T) {
	for _, raw := range []string{
		"",
		"4242 sleep S 1 2",
		"4242 (sleep) S 1 2 3",
		statLine("sleep", "notanumber"),
		strings.Replace(statLine("sleep", "5555"), " 77 ", " x ", 1),
		strings.Replace(statLine("sleep", "5555"), ") S ", ") SS ", 1),
	} {
		if st, err := parseProcStat([]byte(raw)); err == nil {
			t.Errorf("parseProcStat(%q) = %+v, want an error", raw, st)
		}
	}
}

func TestReadProcStatOfThisProcess(t *testing.T) {
	st, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID != os.Getppid() || st.StartTicks == 0 {
		t.Fatalf("got %+v, want ppid %d and a start time", st, os.Getppid())
	}
	if !processAlive(os.Getpid(), st.StartTicks) {
		t.Fatal("this process is not alive with its own start time")
	}
	if processAlive(os.Getpid(), st.StartTicks+1) {
		t.Fatal("a different start time must mean a different process")
	}
}

// fakeCgroupRoot makes a directory laid out like /sys/fs/cgroup on a v1
// host with one directory per entry of dirs and the given symlinks.
func fakeCgroupRoot(t *testing.T, dirs []string, links map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupPathsOnV1WithSeparateMounts(t *testing.T) {
	root := fakeCgroupRoot(t, []string{"cpu", "cpuacct", "memory", "pids", "devices"}, nil)
	cg, err := newCgroupFSv1(root)
	if err != nil {
		t.Fatal(err)
	}
	if cg.v2 {
		t.Fatal("a v1 host taken for v2")
	}
	var want []string
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids"} {
		want = append(want, filepath.Join(root, c, "shoal/agent-1/web-2"))
	}
	if got := cg.taskDirs("agent-1", "web-2"); !reflect.DeepEqual(got, want) {
		t.Fatalf("taskDirs = %v, want %v", got, want)
	}
	if got := cg.taskDir("memory", "agent-1", "web-2"); got != want[2] {
		t.Fatalf("memory dir = %s, want %s", got, want[2])
	}
	if got := cg.namespaceDirs("agent-1"); len(got) != 4 || got[3] != filepath.Join(root, "pids/shoal/agent-1") {
		t.Fatalf("namespaceDirs = %v", got)
	}
}

func TestCgroupPathsOnV1WithCoMountedControllers(t *testing.T) {
	root := fakeCgroupRoot(t, []string{"cpu,cpuacct", "memory", "pids"}, map[string]string{"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct"})
	cg, err := newCgroupFSv1(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(root, "cpu,cpuacct/shoal/n/t"), filepath.Join(root, "memory/shoal/n/t"), filepath.Join(root, "pids/shoal/n/t")}
	if got := cg.taskDirs("n", "t"); !reflect.DeepEqual(got, want) {
		t.Fatalf("taskDirs = %v, want %v (one per distinct hierarchy)", got, want)
	}
}

func TestCgroupPathsOnV2(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory hugetlb pids rdma misc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cg, err := newCgroupFSv2(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(root, "shoal/n/web-0")}
	if got := cg.taskDirs("n", "web-0"); !cg.v2 || !reflect.DeepEqual(got, want) {
		t.Fatalf("v2=%v taskDirs = %v, want %v", cg.v2, got, want)
	}
	if got := cg.taskDir("memory", "n", "web-0"); got != want[0] {
		t.Fatalf("memory dir = %s", got)
	}
}

func TestCgroupsNeedEveryControllerAndSayWhichIsMissing(t *testing.T) {
	root := fakeCgroupRoot(t, []string{"cpu", "cpuacct", "memory"}, nil)
	_, err := newCgroupFSv1(root)
	if !errors.Is(err, ErrCgroupsUnavailable) || !strings.Contains(err.Error(), "v1 pids controller is not mounted") {
		t.Fatalf("v1 without pids: %v, want ErrCgroupsUnavailable naming pids", err)
	}
	v2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("cpu memory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = newCgroupFSv2(v2)
	if !errors.Is(err, ErrCgroupsUnavailable) || !strings.Contains(err.Error(), "v2 pids controller is not available") {
		t.Fatalf("v2 without pids: %v, want ErrCgroupsUnavailable naming pids", err)
	}
	if _, err := newCgroupFSv2(t.TempDir()); !errors.Is(err, ErrCgroupsUnavailable) {
		t.Fatalf("v2 without cgroup.controllers: %v", err)
	}
}

func TestParseMountinfoUnescapesPaths(t *testing.T) {
	mounts, err := parseMountinfo([]byte(`50 31 0:40 /a\040b /mnt/with\040space rw - tmpfs tmpfs rw` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 || mounts[0].MountPoint != "/mnt/with space" || mounts[0].Root != "/a b" {
		t.Fatalf("got %+v", mounts)
	}
	if _, err := parseMountinfo([]byte("garbage line\n")); err == nil {
		t.Fatal("want an error for a malformed line")
	}
}

func TestLimitsForConvertsMillisAndMegabytes(t *testing.T) {
	for _, tc := range []struct {
		cpu, mem, pids int64
		want           cgroupLimits
	}{
		{0, 0, 0, cgroupLimits{CFSQuotaMicros: -1, MemoryBytes: -1, Pids: DefaultPids}},
		{250, 64, 0, cgroupLimits{CFSQuotaMicros: 25_000, MemoryBytes: 64 << 20, Pids: DefaultPids}},
		{1000, 1, 50, cgroupLimits{CFSQuotaMicros: 100_000, MemoryBytes: 1 << 20, Pids: 50}},
		{2500, 0, 1, cgroupLimits{CFSQuotaMicros: 250_000, MemoryBytes: -1, Pids: 1}},
		{5, 0, 0, cgroupLimits{CFSQuotaMicros: minCFSQuotaMicros, MemoryBytes: -1, Pids: DefaultPids}}, // the kernel's minimum
	} {
		if got := limitsFor(TaskSpec{CPUMillis: tc.cpu, MemoryMB: tc.mem, Pids: tc.pids}); got != tc.want {
			t.Errorf("limitsFor(cpu %d, mem %d, pids %d) = %+v, want %+v", tc.cpu, tc.mem, tc.pids, got, tc.want)
		}
	}
}

func TestNetnsNames(t *testing.T) {
	if got := netnsName("agent-1", "web-2"); got != "shoal-agent-1-web-2" {
		t.Fatalf("netnsName = %s", got)
	}
	if got := netnsPath("a", "b"); got != "/run/netns/shoal-a-b" {
		t.Fatalf("netnsPath = %s", got)
	}
}

func TestValidateTaskID(t *testing.T) {
	for _, id := range []string{"web-2", "a", "0", "job-with-a-long-name-0", strings.Repeat("a", 63) + "-9999"} {
		if err := ValidateTaskID(id); err != nil {
			t.Errorf("ValidateTaskID(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", "Web-2", "web_2", "-web", "web-", "web.2", "a/b", "..", strings.Repeat("a", 129)} {
		err := ValidateTaskID(id)
		if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), "id") {
			t.Errorf("ValidateTaskID(%q) = %v, want an ErrInvalidSpec about the id", id, err)
		}
	}
}

func TestValidateNamespace(t *testing.T) {
	for _, ns := range []string{"shoal", "se2e123-abc-n1", "Agent_1.dev"} {
		if err := ValidateNamespace(ns); err != nil {
			t.Errorf("ValidateNamespace(%q) = %v", ns, err)
		}
	}
	for _, ns := range []string{"", "a/b", "..", "-a", "a-", "a b", strings.Repeat("n", 65)} {
		if err := ValidateNamespace(ns); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("ValidateNamespace(%q) = %v, want ErrInvalidSpec", ns, err)
		}
	}
}

func TestTaskSpecValidateNamesTheBadField(t *testing.T) {
	ok := TaskSpec{ID: "web-0", Job: "web", Command: []string{"/bin/sleep"}, Args: []string{"1"}, CPUMillis: 100, MemoryMB: 32}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*TaskSpec)
		field string
	}{
		{"empty command", func(s *TaskSpec) { s.Command = nil }, "command"},
		{"empty program", func(s *TaskSpec) { s.Command = []string{""} }, "command"},
		{"relative program path", func(s *TaskSpec) { s.Command = []string{"./bin/x"} }, "absolute path"},
		{"bad id", func(s *TaskSpec) { s.ID = "Web 0" }, "id"},
		{"missing id", func(s *TaskSpec) { s.ID = "" }, "id"},
		{"negative memory", func(s *TaskSpec) { s.MemoryMB = -1 }, "memory"},
		{"negative cpu", func(s *TaskSpec) { s.CPUMillis = -1 }, "cpu"},
		{"negative replica", func(s *TaskSpec) { s.Replica = -1 }, "replica"},
		{"negative pids", func(s *TaskSpec) { s.Pids = -1 }, "pids"},
		{"too many pids", func(s *TaskSpec) { s.Pids = 4_194_305 }, "pids"},
		{"NUL in args", func(s *TaskSpec) { s.Args = []string{"a\x00b"} }, "NUL"},
		{"bad env name", func(s *TaskSpec) { s.Env = map[string]string{"A=B": "c"} }, "env"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.edit(&s)
			err := s.Validate()
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate() = %v, want an ErrInvalidSpec mentioning %q", err, tc.field)
			}
		})
	}
}

func TestTaskEnvAddsPathOnlyWhenMissing(t *testing.T) {
	got := taskEnv(map[string]string{"B": "2", "A": "1"})
	want := []string{"A=1", "B=2", "PATH=" + defaultPath}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("taskEnv = %v, want %v", got, want)
	}
	got = taskEnv(map[string]string{"PATH": "/opt/bin"})
	if !reflect.DeepEqual(got, []string{"PATH=/opt/bin"}) {
		t.Fatalf("taskEnv kept no custom PATH: %v", got)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := lookPath("tool", "relative:"+dir); err != nil || got != exe {
		t.Fatalf("lookPath(tool) = %q, %v", got, err)
	}
	if got, err := lookPath(exe, ""); err != nil || got != exe {
		t.Fatalf("lookPath(absolute) = %q, %v", got, err)
	}
	for _, prog := range []string{"data", "missing", filepath.Join(dir, "data"), dir} {
		if got, err := lookPath(prog, dir); err == nil {
			t.Errorf("lookPath(%q) = %q, want an error", prog, got)
		}
	}
}

func TestExitCodeOf(t *testing.T) {
	// Linux wait status encoding: exit code in bits 8-15, signal in 0-6.
	if got := exitCodeOf(3 << 8); got != 3 {
		t.Errorf("exit 3 -> %d", got)
	}
	if got := exitCodeOf(unix.WaitStatus(unix.SIGKILL)); got != 137 {
		t.Errorf("SIGKILL -> %d, want 137", got)
	}
}

func TestRouterNamesTheReasonADriverIsDisabled(t *testing.T) {
	var missing *Exec // what a failed NewExec leaves
	r := NewRouter(map[string]Driver{DriverExec: missing})
	r.Disable(DriverExec, "detect cgroups: cgroup controllers unavailable: the v1 pids controller is not mounted")
	_, err := r.Start(context.Background(), TaskSpec{ID: "web-0", Driver: DriverExec, Command: []string{"/bin/true"}})
	if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), `driver "exec": it is disabled on this node: detect cgroups`) {
		t.Fatalf("Start on a disabled driver = %v", err)
	}
	if got := r.Disabled(); len(got) != 1 || got[DriverExec] == "" {
		t.Fatalf("Disabled = %v", got)
	}
	if tasks, err := r.List(context.Background()); err != nil || len(tasks) != 0 {
		t.Fatalf("List without drivers = %v, %v", tasks, err)
	}
}

func TestThreadCgroupPathsAreRelativeToTheMountedSubtree(t *testing.T) {
	procCgroup := []byte("12:misc:/\n9:name=systemd:/\n4:memory:/docker/abc/sub\n2:cpu,cpuacct:/docker/abc\n6:pids:/docker/abc\n0::/\n")
	mounts, err := parseMountinfo([]byte(`29 25 0:26 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
`))
	if err != nil {
		t.Fatal(err)
	}
	// misc is listed but not mounted: it does not matter.
	got, err := threadCgroupPaths(procCgroup, mounts, []cgroup1.Name{cgroup1.Cpu, cgroup1.Cpuacct, cgroup1.Memory, cgroup1.Pids})
	if err != nil {
		t.Fatal(err)
	}
	want := map[cgroup1.Name]string{cgroup1.Cpu: "/", cgroup1.Cpuacct: "/", cgroup1.Memory: "/sub", cgroup1.Pids: "/docker/abc"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	outside := []byte("4:memory:/other\n")
	if _, err := threadCgroupPaths(outside, mounts, []cgroup1.Name{cgroup1.Memory}); err == nil {
		t.Fatal("want an error for a cgroup outside the mounted sub-tree")
	}
}
