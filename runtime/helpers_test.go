package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

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

const mountinfoV1 = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const mountinfoV1CoMounted = `25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
29 25 0:26 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 /docker/abc /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
`

const mountinfoV2 = `24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
27 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

func mustCgroupFS(t *testing.T, mountinfo string, unified bool) *cgroupFS {
	t.Helper()
	mounts, err := parseMountinfo([]byte(mountinfo))
	if err != nil {
		t.Fatal(err)
	}
	cg, err := newCgroupFS(mounts, unified)
	if err != nil {
		t.Fatal(err)
	}
	return cg
}

func TestCgroupPathsOnV1WithSeparateMounts(t *testing.T) {
	cg := mustCgroupFS(t, mountinfoV1, false)
	if cg.v2 {
		t.Fatal("a hybrid host without controllers in its v2 mount is v1")
	}
	want := []string{
		"/sys/fs/cgroup/cpu/shoal/agent-1/web-2",
		"/sys/fs/cgroup/cpuacct/shoal/agent-1/web-2",
		"/sys/fs/cgroup/memory/shoal/agent-1/web-2",
	}
	if got := cg.taskDirs("agent-1", "web-2"); !reflect.DeepEqual(got, want) {
		t.Fatalf("taskDirs = %v, want %v", got, want)
	}
	if got := cg.taskDir("memory", "agent-1", "web-2"); got != want[2] {
		t.Fatalf("memory dir = %s, want %s", got, want[2])
	}
	if got, w := cg.namespaceDirs("agent-1"), []string{"/sys/fs/cgroup/cpu/shoal/agent-1", "/sys/fs/cgroup/cpuacct/shoal/agent-1", "/sys/fs/cgroup/memory/shoal/agent-1"}; !reflect.DeepEqual(got, w) {
		t.Fatalf("namespaceDirs = %v, want %v", got, w)
	}
}

func TestCgroupPathsOnV1WithCoMountedControllers(t *testing.T) {
	cg := mustCgroupFS(t, mountinfoV1CoMounted, false)
	want := []string{"/sys/fs/cgroup/cpu,cpuacct/shoal/n/t", "/sys/fs/cgroup/memory/shoal/n/t"}
	if got := cg.taskDirs("n", "t"); !reflect.DeepEqual(got, want) {
		t.Fatalf("taskDirs = %v, want %v", got, want)
	}
	if got := cg.taskDir("cpuacct", "n", "t"); got != want[0] {
		t.Fatalf("cpuacct dir = %s, want %s", got, want[0])
	}
}

func TestCgroupPathsOnV2(t *testing.T) {
	cg := mustCgroupFS(t, mountinfoV2, true)
	want := []string{"/sys/fs/cgroup/shoal/n/web-0"}
	if got := cg.taskDirs("n", "web-0"); !cg.v2 || !reflect.DeepEqual(got, want) {
		t.Fatalf("v2=%v taskDirs = %v, want %v", cg.v2, got, want)
	}
	if got := cg.taskDir("memory", "n", "web-0"); got != want[0] {
		t.Fatalf("memory dir = %s", got)
	}
}

func TestNewCgroupFSNeedsEveryController(t *testing.T) {
	mounts, err := parseMountinfo([]byte("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newCgroupFS(mounts, false); err == nil || !strings.Contains(err.Error(), "cpuacct") {
		t.Fatalf("want an error naming the missing controller, got %v", err)
	}
	if _, err := newCgroupFS(mounts, true); err == nil {
		t.Fatal("want an error without a cgroup2 mount")
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

func TestThreadCgroupDirMapsProcPathsToMountedDirs(t *testing.T) {
	procCgroup := []byte("9:name=systemd:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu,cpuacct:/docker/abc/sub\n0::/\n")
	for _, tc := range []struct {
		h    cgroupHierarchy
		want string
	}{
		{cgroupHierarchy{Dir: "/sys/fs/cgroup/memory", Root: "/", Controllers: []string{"memory"}}, "/sys/fs/cgroup/memory/process_api/abc"},
		{cgroupHierarchy{Dir: "/sys/fs/cgroup/cpu,cpuacct", Root: "/docker/abc", Controllers: []string{"cpu", "cpuacct"}}, "/sys/fs/cgroup/cpu,cpuacct/sub"},
	} {
		got, err := threadCgroupDir(procCgroup, tc.h)
		if err != nil || got != tc.want {
			t.Errorf("threadCgroupDir(%v) = %q, %v; want %q", tc.h.Controllers, got, err, tc.want)
		}
	}
	outside := cgroupHierarchy{Dir: "/sys/fs/cgroup/memory", Root: "/other", Controllers: []string{"memory"}}
	if _, err := threadCgroupDir(procCgroup, outside); err == nil {
		t.Fatal("want an error for a cgroup outside the mounted sub-tree")
	}
}

func TestLimitsForConvertsMillisAndMegabytes(t *testing.T) {
	for _, tc := range []struct {
		cpu, mem int64
		want     cgroupLimits
	}{
		{0, 0, cgroupLimits{CFSQuotaMicros: -1, MemoryBytes: -1}},
		{250, 64, cgroupLimits{CFSQuotaMicros: 25_000, MemoryBytes: 64 << 20}},
		{1000, 1, cgroupLimits{CFSQuotaMicros: 100_000, MemoryBytes: 1 << 20}},
		{2500, 0, cgroupLimits{CFSQuotaMicros: 250_000, MemoryBytes: -1}},
		{5, 0, cgroupLimits{CFSQuotaMicros: minCFSQuotaMicros, MemoryBytes: -1}}, // the kernel's minimum
	} {
		if got := limitsFor(TaskSpec{CPUMillis: tc.cpu, MemoryMB: tc.mem}); got != tc.want {
			t.Errorf("limitsFor(cpu %d, mem %d) = %+v, want %+v", tc.cpu, tc.mem, got, tc.want)
		}
	}
}

func TestParseFlatKeyed(t *testing.T) {
	raw := []byte("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n")
	if v, err := parseFlatKeyed(raw, "usage_usec"); err != nil || v != 1234 {
		t.Fatalf("got %d, %v", v, err)
	}
	if _, err := parseFlatKeyed(raw, "nope"); err == nil {
		t.Fatal("want an error for a missing key")
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
